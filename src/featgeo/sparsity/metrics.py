"""Cluster metrics of SPEC §2, in two families with unambiguous names, plus MMM block coherence.

Centroid family (seed 000, "Metrics Explained"): Euclidean distances of points to k-means
centroids. Hamming family (the multi-seed heatmaps): normalized Hamming distances between
features, over *all* pairs (the original sampled 50 cross pairs with an unseeded RNG).

Degenerate clusterings (issue 9, case 06): every metric is taken over the clusters that exist
(an empty cluster enters no mean) and the number of empty ones is reported. A ratio whose
denominator is zero (up to floating-point noise) or whose numerator has no pair of clusters is
*undefined*: None (null in JSON) with the reason in a ``*_undefined`` field, and no band.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

SEPARATION_BANDS = ((2.0, "excellent"), (1.0, "good"), (0.5, "moderate"))

ZERO_DISTANCE_RTOL = 1e-12
"""A within-cluster distance at or below this times the largest |coordinate| of the points is
zero up to floating-point noise (k-means centroids of identical 0/1 masks sit ~1e-16 away)."""

UNDEFINED_ONE_CLUSTER = "only {n} non-empty cluster: no pair of clusters to compare"
UNDEFINED_ZERO_WITHIN = "all points of every cluster coincide (within-cluster distance 0)"
UNDEFINED_ZERO_WITHIN_HAMMING = (
    "all features of every cluster have identical masks (within-cluster Hamming 0)"
)


class ClusterCountWarning(UserWarning):
    """More clusters were asked for than there are distinct points, so fewer were used."""


def separation_band(ratio: float | None) -> str | None:
    """>2 excellent, >1 good, >0.5 moderate, else poor; None for an undefined ratio (None or
    not finite): a ratio of ~0 / ~0 says nothing about separation and gets no band."""
    if ratio is None or not np.isfinite(ratio):
        return None
    for threshold, band in SEPARATION_BANDS:
        if ratio > threshold:
            return band
    return "poor"


def distinct_count(points: np.ndarray) -> int:
    """Number of distinct rows of ``points`` [n, D] (exact equality)."""
    points = np.asarray(points)
    return int(np.unique(points.reshape(points.shape[0], -1), axis=0).shape[0])


@dataclass(frozen=True)
class CentroidMetrics:
    """Centroid family over the clusters that exist: an empty cluster (a k-means centre that
    owns no point) takes part in no mean."""

    mean_within_centroid_distance: float
    """Mean Euclidean distance from each point to its own centroid."""
    mean_between_centroid_distance: float | None
    """Mean pairwise Euclidean distance between the centroids of non-empty clusters; None with
    fewer than two non-empty clusters."""
    mean_between_centroid_distance_undefined: str | None
    """Why ``mean_between_centroid_distance`` is None (None when it is defined)."""
    centroid_separation_ratio: float | None
    """between / within; None when within is ~0 (see ``ZERO_DISTANCE_RTOL``) or between is
    undefined."""
    centroid_separation_ratio_undefined: str | None
    """Why ``centroid_separation_ratio`` is None (None when it is defined)."""
    centroid_separation_band: str | None
    """Band of the ratio (excellent / good / moderate / poor); None when it is undefined."""
    total_inertia: float
    """Sum of squared distances of points to their centroid."""
    cluster_balance: float
    """Population standard deviation of the sizes of the non-empty clusters."""
    cluster_sizes: list[int]
    """Size of every cluster label 0 .. k-1 (0 for an empty one)."""
    n_clusters_effective: int
    """Clusters that own at least one point."""
    n_empty_clusters: int
    """k minus ``n_clusters_effective``."""

    def to_dict(self) -> dict:
        return asdict(self)


def centroid_metrics(
    points: np.ndarray, labels: np.ndarray, centroids: np.ndarray
) -> CentroidMetrics:
    """Centroid-family metrics (seed 000 "Metrics Explained") over the non-empty clusters.

    points: [n, D] float, labels: [n] int in [0, k), centroids: [k, D].
    """
    points = np.asarray(points, dtype=np.float64)
    centroids = np.asarray(centroids, dtype=np.float64)
    labels = np.asarray(labels)
    k = centroids.shape[0]
    sizes = np.bincount(labels, minlength=k)
    present = np.flatnonzero(sizes > 0)
    to_own = np.linalg.norm(points - centroids[labels], axis=1)  # [n]
    within = float(to_own.mean())
    between, between_why = None, None
    if present.size >= 2:
        live = centroids[present]  # [k_eff, D]
        pair = np.linalg.norm(live[:, None, :] - live[None, :, :], axis=-1)
        between = float(pair[np.triu_indices(present.size, 1)].mean())
    else:
        between_why = UNDEFINED_ONE_CLUSTER.format(n=present.size)
    scale = float(np.abs(points).max()) if points.size else 0.0
    ratio, ratio_why = None, between_why
    if ratio_why is None:
        if within <= ZERO_DISTANCE_RTOL * scale:
            ratio_why = UNDEFINED_ZERO_WITHIN
        else:
            ratio = between / within
    return CentroidMetrics(
        mean_within_centroid_distance=within,
        mean_between_centroid_distance=between,
        mean_between_centroid_distance_undefined=between_why,
        centroid_separation_ratio=ratio,
        centroid_separation_ratio_undefined=ratio_why,
        centroid_separation_band=separation_band(ratio),
        total_inertia=float((to_own**2).sum()),
        cluster_balance=float(sizes[present].std()),
        cluster_sizes=sizes.tolist(),
        n_clusters_effective=int(present.size),
        n_empty_clusters=int(k - present.size),
    )


@dataclass(frozen=True)
class HammingMetrics:
    """Hamming family (the multi-seed heatmaps) over the clusters that exist."""

    within_per_cluster: list[float | None]
    """Mean normalized Hamming over all unordered pairs inside each cluster (0 for a singleton,
    None for an empty cluster)."""
    mean_within_hamming: float
    """Mean of ``within_per_cluster`` over the non-empty clusters."""
    between_matrix: list[list[float | None]]
    """[k, k]: mean normalized Hamming over all cross pairs of clusters i and j (diagonal:
    within); None in the rows and columns of empty clusters."""
    mean_between_hamming: float | None
    """Mean of the upper triangle of ``between_matrix`` over pairs of non-empty clusters; None
    with fewer than two non-empty clusters."""
    mean_between_hamming_undefined: str | None
    hamming_separation_ratio: float | None
    """mean_between / mean_within; None when mean_within is 0 or mean_between undefined."""
    hamming_separation_ratio_undefined: str | None

    def to_dict(self) -> dict:
        return asdict(self)


def hamming_metrics(
    normalized: np.ndarray, labels: np.ndarray, k: int | None = None
) -> HammingMetrics:
    """normalized: [n, n] normalized Hamming distances (count / D), labels: [n]."""
    labels = np.asarray(labels)
    k = int(labels.max()) + 1 if k is None else k
    members = [np.flatnonzero(labels == c) for c in range(k)]
    present = [c for c in range(k) if members[c].size]
    within: list[float | None] = []
    for idx in members:
        if idx.size == 0:
            within.append(None)
        elif idx.size == 1:
            within.append(0.0)
        else:
            block = normalized[np.ix_(idx, idx)]
            within.append(float(block[np.triu_indices(idx.size, 1)].mean()))
    between: list[list[float | None]] = [[None] * k for _ in range(k)]
    pairs = []
    for i in present:
        between[i][i] = within[i]
        for j in present:
            if j > i:
                value = float(normalized[np.ix_(members[i], members[j])].mean())
                between[i][j] = between[j][i] = value
                pairs.append(value)
    mean_within = float(np.mean([within[c] for c in present]))
    mean_between, between_why = None, None
    if pairs:
        mean_between = float(np.mean(pairs))
    else:
        between_why = UNDEFINED_ONE_CLUSTER.format(n=len(present))
    ratio, ratio_why = None, between_why
    if ratio_why is None:
        if mean_within <= ZERO_DISTANCE_RTOL:  # normalized distances are fractions in [0, 1]
            ratio_why = UNDEFINED_ZERO_WITHIN_HAMMING
        else:
            ratio = mean_between / mean_within
    return HammingMetrics(within, mean_within, between, mean_between, between_why, ratio, ratio_why)


def block_coherence(
    masks: np.ndarray, order: np.ndarray | None = None, block_size: int = 8
) -> float:
    """MMM block coherence: cut the features (in ``order``) into consecutive blocks of
    ``block_size``; a block's coherence is the fraction of the D positions where every feature
    of the block is zero (a block-skipping kernel skips them). Returns the mean over blocks
    (a last, shorter block counts as a block).

    masks: [N, D] bool (True = non-zero weight).
    """
    if block_size < 1:
        raise ValueError(f"--block-size must be >= 1, got {block_size}")
    masks = np.asarray(masks, dtype=bool)
    if order is not None:
        masks = masks[np.asarray(order)]
    n = masks.shape[0]
    scores = [
        float((~masks[s : s + block_size].any(axis=0)).mean()) for s in range(0, n, block_size)
    ]
    return float(np.mean(scores))


def cluster_order(labels: np.ndarray) -> np.ndarray:
    """Feature order that groups clusters together (stable: original order inside a cluster)."""
    return np.argsort(np.asarray(labels), kind="stable")


def hamming_summary(distances: np.ndarray, d: int) -> dict[str, float]:
    """min / max / mean / std / range of neighbour distances, as counts and as fractions of D."""
    distances = np.asarray(distances, dtype=np.float64)
    stats = {
        "min": distances.min(),
        "max": distances.max(),
        "mean": distances.mean(),
        "std": distances.std(),
        "range": distances.max() - distances.min(),
    }
    out = {f"hamming_{k}": float(v) for k, v in stats.items()}
    out.update({f"hamming_{k}_normalized": float(v) / d for k, v in stats.items()})
    return out
