"""Cluster metrics of SPEC §2, in two families with unambiguous names, plus MMM block coherence.

Centroid family (seed 000, "Metrics Explained"): Euclidean distances of points to k-means
centroids. Hamming family (the multi-seed heatmaps): normalized Hamming distances between
features, over *all* pairs (the original sampled 50 cross pairs with an unseeded RNG).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

SEPARATION_BANDS = ((2.0, "excellent"), (1.0, "good"), (0.5, "moderate"))


def separation_band(ratio: float) -> str:
    """>2 excellent, >1 good, >0.5 moderate, else poor."""
    for threshold, band in SEPARATION_BANDS:
        if ratio > threshold:
            return band
    return "poor"


@dataclass(frozen=True)
class CentroidMetrics:
    mean_within_centroid_distance: float
    """Mean Euclidean distance from each point to its own centroid."""
    mean_between_centroid_distance: float
    """Mean pairwise Euclidean distance between centroids."""
    centroid_separation_ratio: float
    """between / within (inf when every point sits on its centroid)."""
    centroid_separation_band: str
    total_inertia: float
    """Sum of squared distances of points to their centroid."""
    cluster_balance: float
    """Standard deviation of the cluster sizes."""
    cluster_sizes: list[int]

    def to_dict(self) -> dict:
        return asdict(self)


def centroid_metrics(
    points: np.ndarray, labels: np.ndarray, centroids: np.ndarray
) -> CentroidMetrics:
    """points: [n, D] float, labels: [n] int in [0, k), centroids: [k, D]."""
    points = np.asarray(points, dtype=np.float64)
    centroids = np.asarray(centroids, dtype=np.float64)
    to_own = np.linalg.norm(points - centroids[labels], axis=1)
    within = float(to_own.mean())
    k = centroids.shape[0]
    if k > 1:
        diff = centroids[:, None, :] - centroids[None, :, :]
        pair = np.linalg.norm(diff, axis=-1)[np.triu_indices(k, 1)]
        between = float(pair.mean())
    else:
        between = 0.0
    ratio = between / within if within > 0 else float("inf")
    sizes = np.bincount(labels, minlength=k)
    return CentroidMetrics(
        within,
        between,
        ratio,
        separation_band(ratio),
        float((to_own**2).sum()),
        float(sizes.std()),
        sizes.tolist(),
    )


@dataclass(frozen=True)
class HammingMetrics:
    within_per_cluster: list[float]
    """Mean normalized Hamming over all unordered pairs inside each cluster (0 for a singleton)."""
    mean_within_hamming: float
    between_matrix: list[list[float]]
    """[k, k]: mean normalized Hamming over all cross pairs of clusters i and j (diagonal:
    within)."""
    mean_between_hamming: float
    """Mean of the upper triangle of ``between_matrix``."""
    hamming_separation_ratio: float

    def to_dict(self) -> dict:
        return asdict(self)


def hamming_metrics(
    normalized: np.ndarray, labels: np.ndarray, k: int | None = None
) -> HammingMetrics:
    """normalized: [n, n] normalized Hamming distances (count / D), labels: [n]."""
    labels = np.asarray(labels)
    k = int(labels.max()) + 1 if k is None else k
    members = [np.flatnonzero(labels == c) for c in range(k)]
    within = []
    for idx in members:
        if idx.size < 2:
            within.append(0.0)
            continue
        block = normalized[np.ix_(idx, idx)]
        within.append(float(block[np.triu_indices(idx.size, 1)].mean()))
    between = np.zeros((k, k))
    for i in range(k):
        between[i, i] = within[i]
        for j in range(i + 1, k):
            if members[i].size and members[j].size:
                between[i, j] = between[j, i] = normalized[np.ix_(members[i], members[j])].mean()
    mean_within = float(np.mean(within))
    mean_between = float(between[np.triu_indices(k, 1)].mean()) if k > 1 else 0.0
    ratio = mean_between / mean_within if mean_within > 0 else float("inf")
    return HammingMetrics(within, mean_within, between.tolist(), mean_between, ratio)


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
