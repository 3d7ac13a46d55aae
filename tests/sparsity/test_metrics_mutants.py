"""Tests written to kill the mutants that survived `make mutate MODULES=sparsity.metrics`
(docs/testing.md). Every expected value is computed here by hand or with plain numpy/Python,
never with featgeo."""

import math
import warnings

import numpy as np
import pytest

from featgeo.sparsity.metrics import (
    UNDEFINED_ONE_CLUSTER,
    UNDEFINED_ZERO_WITHIN,
    UNDEFINED_ZERO_WITHIN_HAMMING,
    block_coherence,
    centroid_metrics,
    cluster_order,
    hamming_metrics,
    hamming_summary,
)

# --- block_coherence --------------------------------------------------------------------------


def _coherence_by_hand(masks: np.ndarray, block_size: int) -> float:
    """Mean over consecutive blocks of the fraction of columns that are zero in every row."""
    scores = []
    for start in range(0, masks.shape[0], block_size):
        block = masks[start : start + block_size]
        zero_cols = sum(1 for col in range(masks.shape[1]) if not any(block[:, col]))
        scores.append(zero_cols / masks.shape[1])
    return sum(scores) / len(scores)


def test_block_coherence_default_block_is_eight_rows():
    # 9 rows: blocks of 8 give two blocks (8 + 1), blocks of 9 give one. Row 8 (the ninth) is
    # the only one that is all zero, so the two answers differ.
    masks = np.ones((9, 4), dtype=bool)
    masks[8] = False
    masks[:8, 3] = False  # column 3 is zero in the first eight rows
    assert block_coherence(masks) == pytest.approx(_coherence_by_hand(masks, 8))
    assert block_coherence(masks) == pytest.approx((1 / 4 + 1) / 2)
    assert block_coherence(masks) != pytest.approx(_coherence_by_hand(masks, 9))


def test_block_coherence_block_of_one_is_mean_sparsity():
    # A block of one feature is valid: its coherence is that feature's share of zeros.
    masks = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=bool)
    assert block_coherence(masks, block_size=1) == pytest.approx((3 / 4 + 2 / 4 + 0) / 3)


# --- centroid_metrics -------------------------------------------------------------------------


def test_centroid_sizes_keep_trailing_empty_clusters():
    points = np.array([[0.0, 0.0], [0.0, 1.0], [4.0, 0.0], [4.0, 1.0]])
    centroids = np.array([[0.0, 0.5], [4.0, 0.5], [9.0, 9.0]])  # cluster 2 owns no point
    m = centroid_metrics(points, np.array([0, 0, 1, 1]), centroids)
    assert m.cluster_sizes == [2, 2, 0]
    assert m.n_empty_clusters == 1
    assert m.mean_between_centroid_distance == pytest.approx(4.0)  # only the two live centres


def test_singleton_cluster_counts_as_a_cluster():
    points = np.array([[0.0], [2.0], [10.0]])
    centroids = np.array([[1.0], [10.0]])
    m = centroid_metrics(points, np.array([0, 0, 1]), centroids)
    assert m.n_clusters_effective == 2
    assert m.cluster_sizes == [2, 1]
    assert m.mean_between_centroid_distance == pytest.approx(9.0)
    assert m.mean_within_centroid_distance == pytest.approx((1 + 1 + 0) / 3)
    assert m.centroid_separation_ratio == pytest.approx(9.0 / (2 / 3))
    assert m.cluster_balance == pytest.approx(np.std([2, 1]))


def test_single_cluster_names_why_between_is_undefined():
    points = np.array([[0.0, 0.0], [1.0, 1.0]])
    m = centroid_metrics(points, np.array([0, 0]), np.array([[0.5, 0.5]]))
    assert m.mean_between_centroid_distance is None
    assert m.mean_between_centroid_distance_undefined == UNDEFINED_ONE_CLUSTER.format(n=1)
    assert m.centroid_separation_ratio_undefined == UNDEFINED_ONE_CLUSTER.format(n=1)


def test_float32_centroids_are_measured_in_float64():
    # sklearn's k-means returns float32 centres for float32 input. In float32,
    # |(1, 1e-4)| = sqrt(1 + 1e-8) rounds to exactly 1; in float64 it does not.
    centroids = np.array([[0.0, 0.0], [1.0, 1e-4]], dtype=np.float32)
    points = centroids.astype(np.float64)  # every point sits on its centre
    points = np.vstack([points, points])
    c64 = centroids.astype(np.float64)
    expected = math.hypot(c64[1, 0], c64[1, 1])
    assert expected != 1.0
    m = centroid_metrics(points, np.array([0, 1, 0, 1]), centroids)
    assert m.mean_between_centroid_distance == pytest.approx(expected, rel=1e-13, abs=0)


def test_zero_points_leave_every_cluster_empty():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # mean of an empty slice
        m = centroid_metrics(np.zeros((0, 2)), np.zeros(0, dtype=int), np.zeros((2, 2)))
    assert m.cluster_sizes == [0, 0]
    assert m.n_empty_clusters == 2
    assert m.centroid_separation_ratio is None
    assert m.centroid_separation_ratio_undefined == UNDEFINED_ONE_CLUSTER.format(n=0)


def test_all_zero_points_make_the_ratio_undefined_not_a_division_by_zero():
    # Fully pruned features: every mask is all zero, within = 0 and the largest |coordinate| is
    # 0 too, so the "within <= rtol * scale" test is 0 <= 0.
    points = np.zeros((4, 3))
    m = centroid_metrics(points, np.array([0, 0, 1, 1]), np.zeros((2, 3)))
    assert m.centroid_separation_ratio is None
    assert m.centroid_separation_ratio_undefined == UNDEFINED_ZERO_WITHIN
    assert m.centroid_separation_band is None


@pytest.mark.parametrize("scale", [1e6, 1e-9], ids=["large-coordinates", "small-coordinates"])
def test_zero_within_threshold_is_relative_to_the_coordinates(scale):
    # Two well separated clusters, spread out by 1e-12 of the coordinate scale (1e-13 of it:
    # under the threshold) or by 1e-2 of it (over): the verdict must not depend on the units.
    base = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    labels = np.array([0, 0, 1, 1])
    for spread, undefined in ((1e-13, True), (1e-2, False)):
        points = base.copy()
        points[0, 0] += spread
        points[1, 0] -= spread
        points *= scale
        centroids = np.array([points[:2].mean(axis=0), points[2:].mean(axis=0)])
        m = centroid_metrics(points, labels, centroids)
        if undefined:
            assert m.centroid_separation_ratio is None, spread
            assert m.centroid_separation_ratio_undefined == UNDEFINED_ZERO_WITHIN
        else:
            within = spread * scale / 2  # two of four points sit spread * scale off-centre
            between = math.sqrt(2) * scale
            assert m.centroid_separation_ratio == pytest.approx(between / within, rel=1e-6)


# --- hamming_metrics --------------------------------------------------------------------------


def _two_pair_distances() -> np.ndarray:
    """4 features in clusters {0, 1} and {2, 3}: within 0.1 and 0.3, cross pairs 0.5..0.8."""
    d = np.array(
        [
            [0.0, 0.1, 0.5, 0.6],
            [0.1, 0.0, 0.7, 0.8],
            [0.5, 0.7, 0.0, 0.3],
            [0.6, 0.8, 0.3, 0.0],
        ]
    )
    return d


def test_hamming_between_matrix_has_the_within_means_on_its_diagonal():
    m = hamming_metrics(_two_pair_distances(), np.array([0, 0, 1, 1]))
    assert m.between_matrix[0][0] == pytest.approx(0.1)
    assert m.between_matrix[1][1] == pytest.approx(0.3)
    assert m.between_matrix[0][1] == pytest.approx((0.5 + 0.6 + 0.7 + 0.8) / 4)


def test_hamming_explicit_k_keeps_empty_clusters():
    m = hamming_metrics(_two_pair_distances(), np.array([0, 0, 1, 1]), k=3)
    assert m.within_per_cluster == [pytest.approx(0.1), pytest.approx(0.3), None]
    assert len(m.between_matrix) == 3
    assert m.between_matrix[2] == [None, None, None]


def test_hamming_single_cluster_is_undefined_with_its_reason():
    m = hamming_metrics(_two_pair_distances(), np.array([0, 0, 0, 0]))
    assert m.mean_between_hamming is None
    assert m.mean_between_hamming_undefined == UNDEFINED_ONE_CLUSTER.format(n=1)
    assert m.mean_between_hamming_undefined == (
        "only 1 non-empty cluster: no pair of clusters to compare"
    )
    assert m.hamming_separation_ratio is None
    assert m.hamming_separation_ratio_undefined == UNDEFINED_ONE_CLUSTER.format(n=1)


def test_hamming_within_exactly_at_the_threshold_is_zero():
    # "at or below" 1e-12 is zero: a within mean of exactly 1e-12 makes the ratio undefined.
    d = np.full((4, 4), 0.5)
    np.fill_diagonal(d, 0.0)
    d[0, 1] = d[1, 0] = d[2, 3] = d[3, 2] = 1e-12
    m = hamming_metrics(d, np.array([0, 0, 1, 1]))
    assert m.mean_within_hamming == 1e-12
    assert m.hamming_separation_ratio is None
    assert m.hamming_separation_ratio_undefined == UNDEFINED_ZERO_WITHIN_HAMMING


# --- cluster_order / hamming_summary ----------------------------------------------------------


def test_cluster_order_is_stable_on_many_ties():
    # Python's sort is stable; numpy's default argsort on 1000 ints with 3 values is not.
    labels = np.random.default_rng(0).integers(0, 3, 1000)
    expected = sorted(range(labels.size), key=lambda i: labels[i])
    assert cluster_order(labels).tolist() == expected


def test_hamming_summary_is_computed_in_float64():
    # float32 arithmetic gives 5/3 as 1.6666666; the summary promises float64.
    out = hamming_summary(np.array([1, 2, 2], dtype=np.float32), d=4)
    assert out["hamming_mean"] == pytest.approx(5 / 3, rel=1e-12, abs=0)
    assert out["hamming_std"] == pytest.approx(math.sqrt(2 / 9), rel=1e-12, abs=0)
    assert out["hamming_mean_normalized"] == pytest.approx(5 / 12, rel=1e-12, abs=0)
