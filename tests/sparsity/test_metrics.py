"""The metric definitions of SPEC §2, checked against values computed by hand."""

import math

import numpy as np
import pytest

from featgeo.sparsity.analysis import analyze_feature, kmeans
from featgeo.sparsity.metrics import (
    block_coherence,
    centroid_metrics,
    cluster_order,
    hamming_metrics,
    hamming_summary,
    separation_band,
)


@pytest.mark.parametrize(
    "ratio,band",
    [
        (2.5, "excellent"),
        (2.0, "good"),
        (1.5, "good"),
        (0.7, "moderate"),
        (0.5, "poor"),
        (0.0, "poor"),
        (math.inf, None),  # ~x / 0: undefined, never "excellent"
        (math.nan, None),
        (None, None),
    ],
)
def test_separation_band(ratio, band):
    assert separation_band(ratio) == band


def test_centroid_metrics_by_hand():
    points = np.array([[0.0, 0.0], [2.0, 0.0], [10.0, 0.0], [10.0, 4.0]])
    labels = np.array([0, 0, 1, 1])
    centroids = np.array([[1.0, 0.0], [10.0, 2.0]])
    m = centroid_metrics(points, labels, centroids)
    assert m.mean_within_centroid_distance == pytest.approx(1.5)  # (1 + 1 + 2 + 2) / 4
    assert m.mean_between_centroid_distance == pytest.approx(math.hypot(9, 2))
    assert m.centroid_separation_ratio == pytest.approx(math.hypot(9, 2) / 1.5)
    assert m.total_inertia == pytest.approx(1 + 1 + 4 + 4)
    assert m.cluster_sizes == [2, 2] and m.cluster_balance == 0.0


def test_identical_masks_in_two_clusters_have_zero_within():
    a, b = np.array([1, 1, 0, 0, 1, 0], bool), np.array([0, 0, 1, 1, 0, 1], bool)
    masks = np.stack([a, a, a, b, b])
    labels = np.array([0, 0, 0, 1, 1])
    d = masks.shape[1]
    normalized = (masks[:, None, :] != masks[None, :, :]).sum(-1) / d
    hm = hamming_metrics(normalized, labels)
    assert hm.within_per_cluster == [0.0, 0.0] and hm.mean_within_hamming == 0.0
    assert hm.mean_between_hamming == pytest.approx(1.0)  # a and b differ everywhere
    assert hm.hamming_separation_ratio is None
    assert "identical masks" in hm.hamming_separation_ratio_undefined
    cm = centroid_metrics(masks.astype(float), labels, np.stack([a, b]).astype(float))
    assert cm.mean_within_centroid_distance == 0.0
    assert cm.centroid_separation_ratio is None and cm.centroid_separation_band is None
    assert "within-cluster distance 0" in cm.centroid_separation_ratio_undefined


def test_hamming_within_is_mean_over_unordered_pairs_and_singletons_are_zero():
    normalized = np.array(
        [[0, 0.2, 0.4, 0.9], [0.2, 0, 0.6, 0.9], [0.4, 0.6, 0, 0.8], [0.9, 0.9, 0.8, 0]]
    )
    hm = hamming_metrics(normalized, np.array([0, 0, 0, 1]))
    assert hm.within_per_cluster == pytest.approx([(0.2 + 0.4 + 0.6) / 3, 0.0])
    assert hm.between_matrix[0][1] == pytest.approx((0.9 + 0.9 + 0.8) / 3)  # all cross pairs
    assert hm.mean_within_hamming == pytest.approx(0.2)


def test_block_coherence_by_hand():
    masks = np.array(
        [
            [1, 0, 0, 0],
            [0, 0, 1, 0],  # block 1: positions 1 and 3 all-zero
            [1, 1, 1, 1],
            [0, 0, 0, 0],
        ],  # block 2: none all-zero
        bool,
    )
    assert block_coherence(masks, block_size=2) == pytest.approx((2 / 4 + 0) / 2)
    # Reordered as [0, 3] and [1, 2]: block 1 zero at 1,2,3; block 2 zero nowhere.
    assert block_coherence(masks, np.array([0, 3, 1, 2]), 2) == pytest.approx((3 / 4) / 2)
    with pytest.raises(ValueError, match="--block-size"):
        block_coherence(masks, block_size=0)


def test_cluster_order_is_stable():
    assert cluster_order(np.array([1, 0, 1, 0])).tolist() == [1, 3, 0, 2]


def test_hamming_summary():
    stats = hamming_summary(np.array([2, 4, 6]), d=8)
    assert stats["hamming_min"] == 2 and stats["hamming_range"] == 4
    assert stats["hamming_mean_normalized"] == pytest.approx(0.5)


def test_kmeans_rejects_too_many_clusters():
    with pytest.raises(ValueError, match="--n-clusters 5 is impossible for 4 points"):
        kmeans(np.zeros((4, 3)), 5, seed=0)


def test_analysis_recovers_planted_mask_groups():
    rng = np.random.default_rng(0)
    prototypes = rng.random((3, 64)) < 0.5
    masks = np.repeat(prototypes, 10, axis=0)  # 30 features, 3 groups of identical masks
    result = analyze_feature(masks, 0, n_features=29, n_clusters=3, seed=0)
    # The 9 exact copies of feature 0 come first (distance 0, ties by index).
    assert result.analysed[:10].tolist() == list(range(10))
    assert result.hamming.mean_within_hamming == 0.0
    assert result.centroid.mean_within_centroid_distance == pytest.approx(0.0, abs=1e-12)
    groups = [set(result.labels[result.analysed // 10 == g]) for g in range(3)]
    assert all(len(g) == 1 for g in groups) and len(set.union(*groups)) == 3
