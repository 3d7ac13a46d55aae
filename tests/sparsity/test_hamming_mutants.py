"""Tests written for the surviving mutants of ``featgeo.sparsity.hamming`` (``make mutate``).

Expected values come from scipy's Hamming distance or plain numpy in the test. The path
tests record which engine calls a computation makes (row blocks, columns, worker count) with
spies that still run the real code, because every path gives the same integers: what they pin
is the documented choice of path (``threads``, ``block_rows``, the 2^30 threshold, the upper
triangle of a set against itself), not the numbers.
"""

from __future__ import annotations

import os

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
    smallest_with_index_ties,
)


def scipy_counts(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.rint(cdist(a, b, "hamming") * a.shape[1]).astype(np.int64)


@pytest.fixture
def spy(monkeypatch):
    """Records (rows of a, rows of b) of every _hamming_block call and the max_workers of every
    ThreadPoolExecutor; both still run the real code."""
    calls: list[tuple[int, int]] = []
    workers: list[int | None] = []
    real_block, real_pool = hamming._hamming_block, hamming.ThreadPoolExecutor

    def block(codes_a, codes_b, out):
        calls.append((codes_a.shape[0], codes_b.shape[0]))
        real_block(codes_a, codes_b, out)

    def pool(max_workers=None):
        workers.append(max_workers)
        return real_pool(max_workers)

    monkeypatch.setattr(hamming, "_hamming_block", block)
    monkeypatch.setattr(hamming, "ThreadPoolExecutor", pool)
    return calls, workers


def masks_of(n: int, d: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, d)) < 0.4


def test_threads_one_is_a_single_call(spy):
    calls, workers = spy
    m = masks_of(20, 70)
    np.testing.assert_array_equal(pairwise_hamming(m, threads=1, block_rows=3), scipy_counts(m, m))
    assert calls == [(20, 20)] and workers == []


def test_forced_threads_compute_the_upper_triangle_of_blocks(spy):
    calls, workers = spy
    m = masks_of(20, 70, seed=1)
    got = pairwise_hamming(m, threads=2, block_rows=7)
    np.testing.assert_array_equal(got, scipy_counts(m, m))
    # blocks of rows 0-6, 7-13, 14-19, each against the columns from its first row on
    assert sorted(calls) == sorted([(7, 20), (7, 13), (6, 6)]) and workers == [2]


def test_forced_threads_two_sets_compute_every_column(spy):
    calls, workers = spy
    a, b = masks_of(10, 70, seed=2), masks_of(4, 70, seed=3)
    np.testing.assert_array_equal(
        pairwise_hamming(a, b, threads=3, block_rows=4), scipy_counts(a, b)
    )
    assert sorted(calls) == [(2, 4), (4, 4), (4, 4)] and workers == [3]


def test_default_block_rows_is_512(spy):
    calls, _ = spy
    m = masks_of(600, 9, seed=4)
    np.testing.assert_array_equal(pairwise_hamming(m, threads=2), scipy_counts(m, m))
    assert sorted(calls) == [(88, 88), (512, 600)]


def test_default_threads_follow_the_byte_threshold(spy, monkeypatch):
    """None runs one call below _PARALLEL_MIN_BYTES byte comparisons and row blocks on every
    core from it on (lowered here so that a small input reaches it)."""
    calls, workers = spy
    a, b = masks_of(6, 70, seed=5), masks_of(5, 70, seed=6)
    comparisons = 6 * 5 * pack_masks(a).shape[1]  # 6 x 5 pairs of 16 bytes
    cores = max(1, len(os.sched_getaffinity(0)))
    monkeypatch.setattr(hamming, "_PARALLEL_MIN_BYTES", comparisons + 1)
    np.testing.assert_array_equal(pairwise_hamming(a, b, block_rows=4), scipy_counts(a, b))
    assert calls == [(6, 5)] and workers == []
    calls.clear()
    monkeypatch.setattr(hamming, "_PARALLEL_MIN_BYTES", comparisons)
    np.testing.assert_array_equal(pairwise_hamming(a, b, block_rows=4), scipy_counts(a, b))
    assert sorted(calls) == [(2, 5), (4, 5)] and workers == [cores]


def test_cpu_workers_is_the_affinity_count(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert hamming._cpu_workers() == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(), raising=False)
    assert hamming._cpu_workers() == 1


def test_cpu_workers_without_affinity(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert hamming._cpu_workers() == 6
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert hamming._cpu_workers() == 1


def test_numpy_fallback_with_many_row_steps(monkeypatch):
    """Rows of a in steps of 2^22 // (words of b): with b of 700 x 64 words the step is 93 rows,
    fewer than a's 100 rows and more than its 64 words per row, so the second step must run."""
    monkeypatch.setattr(hamming, "_faiss", lambda: None)
    a, b = masks_of(100, 4096, seed=7), masks_of(700, 4096, seed=8)
    np.testing.assert_array_equal(pairwise_hamming(a, b), scipy_counts(a, b))


def test_pack_masks_reads_truth_not_type():
    values = np.array([[0.0, 1.0, 0.5, -2.0, 0.0, 0.0, 0.0, 3.0, 1.0]])
    expected = np.zeros((1, 8), np.uint8)
    expected[0, 0] = 0b01110001  # positions 1, 2, 3 and 7 non-zero
    expected[0, 1] = 0b10000000  # position 8
    np.testing.assert_array_equal(pack_masks(values), expected)


def test_type_error_names_the_type():
    with pytest.raises(TypeError, match=r"threads must be an int, got float 1\.5"):
        pairwise_hamming(np.zeros((2, 3), bool), threads=1.5)


def test_a_one_dimensional_first_set_is_refused_with_a_two_dimensional_second():
    with pytest.raises(ValueError, match=r"must be \[N, D\]"):
        pairwise_hamming(np.zeros(5, bool), np.zeros((3, 5), bool))


@pytest.mark.parametrize("d", [2**24, 2**24 + 1])
def test_cuda_refuses_inexact_lengths_before_touching_the_device(d):
    # The check runs before any CUDA call, so it is tested without a GPU.
    with pytest.raises(ValueError, match=f"D={d} is too long for exact float32"):
        pairwise_hamming(np.zeros((1, d), bool), device="cuda")


def test_cuda_path_gets_both_sets_and_the_device(monkeypatch):
    """The CUDA engine, replaced by a CPU matmul that checks what it is given."""
    seen = []

    def fake(masks_a, masks_b, device):
        seen.append(device)
        assert device.type == "cuda"
        assert masks_a.dtype == bool and masks_b.dtype == bool  # the engine reads 0 / 1 floats
        a, b = torch.from_numpy(masks_a).double(), torch.from_numpy(masks_b).double()
        dist = a.sum(1, keepdim=True) + b.sum(1)[None] - 2 * a @ b.T
        return dist.round().to(torch.int32).numpy()

    monkeypatch.setattr(hamming, "_pairwise_cuda", fake)
    a, b = masks_of(7, 30, seed=9), masks_of(4, 30, seed=10)
    np.testing.assert_array_equal(pairwise_hamming(a, b, device="cuda"), scipy_counts(a, b))
    np.testing.assert_array_equal(pairwise_hamming(a, device="cuda:0"), scipy_counts(a, a))
    counts_a, counts_b = a * 3, b * np.arange(1, 31)  # integer masks: non-zero is True
    np.testing.assert_array_equal(
        pairwise_hamming(counts_a, counts_b, device="cuda"), scipy_counts(a, b)
    )
    np.testing.assert_array_equal(pairwise_hamming(counts_a, device="cuda"), scipy_counts(a, a))
    assert len(seen) == 4


def test_nearest_neighbour_distances_passes_its_device(monkeypatch):
    devices = []
    real = hamming.pairwise_hamming

    def engine(a, b, *, device="cpu"):
        devices.append(str(device))
        return real(a, b)

    monkeypatch.setattr(hamming, "pairwise_hamming", engine)
    m = masks_of(9, 20, seed=11)
    nearest_neighbour_distances(m, device="cuda", block=4)
    assert devices == ["cuda"] * 3


def test_nearest_neighbour_distances_int32_and_every_block():
    m = masks_of(200, 40, seed=12)
    full = scipy_counts(m, m)
    np.fill_diagonal(full, np.iinfo(np.int64).max)
    got = nearest_neighbour_distances(m, block=7)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, full.min(axis=1))


def test_codes_are_not_repacked(monkeypatch):
    m = masks_of(12, 70, seed=13)
    codes = pack_masks(m)
    expected = scipy_counts(m, m)

    def no_packing(masks):
        raise AssertionError("codes were given: the masks must not be packed again")

    monkeypatch.setattr(hamming, "pack_masks", no_packing)
    np.testing.assert_array_equal(hamming_to(m, 5, codes=codes), expected[5])
    got = nearest_features(m, 5, 3, codes=codes)
    row = expected[5].copy()
    row[5] = 10**9
    order = np.lexsort((np.arange(12), row))[:3]
    np.testing.assert_array_equal(got.indices, order)
    np.testing.assert_array_equal(got.distances, row[order])
    assert got.distances.dtype == np.int32 and got.indices.dtype == np.int64


def test_nearest_features_range_error_names_the_last_index():
    with pytest.raises(ValueError, match=r"this matrix has 12 features \(0-11\)"):
        nearest_features(masks_of(12, 10), 12, 1)


def test_smallest_with_index_ties_all_and_distinct():
    values = np.array([3, 1, 1, 0])
    np.testing.assert_array_equal(smallest_with_index_ties(values, 4), [3, 1, 2, 0])
    np.testing.assert_array_equal(smallest_with_index_ties(values, 9), [3, 1, 2, 0])
    distinct = np.array([5, 4, 3, 2, 1, 0, 9, 8])
    for n in range(1, 8):
        np.testing.assert_array_equal(
            smallest_with_index_ties(distinct, n), np.argsort(distinct, kind="stable")[:n]
        )


def test_hamming_to_with_the_numpy_fallback(monkeypatch):
    monkeypatch.setattr(hamming, "_faiss", lambda: None)
    m = masks_of(9, 70, seed=14)
    expected = scipy_counts(m, m)
    for index in (0, 4, 8):
        got = hamming_to(m, index)
        assert got.shape == (9,) and got.dtype == np.int32
        np.testing.assert_array_equal(got, expected[index])


@pytest.mark.gpu
def test_cuda_reads_non_bool_masks_as_truth():
    """On CUDA the masks become float32 for the matmul: an integer mask with values other than
    0 / 1 must be made bool first (on the CPU, pack_masks does it again, so only CUDA shows)."""
    rng = np.random.default_rng(15)
    a = (rng.random((9, 40)) < 0.5) * rng.integers(2, 5, (9, 40))
    b = (rng.random((6, 40)) < 0.5) * 3
    np.testing.assert_array_equal(
        pairwise_hamming(a, b, device="cuda"), scipy_counts(a != 0, b != 0)
    )
    np.testing.assert_array_equal(pairwise_hamming(a, device="cuda"), scipy_counts(a != 0, a != 0))
