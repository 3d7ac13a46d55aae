"""Vertex samples (SPEC §3 "Vertex samples"; featgeo.archetypes.vertices).

The store is built by the real builder with ``encode`` = identity, so every stored code is
chosen here. The AANets are built by hand: with W_dec's rows orthonormal, an encoder whose ReLU
layers see ``x + B`` (B large, so they act as the identity) and whose bottleneck maps back and
subtracts B gives ``z = a_c`` exactly (up to float32 rounding), so every token's barycentric
coordinates are known in closed form. Tokens are placed at ``z = lambda @ V`` (V the simplex's
vertices) with lambdas chosen near a vertex (at a known distance), between two vertices or
outside the simplex. A numpy reference scan (chunk by chunk) is the oracle for records and
counts; a trained AANet is checked against :meth:`AANet.transform`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import pytest
import torch

from featgeo.activations.collect import ActivationBatch
from featgeo.activations.store import REQUIRED_HEADER_KEYS, ActivationStore, build_store
from featgeo.archetypes.aanet import AANet
from featgeo.archetypes.config import AANetConfig
from featgeo.archetypes.network import layer_sizes
from featgeo.archetypes.simplex import simplex_vertices
from featgeo.archetypes.vertices import (
    MAX_THRESHOLD,
    ClusterProgress,
    ScanState,
    VertexModel,
    VertexRecord,
    VertexSettings,
    scan_vertices,
)

D_SAE = D_MODEL = 10
CONTEXT = 10
"""Chunks hold at most CONTEXT - 1 stored tokens (position 0 is dropped)."""
SHIFT = 4.0
"""B: the constructed encoders' ReLU layers see x + B > 0."""
THRESHOLDS = (0.1, 0.25, 0.9)
"""Thresholds used on the main store; no token lies within MARGIN of either."""
MARGIN = 1e-4
DIST_TOL = 1e-5
NEAR_DISTANCES = (0.0, 0.02, 0.04, 0.07, 0.09, 0.115, 0.15, 0.3)
BIG = 10**6

SPECS = {
    # key: (k, latents, AANet with a basis?)
    "3:0": (3, [0, 1], False),
    "3:1": (4, [4, 2, 3], True),  # latents out of order; same n as 3:0, disjoint latents
    "5:2": (3, [1, 5], False),  # another n: shares latent 1 with 3:0
    "5:3": (2, [6], True),  # k = 2; its vertex 1 first appears in document 3
}
LATE_DOC = 3
"""The first document with a token near vertex 1 of ``5:3``."""


# building blocks ----------------------------------------------------------------------------
def vertices(k: int) -> np.ndarray:
    return simplex_vertices(k).numpy()  # [k, k-1] float64


def closed_form_lambda(z: np.ndarray, k: int) -> np.ndarray:
    """Barycentric coordinates of ``z [n, k-1]``: solve [V^T; 1] lambda = [z; 1]."""
    system = np.vstack([vertices(k).T, np.ones((1, k))])
    rhs = np.vstack([np.asarray(z, np.float64).T, np.ones((1, z.shape[0]))])
    return np.linalg.solve(system, rhs).T


def distances(lam: np.ndarray) -> np.ndarray:
    """[n, k] ||lambda - e_i||."""
    eye = np.eye(lam.shape[1])
    return np.linalg.norm(lam[:, None, :] - eye[None], axis=-1)


def make_net(k: int, w_rows: np.ndarray, use_basis: bool) -> AANet:
    """An AANet whose embedding of ``x = a @ w_rows`` is exactly ``a`` (orthonormal rows)."""
    d_model = w_rows.shape[1]
    config = AANetConfig()
    if use_basis:
        basis, d_in, back = w_rows.T.astype(np.float32), k - 1, np.eye(k - 1)
    else:
        basis, d_in, back = None, d_model, w_rows.T.astype(np.float64)
    assert w_rows.shape[0] == k - 1 and d_in <= min(config.hidden)
    params = []
    for fan_in, fan_out in layer_sizes(d_in, k, config.hidden):
        params += [torch.zeros(fan_in, fan_out), torch.zeros(fan_out)]
    params[0][:d_in, :d_in] = torch.eye(d_in)  # h1 = x + B
    params[1][:d_in] = SHIFT
    params[2][:d_in, :d_in] = torch.eye(d_in)  # h2 = h1
    params[4][:d_in] = torch.from_numpy(back).float()  # z = (x + B) @ back - B 1 @ back
    params[5][:] = torch.from_numpy(-SHIFT * back.sum(axis=0)).float()
    net = AANet(k=k, config=config, space="subspace" if use_basis else "full")
    curve = np.zeros((config.final_window, 4), np.float32)
    net._set_fitted(params, basis, np.zeros((k, d_model)), curve, "constructed", config, d_model)
    return net


def header(d_sae: int = D_SAE, context: int = CONTEXT) -> dict:
    out = {key: "synthetic" for key in REQUIRED_HEADER_KEYS}
    out.update(layer=0, split="heldout", context_size=context, d_sae=d_sae)
    return out


def chunk_bounds(doc: np.ndarray, chunk: np.ndarray) -> list[tuple[int, int]]:
    ids = doc.astype(np.int64) * 100_000 + chunk
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    return list(zip(starts.tolist(), [*starts[1:].tolist(), ids.size], strict=True))


def make_store(folder, codes, doc, chunk, position, token_ids, *, d_sae=D_SAE, context=CONTEXT):
    """A store whose codes are ``codes`` exactly (encode = identity), batches of whole chunks."""
    codes = np.asarray(codes, np.float32)
    bounds = chunk_bounds(doc, chunk)
    batches = []
    for i in range(0, len(bounds), 3):  # three chunks per batch
        s, e = bounds[i][0], bounds[min(i + 3, len(bounds)) - 1][1]
        batches.append(
            ActivationBatch(
                acts=torch.from_numpy(codes[s:e].copy()),
                token_ids=np.asarray(token_ids[s:e], np.int32),
                doc_index=np.asarray(doc[s:e], np.int32),
                chunk_index=np.asarray(chunk[s:e], np.int32),
                position=np.asarray(position[s:e], np.int32),
            )
        )
    return build_store(folder, batches, lambda a: a, header(d_sae, context), progress=False,
                       shard_tokens=16)  # fmt: skip


def layout(lengths_per_doc: list[list[int]]):
    """doc, chunk, position arrays of documents with the given stored chunk lengths."""
    doc, chunk, pos = [], [], []
    for d, lengths in enumerate(lengths_per_doc):
        for c, n in enumerate(lengths):
            doc += [d] * n
            chunk += [c] * n
            pos += list(range(1, n + 1))
    return np.array(doc), np.array(chunk), np.array(pos)


# the main store -----------------------------------------------------------------------------
@dataclass
class Data:
    store: ActivationStore
    codes: np.ndarray
    doc: np.ndarray
    chunk: np.ndarray
    pos: np.ndarray
    tok: np.ndarray
    bounds: list[tuple[int, int]]
    models: dict[str, VertexModel]
    designs: list[list[tuple[str, str, int, float]]]
    """Per row: (key, mode, vertex, distance) of the placements made there."""
    active: dict[str, np.ndarray] = field(default_factory=dict)
    dist: dict[str, np.ndarray] = field(default_factory=dict)

    def doc_start(self, d: int) -> int:
        return int(np.searchsorted(self.doc, d))


def _hyperplane_unit(rng, k: int) -> np.ndarray:
    u = rng.standard_normal(k)
    u -= u.mean()
    return u / np.linalg.norm(u)


def _design(rng, k: int, *, vertex=None, mode=None, dist=None):
    """(lambda, mode, vertex, distance to that vertex)."""
    mode = mode or rng.choice(["near", "between", "outside"], p=[0.7, 0.15, 0.15])
    i = int(rng.integers(k)) if vertex is None else vertex
    eye = np.eye(k)
    if mode == "near":
        d = float(rng.choice(NEAR_DISTANCES)) if dist is None else dist
        return eye[i] + d * _hyperplane_unit(rng, k), mode, i, d
    j = (i + 1 + int(rng.integers(k - 1))) % k
    if mode == "between":
        return (eye[i] + eye[j]) / 2, mode, i, math.sqrt(0.5)
    return 1.25 * eye[i] - 0.25 * eye[j], mode, i, 0.25 * math.sqrt(2)  # outside the simplex


def _generate(seed: int):
    rng = np.random.default_rng(seed)
    lengths = [[7, *rng.integers(3, CONTEXT, size=int(rng.integers(1, 3))).tolist()]]
    lengths += [rng.integers(3, CONTEXT, size=int(rng.integers(2, 5))).tolist() for _ in range(7)]
    doc, chunk, pos = layout(lengths)
    n = doc.size
    codes = np.zeros((n, D_SAE), np.float64)
    designs: list[list] = [[] for _ in range(n)]

    def place(row, key, lam, mode, vertex, d):
        k, latents, _ = SPECS[key]
        codes[row, latents] = lam @ vertices(k)
        designs[row].append((key, mode, vertex, d))

    for row in range(n):
        first_doc_rows = row < 6
        if first_doc_rows:  # every vertex of 3:0, 5:2, 3:1 and vertex 0 of 5:3, at distance 0
            key = "3:0" if row < 3 else "5:2"
            place(row, key, *_design(rng, 3, vertex=row % 3, mode="near", dist=0.0))
            if row < 4:
                place(row, "3:1", *_design(rng, 4, vertex=row, mode="near", dist=0.0))
            elif row == 4:
                place(row, "5:3", *_design(rng, 2, vertex=0, mode="near", dist=0.0))
            continue
        if row == int(np.searchsorted(doc, LATE_DOC)):
            place(row, "5:3", *_design(rng, 2, vertex=1, mode="near", dist=0.0))
            continue
        r = rng.random()
        if r < 0.4:
            place(row, "3:0", *_design(rng, 3))
        elif r < 0.7:
            place(row, "5:2", *_design(rng, 3))
        elif r < 0.8:  # inactive for 3:0 and 5:2 (|a| sums to 8e-7 and 4e-7)
            codes[row, [0, 1]] = 4e-7
            designs[row].append(("3:0", "tiny", -1, math.nan))
        if rng.random() < 0.5:
            place(row, "3:1", *_design(rng, 4))
        if rng.random() < 0.3:
            if doc[row] < LATE_DOC:  # only vertex 0 of 5:3 before LATE_DOC
                mode = rng.choice(["near", "between"])
                place(row, "5:3", *_design(rng, 2, vertex=0, mode=mode))
            else:
                place(row, "5:3", *_design(rng, 2))
        if rng.random() < 0.3:
            codes[row, 9] = rng.standard_normal()  # a latent of no cluster
    tok = 1000 + np.arange(n)  # identifies the row
    return codes.astype(np.float32), doc, chunk, pos, tok, designs


def _decoder(seed: int = 1) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((D_MODEL, D_SAE)))
    return np.ascontiguousarray(q.T, dtype=np.float32)  # orthonormal rows [d_sae, d_model]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Data:
    w_dec = _decoder()
    models = {
        key: VertexModel(key, latents, w_dec[latents], make_net(k, w_dec[latents], basis))
        for key, (k, latents, basis) in SPECS.items()
    }
    for seed in range(20):  # the first layout with no token within MARGIN of a threshold
        codes, doc, chunk, pos, tok, designs = _generate(seed)
        out = Data(None, codes, doc, chunk, pos, tok, chunk_bounds(doc, chunk), models, designs)
        for key, (k, latents, _) in SPECS.items():
            a = codes[:, latents].astype(np.float64)
            out.active[key] = np.abs(a).sum(axis=1) > 1e-6
            out.dist[key] = distances(closed_form_lambda(a, k))
        if all(
            np.abs(out.dist[key][out.active[key]] - t).min() > MARGIN
            for key in SPECS
            for t in THRESHOLDS
        ):
            break
    else:
        pytest.fail("no synthetic layout keeps clear of the thresholds")
    out.store = make_store(tmp_path_factory.mktemp("vertices") / "store", codes, doc, chunk, pos,
                           tok)  # fmt: skip
    return out


# running a scan and the reference -----------------------------------------------------------
def run(store, models, settings=None, state=None, device="cpu"):
    """(final state, records by key, yields) of a whole scan."""
    records: dict[str, list[VertexRecord]] = {m.key: [] for m in models}
    yields = []
    final = None
    for final, block in scan_vertices(store, models, settings, state=state, device=device):
        yields.append((final.stopped, json.loads(json.dumps(final.to_dict())), block))
        for key, recs in block.items():
            records[key].extend(recs)
    return final, records, yields


@dataclass
class Reference:
    records: dict[str, list[VertexRecord]]
    progress: dict[str, ClusterProgress]
    stopped: str
    tokens_scanned: int
    chunks_scanned: int
    next_row: int


def reference(data: Data, keys, settings: VertexSettings) -> Reference:
    """The scan done chunk by chunk with numpy (a block of one chunk)."""
    quota, threshold = settings.samples_per_vertex, settings.threshold
    budget = math.inf if settings.max_tokens is None else settings.max_tokens
    start = data.doc_start(settings.skip_docs)
    chunks = [b for b in data.bounds if b[0] >= start]
    ks = {key: SPECS[key][0] for key in keys}
    progress = {key: ClusterProgress(0, 0, [0] * k, [0] * k) for key, k in ks.items()}
    records = {key: [] for key in keys}
    scanned = n_chunks = 0
    next_row = start
    for bound in [*chunks, None]:
        if all(p.done for p in progress.values()):
            stopped = "quota"
            break
        if bound is None:
            stopped = "store_end"
            break
        s, e = bound
        if scanned + (e - s) > budget:
            stopped = "budget"
            break
        for key in keys:
            p = progress[key]
            if p.done:
                continue
            rows = s + np.flatnonzero(data.active[key][s:e])
            p.active_tokens += rows.size
            for v in range(SPECS[key][0]):
                hits = rows[data.dist[key][rows, v] < threshold]
                p.triggers[v] += hits.size
                if hits.size and p.records[v] < quota:
                    p.records[v] += 1
                    triggers = [
                        {"distance": float(data.dist[key][r, v]), "position": int(data.pos[r]),
                         "token_id": int(data.tok[r])}
                        for r in hits
                    ]  # fmt: skip
                    records[key].append(
                        VertexRecord(v, int(data.doc[s]), int(data.chunk[s]), s, triggers)
                    )
            p.tokens_scanned += e - s
        scanned += e - s
        n_chunks += 1
        next_row = e
        for p in progress.values():
            p.done = p.done or all(r >= quota for r in p.records)
    return Reference(records, progress, stopped, scanned, n_chunks, next_row)


def strip(records: list[VertexRecord]):
    """Records without distances (compared exactly) and their distances."""
    keys = [
        (r.vertex, r.doc_index, r.chunk_index, r.first_row,
         tuple((t["position"], t["token_id"]) for t in r.triggers))
        for r in records
    ]  # fmt: skip
    dists = np.array([t["distance"] for r in records for t in r.triggers])
    return keys, dists


def assert_records_equal(got, want, atol=DIST_TOL):
    got_keys, got_dist = strip(got)
    want_keys, want_dist = strip(want)
    assert got_keys == want_keys
    np.testing.assert_allclose(got_dist, want_dist, rtol=0, atol=atol)


def assert_matches_reference(data, models, settings, state, records, *, counts=True):
    ref = reference(data, [m.key for m in models], settings)
    for m in models:
        assert_records_equal(records[m.key], ref.records[m.key])
        if counts:
            assert asdict(state.clusters[m.key]) == asdict(ref.progress[m.key]), m.key
    assert state.stopped == ref.stopped
    if counts:  # else the scan may go on to the end of the block in which it stops
        assert state.tokens_scanned == ref.tokens_scanned
        assert state.next_row == ref.next_row
        assert state.chunks_scanned == ref.chunks_scanned
    return ref


def trigger_rows(rec: VertexRecord) -> list[int]:
    return [rec.first_row + t["position"] - 1 for t in rec.triggers]


def all_models(data):
    return list(data.models.values())


# the constructed models ---------------------------------------------------------------------
@pytest.mark.parametrize("key", list(SPECS))
def test_constructed_aanets_embed_codes_exactly(data, key):
    model = data.models[key]
    k, latents, basis = SPECS[key]
    assert (model.net.basis_ is not None) == basis
    a = data.codes[:, latents]
    lam = model.net.transform(a @ model.w_dec)
    np.testing.assert_allclose(lam, closed_form_lambda(a, k), atol=2e-6)


def test_store_holds_the_codes_and_layout(data):
    store = data.store
    assert store.n_tokens == data.codes.shape[0] and store.d_sae == D_SAE
    np.testing.assert_array_equal(store.dense_codes(), data.codes)
    np.testing.assert_array_equal(np.asarray(store.token_ids), data.tok)
    np.testing.assert_array_equal(np.asarray(store.position), data.pos)
    assert len({d for d in data.doc}) == 8 and len(data.bounds) > 15


# records and counts -------------------------------------------------------------------------
@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_all_models_match_the_reference(data, threshold):
    settings = VertexSettings(threshold=threshold, samples_per_vertex=BIG, block_tokens=1)
    state, records, yields = run(data.store, all_models(data), settings)
    ref = assert_matches_reference(data, all_models(data), settings, state, records)
    assert state.stopped == "store_end"
    assert state.tokens_scanned == state.next_row == data.store.n_tokens
    assert state.chunks_scanned == len(data.bounds) == len(yields) - 1
    for key in SPECS:  # every cluster saw triggers of every vertex (a meaningful comparison)
        assert min(ref.progress[key].triggers) > 0
        assert state.clusters[key].active_tokens == int(data.active[key].sum())
        assert state.clusters[key].tokens_scanned == data.store.n_tokens
        assert not state.clusters[key].done


def test_designed_tokens_land_in_their_vertex_only(data):
    settings = VertexSettings(samples_per_vertex=BIG)
    _, records, _ = run(data.store, all_models(data), settings)
    where = {key: {} for key in SPECS}  # key -> row -> vertices whose records hold it
    for key, recs in records.items():
        for rec in recs:
            for row in trigger_rows(rec):
                where[key].setdefault(row, []).append(rec.vertex)
    checked = {"in": 0, "out": 0}
    for row, placements in enumerate(data.designs):
        for key, mode, vertex, d in placements:
            found = where[key].get(row, [])
            if mode == "near" and d < 0.1:
                assert found == [vertex], (row, key, mode, vertex, d)
                checked["in"] += 1
            else:  # near at 0.115 or more, between two vertices, outside, or inactive
                assert found == [], (row, key, mode, vertex, d)
                checked["out"] += 1
    assert checked["in"] > 30 and checked["out"] > 30


def test_record_fields(data):
    settings = VertexSettings(samples_per_vertex=BIG, block_tokens=7)
    state, records, _ = run(data.store, all_models(data), settings)
    chunk_start = {s for s, _ in data.bounds}
    for key, recs in records.items():
        k = SPECS[key][0]
        seen = set()
        for rec in recs:
            where = (rec.vertex, rec.doc_index, rec.chunk_index)
            assert where not in seen  # one record per (chunk, vertex)
            seen.add(where)
            assert 0 <= rec.vertex < k
            assert rec.first_row in chunk_start and data.pos[rec.first_row] == 1
            assert data.doc[rec.first_row] == rec.doc_index
            assert data.chunk[rec.first_row] == rec.chunk_index
            positions = [t["position"] for t in rec.triggers]
            assert positions == sorted(set(positions)) and positions
            for t, row in zip(rec.triggers, trigger_rows(rec), strict=True):
                assert (data.doc[row], data.chunk[row], data.pos[row]) == (
                    rec.doc_index, rec.chunk_index, t["position"])  # fmt: skip
                assert t["token_id"] == data.tok[row] and isinstance(t["token_id"], int)
                assert t["distance"] < settings.threshold
                assert abs(t["distance"] - data.dist[key][row, rec.vertex]) < DIST_TOL
            # every trigger of that chunk and vertex is in the record
            s = rec.first_row
            e = next(e for b, e in data.bounds if b == s)
            want = s + np.flatnonzero(
                data.active[key][s:e] & (data.dist[key][s:e, rec.vertex] < settings.threshold)
            )
            assert trigger_rows(rec) == want.tolist()
        # records read in chunk order, vertices ascending within a chunk
        order = [(r.first_row, r.vertex) for r in recs]
        assert order == sorted(order)
        assert [sum(1 for r in recs if r.vertex == v) for v in range(k)] == state.clusters[
            key
        ].records


def test_threshold_is_strict(data):
    """A token exactly at the threshold is out; the next float up takes it in."""
    model = data.models["3:0"]
    row, vertex, d = next((r, v, d) for r, p in enumerate(data.designs) for key, mode, v, d in p
                          if key == "3:0" and mode == "near" and 0.05 < d < 0.1)  # fmt: skip
    _, records, _ = run(data.store, [model], VertexSettings(samples_per_vertex=BIG))
    (at,) = [t["distance"] for r in records["3:0"] if r.vertex == vertex
             for t, tr in zip(r.triggers, trigger_rows(r), strict=True) if tr == row]  # fmt: skip
    assert abs(at - d) < DIST_TOL

    def rows_at(threshold):
        _, recs, _ = run(data.store, [model], VertexSettings(threshold, samples_per_vertex=BIG))
        return {tr for r in recs["3:0"] if r.vertex == vertex for tr in trigger_rows(r)}

    assert row not in rows_at(at)
    assert row in rows_at(float(np.nextafter(at, 1.0)))
    assert row not in rows_at(at - 1e-4) and row in rows_at(at + 1e-4)


def test_threshold_just_above_excludes(data):
    """Tokens at 0.115 from a vertex are out at 0.1 and in at 0.12; at 0.09 in at 0.1."""
    rows_far = [r for r, p in enumerate(data.designs) for (key, mode, v, d) in p
                if key == "3:0" and mode == "near" and d == 0.115]  # fmt: skip
    rows_near = [r for r, p in enumerate(data.designs) for (key, mode, v, d) in p
                 if key == "3:0" and mode == "near" and d == 0.09]  # fmt: skip
    assert rows_far and rows_near
    model = data.models["3:0"]

    def rows_at(threshold):
        _, recs, _ = run(data.store, [model], VertexSettings(threshold, samples_per_vertex=BIG))
        return {tr for r in recs["3:0"] for tr in trigger_rows(r)}

    at_01, at_012 = rows_at(0.1), rows_at(0.12)
    assert not set(rows_far) & at_01 and set(rows_far) <= at_012
    assert set(rows_near) <= at_01


def test_threshold_sqrt2_is_allowed(data):
    """At sqrt(2) every active token is a trigger of the vertices it is less than sqrt(2) from
    (tokens placed at a vertex are about sqrt(2) from the others: ties, left out here)."""
    settings = VertexSettings(threshold=MAX_THRESHOLD, samples_per_vertex=BIG, block_tokens=5)
    assert MAX_THRESHOLD == math.sqrt(2.0)
    _, records, _ = run(data.store, all_models(data), settings)
    for key, recs in records.items():
        for v in range(SPECS[key][0]):
            got = {row for r in recs if r.vertex == v for row in trigger_rows(r)}
            dist = np.where(data.active[key], data.dist[key][:, v], np.inf)
            assert set(np.flatnonzero(dist < MAX_THRESHOLD - MARGIN)) <= got
            assert got <= set(np.flatnonzero(dist < MAX_THRESHOLD + MARGIN))
            assert got


def test_inactive_tokens_are_never_triggers(tmp_path):
    """|a| summing to <= 1e-6 is inactive (not counted, never a trigger) even with a threshold
    that takes in the simplex's centre; 1.2e-6 is active."""
    w_dec = _decoder()
    model = VertexModel("3:0", [0, 1], w_dec[[0, 1]], make_net(3, w_dec[[0, 1]], False))
    codes = np.zeros((6, D_SAE), np.float32)
    codes[0, [0, 1]] = 4e-7  # sum 8e-7: inactive
    codes[1, [0, 1]] = [-5e-7, 4e-7]  # |a| sums to 9e-7: inactive
    codes[2, [0, 1]] = 6e-7  # sum 1.2e-6: active, near the centre
    codes[3, 7] = 1.0  # another latent only
    codes[4, [0, 1]] = vertices(3)[2]  # at vertex 2
    # row 5: no code at all
    doc, chunk, pos = layout([[6]])
    store = make_store(tmp_path / "s", codes, doc, chunk, pos, 50 + np.arange(6))
    state, records, _ = run(store, [model], VertexSettings(threshold=1.0))
    progress = state.clusters["3:0"]
    assert progress.active_tokens == 2
    assert progress.triggers == [1, 1, 2]  # the centre is 0.816 from every vertex
    assert [(r.vertex, trigger_rows(r)) for r in records["3:0"]] == [(0, [2]), (1, [2]),
                                                                     (2, [2, 4])]  # fmt: skip
    centre = math.sqrt(2 / 3)
    assert abs(records["3:0"][0].triggers[0]["distance"] - centre) < 1e-4


def test_a_block_without_codes_of_one_model_or_group_does_not_hide_the_next(tmp_path):
    """Per block, a group of models (latent -> model map) with no code, and a model whose codes
    are all inactive, are skipped without skipping the groups and models after them."""
    w_dec = _decoder()
    first = VertexModel("3:0", [0, 1], w_dec[[0, 1]], make_net(3, w_dec[[0, 1]], False))
    sibling = VertexModel("3:1", [2, 3], w_dec[[2, 3]], make_net(3, w_dec[[2, 3]], False))
    other_n = VertexModel("5:2", [1, 5], w_dec[[1, 5]], make_net(3, w_dec[[1, 5]], False))
    codes = np.zeros((3, D_SAE), np.float32)
    codes[0, [0, 1]] = 4e-7  # 3:0 inactive; 5:2 sees latent 1 at 4e-7: inactive too
    codes[0, [2, 3]] = vertices(3)[0]  # 3:1 at its vertex 0
    assert vertices(3)[2][0] == 0  # vertex 2 needs no code on latent 1 (3:0's latent)
    codes[1, 5] = vertices(3)[2][1]  # only the other group's 5:2 has a code: at vertex 2
    codes[2, [2, 3]] = vertices(3)[1]  # 3:1 at vertex 1
    doc, chunk, pos = layout([[1], [1], [1]])  # one token per chunk: one block per row
    store = make_store(tmp_path / "s", codes, doc, chunk, pos, 70 + np.arange(3))
    settings = VertexSettings(threshold=0.1, block_tokens=1)
    _, together, _ = run(store, [first, sibling, other_n], settings)
    for model in (first, sibling, other_n):
        _, alone, _ = run(store, [model], settings)
        assert together[model.key] == alone[model.key], model.key
    assert [(r.vertex, r.first_row) for r in together["3:1"]] == [(0, 0), (1, 2)]
    assert [(r.vertex, r.first_row) for r in together["5:2"]] == [(2, 1)]
    assert together["3:0"] == []


# quota -------------------------------------------------------------------------------------
@pytest.mark.parametrize("block_tokens", [1, 11])
def test_quota_keeps_the_earliest_chunks_and_counts_on(data, block_tokens):
    quota = 2
    models = [data.models["3:0"], data.models["3:1"]]
    free, capped = (VertexSettings(samples_per_vertex=q, block_tokens=block_tokens)
                    for q in (BIG, quota))  # fmt: skip
    _, all_records, _ = run(data.store, models, free)
    state, records, _ = run(data.store, models, capped)
    for m in models:
        progress = state.clusters[m.key]
        assert progress.records == [quota] * m.k and progress.done
        for v in range(m.k):
            mine = [r for r in records[m.key] if r.vertex == v]
            uncapped = [r for r in all_records[m.key] if r.vertex == v]
            assert len(mine) == quota and mine == uncapped[:quota]
        # the triggers of a full vertex still count while another vertex is short
        assert sum(progress.triggers) > sum(len(r.triggers) for r in records[m.key])
        assert progress.tokens_scanned < data.store.n_tokens
    if block_tokens == 1:
        assert_matches_reference(data, models, capped, state, records)
    else:  # counts depend on the block in which a cluster finishes; records do not
        assert_matches_reference(data, models, capped, state, records, counts=False)


def test_quota_one_record_is_the_first_trigger_chunk(data):
    settings = VertexSettings(samples_per_vertex=1, block_tokens=1)
    state, records, _ = run(data.store, all_models(data), settings)
    for key in ("3:0", "5:2", "3:1"):  # placed at every vertex in the first 6 rows
        assert all(r.first_row == 0 for r in records[key])
        assert state.clusters[key].tokens_scanned == data.bounds[0][1]
    late = data.doc_start(LATE_DOC)
    (rec,) = [r for r in records["5:3"] if r.vertex == 1]
    assert rec.doc_index == LATE_DOC and rec.chunk_index == 0 and trigger_rows(rec)[0] == late


@pytest.mark.parametrize("block_tokens", [1, 8, 10**6])
def test_scan_stops_when_every_cluster_is_done(data, block_tokens):
    settings = VertexSettings(samples_per_vertex=1, block_tokens=block_tokens)
    state, records, yields = run(data.store, all_models(data), settings)
    assert state.stopped == "quota"
    assert all(p.done and p.records == [1] * len(p.records) for p in state.clusters.values())
    assert [y[0] for y in yields[:-1]] == [None] * (len(yields) - 1) and yields[-1][2] == {}
    late_end = next(e for s, e in data.bounds if s == data.doc_start(LATE_DOC))
    first_end = data.bounds[0][1]
    p = state.clusters
    if block_tokens == 1:
        assert state.tokens_scanned == state.next_row == late_end < data.store.n_tokens
        assert p["5:3"].tokens_scanned == late_end
        # a done cluster stops counting: 3:0 finished with the first chunk
        assert p["3:0"].tokens_scanned == first_end
        # its counts stop too; 5:3's vertex 0 kept counting after its record
        ref = assert_matches_reference(data, all_models(data), settings, state, records)
        assert p["3:0"].triggers == ref.progress["3:0"].triggers
    else:
        assert_matches_reference(data, all_models(data), settings, state, records, counts=False)
        assert state.tokens_scanned >= late_end
        assert p["5:3"].tokens_scanned == state.tokens_scanned
        assert p["3:0"].tokens_scanned <= p["5:3"].tokens_scanned
    if block_tokens == 10**6:  # one block: the whole store, then every cluster is done
        assert state.tokens_scanned == data.store.n_tokens and len(yields) == 2
    # triggers of vertex 0 of 5:3 kept counting until its vertex 1 was found
    rows0 = np.flatnonzero(data.active["5:3"] & (data.dist["5:3"][:, 0] < 0.1))
    assert p["5:3"].triggers[0] == int((rows0 < state.tokens_scanned).sum()) > 1


def test_quota_off_by_one(data):
    """samples_per_vertex = q keeps exactly q records of each vertex that has >= q chunks."""
    model = data.models["3:1"]
    _, free, _ = run(data.store, [model], VertexSettings(samples_per_vertex=BIG))
    per_vertex = [sum(1 for r in free["3:1"] if r.vertex == v) for v in range(4)]
    for q in sorted({1, 3, max(1, min(per_vertex) - 1), min(per_vertex), min(per_vertex) + 1}):
        state, recs, _ = run(data.store, [model], VertexSettings(samples_per_vertex=q))
        got = [sum(1 for r in recs["3:1"] if r.vertex == v) for v in range(4)]
        assert got == [min(q, c) for c in per_vertex], q
        assert state.clusters["3:1"].records == got
        assert state.stopped == ("quota" if q <= min(per_vertex) else "store_end")


# budget, store end, skipped documents --------------------------------------------------------
@pytest.mark.parametrize("block_tokens", [1, 6, 10**6])
@pytest.mark.parametrize("where", ["mid_chunk", "boundary", "first_chunk", "beyond"])
def test_token_budget(data, block_tokens, where):
    n = data.store.n_tokens
    s, e = data.bounds[len(data.bounds) // 2]
    budget = {"mid_chunk": s + 2, "boundary": e, "first_chunk": data.bounds[0][1] - 1,
              "beyond": n + 5}[where]  # fmt: skip
    settings = VertexSettings(samples_per_vertex=BIG, max_tokens=budget, block_tokens=block_tokens)
    state, records, yields = run(data.store, all_models(data), settings)
    assert_matches_reference(data, all_models(data), settings, state, records)
    assert state.tokens_scanned <= budget and state.tokens_scanned == state.next_row
    assert state.next_row == n or data.pos[state.next_row] == 1  # whole chunks only
    expected_end = {"mid_chunk": s, "boundary": e, "first_chunk": 0, "beyond": n}[where]
    assert state.tokens_scanned == expected_end
    assert state.stopped == ("store_end" if where == "beyond" else "budget")
    for recs in records.values():
        assert all(row < expected_end for r in recs for row in trigger_rows(r))
    if where == "first_chunk":
        assert len(yields) == 1 and all(not r for r in records.values())


def test_budget_counts_from_the_skipped_documents(data):
    start = data.doc_start(2)
    s, e = next(b for b in data.bounds if b[0] > start + 4)
    settings = VertexSettings(samples_per_vertex=BIG, skip_docs=2, max_tokens=e - start,
                              block_tokens=4)  # fmt: skip
    state, records, _ = run(data.store, all_models(data), settings)
    assert_matches_reference(data, all_models(data), settings, state, records)
    assert state.stopped == "budget" and state.tokens_scanned == e - start and state.next_row == e


def test_store_end(data):
    settings = VertexSettings(samples_per_vertex=BIG, block_tokens=30)
    state, records, yields = run(data.store, all_models(data), settings)
    assert state.stopped == "store_end" and state.next_row == data.store.n_tokens
    assert yields[-1][0] == "store_end" and yields[-1][2] == {}
    assert all(y[0] is None for y in yields[:-1])
    for _, snapshot, _ in yields[:-1]:  # blocks end on chunk boundaries
        row = snapshot["next_row"]
        assert row == data.store.n_tokens or data.pos[row] == 1
        assert snapshot["tokens_scanned"] == row


@pytest.mark.parametrize("skip", [1, 2, 5])
def test_skip_docs(data, skip):
    settings = VertexSettings(samples_per_vertex=BIG, skip_docs=skip, block_tokens=9)
    state, records, _ = run(data.store, all_models(data), settings)
    assert_matches_reference(data, all_models(data), settings, state, records)
    start = data.doc_start(skip)
    assert start > 0 and state.tokens_scanned == data.store.n_tokens - start
    assert state.chunks_scanned == sum(1 for s, _ in data.bounds if s >= start)
    assert all(r.doc_index >= skip for recs in records.values() for r in recs)
    assert any(r.doc_index == skip for recs in records.values() for r in recs)
    assert state.clusters["3:0"].active_tokens == int(data.active["3:0"][start:].sum())


def test_check_scan_refuses_settings_that_scan_nothing(data):
    from featgeo.archetypes.vertices import check_scan

    n_docs = int(data.doc.max()) + 1
    first_chunk = data.bounds[0][1] - data.bounds[0][0]
    check_scan(data.store, VertexSettings(skip_docs=n_docs - 1))
    check_scan(data.store, VertexSettings(max_tokens=first_chunk))
    with pytest.raises(ValueError, match=f"--vertex-skip-docs {n_docs} leaves nothing to scan: "
                       f"the store holds {n_docs} documents"):  # fmt: skip
        check_scan(data.store, VertexSettings(skip_docs=n_docs))
    with pytest.raises(ValueError, match=f"shorter than the first chunk \\({first_chunk} tokens"):
        check_scan(data.store, VertexSettings(max_tokens=first_chunk - 1))


def test_skipping_every_document_scans_nothing(data):
    settings = VertexSettings(skip_docs=8)
    state, records, yields = run(data.store, all_models(data), settings)
    assert state.stopped == "store_end" and state.tokens_scanned == 0 and len(yields) == 1
    assert all(not recs for recs in records.values())


# blocks, several clusters at once, resuming --------------------------------------------------
def test_block_size_does_not_change_records_or_counts(data):
    blocks = (1, 2, 5, 13, 10**5)
    settings = [VertexSettings(samples_per_vertex=BIG, block_tokens=b) for b in blocks]
    runs = [run(data.store, all_models(data), s) for s in settings]
    base_state, base_records, _ = runs[0]
    n_yields = [len(y) for _, _, y in runs]
    assert n_yields == sorted(n_yields, reverse=True) and n_yields[-1] == 2
    for state, records, _ in runs[1:]:
        for key in SPECS:
            assert_records_equal(records[key], base_records[key], atol=1e-6)
        assert state.clusters == base_state.clusters
        assert (state.tokens_scanned, state.chunks_scanned, state.stopped) == (
            base_state.tokens_scanned, base_state.chunks_scanned, base_state.stopped)  # fmt: skip


@pytest.mark.parametrize("quota", [1, 3, BIG])
@pytest.mark.parametrize("block_tokens", [1, 10])
def test_one_pass_equals_each_model_alone(data, quota, block_tokens):
    settings = VertexSettings(samples_per_vertex=quota, block_tokens=block_tokens)
    together_state, together, _ = run(data.store, all_models(data), settings)
    for key, model in data.models.items():
        alone_state, alone, _ = run(data.store, [model], settings)
        assert_records_equal(together[key], alone[key], atol=1e-6)
        assert together_state.clusters[key] == alone_state.clusters[key], key
    # and in another order of the models
    reordered_state, reordered, _ = run(data.store, all_models(data)[::-1], settings)
    assert reordered_state.clusters == together_state.clusters
    for key in SPECS:
        assert_records_equal(reordered[key], together[key], atol=1e-6)


@pytest.mark.parametrize("quota", [2, BIG])
def test_resume_after_any_block_gives_the_uninterrupted_scan(data, quota):
    models = all_models(data)
    settings = VertexSettings(samples_per_vertex=quota, block_tokens=12)
    full_state, full_records, yields = run(data.store, models, settings)
    final = full_state.to_dict()
    assert len(yields) > 4
    for cut in range(1, len(yields)):
        first: dict[str, list] = {m.key: [] for m in models}
        scan = scan_vertices(data.store, models, settings)
        for i, (state, block) in enumerate(scan, start=1):
            for key, recs in block.items():
                first[key].extend(recs)
            if i == cut:
                saved = json.dumps(state.to_dict())
                break
        scan.close()
        restored = ScanState.from_dict(json.loads(saved))
        assert restored.to_dict() == json.loads(saved)
        state, rest, _ = run(data.store, models, settings, state=restored)
        assert state.to_dict() == final, cut
        for key in SPECS:
            assert first[key] + rest[key] == full_records[key], (cut, key)


def test_blocks_scanned_ahead_and_merged_in_order_give_the_in_process_scan(data):
    """Ray at its most eager: every block read and scanned before the first is merged, each
    with the needs of the scan's start. Merged in block order, the finds still give the
    one-block-at-a-time scan, although clusters fill their quota mid-scan (a full cluster's
    finds in later blocks are dropped) and blocks hold more candidate chunks of a vertex than it
    still needs when merged (they are cut to the earliest)."""
    from featgeo.archetypes.vertices import (
        VertexModels,
        merge_block,
        read_block,
        scan_block,
        scan_plan,
    )

    quota, models = 2, all_models(data)
    settings = VertexSettings(samples_per_vertex=quota, block_tokens=11)
    want_state, want, _ = run(data.store, models, settings)
    assert want_state.stopped == "quota" and want_state.next_row < data.store.n_tokens
    blocks, end = scan_plan(data.store, settings, 0)
    assert end == "store_end" and blocks[-1][1] == data.store.n_tokens
    needs = {m.key: [quota] * m.k for m in models}
    latents_of = {m.key: m.latent_indices for m in models}
    shipped = VertexModels("ahead", data.store.d_sae, models)
    finds = [scan_block(read_block(data.store, s, e, needs, latents_of), shipped,
                        settings.threshold, "cpu") for s, e in blocks]  # fmt: skip
    state = ScanState(clusters={m.key: ClusterProgress(0, 0, [0] * m.k, [0] * m.k) for m in models})
    got: dict[str, list[VertexRecord]] = {m.key: [] for m in models}
    dropped = cut = 0
    for found in finds:
        full = {key for key, p in state.clusters.items() if p.done}
        kept = merge_block(state, found, quota)
        for key, model_finds in found.models.items():
            if key in full:
                dropped += 1
                assert key not in kept
                continue
            cut += len(model_finds.candidates) - len(kept[key])
            got[key].extend(kept[key])
        if all(p.done for p in state.clusters.values()):
            break
    assert dropped > 0 and cut > 0
    assert got == want
    assert state.clusters == want_state.clusters
    assert (state.next_row, state.tokens_scanned, state.chunks_scanned) == (
        want_state.next_row, want_state.tokens_scanned, want_state.chunks_scanned)  # fmt: skip
    state.stopped = "quota"
    assert_matches_reference(data, models, settings, state, got, counts=False)


def test_scan_plan_cuts_whole_chunks_within_the_budget(data):
    from featgeo.archetypes.vertices import scan_plan

    s, e = data.bounds[len(data.bounds) // 2]
    settings = VertexSettings(max_tokens=s + 2, block_tokens=6)
    blocks, end = scan_plan(data.store, settings, 0)
    assert end == "budget" and blocks[0][0] == 0 and blocks[-1][1] == s
    assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:], strict=False))
    assert all(data.pos[start] == 1 for start, _ in blocks)
    later, _ = scan_plan(data.store, settings, blocks[2][0], blocks[2][0])
    assert later == blocks[2:]


def test_resume_of_a_finished_scan_yields_nothing_new(data):
    settings = VertexSettings(samples_per_vertex=BIG, block_tokens=50)
    state, _, _ = run(data.store, all_models(data), settings)
    restored = ScanState.from_dict(json.loads(json.dumps(state.to_dict())))
    again = list(scan_vertices(data.store, all_models(data), settings, state=restored))
    assert len(again) == 1 and again[0][1] == {} and again[0][0].stopped == state.stopped
    assert restored.to_dict() == state.to_dict()


def test_state_of_other_models_is_refused(data):
    models = all_models(data)
    state, _, _ = run(data.store, models[:2], VertexSettings(max_tokens=20))
    with pytest.raises(ValueError, match="other models"):
        next(scan_vertices(data.store, models, state=state))
    with pytest.raises(ValueError, match="other models"):
        next(scan_vertices(data.store, models[:1], state=state))


# a trained AANet ---------------------------------------------------------------------------
@pytest.mark.parametrize("space", ["subspace", "full"])
def test_trained_aanet_matches_transform(tmp_path, space):
    rng = np.random.default_rng(7)
    d_sae, d_model, latents = 6, 9, [1, 3, 4]
    w_dec = rng.standard_normal((d_sae, d_model)).astype(np.float32)
    doc, chunk, pos = layout([rng.integers(4, CONTEXT, size=5).tolist() for _ in range(8)])
    n = doc.size
    codes = np.zeros((n, d_sae), np.float32)
    codes[:, latents] = (rng.dirichlet([0.4, 0.4, 0.4], n) * 2).astype(np.float32)
    codes[rng.random(n) < 0.3, 0] = 1.5  # a latent outside the cluster
    net = AANet(k=3, config=AANetConfig(max_steps=60), space=space)
    net.fit(codes[:, latents] @ w_dec[latents])
    model = VertexModel("9:1", latents, w_dec[latents], net)
    lam = net.transform(codes[:, latents] @ w_dec[latents]).astype(np.float64)
    dist = distances(lam)
    # a threshold clear of every token's distance, with triggers at two vertices at least
    candidates = [
        t
        for t in np.linspace(0.2, 1.2, 201)
        if np.abs(dist - t).min() > 1e-3 and ((dist < t).sum(axis=0) > 0).sum() >= 2
    ]
    assert candidates
    threshold = float(candidates[len(candidates) // 2])
    store = make_store(tmp_path / "s", codes, doc, chunk, pos, 7 + np.arange(n), d_sae=d_sae)
    settings = VertexSettings(threshold=threshold, samples_per_vertex=BIG, block_tokens=13)
    state, records, _ = run(store, [model], settings)
    progress = state.clusters["9:1"]
    assert progress.active_tokens == n
    assert progress.triggers == (dist < threshold).sum(axis=0).tolist()
    for v in range(3):
        got = {row: t["distance"] for r in records["9:1"] if r.vertex == v
               for t, row in zip(r.triggers, trigger_rows(r), strict=True)}  # fmt: skip
        want = np.flatnonzero(dist[:, v] < threshold)
        assert sorted(got) == want.tolist()
        np.testing.assert_allclose([got[r] for r in want], dist[want, v], rtol=0, atol=1e-5)
        for r in records["9:1"]:
            assert [t["token_id"] for t in r.triggers] == [7 + x for x in trigger_rows(r)]


# settings and models -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"threshold": 0}, "--vertex-threshold"),
        ({"threshold": 0.0}, "--vertex-threshold"),
        ({"threshold": -0.1}, "--vertex-threshold"),
        ({"threshold": math.sqrt(2.0) + 1e-9}, "--vertex-threshold"),
        ({"threshold": 2}, "--vertex-threshold"),
        ({"threshold": True}, "--vertex-threshold"),
        ({"threshold": "0.1"}, "--vertex-threshold"),
        ({"threshold": math.nan}, "--vertex-threshold"),
        ({"samples_per_vertex": 0}, "--samples-per-vertex"),
        ({"samples_per_vertex": -3}, "--samples-per-vertex"),
        ({"samples_per_vertex": 2.0}, "--samples-per-vertex"),
        ({"samples_per_vertex": True}, "--samples-per-vertex"),
        ({"max_tokens": 0}, "--max-tokens"),
        ({"max_tokens": -1}, "--max-tokens"),
        ({"max_tokens": 10.0}, "--max-tokens"),
        ({"max_tokens": True}, "--max-tokens"),
        ({"skip_docs": -1}, "--vertex-skip-docs"),
        ({"skip_docs": 1.0}, "--vertex-skip-docs"),
        ({"block_tokens": 0}, "block_tokens"),
    ],
)
def test_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VertexSettings(**kwargs)


def test_good_settings():
    assert VertexSettings(threshold=math.sqrt(2.0)).threshold == MAX_THRESHOLD
    assert VertexSettings(threshold=1).threshold == 1
    settings = VertexSettings(samples_per_vertex=np.int64(3), max_tokens=np.int32(5),
                              skip_docs=np.int64(0), block_tokens=1)  # fmt: skip
    assert settings.max_tokens == 5
    assert VertexSettings(max_tokens=1, samples_per_vertex=1).max_tokens == 1
    default = VertexSettings()
    assert default.threshold == 0.1 and default.samples_per_vertex == 1000
    assert default.max_tokens is None and default.skip_docs == 0
    assert json.loads(json.dumps(default.to_dict()))["threshold"] == 0.1


def test_vertex_model_checks_shapes():
    w_dec = _decoder()
    net = make_net(3, w_dec[[0, 1]], False)
    with pytest.raises(ValueError, match="3:0: w_dec has 2 rows for 3 latents"):
        VertexModel("3:0", [0, 1, 2], w_dec[[0, 1]], net)
    with pytest.raises(ValueError, match="takes 10 features but the decoder rows have 11"):
        VertexModel("3:0", [0, 1], np.zeros((2, D_MODEL + 1)), net)
    model = VertexModel("3:0", np.array([[0, 1]], np.int32), w_dec[[0, 1]].astype(np.float64), net)
    assert model.latent_indices.dtype == np.int64 and model.latent_indices.shape == (2,)
    assert model.w_dec.dtype == np.float32 and model.k == 3


def test_models_are_checked_against_the_store(data):
    model = data.models["3:0"]
    twin = VertexModel("3:0", [7, 8], _decoder()[[7, 8]], model.net)
    with pytest.raises(ValueError, match="distinct keys"):
        next(scan_vertices(data.store, [model, twin]))
    for bad in ([0, D_SAE], [-1, 0]):
        outside = VertexModel("x", bad, np.zeros((2, D_MODEL)), model.net)
        with pytest.raises(ValueError, match="latent ids must lie in 0..9"):
            next(scan_vertices(data.store, [outside]))
    with pytest.raises(ValueError, match="threshold"):
        next(scan_vertices(data.store, [model], VertexSettings(threshold=3)))


def test_no_models_stops_at_once(data):
    state, records, yields = run(data.store, [], VertexSettings())
    assert state.stopped == "quota" and state.tokens_scanned == 0 and records == {}
    assert len(yields) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_gives_the_cpu_records(data):
    settings = VertexSettings(samples_per_vertex=3, block_tokens=16)
    cpu_state, cpu, _ = run(data.store, all_models(data), settings)
    gpu_state, gpu, _ = run(data.store, all_models(data), settings, device="cuda")
    assert gpu_state.clusters == cpu_state.clusters
    for key in SPECS:
        assert_records_equal(gpu[key], cpu[key], atol=1e-5)
