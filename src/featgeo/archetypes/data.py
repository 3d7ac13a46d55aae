"""Training data of the AANets of SAE latent clusters, read from the activation store (SPEC §3).

The codes come from :class:`~featgeo.activations.store.ActivationStore` (built once by
``featgeo sae store``), never from the language model. For a cluster ``c`` with latents
``latent_indices`` the training point of a token is the cluster-restricted reconstruction::

    x = a_c @ W_dec[c]        # a_c [n_latents] codes of the cluster's latents at the token,
                              # W_dec[c] [n_latents, d_model] their decoder rows; x [d_model]

with no ``b_dec`` and no centering, over the *active* tokens only: ``sum |a_c| > 1e-6``
(``active_threshold``; the sum is taken in float64 over the float32 codes, so a token whose
codes sum to the float32 nearest 1e-6, or less, is left out).

Every ``x`` lies in ``span(W_dec[c])``, a subspace of rank ``r <= n_latents``. With
``space="subspace"`` (the default) a cluster's points are given in the coordinates of an
orthonormal basis ``Q`` [d_model, r] of that span, ``y = Q^T x = a_c @ (W_dec[c] @ Q)``: the
AANet sees the same point cloud up to a rotation, in r instead of d_model dimensions, and
``x = Q y`` recovers the full-space point. ``r`` is the numerical rank of ``W_dec[c]``: the
number of singular values ``sigma_i > rank_rtol * sigma_1`` (float64 SVD, ``rank_rtol = 1e-6``
by default: the float32 decoder rows resolve nothing finer). A direction left out moves a point
by at most ``rank_rtol * sigma_1 * ||a_c||``.

A model needs at least ``k + MIN_POINTS_EXTRA`` active tokens (:func:`has_enough_points`); a
cluster with fewer is not trained and its rows get the status ``too_few_points`` (no error).

Batches: :class:`StepBatches` draws ``batch_tokens`` distinct token positions of the store per
step, seeded by ``(seed, step)`` alone, and every cluster trains on its active tokens among
them; a cluster's batches therefore do not depend on which other clusters train with it.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from featgeo.activations.store import ActivationStore
    from featgeo.sae.architectures import SparseAutoencoder

ACTIVE_THRESHOLD = 1e-6
"""A token is active for a cluster when the sum of |codes| of its latents exceeds this."""
RANK_RTOL = 1e-6
"""Relative tolerance of the numerical rank of a cluster's decoder rows (``space="subspace"``)."""
MIN_POINTS_EXTRA = 8
"""A k-archetype model needs at least ``k + MIN_POINTS_EXTRA`` active tokens."""
SPACES = ("full", "subspace")
METRICS_FILE = "cluster_metrics.csv"

Space = Literal["full", "subspace"]


def has_enough_points(n_active: int, k: int) -> bool:
    """Whether a cluster with ``n_active`` active tokens can train a k-archetype AANet
    (``n_active >= k + MIN_POINTS_EXTRA``); the trainer records ``too_few_points`` otherwise."""
    return int(n_active) >= int(k) + MIN_POINTS_EXTRA


@dataclass
class ClusterData:
    """The AANet training points of one latent cluster, as codes times a projection."""

    cluster_id: int
    latent_indices: np.ndarray
    """int64 [n_latents] the cluster's latents (the column order of ``codes``)."""
    token_rows: np.ndarray
    """int64 [n_active] ascending store rows where the cluster is active."""
    codes: np.ndarray
    """float32 [n_active, n_latents] the codes a_c at those tokens."""
    projection: np.ndarray
    """float32 [n_latents, dim]: ``W_dec[c]`` (full space) or ``W_dec[c] @ basis`` (subspace)."""
    basis: np.ndarray | None
    """float32 [d_model, r] orthonormal basis of span(W_dec[c]), or None for the full space."""
    d_model: int

    def __post_init__(self) -> None:
        self.cluster_id = int(self.cluster_id)
        self.latent_indices = np.ascontiguousarray(self.latent_indices, dtype=np.int64)
        self.token_rows = np.ascontiguousarray(self.token_rows, dtype=np.int64)
        self.codes = np.ascontiguousarray(self.codes, dtype=np.float32)
        self.projection = np.ascontiguousarray(self.projection, dtype=np.float32)
        n_lat, n = self.latent_indices.size, self.token_rows.size
        if self.codes.shape != (n, n_lat) or self.projection.ndim != 2:
            raise ValueError(
                f"cluster {self.cluster_id}: codes must be [n_active={n}, n_latents={n_lat}] and "
                f"projection [n_latents, dim], got {self.codes.shape} and {self.projection.shape}"
            )
        if self.projection.shape[0] != n_lat:
            raise ValueError(
                f"cluster {self.cluster_id}: projection must have n_latents={n_lat} rows, got "
                f"{self.projection.shape}"
            )
        if self.basis is not None:
            self.basis = np.ascontiguousarray(self.basis, dtype=np.float32)
            if self.basis.shape != (self.d_model, self.dim):
                raise ValueError(
                    f"cluster {self.cluster_id}: basis must be [d_model={self.d_model}, "
                    f"dim={self.dim}], got {self.basis.shape}"
                )
        elif self.dim != self.d_model:
            raise ValueError(
                f"cluster {self.cluster_id}: a full-space projection must have d_model="
                f"{self.d_model} columns, got {self.dim}"
            )
        if n > 1 and np.any(np.diff(self.token_rows) <= 0):
            raise ValueError(f"cluster {self.cluster_id}: token_rows must be strictly ascending")

    @property
    def n_active(self) -> int:
        return int(self.token_rows.size)

    @property
    def n_latents(self) -> int:
        return int(self.latent_indices.size)

    @property
    def dim(self) -> int:
        """Dimension D of the points: d_model (full space) or the decoder rank r (subspace)."""
        return int(self.projection.shape[1])

    @property
    def space(self) -> Space:
        return "full" if self.basis is None else "subspace"

    def points(self, rows: np.ndarray | Sequence[int] | None = None) -> np.ndarray:
        """float32 [len(rows), dim] training points ``codes[rows] @ projection`` (all if None);
        ``rows`` index the active tokens (0..n_active-1), e.g. from :meth:`StepBatches.rows`."""
        codes = self.codes if rows is None else self.codes[np.asarray(rows, dtype=np.int64)]
        return codes @ self.projection

    def to_model_space(self, points: np.ndarray) -> np.ndarray:
        """Points [n, dim] in d_model coordinates: ``points @ basis.T`` (unchanged if full)."""
        points = np.asarray(points, dtype=np.float32)
        return points if self.basis is None else points @ self.basis.T

    def has_enough_points(self, k: int) -> bool:
        """:func:`has_enough_points` of this cluster's active tokens."""
        return has_enough_points(self.n_active, k)


# -- inputs ---------------------------------------------------------------------------------
def check_store_matches_sae(store: ActivationStore, sae: SparseAutoencoder) -> None:
    """Raise ``ValueError`` when ``store`` holds the codes of another SAE (encoder fingerprint
    or number of latents differ)."""
    from featgeo.sae.saelens_format import sae_fingerprint

    stored, ours = store.header.get("encoder_fingerprint"), sae_fingerprint(sae)
    if stored != ours or store.d_sae != sae.cfg.d_sae:
        raise ValueError(
            f"the activation store {store.folder} was built for another SAE (encoder "
            f"fingerprint {stored}, d_sae={store.d_sae}; this SAE: {ours}, d_sae="
            f"{sae.cfg.d_sae}); rebuild it with `featgeo sae store <this SAE's folder>`"
        )


def _check_latents(cluster_id: int, latents, d_sae: int) -> np.ndarray:
    arr = np.asarray(latents)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(
            f"latent_indices of cluster {cluster_id} must be a 1-D sequence of ints, got "
            f"{arr.dtype} of shape {arr.shape}"
        )
    if arr.size == 0:
        raise ValueError(f"cluster {cluster_id} is empty: latent_indices needs >= 1 latent")
    if arr.min() < 0 or arr.max() >= d_sae:
        bad = arr[(arr < 0) | (arr >= d_sae)].tolist()
        raise ValueError(
            f"latent_indices of cluster {cluster_id} must lie in 0..{d_sae - 1} (the SAE's "
            f"d_sae={d_sae}), got {bad}; use clusters of this SAE"
        )
    if np.unique(arr).size != arr.size:
        raise ValueError(
            f"latent_indices of cluster {cluster_id} must be distinct, got {arr.tolist()}"
        )
    return arr.astype(np.int64)


def _normalise_clusters(clusters, d_sae: int) -> list[tuple[int, np.ndarray]]:
    """``{cluster_id: latents}`` or ``[latents, ...]`` (ids 0, 1, ...) -> checked pairs."""
    if isinstance(clusters, Mapping):
        items = list(clusters.items())
    elif isinstance(clusters, Sequence) and not isinstance(clusters, str | bytes):
        items = list(enumerate(clusters))
    else:
        raise TypeError(
            "clusters must be a dict cluster_id -> latent indices or a list of latent-index "
            f"lists, got {type(clusters).__name__}"
        )
    out = []
    for cid, latents in items:
        if isinstance(cid, bool) or not isinstance(cid, int | np.integer):
            raise TypeError(f"cluster ids must be ints, got {type(cid).__name__} {cid!r}")
        out.append((int(cid), _check_latents(int(cid), latents, d_sae)))
    return out


def _check_choice(space: str, active_threshold: float, rank_rtol: float) -> None:
    if space not in SPACES:
        raise ValueError(f"space must be one of {', '.join(SPACES)}, got {space!r}")
    for name, value in (("active_threshold", active_threshold), ("rank_rtol", rank_rtol)):
        if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
            raise TypeError(f"{name} must be a float, got {type(value).__name__} {value!r}")
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value}")


# -- building -------------------------------------------------------------------------------
def cluster_data(
    sae: SparseAutoencoder,
    store: ActivationStore,
    latent_indices: Sequence[int] | np.ndarray,
    *,
    cluster_id: int,
    space: Space = "subspace",
    active_threshold: float = ACTIVE_THRESHOLD,
    rank_rtol: float = RANK_RTOL,
    check_fingerprint: bool = True,
) -> ClusterData:
    """The training data of one cluster (one scan of the store; for many clusters use
    :func:`clusters_data`, which scans once for all). Arguments as in :func:`clusters_data`."""
    (data,) = clusters_data(
        sae,
        store,
        {cluster_id: latent_indices},
        space=space,
        active_threshold=active_threshold,
        rank_rtol=rank_rtol,
        check_fingerprint=check_fingerprint,
    )
    return data


def clusters_data(
    sae: SparseAutoencoder,
    store: ActivationStore,
    clusters: Mapping[int, Sequence[int]] | Sequence[Sequence[int]],
    *,
    space: Space = "subspace",
    active_threshold: float = ACTIVE_THRESHOLD,
    rank_rtol: float = RANK_RTOL,
    check_fingerprint: bool = True,
    block: int = 1 << 24,
) -> list[ClusterData]:
    """The training data of every cluster, from one pass over the store.

    Parameters
    ----------
    sae, store
        The SAE and the store of its codes (:func:`check_store_matches_sae`; with
        ``check_fingerprint=False`` only ``d_sae`` is compared).
    clusters
        ``{cluster_id: latent indices}`` (e.g. :func:`read_clusters`) or a list of latent-index
        lists (cluster ids 0, 1, ...). Clusters may share latents.
    space
        ``"subspace"``: points in an orthonormal basis of the cluster's decoder span (dim r);
        ``"full"``: points in d_model coordinates.
    active_threshold
        A token is active when ``sum |a_c| > active_threshold`` (float64 sum).
    rank_rtol
        Singular values ``<= rank_rtol * sigma_1`` of ``W_dec[c]`` do not count (subspace).
    block
        Store entries read at a time.

    Returns
    -------
    list of ClusterData, in the order of ``clusters``.
    """
    from featgeo.activations.store import ActivationStore
    from featgeo.sae.architectures import SparseAutoencoder

    if not isinstance(sae, SparseAutoencoder):
        raise TypeError(f"sae must be a SparseAutoencoder, got {type(sae).__name__}")
    if not isinstance(store, ActivationStore):
        raise TypeError(f"store must be an ActivationStore, got {type(store).__name__}")
    _check_choice(space, active_threshold, rank_rtol)
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be an int >= 1 (store entries per read), got {block!r}")
    if check_fingerprint:
        check_store_matches_sae(store, sae)
    elif store.d_sae != sae.cfg.d_sae:
        raise ValueError(
            f"the activation store {store.folder} holds codes of {store.d_sae} latents but the "
            f"SAE has {sae.cfg.d_sae}; rebuild it with `featgeo sae store <this SAE's folder>`"
        )
    pairs = _normalise_clusters(clusters, store.d_sae)
    w_dec = sae.W_dec.detach().cpu().float().numpy()  # [d_sae, d_model]
    used = np.unique(np.concatenate([lat for _, lat in pairs])) if pairs else np.zeros(0, int)
    if not np.isfinite(w_dec[used]).all():
        bad = used[~np.isfinite(w_dec[used]).all(axis=1)]
        raise ValueError(
            f"W_dec rows {bad[:10].tolist()} of the SAE hold NaN or infinite values; fix or "
            "retrain the SAE"
        )
    codes = _gather_codes(store, pairs, block)
    out = []
    for (cid, latents), (rows, dense) in zip(pairs, codes, strict=True):
        if not np.isfinite(dense).all():
            raise ValueError(
                f"the activation store {store.folder} holds NaN or infinite codes for cluster "
                f"{cid}; rebuild the store"
            )
        active = np.abs(dense).sum(axis=1, dtype=np.float64) > active_threshold
        projection, basis = _projection(cid, w_dec[latents], space, rank_rtol)
        out.append(
            ClusterData(cid, latents, rows[active], dense[active], projection, basis, sae.cfg.d_in)
        )
    return out


def _gather_codes(
    store: ActivationStore, pairs: list[tuple[int, np.ndarray]], block: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per cluster: (token rows int64 [n] ascending, dense codes float32 [n, n_latents]) of the
    tokens where any of its latents has a stored (non-zero) code. One pass over the store."""
    n_clusters = len(pairs)
    if n_clusters == 0:
        return []
    # Membership table sorted by latent: a latent in several clusters has several entries.
    mem_latent = np.concatenate([lat for _, lat in pairs])
    mem_cluster = np.repeat(np.arange(n_clusters), [lat.size for _, lat in pairs])
    mem_column = np.concatenate([np.arange(lat.size, dtype=np.int32) for _, lat in pairs])
    order = np.argsort(mem_latent, kind="stable")
    key_dtype = np.uint16 if n_clusters <= np.iinfo(np.uint16).max else np.int64
    mem_cluster, mem_column = mem_cluster[order].astype(key_dtype), mem_column[order]
    n_mem = np.bincount(mem_latent, minlength=store.d_sae)  # [d_sae]
    mem_ptr = np.concatenate([[0], np.cumsum(n_mem)])

    row_dtype = np.int32 if store.n_tokens < np.iinfo(np.int32).max else np.int64
    keys, rows, cols, vals = [], [], [], []
    for start in range(0, store.nnz, block):
        stop = min(start + block, store.nnz)
        latents = np.asarray(store.latents[start:stop])
        reps = n_mem[latents]  # memberships per entry (0: not in any cluster)
        (entry,) = np.nonzero(reps)  # [m] entry offsets in the block, once per membership
        if not entry.size:
            continue
        mem = mem_ptr[latents[entry]]
        reps = reps[entry]
        if reps.max() > 1:  # shared latents: repeat the entry once per cluster holding it
            first = np.cumsum(reps) - reps
            entry = np.repeat(entry, reps)
            mem = np.repeat(mem - first, reps) + np.arange(entry.size)
        keys.append(mem_cluster[mem])
        cols.append(mem_column[mem])
        vals.append(np.asarray(store.values[start:stop])[entry])
        # Entry position -> its token row: the last row whose start is <= position.
        rows.append(
            (np.searchsorted(store.indptr, start + entry, side="right") - 1).astype(row_dtype)
        )
    if not keys:
        return [(np.zeros(0, np.int64), np.zeros((0, lat.size), np.float32)) for _, lat in pairs]
    key, row = np.concatenate(keys), np.concatenate(rows)
    # Entries come in row order, so a stable sort by cluster orders them by (cluster, row).
    order = np.argsort(key, kind="stable")  # a radix sort for uint16 keys
    key, row = key[order], row[order]
    col, val = np.concatenate(cols)[order], np.concatenate(vals)[order]
    del order
    new_token = np.ones(row.size, dtype=bool)  # first entry of a (cluster, row) pair
    new_token[1:] = (row[1:] != row[:-1]) | (key[1:] != key[:-1])
    bounds = np.searchsorted(key, np.arange(n_clusters + 1), side="left")
    out = []
    for c, (_, latents) in enumerate(pairs):
        lo, hi = bounds[c], bounds[c + 1]
        local = np.cumsum(new_token[lo:hi]) - 1  # [entries] token index within the cluster
        dense = np.zeros((int(local[-1]) + 1 if hi > lo else 0, latents.size), dtype=np.float32)
        dense[local, col[lo:hi]] = val[lo:hi]
        out.append((row[lo:hi][new_token[lo:hi]].astype(np.int64), dense))
    return out


def _projection(
    cluster_id: int, rows: np.ndarray, space: Space, rank_rtol: float
) -> tuple[np.ndarray, np.ndarray | None]:
    """(projection [n_latents, D], basis [d_model, r] or None) of decoder rows [n_latents, d]."""
    if space == "full":
        return rows.astype(np.float32), None
    w = rows.astype(np.float64)
    _, sigma, vt = np.linalg.svd(w, full_matrices=False)  # rows of vt span the row space of w
    r = int(np.sum(sigma > rank_rtol * sigma[0])) if sigma[0] > 0 else 0
    if r == 0:
        raise ValueError(
            f"the decoder rows of cluster {cluster_id} are all zero, so its points are all 0; "
            "leave the cluster out or use another SAE"
        )
    basis = vt[:r].T  # [d_model, r] orthonormal
    return (w @ basis).astype(np.float32), basis.astype(np.float32)


# -- clusters on disk -----------------------------------------------------------------------
def read_clusters(folder: str | Path) -> dict[int, list[int]]:
    """``cluster_id -> latent indices`` from ``{folder}/cluster_metrics.csv`` (a
    ``clusters_{n}`` folder written by ``featgeo sae cluster``; the CSV path itself works too).
    Raises ``ValueError`` naming the file and row when it is malformed."""
    path = Path(folder)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"no {METRICS_FILE} at '{path}'; pass a clusters_{{n}} folder written by "
            "`featgeo sae cluster`"
        )
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = {"cluster_id", "latent_indices"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(
                f"{path} is not a cluster_metrics.csv: missing columns {sorted(missing)} "
                f"(found {reader.fieldnames}); rerun `featgeo sae cluster`"
            )
        clusters: dict[int, list[int]] = {}
        for line, row in enumerate(reader, start=2):
            cid, latents = _parse_row(path, line, row)
            if cid in clusters:
                raise ValueError(f"{path} line {line}: cluster_id {cid} appears twice")
            clusters[cid] = latents
    if not clusters:
        raise ValueError(f"{path} lists no clusters; rerun `featgeo sae cluster`")
    return clusters


def _parse_row(path: Path, line: int, row: dict) -> tuple[int, list[int]]:
    where = f"{path} line {line}"
    try:
        cid = int(row["cluster_id"])
        latents = [int(v) for v in (row["latent_indices"] or "").split()]
    except (TypeError, ValueError):
        raise ValueError(
            f"{where}: cluster_id must be an int and latent_indices space-separated ints, got "
            f"{row.get('cluster_id')!r} and {row.get('latent_indices')!r}"
        ) from None
    if not latents or min(latents) < 0 or len(set(latents)) != len(latents):
        raise ValueError(
            f"{where}: cluster {cid} needs distinct latent indices >= 0, got {latents}"
        )
    n = row.get("n_latents")
    if n not in (None, "") and str(n).strip() != str(len(latents)):
        raise ValueError(f"{where}: n_latents={n} but latent_indices lists {len(latents)} latents")
    return cid, latents


# -- batches --------------------------------------------------------------------------------
class StepBatches:
    """Seeded per-step token draws shared by every cluster trained together.

    Step ``s`` draws ``batch_tokens`` distinct token positions of the store uniformly
    (``numpy.random.default_rng((seed, s))``: a pure function of seed and step, so any step can
    be drawn in any order) and gives each cluster its active tokens among them. A cluster's rows
    depend only on the seed, the step, the store size and its own active tokens, never on which
    clusters train with it.

    Parameters
    ----------
    datas
        The clusters (their ``token_rows``).
    n_tokens
        Number of tokens of the store the rows index (``store.n_tokens``).
    batch_tokens
        Positions drawn per step (all tokens when the store is smaller).
    seed
        Seed (int >= 0).
    """

    def __init__(
        self,
        datas: Sequence[ClusterData],
        n_tokens: int,
        *,
        batch_tokens: int = 4096,
        seed: int = 0,
    ):
        for name, value, low in (("n_tokens", n_tokens, 1), ("batch_tokens", batch_tokens, 1),
                                 ("seed", seed, 0)):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        if not all(isinstance(d, ClusterData) for d in datas):
            raise TypeError("datas must be a list of ClusterData (from clusters_data)")
        self.n_tokens, self.seed = int(n_tokens), int(seed)
        self.batch_tokens = min(int(batch_tokens), self.n_tokens)
        self.n_clusters = len(datas)
        sizes = np.array([d.n_active for d in datas], dtype=np.int64)
        token_rows = np.concatenate([d.token_rows for d in datas]) if datas else np.zeros(0, int)
        if token_rows.size and (token_rows.min() < 0 or token_rows.max() >= self.n_tokens):
            raise ValueError(
                f"token_rows must lie in 0..{self.n_tokens - 1} (n_tokens={self.n_tokens}); "
                "pass the n_tokens of the store the clusters were read from"
            )
        # Inverse index token -> (cluster, local row), sorted by token then cluster, packed as
        # cluster << 32 | local so that a step gathers one array.
        cluster = np.repeat(np.arange(self.n_clusters, dtype=np.int64), sizes)
        local = np.arange(token_rows.size) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        order = np.argsort(token_rows, kind="stable")
        self._packed = (cluster[order] << 32) | local[order]  # int64 [sum n_active]
        self._ptr = np.zeros(self.n_tokens + 1, dtype=np.int64)
        np.cumsum(np.bincount(token_rows, minlength=self.n_tokens), out=self._ptr[1:])
        small = self.n_clusters <= np.iinfo(np.uint16).max
        self._key_dtype = np.uint16 if small else np.int64  # uint16: argsort is a radix sort

    def positions(self, step: int) -> np.ndarray:
        """int64 [batch_tokens] ascending distinct store rows drawn at ``step``."""
        if isinstance(step, bool) or not isinstance(step, int | np.integer):
            raise TypeError(f"step must be an int, got {type(step).__name__} {step!r}")
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        rng = np.random.default_rng((self.seed, int(step)))
        return np.sort(rng.choice(self.n_tokens, size=self.batch_tokens, replace=False))

    def flat_rows(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """``(rows int64 [sum counts], counts int64 [n_clusters])``: cluster i's rows (indices
        into its active tokens, ascending) are ``rows[offsets[i]:offsets[i] + counts[i]]``."""
        pos = self.positions(step)
        starts = self._ptr[pos]
        n = self._ptr[pos + 1] - starts
        total = int(n.sum())
        # Flat positions of every (cluster, local) entry of the drawn tokens, in token order.
        idx = np.repeat(starts - (np.cumsum(n) - n), n) + np.arange(total)
        packed = self._packed[idx]  # [total]
        cluster = (packed >> 32).astype(self._key_dtype)
        order = np.argsort(cluster, kind="stable")  # keeps token order within a cluster
        counts = np.bincount(cluster, minlength=self.n_clusters).astype(np.int64)
        return packed[order] & 0xFFFFFFFF, counts

    def rows(self, step: int) -> list[np.ndarray]:
        """Per cluster: int64 indices into its active tokens (0..n_active-1) drawn at ``step``."""
        flat, counts = self.flat_rows(step)
        ends = np.cumsum(counts).tolist()
        return [flat[e - n : e] for e, n in zip(ends, counts.tolist(), strict=True)]


__all__ = [
    "ACTIVE_THRESHOLD",
    "MIN_POINTS_EXTRA",
    "RANK_RTOL",
    "ClusterData",
    "StepBatches",
    "check_store_matches_sae",
    "cluster_data",
    "clusters_data",
    "has_enough_points",
    "read_clusters",
]
