"""One reference feature, its nearest neighbours by Hamming distance, k-means on the analysed
set, both metric families and MMM block coherence (SPEC §2; seed 000's single analysis)."""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
from threadpoolctl import threadpool_limits

from featgeo.sparsity.hamming import nearest_features, pairwise_hamming
from featgeo.sparsity.metrics import (
    CentroidMetrics,
    ClusterCountWarning,
    HammingMetrics,
    block_coherence,
    centroid_metrics,
    cluster_order,
    distinct_count,
    hamming_metrics,
    hamming_summary,
)

ClusterOn = Literal["masks", "weights"]


@dataclass(frozen=True)
class KMeansFit:
    labels: np.ndarray  # [n] int
    centroids: np.ndarray  # [k, D]
    inertia: float
    n_iter: int


def kmeans(points: np.ndarray, n_clusters: int, seed: int) -> KMeansFit:
    """scikit-learn Lloyd k-means, n_init=10, ``random_state=seed`` (SPEC §2)."""
    from sklearn.cluster import KMeans

    n = points.shape[0]
    if not 1 <= n_clusters <= n:
        raise ValueError(
            f"--n-clusters {n_clusters} is impossible for {n} points; choose 1 <= k <= {n}"
        )
    fitted = KMeans(n_clusters=n_clusters, n_init=10, random_state=seed, algorithm="lloyd")
    # scikit-learn sums cluster centres across OpenMP threads, so with many cores the inertia
    # and centroids change in the last bits from run to run; one thread makes a seed
    # reproducible (these fits are small: ~129 points).
    with threadpool_limits(limits=1, user_api="openmp"):
        fitted.fit(points)
    return KMeansFit(
        fitted.labels_.astype(np.int64),
        fitted.cluster_centers_,
        float(fitted.inertia_),
        int(fitted.n_iter_),
    )


@dataclass
class FeatureAnalysis:
    """Everything one analysis of one reference feature produced."""

    feature_idx: int
    n_features: int
    n_clusters: int
    """Clusters k-means ran with: ``n_clusters_requested`` capped at ``n_distinct_points``."""
    seed: int
    """k-means ``random_state``."""
    cluster_on: str
    block_size: int
    d: int
    """Length of each feature vector (positions compared by Hamming)."""
    analysed: np.ndarray  # [n_features + 1] feature indices: reference first, then neighbours
    neighbour_distances: np.ndarray  # [n_features] int Hamming to the reference
    labels: np.ndarray  # [n_features + 1] cluster label per analysed feature
    hamming_stats: dict[str, float]
    centroid: CentroidMetrics
    hamming: HammingMetrics
    inertia: float
    n_iter: int
    mmm_block_coherence: float
    """Mean block coherence after sorting the analysed features by cluster label."""
    mmm_block_coherence_unsorted: float
    """The same in neighbour order, for comparison."""
    distance_matrix: np.ndarray = field(repr=False)  # [n+1, n+1] int Hamming
    n_clusters_requested: int = 0
    """What was asked for (``--n-clusters`` / ``--k-values``); 0 means ``n_clusters``."""
    n_distinct_points: int = 0
    """Distinct points (masks or weight vectors) among the analysed features."""

    def __post_init__(self) -> None:
        if not self.n_clusters_requested:
            self.n_clusters_requested = self.n_clusters

    def metrics(self) -> dict:
        """Flat, JSON-ready metrics (no per-point arrays)."""
        out = {
            "feature_idx": self.feature_idx,
            "n_features": self.n_features,
            "n_clusters_requested": self.n_clusters_requested,
            "n_clusters": self.n_clusters,
            "n_distinct_points": self.n_distinct_points,
            "seed": self.seed,
            "kmeans_random_state": self.seed,
            "cluster_on": self.cluster_on,
            "d": self.d,
            **self.hamming_stats,
        }
        centroid = self.centroid.to_dict()
        out.update({k: v for k, v in centroid.items()})
        hamming = self.hamming.to_dict()
        out.update(
            {
                "within_hamming_per_cluster": hamming["within_per_cluster"],
                "mean_within_hamming": hamming["mean_within_hamming"],
                "mean_between_hamming": hamming["mean_between_hamming"],
                "mean_between_hamming_undefined": hamming["mean_between_hamming_undefined"],
                "hamming_separation_ratio": hamming["hamming_separation_ratio"],
                "hamming_separation_ratio_undefined": hamming["hamming_separation_ratio_undefined"],
            }
        )
        out.update(
            {
                "total_inertia": self.inertia,
                "n_iter": self.n_iter,
                "block_size": self.block_size,
                "mmm_block_coherence": self.mmm_block_coherence,
                "mmm_block_coherence_unsorted": self.mmm_block_coherence_unsorted,
            }
        )
        return out

    def to_dict(self) -> dict:
        out = self.metrics()
        out["neighbours"] = [
            {"feature": int(i), "hamming": int(d), "hamming_normalized": d / self.d}
            for i, d in zip(self.analysed[1:], self.neighbour_distances, strict=True)
        ]
        out["labels"] = self.labels.tolist()
        return out


def analyze_feature(
    masks: np.ndarray,
    feature_idx: int,
    *,
    n_features: int = 128,
    n_clusters: int = 8,
    seed: int = 42,
    cluster_on: ClusterOn = "masks",
    weights: np.ndarray | None = None,
    block_size: int = 8,
    k_option: str = "--n-clusters",
) -> FeatureAnalysis:
    """Analyse one reference feature.

    masks: [N, D] bool feature masks; weights: [N, D] float, needed for ``cluster_on="weights"``.
    ``seed`` is k-means' ``random_state``. When the analysed set holds fewer distinct points
    than ``n_clusters``, k-means runs with k = the number of distinct points (more clusters
    would be empty or split identical points), a :class:`ClusterCountWarning` naming
    ``k_option`` is emitted, and both counts are recorded (``n_clusters_requested``,
    ``n_clusters``).
    """
    if cluster_on not in ("masks", "weights"):
        raise ValueError(f"--cluster-on must be 'masks' or 'weights', got '{cluster_on}'")
    if cluster_on == "weights" and weights is None:
        raise ValueError("cluster_on='weights' needs the weights")
    neighbours = nearest_features(masks, feature_idx, n_features)
    analysed = np.concatenate([[feature_idx], neighbours.indices])
    if not 1 <= n_clusters <= analysed.size:
        raise ValueError(
            f"{k_option} {n_clusters} is larger than the {analysed.size} "
            "analysed features; lower it or raise the number of neighbours"
        )
    subset = masks[analysed]
    points = subset.astype(np.float64) if cluster_on == "masks" else weights[analysed]
    n_distinct = distinct_count(points)
    k_used = min(n_clusters, n_distinct)
    if k_used < n_clusters:
        what = "mask" if cluster_on == "masks" else "weight vector"
        what += "" if n_distinct == 1 else "s"
        warnings.warn(
            f"{k_option} {n_clusters} is more than the {n_distinct} distinct {what} among the "
            f"{analysed.size} analysed features (reference {feature_idx}); k-means ran with "
            f"k={k_used} (recorded as n_clusters_requested={n_clusters}, n_clusters={k_used})",
            ClusterCountWarning,
            stacklevel=2,
        )
    fit = kmeans(points, k_used, seed)
    d = masks.shape[1]
    distances = pairwise_hamming(subset)
    return FeatureAnalysis(
        feature_idx=int(feature_idx),
        n_features=n_features,
        n_clusters=k_used,
        seed=seed,
        cluster_on=cluster_on,
        block_size=block_size,
        d=d,
        analysed=analysed,
        neighbour_distances=neighbours.distances,
        labels=fit.labels,
        hamming_stats=hamming_summary(neighbours.distances, d),
        centroid=centroid_metrics(points, fit.labels, fit.centroids),
        hamming=hamming_metrics(distances / d, fit.labels, k_used),
        inertia=fit.inertia,
        n_iter=fit.n_iter,
        mmm_block_coherence=block_coherence(subset, cluster_order(fit.labels), block_size),
        mmm_block_coherence_unsorted=block_coherence(subset, None, block_size),
        distance_matrix=distances,
        n_clusters_requested=n_clusters,
        n_distinct_points=n_distinct,
    )


def analysis_as_dict(analysis: FeatureAnalysis) -> dict:
    return asdict(analysis)
