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

Executors. The block boundaries are fixed in advance (:func:`scan_plan`: the store, the skipped
documents, ``block_tokens`` and the token budget decide them). A block's work is a pure unit:
the driver reads the block's arrays from the store (:func:`read_block`: the codes of the
latents of the clusters still collecting, the rows' chunk ids, positions and token ids) and
:func:`scan_block` turns them into each cluster's counts and candidate records without touching
the scan's state; the driver merges the units' finds strictly in block order
(:func:`merge_block`), so a cluster's records are those of a one-block-at-a-time scan. Locally
the units run one after the other in this process; with a Ray ``pool`` (:mod:`featgeo.executors`)
they run as tasks, a few blocks ahead of the merge, and the scan cancels those still in flight
once every cluster is done. What travels through Ray's object store: the models once per scan
(latent ids, decoder rows, AANets; each worker moves them to its device once) and each block's
arrays; the nodes need no shared filesystem and no copy of the store.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from featgeo.archetypes.aanet import AANet
from featgeo.archetypes.data import ACTIVE_THRESHOLD
from featgeo.archetypes.network import encode
from featgeo.archetypes.simplex import barycentric_operator

if TYPE_CHECKING:
    from featgeo.executors import RayPool

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
    pool: RayPool | None = None,
    on_busy: Callable[[int], None] | None = None,
) -> Iterator[tuple[ScanState, dict[str, list[VertexRecord]]]]:
    """Scan ``store`` once for every model; yield ``(state, records by model key)`` per block.

    The caller writes each block's records and may save ``state`` (:meth:`ScanState.to_dict`);
    passing it back resumes after that block with the same results as an uninterrupted scan.
    The last yielded state has ``stopped`` set.

    Args:
        store: :class:`~featgeo.activations.store.ActivationStore` of the held-out split.
        models: the clusters' AANets (:class:`VertexModel`, distinct keys).
        settings: threshold, quota, budget (:class:`VertexSettings`).
        device: where the AANets run (on Ray: where each block's task runs them; ``auto`` is
            CUDA when the cluster has GPUs).
        pool: a connected Ray cluster (:func:`featgeo.executors.connect`); blocks then run as
            its tasks, with the same results.
        on_busy: ``(busy)`` with the number of Ray tasks running, as it changes.

    Raises:
        ValueError: bad settings, latents outside the store's SAE, a state of other models, or
            a device the machine (or the Ray cluster) does not have.
    """
    from featgeo.archetypes.batched import check_device

    settings = settings or VertexSettings()
    device = check_device(device) if pool is None else pool.unit_device(str(device))
    check_models(models, store.d_sae)
    if state is None:
        state = ScanState(next_row=_first_row(store, settings.skip_docs))
        state.clusters = {m.key: ClusterProgress(0, 0, [0] * m.k, [0] * m.k) for m in models}
    elif set(state.clusters) != {m.key for m in models}:
        raise ValueError("the scan state belongs to other models; start the scan again")
    quota = settings.samples_per_vertex
    _update_done(state, quota)
    if state.stopped is not None:  # a finished scan, resumed: its state is the result
        yield state, {}
        return
    blocks, end = scan_plan(store, settings, state.next_row, state.tokens_scanned)
    latents_of = {m.key: m.latent_indices for m in models}
    shipped = VertexModels(uuid.uuid4().hex, store.d_sae, list(models))

    def units() -> Iterator[BlockUnit]:
        # read when the unit is submitted: the clusters full by then are left out of it
        for start, stop in blocks:
            wanted = {
                key: [max(0, quota - r) for r in p.records]
                for key, p in state.clusters.items()
                if not p.done
            }
            if not wanted:
                return
            yield read_block(store, start, stop, wanted, latents_of)

    results = _run_blocks(units(), (shipped, settings.threshold, str(device)), pool, on_busy)
    try:
        for found in results:  # block order, whatever order they finished in
            records = merge_block(state, found, quota)
            if all(p.done for p in state.clusters.values()):
                results.close()  # cancels the blocks still in flight: nobody needs them
                yield state, records
                break
            yield state, records
        if pool is not None and on_busy is not None:
            on_busy(0)  # also when the blocks still in flight were cancelled
        state.stopped = "quota" if all(p.done for p in state.clusters.values()) else end
        yield state, {}
    finally:
        results.close()
        _PREPARED.pop(shipped.token, None)


def _run_blocks(units, shared, pool, on_busy) -> Generator[BlockFinds, None, None]:
    """:func:`scan_block` of every unit, in the units' order: here, or as Ray tasks (one CPU, or
    one GPU for CUDA) of which a few run ahead of the merge."""
    if pool is None:
        return (scan_block(unit, *shared) for unit in units)
    gpus = 1 if torch.device(shared[2]).type == "cuda" else 0
    return pool.map_ordered(scan_block, units, shared=shared, num_cpus=1, num_gpus=gpus,
                            on_busy=on_busy)  # fmt: skip


def scan_plan(
    store, settings: VertexSettings, next_row: int, tokens_scanned: int = 0
) -> tuple[list[tuple[int, int]], str]:
    """The blocks a scan reads from ``next_row`` on, ``tokens_scanned`` of the budget spent.

    Returns:
        ``([(start, stop), ...], end)``: row ranges of whole chunks, about ``block_tokens`` each,
        and why the store stops giving blocks (``store_end``, or ``budget`` when the next chunk
        would overrun the token budget). A scan ends earlier, ``quota``, when every cluster is
        done.
    """
    budget = settings.max_tokens if settings.max_tokens is not None else math.inf
    n, row, blocks = store.n_tokens, next_row, []
    while True:
        if row >= n:
            return blocks, "store_end"
        stop = _next_boundary(store, min(n, row + settings.block_tokens), forward=True)
        if tokens_scanned + (stop - row) > budget:
            stop = _next_boundary(store, row + int(budget - tokens_scanned), forward=False)
        if stop <= row:
            return blocks, "budget"
        blocks.append((row, stop))
        tokens_scanned += stop - row
        row = stop


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


# -- a block's unit of work --------------------------------------------------------------------
@dataclass
class VertexModels:
    """The scan's models as they travel to the workers (once per scan)."""

    token: str
    """Unique per scan: a worker prepares the models once per scan, not once per block."""
    d_sae: int
    models: list[VertexModel]


@dataclass
class BlockUnit:
    """One block (store rows ``start..stop``, whole chunks) as read by the driver, and the clusters
    still collecting when it was read. Only the codes of their latents are kept: the other codes
    could not change any of their records or counts."""

    start: int
    stop: int
    entry_row: np.ndarray
    """int64 [n_entries] block row (0 = ``start``) of each kept code, ascending."""
    latents: np.ndarray
    """int [n_entries] the codes' latents (the store's dtype)."""
    values: np.ndarray
    """float32 [n_entries] the codes."""
    chunk: np.ndarray
    """int64 [stop - start] ``doc_index << 32 | chunk_index`` of each row."""
    position: np.ndarray
    """int [stop - start] each row's position in its chunk."""
    token_ids: np.ndarray
    """int [stop - start]."""
    wanted: dict[str, list[int]]
    """Key -> records each vertex still needed when the block was read."""


@dataclass
class ModelFinds:
    """What one block holds for one model (with active tokens there)."""

    active_tokens: int
    triggers: list[int]
    """Trigger tokens per vertex."""
    candidates: list[VertexRecord]
    """Per vertex, in chunk order, at most the records it still needed; sorted by vertex."""


@dataclass
class BlockFinds:
    """The result of one block's unit (:func:`scan_block`), for :func:`merge_block`."""

    start: int
    stop: int
    n_chunks: int
    models: dict[str, ModelFinds]


def read_block(store, start: int, stop: int, wanted: dict[str, list[int]],
               latents_of: dict[str, np.ndarray]) -> BlockUnit:  # fmt: skip
    """The :class:`BlockUnit` of rows ``start..stop`` (whole chunks) for the clusters
    ``wanted`` (key -> records still needed per vertex), whose latent ids ``latents_of`` gives."""
    indptr = np.asarray(store.indptr[start : stop + 1], dtype=np.int64)
    lo, hi = int(indptr[0]), int(indptr[-1])
    latents = np.asarray(store.latents[lo:hi])
    values = np.asarray(store.values[lo:hi], dtype=np.float32)
    entry_row = np.repeat(np.arange(stop - start, dtype=np.int64), np.diff(indptr))
    useful = np.zeros(store.d_sae, dtype=bool)
    for key in wanted:
        useful[latents_of[key]] = True
    keep = useful[latents]
    return BlockUnit(
        start,
        stop,
        entry_row[keep],
        latents[keep],
        values[keep],
        _chunk_ids(store, start, stop),
        np.asarray(store.position[start:stop]),
        np.asarray(store.token_ids[start:stop]),
        wanted,
    )


_PREPARED: dict[str, tuple[torch.device, list[_Prepared], list]] = {}
"""The models of the scan this process works for, on its device (token -> ...)."""


def _prepare(models: VertexModels, device: torch.device):
    found = _PREPARED.get(models.token)
    if found is None or found[0] != device:
        _PREPARED.clear()  # a worker serves one scan at a time: free the last one's tensors
        prepared = [_Prepared(m, device) for m in models.models]
        found = (device, prepared, _groups(models.models, models.d_sae))
        _PREPARED[models.token] = found
    return found[1], found[2]


def scan_block(unit: BlockUnit, models: VertexModels, threshold: float, device: str) -> BlockFinds:
    """The finds of one block for every model in ``unit.wanted``; reads nothing but its
    arguments and changes no scan state (a Ray task, or called in process)."""
    device = torch.device(device)
    prepared, groups = _prepare(models, device)
    latents, values, entry_row = unit.latents, unit.values, unit.entry_row
    out: dict[str, ModelFinds] = {}
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
            needed = unit.wanted.get(model.key)
            if needed is None:  # full when the block was read
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
            lam = model.lambdas(codes, device)
            sq = (lam * lam).sum(dim=1, keepdim=True)
            dist = torch.sqrt(torch.clamp(sq - 2.0 * lam + 1.0, min=0.0)).cpu().numpy()
            out[model.key] = _finds(unit, rows, dist, needed, threshold)
    n_chunks = int(np.count_nonzero(unit.chunk[1:] != unit.chunk[:-1])) + 1
    return BlockFinds(unit.start, unit.stop, n_chunks, out)


def _finds(unit: BlockUnit, rows, dist, needed: list[int], threshold: float) -> ModelFinds:
    """One model's finds; ``rows`` are its active tokens (block rows), ``dist [len(rows), k]``
    their distances to the vertices."""
    token_row, vertex = np.nonzero(dist < threshold)  # ordered by row, then vertex
    triggers = np.bincount(vertex, minlength=dist.shape[1]).tolist()
    if not token_row.size:
        return ModelFinds(int(rows.size), triggers, [])
    block_rows = rows[token_row]
    chunks = unit.chunk[block_rows]
    order = np.lexsort((block_rows, chunks, vertex))  # by vertex, chunk, position
    vs, cs, rs = vertex[order], chunks[order], block_rows[order]
    bounds = np.flatnonzero(np.r_[True, (vs[1:] != vs[:-1]) | (cs[1:] != cs[:-1]), True])
    # a vertex's first records (chunk order) are the only ones it may keep
    group_vertex = vs[bounds[:-1]]
    first_of_vertex = np.searchsorted(group_vertex, group_vertex, side="left")
    rank = np.arange(group_vertex.size) - first_of_vertex
    kept = np.flatnonzero(rank < np.asarray(needed, dtype=np.int64)[group_vertex])
    if not kept.size:
        return ModelFinds(int(rows.size), triggers, [])
    take = np.concatenate([np.arange(bounds[g], bounds[g + 1]) for g in kept])
    ds = dist[token_row[order[take]], vs[take]].tolist()
    positions = unit.position[rs[take]].tolist()
    token_ids = unit.token_ids[rs[take]].tolist()
    candidates, t = [], 0
    for g in kept.tolist():
        i, j = int(bounds[g]), int(bounds[g + 1])
        v, c = int(vs[i]), int(cs[i])
        triggers_of = [
            {"distance": ds[x], "position": positions[x], "token_id": token_ids[x]}
            for x in range(t, t + j - i)
        ]
        first_row = unit.start + int(rs[i]) - positions[t] + 1
        candidates.append(VertexRecord(v, c >> 32, c & 0xFFFFFFFF, first_row, triggers_of))
        t += j - i
    return ModelFinds(int(rows.size), triggers, candidates)


def merge_block(state: ScanState, found: BlockFinds, quota: int) -> dict[str, list[VertexRecord]]:
    """Add one block's finds to ``state`` (blocks in order); returns the records kept, by model.

    A cluster full at the block's start takes nothing from it; a vertex keeps the first of its
    candidates (chunk order) up to ``quota`` records in all; a cluster's records come sorted
    by ``(first_row, vertex)``, the order the text reads.
    """
    assert found.start == state.next_row, "blocks are merged in order"
    out: dict[str, list[VertexRecord]] = {}
    for key, finds in found.models.items():
        progress = state.clusters[key]
        if progress.done:
            continue
        progress.active_tokens += finds.active_tokens
        for v, count in enumerate(finds.triggers):
            progress.triggers[v] += count
        records = []
        for record in finds.candidates:
            if progress.records[record.vertex] < quota:
                progress.records[record.vertex] += 1
                records.append(record)
        records.sort(key=lambda r: (r.first_row, r.vertex))
        out[key] = records
    size = found.stop - found.start
    for progress in state.clusters.values():
        if not progress.done:
            progress.tokens_scanned += size
    state.chunks_scanned += found.n_chunks
    state.tokens_scanned += size
    state.next_row = found.stop
    _update_done(state, quota)
    return out


__all__ = [
    "MAX_THRESHOLD",
    "BlockFinds",
    "BlockUnit",
    "ModelFinds",
    "VertexModels",
    "check_scan",
    "ClusterProgress",
    "ScanState",
    "VertexModel",
    "VertexRecord",
    "VertexSettings",
    "merge_block",
    "read_block",
    "scan_block",
    "scan_plan",
    "scan_vertices",
]
