"""Parity tests of the Hamming engine: faiss popcount vs scipy vs the numpy fallback, top-N
selection vs a full stable sort, and its input errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from featgeo.sparsity import hamming
from featgeo.sparsity.hamming import (
    hamming_to,
    nearest_features,
    nearest_neighbour_distances,
    pack_masks,
    pairwise_hamming,
)
from featgeo.sparsity.matrices import feature_masks


def pruned_matrix(rows: int, cols: int, zero_fraction: float = 0.5, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    weights = torch.randn(rows, cols, generator=gen)
    weights[torch.rand(rows, cols, generator=gen) < zero_fraction] = 0
    return weights


def scipy_counts(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """scipy's normalized Hamming times D, checked to be integral, as int."""
    scaled = cdist(a, b, "hamming") * a.shape[1]
    counts = np.rint(scaled)
    assert np.abs(scaled - counts).max() < 1e-9
    return counts.astype(np.int64)


SHAPES = [(64, 40), (37, 53), (130, 17), (8, 9), (1, 5), (200, 3)]


@pytest.mark.parametrize("axis", ["columns", "rows"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_pairwise_equals_scipy(shape, axis):
    masks = feature_masks(pruned_matrix(*shape), axis=axis, warn_dense=False)
    assert masks.shape == ((shape[1], shape[0]) if axis == "columns" else shape)
    ours = pairwise_hamming(masks)
    assert ours.dtype == np.int32
    np.testing.assert_array_equal(ours, scipy_counts(masks, masks))


@pytest.mark.parametrize("d", [1, 7, 63, 64, 65, 127, 129, 1000])
def test_d_not_a_multiple_of_the_word(d):
    rng = np.random.default_rng(d)
    a, b = rng.random((11, d)) < 0.5, rng.random((6, d)) < 0.3
    assert pack_masks(a).shape == (11, -(-d // 64) * 8)
    np.testing.assert_array_equal(pairwise_hamming(a, b), scipy_counts(a, b))


def test_extreme_masks():
    d = 70
    masks = np.array([np.zeros(d, bool), np.ones(d, bool), np.arange(d) % 2 == 0])
    expected = np.array([[0, 70, 35], [70, 0, 35], [35, 35, 0]])
    np.testing.assert_array_equal(pairwise_hamming(masks), expected)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_numpy_fallback_equals_faiss(shape, monkeypatch):
    import faiss  # a declared dependency (faiss-cpu): missing it is a failure, not a skip

    assert hamming._faiss() is faiss
    masks = feature_masks(pruned_matrix(*shape), warn_dense=False)
    other = masks[::-1][: max(1, masks.shape[0] // 2)]
    with_faiss = pairwise_hamming(masks, other)
    monkeypatch.setattr(hamming, "_faiss", lambda: None)
    np.testing.assert_array_equal(pairwise_hamming(masks, other), with_faiss)


# The threaded path normally runs only above 2^30 byte comparisons (never in CPU tests);
# ``threads`` forces it on small inputs, with blocks of ``block_rows`` rows that do not divide
# the number of features, so the upper triangle is cut into ragged blocks that must be mirrored.
@pytest.mark.parametrize("engine", ["faiss", "numpy"])
@pytest.mark.parametrize("threads, block_rows", [(2, 7), (3, 16), (2, 1), (4, 200)])
def test_threaded_path_against_itself_equals_scipy(threads, block_rows, engine, monkeypatch):
    if engine == "numpy":
        monkeypatch.setattr(hamming, "_faiss", lambda: None)
    rng = np.random.default_rng(threads * 100 + block_rows)
    masks = rng.random((45, 77)) < 0.4
    ours = pairwise_hamming(masks, threads=threads, block_rows=block_rows)
    assert ours.dtype == np.int32
    np.testing.assert_array_equal(ours, scipy_counts(masks, masks))
    np.testing.assert_array_equal(ours, ours.T)
    # The same array passed twice takes the mirrored path too.
    np.testing.assert_array_equal(
        pairwise_hamming(masks, masks, threads=threads, block_rows=block_rows),
        scipy_counts(masks, masks),
    )


@pytest.mark.parametrize("engine", ["faiss", "numpy"])
@pytest.mark.parametrize("threads, block_rows", [(2, 7), (3, 16), (4, 200)])
def test_threaded_path_two_sets_equals_scipy(threads, block_rows, engine, monkeypatch):
    if engine == "numpy":
        monkeypatch.setattr(hamming, "_faiss", lambda: None)
    rng = np.random.default_rng(block_rows)
    a, b = rng.random((39, 130)) < 0.5, rng.random((23, 130)) < 0.2
    np.testing.assert_array_equal(
        pairwise_hamming(a, b, threads=threads, block_rows=block_rows), scipy_counts(a, b)
    )
    # An equal copy is a different set for the engine: no mirroring, same numbers.
    np.testing.assert_array_equal(
        pairwise_hamming(a, a.copy(), threads=threads, block_rows=block_rows),
        scipy_counts(a, a),
    )


def test_threads_one_and_default_agree_with_the_threaded_path():
    masks = np.random.default_rng(3).random((50, 33)) < 0.5
    forced = pairwise_hamming(masks, threads=2, block_rows=8)
    np.testing.assert_array_equal(pairwise_hamming(masks, threads=1), forced)
    np.testing.assert_array_equal(pairwise_hamming(masks), forced)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(threads=0), ValueError, "threads must be >= 1, got 0"),
        (dict(threads=1.5), TypeError, "threads must be an int"),
        (dict(block_rows=0), ValueError, "block_rows must be >= 1, got 0"),
        (dict(block_rows=True), TypeError, "block_rows must be an int"),
    ],
    ids=["threads-0", "threads-float", "block-0", "block-bool"],
)
def test_threads_and_block_rows_are_validated(kwargs, error, match):
    with pytest.raises(error, match=match):
        pairwise_hamming(np.zeros((3, 5), bool), **kwargs)


def test_numpy_fallback_blocks_large_inputs(monkeypatch):
    """The fallback bounds its temporary by processing row blocks; all blocks must land."""
    monkeypatch.setattr(hamming, "_faiss", lambda: None)
    rng = np.random.default_rng(1)
    a, b = rng.random((300, 4100)) < 0.5, rng.random((40, 4100)) < 0.5
    np.testing.assert_array_equal(pairwise_hamming(a, b), scipy_counts(a, b))


def test_hamming_to_is_a_row_of_the_pairwise_matrix():
    masks = feature_masks(pruned_matrix(77, 45), warn_dense=False)
    full = pairwise_hamming(masks)
    for index in (0, 13, 44):
        np.testing.assert_array_equal(hamming_to(masks, index), full[index])


def tied_masks() -> np.ndarray:
    """Features with planted exact duplicates and equal distances to feature 0."""
    rng = np.random.default_rng(3)
    masks = rng.random((30, 50)) < 0.5
    masks[[4, 9, 22]] = masks[0]  # distance 0 to feature 0, three-way tie
    flipped = masks[0].copy()
    flipped[:3] ^= True
    masks[[2, 17, 25, 29]] = flipped  # distance 3, four-way tie
    return masks


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 10, 29])
def test_nearest_features_is_the_head_of_a_stable_sort(n):
    masks = tied_masks()
    dist = pairwise_hamming(masks)[0].astype(np.int64)
    others = np.arange(1, masks.shape[0])
    expected = others[np.lexsort((others, dist[others]))][:n]
    got = nearest_features(masks, 0, n)
    np.testing.assert_array_equal(got.indices, expected)
    np.testing.assert_array_equal(got.distances, dist[expected])
    if n >= 7:
        np.testing.assert_array_equal(got.indices[:7], [4, 9, 22, 2, 17, 25, 29])


def test_nearest_features_never_returns_the_reference():
    masks = np.zeros((5, 10), bool)  # every distance is 0
    got = nearest_features(masks, 2, 4)
    np.testing.assert_array_equal(got.indices, [0, 1, 3, 4])


BAD_NEAREST = [
    (dict(index=-1, n=2), "--feature-idx -1 is out of range"),
    (dict(index=30, n=2), "--feature-idx 30 is out of range; this matrix has 30"),
    (dict(index=0, n=0), "--n-features 0 is impossible"),
    (dict(index=0, n=30), "there are only 29 other features"),
]


@pytest.mark.parametrize("kwargs, match", BAD_NEAREST, ids=[m for _, m in BAD_NEAREST])
def test_nearest_features_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        nearest_features(tied_masks(), **kwargs)


def test_pairwise_shape_errors():
    with pytest.raises(ValueError, match="same D"):
        pairwise_hamming(np.zeros((3, 5), bool), np.zeros((3, 6), bool))
    with pytest.raises(ValueError, match=r"must be \[N, D\]"):
        pairwise_hamming(np.zeros(5, bool))


@pytest.mark.parametrize("block", [1, 7, 4096])
def test_nearest_neighbour_distances(block):
    masks = tied_masks()
    full = pairwise_hamming(masks).astype(np.int64)
    np.fill_diagonal(full, np.iinfo(np.int64).max)
    got = nearest_neighbour_distances(masks, block=block)
    np.testing.assert_array_equal(got, full.min(axis=1))
    assert got[0] == 0 and got[4] == 0  # planted duplicates
