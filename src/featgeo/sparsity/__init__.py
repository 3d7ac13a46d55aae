"""Sparsity-pattern analyses of pruned matrices (SPEC §2, seed 000): feature masks, the Hamming
engine, k-means over masks, cluster metrics and MMM block coherence."""

from featgeo.sparsity.analysis import FeatureAnalysis, analyze_feature, kmeans
from featgeo.sparsity.hamming import (
    hamming_to,
    nearest_features,
    nearest_neighbour_distances,
    pack_masks,
    pairwise_hamming,
)
from featgeo.sparsity.matrices import DenseMatrixWarning, feature_masks, load_matrix, sparsity
from featgeo.sparsity.metrics import (
    ClusterCountWarning,
    block_coherence,
    centroid_metrics,
    hamming_metrics,
)

__all__ = [
    "ClusterCountWarning",
    "DenseMatrixWarning",
    "FeatureAnalysis",
    "analyze_feature",
    "block_coherence",
    "centroid_metrics",
    "feature_masks",
    "hamming_metrics",
    "hamming_to",
    "kmeans",
    "load_matrix",
    "nearest_features",
    "nearest_neighbour_distances",
    "pack_masks",
    "pairwise_hamming",
    "sparsity",
]
