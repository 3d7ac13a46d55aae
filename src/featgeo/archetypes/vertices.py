"""Vertex samples: the tokens an AANet places at one of its archetypes (SPEC §3, seed 002 Stage 3).

For a latent cluster c with latents ``latent_indices`` and a trained :class:`AANet` of k
archetypes, every *active* token of held-out text (``sum |a_c| > 1e-6``, as in training) has
the cluster-restricted reconstruction ``x = a_c @ W_dec[c]`` and, through the AANet's encoder, the
barycentric coordinates ``lambda [k]`` of its embedding. The token is a *trigger* of vertex i
when ``||lambda - e_i||_2 < threshold`` (default 0.1; vertices are sqrt(2) apart in lambda, so
a threshold <= sqrt(2)/2 makes the vertices' neighbourhoods disjoint).

:func:`scan_vertices` reads an :class:`~featgeo.activations.store.ActivationStore` of the held-
out split **once for all clusters**: block by block (whole chunks only), it decodes each
block's codes, routes every non-zero code to the clusters holding its latent and evaluates every
cluster's AANet on its active tokens. The seed instead streamed the text through the language
model again for each cluster. Each cluster produces one record per (chunk, vertex) holding
the chunk's triggers of that vertex, until it has ``samples_per_vertex`` records for every
vertex; the scan ends when every cluster is done, the token budget is spent, or the store ends.

Because blocks depend only on the store and ``block_tokens``, a cluster's records and counts are
the same whether it is scanned alone or with any other clusters; :func:`scan_vertices` on one
model at a time is the seed's way, and ``benchmarks/vertex.py`` times both.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from featgeo.archetypes.aanet import AANet
from featgeo.archetypes.data import ACTIVE_THRESHOLD
from featgeo.archetypes.network import encode
from featgeo.archetypes.simplex import barycentric_operator

MAX_THRESHOLD = math.sqrt(2.0)
"""The largest meaningful threshold: the distance between two vertices in lambda space."""


@dataclass(frozen=True)
class VertexSettings:
    """How vertex samples are collected (SPEC §3 defaults)."""

    threshold: float = 0.1
    """A token is near vertex i when ||lambda - e_i||_2 < threshold; in (0, sqrt(2)]."""
    samples_per_vertex: int = 1000
    """Records (chunks) kept per vertex of each cluster."""
    max_tokens: int | None = None
    """Token budget of the scan (whole chunks only); None: the whole store."""
    skip_docs: int = 0
    """Documents at the start of the split left out (the seed's ``--vertex_skip_docs``)."""
    block_tokens: int = 65_536
    """Tokens read per block (rounded up to whole chunks); results do not depend on it only
    through which block a cluster finishes in (its ``tokens_scanned``)."""

    def __post_init__(self) -> None:
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, int | float) or not 0 < t <= MAX_THRESHOLD:
            raise ValueError(
                f"--vertex-threshold must lie in (0, sqrt(2)] (vertices are sqrt(2) apart in "
                f"barycentric coordinates), got {t!r}; the seed uses 0.1"
            )
        checks = {
            "samples_per_vertex": ("--samples-per-vertex", 1),
            "skip_docs": ("--vertex-skip-docs", 0),
            "block_tokens": ("block_tokens", 1),
        }
        for name, (option, low) in checks.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
                raise ValueError(f"{option} must be an int >= {low}, got {value!r}")
        m = self.max_tokens
        if m is not None and (isinstance(m, bool) or not isinstance(m, int | np.integer) or m < 1):
            raise ValueError(f"--max-tokens must be an int >= 1 (0: the whole store), got {m!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class VertexModel:
    """One selected cluster's AANet and what turns store codes into its inputs."""

    key: str
    """Unique name, e.g. ``"512:3"`` (n_clusters:cluster_id)."""
    latent_indices: np.ndarray
    """int64 [n_latents] the cluster's latents, in the order of ``w_dec``'s rows."""
    w_dec: np.ndarray
    """float32 [n_latents, d_model] their decoder rows W_dec[c]."""
    net: AANet

    def __post_init__(self) -> None:
        self.latent_indices = np.asarray(self.latent_indices, dtype=np.int64).reshape(-1)
        self.w_dec = np.ascontiguousarray(self.w_dec, dtype=np.float32)
        if self.w_dec.shape[0] != self.latent_indices.size:
            raise ValueError(
                f"{self.key}: w_dec has {self.w_dec.shape[0]} rows for "
                f"{self.latent_indices.size} latents"
            )
        if self.w_dec.shape[1] != self.net.n_features_in_:
            raise ValueError(
                f"{self.key}: the AANet takes {self.net.n_features_in_} features but the "
                f"decoder rows have {self.w_dec.shape[1]}; the model belongs to another SAE"
            )

    @property
    def k(self) -> int:
        return int(self.net.k)


@dataclass
class ClusterProgress:
    """Counts of one cluster so far (JSON-able; the resume state)."""

    tokens_scanned: int = 0
    """Tokens scanned while the cluster still needed records."""
    active_tokens: int = 0
    triggers: list[int] = field(default_factory=list)
    """Trigger tokens per vertex among the tokens scanned."""
    records: list[int] = field(default_factory=list)
    """Records kept per vertex (<= samples_per_vertex)."""
    done: bool = False


@dataclass
class ScanState:
    """Where a scan stands: the next store row and every cluster's counts (the checkpoint)."""

    next_row: int = 0
    tokens_scanned: int = 0
    chunks_scanned: int = 0
    clusters: dict[str, ClusterProgress] = field(default_factory=dict)
    stopped: str | None = None
    """None while running; then ``quota`` (every cluster done), ``budget`` or ``store_end``."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScanState:
        clusters = {key: ClusterProgress(**value) for key, value in data["clusters"].items()}
        return cls(**{**data, "clusters": clusters})


@dataclass
class VertexRecord:
    """One (chunk, vertex) record of one cluster, without text (see ``stage3`` for that)."""

    vertex: int
    doc_index: int
    chunk_index: int
    first_row: int
    """Store row of the chunk's first stored token (position 1)."""
    triggers: list[dict[str, Any]]
    """Per trigger token: ``distance`` (||lambda - e_vertex||), ``position`` (index in the
    chunk, 0 = its first token), ``token_id``; by position."""


def check_models(models: Sequence[VertexModel], d_sae: int) -> None:
    keys = [m.key for m in models]
    if len(set(keys)) != len(keys):
        raise ValueError("vertex models must have distinct keys")
    for m in models:
        ids = m.latent_indices
        if ids.size and (ids.min() < 0 or ids.max() >= d_sae):
            raise ValueError(f"{m.key}: latent ids must lie in 0..{d_sae - 1}")


class _Prepared:
    """A model's tensors on the scan's device."""

    def __init__(self, model: VertexModel, device: torch.device):
        net = model.net
        self.key, self.k = model.key, model.k
        # Codes go straight into the AANet's input coordinates: (a @ W) @ Q = a @ (W @ Q), so
        # the d_model-wide product is never formed (as the training data, featgeo.archetypes.data).
        w = model.w_dec if net.basis_ is None else model.w_dec @ net.basis_
        self.w = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)).to(device)
        self.params = [p.to(device) for p in net.params_]
        self.hidden = net.config_.hidden
        a, c = barycentric_operator(self.k, dtype=torch.float64)
        self.a, self.c = a.to(device), c.to(device)

    def lambdas(self, codes: np.ndarray, device: torch.device) -> torch.Tensor:
        """float64 [n, k] barycentric coordinates of tokens with ``codes [n, n_latents]``."""
        x = torch.from_numpy(codes).to(device) @ self.w  # [n, dim] the AANet's inputs
        z = encode(self.params, x, self.hidden).double()
        return z @ self.a + self.c


def _groups(models: Sequence[VertexModel], d_sae: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Latent -> (model slot, column) maps, one per group of models with disjoint latents (the
    clusters of one n_clusters never share a latent; several n values may)."""
    groups: list[tuple[np.ndarray, np.ndarray]] = []
    for slot, m in enumerate(models):
        for slot_of, col_of in groups:  # noqa: B007 - the loop leaves the group found
            if (slot_of[m.latent_indices] < 0).all():
                break
        else:
            slot_of, col_of = np.full(d_sae, -1, np.int64), np.full(d_sae, -1, np.int64)
            groups.append((slot_of, col_of))
        slot_of[m.latent_indices] = slot
        col_of[m.latent_indices] = np.arange(m.latent_indices.size)
    return groups


def _chunk_ids(store, start: int, stop: int) -> np.ndarray:
    return (np.asarray(store.doc_index[start:stop], dtype=np.int64) << 32) | np.asarray(
        store.chunk_index[start:stop], dtype=np.int64
    )


def _next_boundary(store, row: int, forward: bool) -> int:
    """The first row of the chunk holding ``row`` (backward) or of the next chunk (forward)."""
    n = store.n_tokens
    if row <= 0 or row >= n:
        return min(max(row, 0), n)
    ctx = int(store.header["context_size"])  # a chunk has at most this many rows
    if forward:
        window = _chunk_ids(store, row - 1, min(n, row + ctx))
        change = np.flatnonzero(window[1:] != window[0])
        return row + int(change[0]) if change.size else min(n, row + ctx)
    lo = max(0, row - ctx)
    window = _chunk_ids(store, lo, row + 1)
    change = np.flatnonzero(window[:-1] != window[-1])
    return lo + int(change[-1]) + 1 if change.size else lo


def scan_vertices(
    store,
    models: Sequence[VertexModel],
    settings: VertexSettings | None = None,
    *,
    state: ScanState | None = None,
    device: str | torch.device = "cpu",
) -> Iterator[tuple[ScanState, dict[str, list[VertexRecord]]]]:
    """Scan ``store`` once for every model; yield ``(state, records by model key)`` per block.

    The caller writes each block's records and may save ``state`` (:meth:`ScanState.to_dict`);
    passing it back resumes after that block with the same results as an uninterrupted scan.
    The last yielded state has ``stopped`` set.

    Args:
        store: :class:`~featgeo.activations.store.ActivationStore` of the held-out split.
        models: the clusters' AANets (:class:`VertexModel`, distinct keys).
        settings: threshold, quota, budget (:class:`VertexSettings`).

    Raises:
        ValueError: bad settings, latents outside the store's SAE, or a state of other models.
    """
    from featgeo.archetypes.batched import check_device

    settings = settings or VertexSettings()
    device = check_device(device)
    check_models(models, store.d_sae)
    if state is None:
        state = ScanState(next_row=_first_row(store, settings.skip_docs))
        state.clusters = {m.key: ClusterProgress(0, 0, [0] * m.k, [0] * m.k) for m in models}
    elif set(state.clusters) != {m.key for m in models}:
        raise ValueError("the scan state belongs to other models; start the scan again")
    prepared = [_Prepared(m, device) for m in models]
    groups = _groups(models, store.d_sae)
    budget = settings.max_tokens if settings.max_tokens is not None else math.inf
    quota, n = settings.samples_per_vertex, store.n_tokens
    _update_done(state, quota)
    if state.stopped is not None:  # a finished scan, resumed: its state is the result
        yield state, {}
        return
    while state.stopped is None:
        start = state.next_row
        if all(p.done for p in state.clusters.values()):
            state.stopped = "quota"
        elif start >= n:
            state.stopped = "store_end"
        else:
            stop = _next_boundary(store, min(n, start + settings.block_tokens), forward=True)
            if state.tokens_scanned + (stop - start) > budget:
                stop = _next_boundary(
                    store, start + int(budget - state.tokens_scanned), forward=False
                )
            if stop <= start:
                state.stopped = "budget"
        if state.stopped is not None:
            yield state, {}
            return
        records = _scan_block(store, start, stop, prepared, groups, state, settings, device)
        ids = _chunk_ids(store, start, stop)
        state.chunks_scanned += int(np.count_nonzero(ids[1:] != ids[:-1])) + 1
        state.tokens_scanned += stop - start
        state.next_row = stop
        _update_done(state, quota)
        yield state, records


def check_scan(store, settings: VertexSettings) -> None:
    """Refuse settings that leave nothing of ``store`` to scan: ``skip_docs`` beyond its last
    document, or a token budget shorter than its first chunk (a scan reads whole chunks).

    Raises:
        ValueError: naming the option and the bound.
    """
    first = _first_row(store, settings.skip_docs)
    if first >= store.n_tokens:
        n_docs = int(store.doc_index[store.n_tokens - 1]) + 1 if store.n_tokens else 0
        raise ValueError(
            f"--vertex-skip-docs {settings.skip_docs} leaves nothing to scan: the store holds "
            f"{n_docs} documents of its split; lower it (the vertex split shares no document "
            "with the training split, so nothing needs skipping) or raise --store-tokens"
        )
    chunk = _next_boundary(store, first + 1, forward=True) - first
    if settings.max_tokens is not None and settings.max_tokens < chunk:
        raise ValueError(
            f"--max-tokens {settings.max_tokens} is shorter than the first chunk ({chunk} "
            f"tokens) and scans nothing (chunks are read whole); pass at least {chunk}"
        )


def _first_row(store, skip_docs: int) -> int:
    if skip_docs <= 0:
        return 0
    return int(np.searchsorted(np.asarray(store.doc_index), skip_docs, side="left"))


def _update_done(state: ScanState, quota: int) -> None:
    for progress in state.clusters.values():
        progress.done = progress.done or all(r >= quota for r in progress.records)


def _scan_block(store, start, stop, prepared, groups, state, settings, device):
    """Records of one block (rows start..stop, whole chunks) for every model still collecting."""
    indptr = np.asarray(store.indptr[start : stop + 1], dtype=np.int64)
    lo, hi = int(indptr[0]), int(indptr[-1])
    latents = np.asarray(store.latents[lo:hi], dtype=np.int64)
    values = np.asarray(store.values[lo:hi], dtype=np.float32)
    entry_row = np.repeat(np.arange(stop - start), np.diff(indptr))
    block = _Block(
        start,
        _chunk_ids(store, start, stop),
        np.asarray(store.position[start:stop]),
        np.asarray(store.token_ids[start:stop]),
    )
    out: dict[str, list[VertexRecord]] = {}
    for slot_of, col_of in groups:
        slot = slot_of[latents]
        hit = np.flatnonzero(slot >= 0)
        if not hit.size:
            continue
        # by model, rows ascending within (a stable sort of 16-bit keys is a radix sort)
        keys = slot[hit].astype(np.int16 if len(prepared) < 2**15 else np.int64)
        order = hit[np.argsort(keys, kind="stable")]
        slots = slot[order]
        bounds = np.flatnonzero(np.r_[True, slots[1:] != slots[:-1], True])
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            model = prepared[int(slots[a])]
            progress = state.clusters[model.key]
            if progress.done:
                continue
            entries = order[a:b]
            # entries are in row order (the sort is stable), so runs of equal rows are tokens
            entry_rows = entry_row[entries]
            starts = np.flatnonzero(np.r_[True, entry_rows[1:] != entry_rows[:-1]])
            rows = entry_rows[starts]
            where = np.repeat(np.arange(rows.size), np.diff(np.r_[starts, entries.size]))
            codes = np.zeros((rows.size, model.w.shape[0]), np.float32)
            codes[where, col_of[latents[entries]]] = values[entries]
            active = np.abs(codes).sum(axis=1, dtype=np.float64) > ACTIVE_THRESHOLD
            rows, codes = rows[active], codes[active]
            if not rows.size:
                continue
            progress.active_tokens += int(rows.size)
            lam = model.lambdas(codes, device)
            sq = (lam * lam).sum(dim=1, keepdim=True)
            dist = torch.sqrt(torch.clamp(sq - 2.0 * lam + 1.0, min=0.0)).cpu().numpy()
            out[model.key] = _records(block, rows, dist, progress, settings)
    for progress in state.clusters.values():
        if not progress.done:
            progress.tokens_scanned += stop - start
    return out


@dataclass
class _Block:
    """The token columns of one block, read once from the store's memory maps."""

    start: int
    chunk: np.ndarray
    position: np.ndarray
    token_ids: np.ndarray


def _records(block: _Block, rows, dist, progress, settings) -> list[VertexRecord]:
    """The block's (chunk, vertex) records of one model, up to each vertex's quota; ``rows``
    are the model's active tokens (block rows), ``dist [len(rows), k]`` their distances."""
    token_row, vertex = np.nonzero(dist < settings.threshold)  # ordered by row, then vertex
    for v in range(dist.shape[1]):
        progress.triggers[v] += int(np.count_nonzero(vertex == v))
    if not token_row.size:
        return []
    block_rows = rows[token_row]
    chunks = block.chunk[block_rows]
    order = np.lexsort((block_rows, chunks, vertex))  # by vertex, chunk, position
    vs, cs, rs = vertex[order], chunks[order], block_rows[order]
    ds = dist[token_row[order], vs].tolist()
    positions, token_ids = block.position[rs].tolist(), block.token_ids[rs].tolist()
    bounds = np.flatnonzero(np.r_[True, (vs[1:] != vs[:-1]) | (cs[1:] != cs[:-1]), True]).tolist()
    records = []
    for i, j in zip(bounds[:-1], bounds[1:], strict=True):  # one (vertex, chunk) group each
        v, c = int(vs[i]), int(cs[i])
        if progress.records[v] >= settings.samples_per_vertex:
            continue
        progress.records[v] += 1
        triggers = [
            {"distance": ds[t], "position": positions[t], "token_id": token_ids[t]}
            for t in range(i, j)
        ]
        first_row = block.start + int(rs[i]) - positions[i] + 1
        records.append(VertexRecord(v, c >> 32, c & 0xFFFFFFFF, first_row, triggers))
    records.sort(key=lambda r: (r.first_row, r.vertex))  # chunk order, as the text reads
    return records


__all__ = [
    "MAX_THRESHOLD",
    "check_scan",
    "ClusterProgress",
    "ScanState",
    "VertexModel",
    "VertexRecord",
    "VertexSettings",
    "scan_vertices",
]
