"""Clustering SAE latents by their decoder directions (SPEC §3, seed 002).

Every method clusters the L2-normalised decoder rows ``W_dec[i] / ||W_dec[i]||`` of the *live*
latents; dead latents (``live[i] == False``) are left out and get label ``-1``. The methods follow
the scikit-learn estimator contract: ``__init__`` only stores settings, ``fit`` validates its
input and returns ``self``, learned attributes end in ``_``, and reading results before ``fit``
raises :class:`sklearn.exceptions.NotFittedError`.

Methods (registry :data:`CLUSTER_METHODS`):

- ``kmeans``: k-means on the normalised rows (what seed 002 runs).
- ``k-subspaces``: what the published study used: near-duplicate rows are merged first, then
  each cluster is a low-dimensional linear subspace through the origin (so ``x`` and ``-x`` fall
  in the same cluster).
- ``spectral``: spectral clustering on a cosine or activation co-occurrence affinity.

Degenerate input (issue 9, case 06): when the live rows hold fewer *distinct* directions than
``n_clusters`` (duplicate latents; for ``k-subspaces``, rows left after merging near-duplicates),
the method runs with k = that number, emits :class:`ClusterCountWarning` and records it:
``n_clusters_`` is the number of clusters that exist (labels are ``0 .. n_clusters_ - 1``,
none empty), ``n_distinct_`` the number of distinct directions. Asking for more clusters than
there are live latents at all stays an error.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from sklearn.cluster import KMeans, SpectralClustering
from sklearn.exceptions import NotFittedError
from threadpoolctl import threadpool_limits

from featgeo.sparsity.metrics import ClusterCountWarning, distinct_count

DUPLICATE_COS = 0.995
"""Rows whose |cos| with an earlier kept row exceeds this are near-duplicates (SPEC §3)."""

ArrayLike = np.ndarray | torch.Tensor


# -- inputs ---------------------------------------------------------------------------------
def _as_float_matrix(x: ArrayLike, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D [d_sae, d_in], got shape {x.shape}")
    return np.asarray(x, dtype=np.float64)


def normalized_directions(W_dec: ArrayLike) -> np.ndarray:
    """L2-normalised decoder rows.

    Args:
        W_dec: decoder matrix [d_sae, d_in] (numpy or torch).

    Returns:
        float64 array [d_sae, d_in]; each row has unit norm, all-zero rows stay zero.
    """
    w = _as_float_matrix(W_dec, "W_dec")
    norms = np.linalg.norm(w, axis=1, keepdims=True)  # [d_sae, 1]
    return np.divide(w, norms, out=np.zeros_like(w), where=norms > 0)


def _check_live(live: ArrayLike | None, d_sae: int) -> np.ndarray:
    if live is None:
        return np.ones(d_sae, dtype=bool)
    if isinstance(live, torch.Tensor):
        live = live.detach().cpu().numpy()
    live = np.asarray(live)
    if live.dtype != bool:
        raise TypeError(f"live must be a boolean mask [d_sae], got dtype {live.dtype}")
    if live.shape != (d_sae,):
        raise ValueError(f"live must have shape ({d_sae},) to match W_dec, got {live.shape}")
    return live


def _check_directions(W_dec: ArrayLike, live: np.ndarray) -> np.ndarray:
    """Validate the live rows and return them normalised, [n_live, d_in]."""
    w = _as_float_matrix(W_dec, "W_dec")[live]
    bad = np.flatnonzero(~np.isfinite(w).all(axis=1))
    if bad.size:
        rows = np.flatnonzero(live)[bad][:10].tolist()
        raise ValueError(
            f"W_dec has NaN or inf in live rows {rows}; fix the decoder or mark them dead "
            "with live=False"
        )
    zero = np.flatnonzero(np.linalg.norm(w, axis=1) == 0)
    if zero.size:
        rows = np.flatnonzero(live)[zero][:10].tolist()
        raise ValueError(
            f"W_dec has all-zero live rows {rows}; a zero direction cannot be clustered, "
            "mark them dead with live=False"
        )
    return normalized_directions(w)


def _check_cooccurrence(cooccurrence: ArrayLike | None, live: np.ndarray) -> np.ndarray:
    d_sae = live.shape[0]
    if cooccurrence is None:
        raise ValueError(
            "affinity='cooccurrence' needs fit(..., cooccurrence=C) with C the [d_sae, d_sae] "
            "activation co-occurrence matrix; pass it or use affinity='cosine'"
        )
    c = _as_float_matrix(cooccurrence, "cooccurrence")
    if c.shape != (d_sae, d_sae):
        raise ValueError(
            f"cooccurrence must have shape ({d_sae}, {d_sae}) to match W_dec, got {c.shape}"
        )
    if not np.isfinite(c).all() or (c < 0).any():
        raise ValueError("cooccurrence must be finite and non-negative; got NaN, inf or < 0")
    c = c[np.ix_(live, live)]  # [n_live, n_live]
    return (c + c.T) / 2  # spectral clustering needs a symmetric affinity


# -- registry -------------------------------------------------------------------------------
CLUSTER_METHODS: dict[str, type[LatentClusterer]] = {}


def register_cluster_method(cls: type[LatentClusterer]) -> type[LatentClusterer]:
    CLUSTER_METHODS[cls.name] = cls
    return cls


def get_cluster_method(name: str) -> type[LatentClusterer]:
    """The clusterer class registered under ``name``; unknown names list the valid ones."""
    try:
        return CLUSTER_METHODS[name]
    except KeyError:
        raise ValueError(
            f"unknown clustering method '{name}'; choose from {', '.join(sorted(CLUSTER_METHODS))}"
        ) from None


class LatentClusterer:
    """Base class. Subclasses set ``name`` and implement ``_cluster``.

    Learned attributes after ``fit``: ``labels_`` [d_sae] int64 (``-1`` for dead latents,
    else ``0 .. n_clusters_ - 1``), ``live_`` [d_sae] bool, ``n_live_`` int, ``n_clusters_`` int
    (clusters that exist: ``n_clusters`` unless there were fewer distinct directions),
    ``n_distinct_`` int (distinct live directions, as the method counts them).
    """

    name: ClassVar[str]

    def __init__(self, n_clusters: int = 128, random_state: int = 0):
        self.n_clusters = n_clusters
        self.random_state = random_state

    def get_params(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.endswith("_")}

    def fit(
        self,
        directions: ArrayLike,
        live: ArrayLike | None = None,
        cooccurrence: ArrayLike | None = None,
    ) -> LatentClusterer:
        """Cluster the live rows of ``directions`` (decoder matrix [d_sae, d_in]).

        Args:
            directions: decoder rows [d_sae, d_in]; normalised here, so raw ``W_dec`` is fine.
            live: optional boolean mask [d_sae]; False rows are excluded and get label -1.
            cooccurrence: [d_sae, d_sae] affinity, only for spectral with affinity='cooccurrence'.
        """
        d_sae = _as_float_matrix(directions, "W_dec").shape[0]
        live_mask = _check_live(live, d_sae)
        x = _check_directions(directions, live_mask)
        self._check_params(x.shape[0])
        extra = self._check_extra(cooccurrence, live_mask)
        n_distinct, what = self._distinct(x, extra)
        k = min(self.n_clusters, n_distinct)
        if k < self.n_clusters:
            warnings.warn(
                f"n_clusters {self.n_clusters} is more than the {n_distinct} {what} among the "
                f"{x.shape[0]} live latents; clustering with n_clusters={k} "
                f"(recorded in n_clusters_)",
                ClusterCountWarning,
                stacklevel=2,
            )
        raw = self._cluster(x, extra, k)
        # Renumber the clusters that exist as 0 .. m-1, so no label names an empty cluster.
        present, compact = np.unique(raw, return_inverse=True)
        labels = np.full(d_sae, -1, dtype=np.int64)
        labels[live_mask] = compact.reshape(-1)
        self.labels_ = labels
        self.live_ = live_mask
        self.n_live_ = int(live_mask.sum())
        self.n_clusters_ = int(present.size)
        self.n_distinct_ = int(n_distinct)
        return self

    def fit_predict(self, directions: ArrayLike, **kwargs: Any) -> np.ndarray:
        return self.fit(directions, **kwargs).labels_

    def clusters(self) -> list[np.ndarray]:
        """Latent indices of each cluster that exists (``n_clusters_`` of them), by label."""
        if not hasattr(self, "labels_"):
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet; call fit(W_dec) first"
            )
        return [np.flatnonzero(self.labels_ == c) for c in range(self.n_clusters_)]

    def _check_params(self, n_live: int) -> None:
        k = self.n_clusters
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"n_clusters must be a positive integer, got {k!r}")
        if k > n_live:
            raise ValueError(
                f"n_clusters {k} is larger than the {n_live} live latents; "
                "lower n_clusters or include more latents"
            )

    def _check_extra(self, cooccurrence: ArrayLike | None, live: np.ndarray) -> Any:
        if cooccurrence is not None:
            raise ValueError(
                f"cooccurrence is only used by method 'spectral' with affinity='cooccurrence', "
                f"not by '{self.name}'; drop the argument"
            )
        return None

    def _distinct(self, x: np.ndarray, extra: Any) -> tuple[int, str]:
        """(number of distinct points among the unit rows x, what they are called)."""
        return distinct_count(x), "distinct decoder directions"

    def _cluster(self, x: np.ndarray, extra: Any, k: int) -> np.ndarray:
        """Labels [n_live] in [0, k) of the unit rows x [n_live, d_in]; k <= distinct rows."""
        raise NotImplementedError


def _kmeans_labels(x: np.ndarray, n_clusters: int, seed: int, n_init: int) -> np.ndarray:
    km = KMeans(n_clusters=n_clusters, n_init=n_init, random_state=seed)
    # scikit-learn sums cluster centres across OpenMP threads, so the result changes in the last
    # bits with the thread count; one thread makes a seed reproducible (see sparsity/analysis).
    with threadpool_limits(limits=1, user_api="openmp"):
        km.fit(x)
    return km.labels_.astype(np.int64)


@register_cluster_method
class KMeansClusterer(LatentClusterer):
    """k-means (n_init=10, seeded) on the normalised decoder rows, as seed 002 runs it."""

    name = "kmeans"

    def _cluster(self, x: np.ndarray, extra: Any, k: int) -> np.ndarray:
        return _kmeans_labels(x, k, self.random_state, n_init=10)


# -- k-subspaces ----------------------------------------------------------------------------
def deduplicate_rows(
    x: np.ndarray, threshold: float = DUPLICATE_COS, block: int = 1024
) -> np.ndarray:
    """Greedy near-duplicate removal on unit rows.

    Rows are visited in index order; a row is kept unless its |cos| with an earlier *kept* row
    exceeds ``threshold``, in which case it maps to the first such kept row.

    Args:
        x: unit rows [n, d].

    Returns:
        ``rep`` [n] int64: the index of the kept row each row maps to (``rep[i] == i`` if kept).
    """
    n = x.shape[0]
    rep = np.arange(n, dtype=np.int64)
    kept: list[int] = []
    for start in range(0, n, block):
        xb = x[start : start + block]  # [b, d]
        matched = np.full(xb.shape[0], -1, dtype=np.int64)
        if kept:
            sims = np.abs(xb @ x[kept].T) > threshold  # [b, n_kept], kept in index order
            hit = sims.any(axis=1)
            matched[hit] = np.asarray(kept)[sims[hit].argmax(axis=1)]
        within = np.abs(xb @ xb.T) > threshold  # [b, b]
        for j in range(xb.shape[0]):
            if matched[j] >= 0:
                rep[start + j] = matched[j]
                continue
            earlier = [i for i in np.flatnonzero(within[j, :j]) if rep[start + i] == start + i]
            if earlier:
                rep[start + j] = start + earlier[0]
            else:
                kept.append(start + j)
    return rep


def _fit_subspaces(x: np.ndarray, labels: np.ndarray, k: int, dim: int) -> np.ndarray:
    """Orthonormal bases of all clusters side by side, [d, k * dim].

    Cluster c owns columns ``c * dim : (c + 1) * dim``: its top r_c = min(dim, cluster size)
    right singular vectors, then zero columns (which add nothing to a projection).
    """
    bases = np.zeros((x.shape[1], k * dim))
    for c in range(k):
        members = x[labels == c]  # [n_c, d]
        r = min(dim, members.shape[0])
        # Right singular vectors of the uncentred rows: a subspace through the origin.
        _, _, vt = np.linalg.svd(members, full_matrices=False)
        bases[:, c * dim : c * dim + r] = vt[:r].T
    return bases


def _residuals(x: np.ndarray, bases: np.ndarray, k: int) -> np.ndarray:
    """||x - U U^T x||^2 = ||x||^2 - ||U^T x||^2 for every row and subspace, [n, k]."""
    sq = (x * x).sum(axis=1, keepdims=True)  # [n, 1]
    proj = ((x @ bases) ** 2).reshape(x.shape[0], k, -1).sum(axis=2)  # [n, k * dim] -> [n, k]
    return np.maximum(sq - proj, 0.0)


def _refill_empty(labels: np.ndarray, best: np.ndarray, k: int) -> np.ndarray:
    """Give each empty cluster the worst-fitted point of a cluster with >= 2 members."""
    labels = labels.copy()
    for c in range(k):
        if (labels == c).any():
            continue
        sizes = np.bincount(labels, minlength=k)
        movable = np.flatnonzero(sizes[labels] >= 2)
        labels[movable[np.argmax(best[movable])]] = c
    return labels


def k_subspaces(
    x: np.ndarray, init: np.ndarray, k: int, dim: int, max_iter: int
) -> tuple[np.ndarray, float]:
    """Lloyd-style K-subspaces from initial labels ``init`` [n]; returns (labels, residual)."""
    labels = init
    for _ in range(max_iter):
        res = _residuals(x, _fit_subspaces(x, labels, k, dim), k)  # [n, k]
        new = _refill_empty(res.argmin(axis=1), res.min(axis=1), k)
        if np.array_equal(new, labels):
            break
        labels = new
    res = _residuals(x, _fit_subspaces(x, labels, k, dim), k)
    return labels, float(res[np.arange(x.shape[0]), labels].sum())


@register_cluster_method
class KSubspacesClusterer(LatentClusterer):
    """K-subspaces clustering of decoder directions (the published study's method).

    1. Near-duplicate rows (|cos| > ``duplicate_cos`` with an earlier kept row) are dropped;
       at the end they take the label of that kept row.
    2. Each restart initialises labels with a seeded single k-means run on the kept rows, then
       alternates: fit each cluster a linear subspace through the origin spanned by its top
       ``min(subspace_dim, cluster size)`` right singular vectors; reassign every direction to
       the subspace with the smallest residual ||x - U U^T x||^2. An emptied cluster takes the
       worst-fitted point. Stops when labels stop changing or after ``max_iter`` rounds.
    3. Of ``n_restarts`` restarts the one with the lowest total residual is kept. K-subspaces
       has many poor local minima; on planted data (6 3-dim subspaces in R^64, noise 0.2)
       5 restarts gave ARI 0.74-0.96 and 10 gave 0.94-0.97, hence the default of 10.

    ``subspace_dim`` (default 4) is one fixed dimension for every cluster, capped by the
    cluster's size; a slightly too large dimension fits noise but is more forgiving of the
    k-means initialisation than the exact one.

    Learned attributes beyond the base class: ``residual_`` (best total residual),
    ``n_unique_`` (rows kept after de-duplication).
    """

    name = "k-subspaces"

    def __init__(
        self,
        n_clusters: int = 128,
        random_state: int = 0,
        subspace_dim: int = 4,
        n_restarts: int = 10,
        max_iter: int = 50,
        duplicate_cos: float = DUPLICATE_COS,
    ):
        super().__init__(n_clusters, random_state)
        self.subspace_dim = subspace_dim
        self.n_restarts = n_restarts
        self.max_iter = max_iter
        self.duplicate_cos = duplicate_cos

    def _check_params(self, n_live: int) -> None:
        super()._check_params(n_live)
        for name in ("subspace_dim", "n_restarts", "max_iter"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0 < self.duplicate_cos <= 1:
            raise ValueError(f"duplicate_cos must be in (0, 1], got {self.duplicate_cos!r}")

    def _distinct(self, x: np.ndarray, extra: Any) -> tuple[int, str]:
        rep = deduplicate_rows(x, self.duplicate_cos)
        kept = int((rep == np.arange(x.shape[0])).sum())
        return kept, f"directions left after merging near-duplicates (|cos| > {self.duplicate_cos})"

    def _cluster(self, x: np.ndarray, extra: Any, k: int) -> np.ndarray:
        rep = deduplicate_rows(x, self.duplicate_cos)
        kept = np.flatnonzero(rep == np.arange(x.shape[0]))
        xu = x[kept]  # [n_unique, d]
        seeds = np.random.SeedSequence(self.random_state).generate_state(self.n_restarts)
        best_labels, best_res = None, np.inf
        # One BLAS thread: many small SVDs thrash when threads are oversubscribed, and a fixed
        # thread count keeps residual ties (hence labels) identical from run to run.
        with threadpool_limits(limits=1, user_api="blas"):
            for seed in seeds:
                init = _kmeans_labels(xu, k, int(seed), n_init=1)
                labels, res = k_subspaces(xu, init, k, self.subspace_dim, self.max_iter)
                if res < best_res:
                    best_labels, best_res = labels, res
        self.residual_ = best_res
        self.n_unique_ = int(kept.size)
        full = np.empty(x.shape[0], dtype=np.int64)
        full[kept] = best_labels
        return full[rep]  # duplicates take the label of their kept row


# -- spectral -------------------------------------------------------------------------------
@register_cluster_method
class SpectralClusterer(LatentClusterer):
    """Spectral clustering on a precomputed affinity between live latents.

    ``affinity="cosine"``: |cos| between normalised decoder rows, clipped to [0, 1].
    ``affinity="cooccurrence"``: a [d_sae, d_sae] activation co-occurrence matrix passed to
    ``fit(..., cooccurrence=C)`` (symmetrised, restricted to live latents).
    """

    name = "spectral"
    AFFINITIES: ClassVar[tuple[str, ...]] = ("cosine", "cooccurrence")

    def __init__(
        self,
        n_clusters: int = 128,
        random_state: int = 0,
        affinity: Literal["cosine", "cooccurrence"] = "cosine",
    ):
        super().__init__(n_clusters, random_state)
        self.affinity = affinity

    def _check_params(self, n_live: int) -> None:
        super()._check_params(n_live)
        if self.affinity not in self.AFFINITIES:
            raise ValueError(
                f"unknown affinity '{self.affinity}' for spectral clustering; "
                f"choose from {', '.join(self.AFFINITIES)}"
            )

    def _check_extra(self, cooccurrence: ArrayLike | None, live: np.ndarray) -> Any:
        if self.affinity == "cooccurrence":
            return _check_cooccurrence(cooccurrence, live)
        if cooccurrence is not None:
            raise ValueError(
                "cooccurrence was given but affinity='cosine' ignores it; "
                "set affinity='cooccurrence' or drop the argument"
            )
        return None

    def _distinct(self, x: np.ndarray, extra: Any) -> tuple[int, str]:
        if extra is not None:  # co-occurrence affinity: latents are told apart by their rows
            return distinct_count(extra), "distinct co-occurrence rows"
        return super()._distinct(x, extra)

    def _cluster(self, x: np.ndarray, extra: Any, k: int) -> np.ndarray:
        aff = extra if extra is not None else np.clip(np.abs(x @ x.T), 0.0, 1.0)  # [n, n]
        sc = SpectralClustering(
            n_clusters=k, affinity="precomputed", random_state=self.random_state
        )
        with threadpool_limits(limits=1, user_api="openmp"):
            sc.fit(aff)
        return sc.labels_.astype(np.int64)


def make_clusterer(method: str, **params: Any) -> LatentClusterer:
    """An unfitted clusterer of the registered ``method`` with ``params``."""
    return get_cluster_method(method)(**params)
