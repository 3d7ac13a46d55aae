"""The Hamming engine: exact integer distances between binary feature masks.

CPU: masks are bit-packed (8 positions per byte) and compared with faiss's popcount kernels
(``faiss.hammings``), the fastest correct tool we measured (benchmarks/hamming.py); without
faiss, a blocked numpy XOR + ``bitwise_count`` gives the same integers. CUDA: the matmul
formulation d(a, b) = |a| + |b| - 2 a.b in float32, exact because every term is an integer
below 2^24. Top-N neighbours use a partial selection with index tie-breaking.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import torch

_MAX_EXACT_FLOAT32 = 2**24
# Below this many byte comparisons (about 0.1 s of popcount work) one single-threaded call wins.
_PARALLEL_MIN_BYTES = 2**30


def pack_masks(masks: np.ndarray) -> np.ndarray:
    """[N, D] bool -> [N, ceil(D / 64) * 8] uint8, zero-padded to whole 64-bit words."""
    masks = np.asarray(masks, dtype=bool)
    n, d = masks.shape
    padded_bits = -(-d // 64) * 64
    if padded_bits != d:
        masks = np.concatenate([masks, np.zeros((n, padded_bits - d), dtype=bool)], axis=1)
    return np.ascontiguousarray(np.packbits(masks, axis=1))


def _faiss():
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def _cpu_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _hamming_block(codes_a: np.ndarray, codes_b: np.ndarray, out: np.ndarray) -> None:
    """out[i, j] = popcount(codes_a[i] ^ codes_b[j]); out: [len(a), len(b)] int32 view."""
    faiss = _faiss()
    if faiss is not None:
        # faiss.hammings is single-threaded and releases the GIL, so blocks run in parallel.
        faiss.hammings(
            faiss.swig_ptr(codes_a),
            faiss.swig_ptr(codes_b),
            codes_a.shape[0],
            codes_b.shape[0],
            codes_a.shape[1],
            faiss.swig_ptr(out),
        )
        return
    words_a, words_b = codes_a.view(np.uint64), codes_b.view(np.uint64)
    step = max(1, 2**22 // max(1, words_b.size))  # bound the [step, Nb, words] temporary
    for start in range(0, words_a.shape[0], step):
        xor = words_a[start : start + step, None, :] ^ words_b[None, :, :]
        out[start : start + step] = np.bitwise_count(xor).sum(axis=-1, dtype=np.int32)


def _pairwise_cpu(
    codes_a: np.ndarray, codes_b: np.ndarray, block: int = 512, threads: int | None = None
) -> np.ndarray:
    """All pairs in row blocks of ``block`` on ``threads`` threads (None: every core, and only
    above ``_PARALLEL_MIN_BYTES`` byte comparisons; 1: one single-threaded call). For a set
    against itself only the upper triangle of blocks is computed and then mirrored (half the
    popcounts)."""
    n_a, n_b = codes_a.shape[0], codes_b.shape[0]
    out = np.empty((n_a, n_b), dtype=np.int32)
    if threads is None:  # threads would cost more than they save on small comparisons
        threads = _cpu_workers() if n_a * n_b * codes_a.shape[1] >= _PARALLEL_MIN_BYTES else 1
    if threads == 1:
        _hamming_block(codes_a, codes_b, out)
        return out
    symmetric = codes_b is codes_a
    starts = range(0, n_a, block)

    def run(lo: int) -> None:
        hi, first_col = min(lo + block, n_a), (lo if symmetric else 0)
        rows = np.empty((hi - lo, n_b - first_col), dtype=np.int32)
        _hamming_block(codes_a[lo:hi], codes_b[first_col:], rows)
        out[lo:hi, first_col:] = rows

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(run, starts))
    if symmetric:
        for lo in starts:
            hi = min(lo + block, n_a)
            out[hi:, lo:hi] = out[lo:hi, hi:].T
    return out


def _pairwise_cuda(masks_a: np.ndarray, masks_b: np.ndarray, device: torch.device) -> np.ndarray:
    a = torch.from_numpy(masks_a).to(device, torch.float32)
    b = torch.from_numpy(masks_b).to(device, torch.float32)
    overlap = a @ b.T  # [Na, Nb], integer-valued
    dist = a.sum(1, keepdim=True) + b.sum(1).unsqueeze(0) - 2 * overlap
    return dist.round().to(torch.int32).cpu().numpy()


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


def pairwise_hamming(
    masks_a: np.ndarray,
    masks_b: np.ndarray | None = None,
    *,
    device: str | torch.device = "cpu",
    threads: int | None = None,
    block_rows: int = 512,
) -> np.ndarray:
    """Hamming distances (number of differing positions) between every pair of features.

    masks_a: [Na, D] bool, masks_b: [Nb, D] bool (default: masks_a) -> [Na, Nb] int32.

    On the CPU, ``threads`` chooses the path: None (default) runs one single-threaded call
    below 2^30 byte comparisons and row blocks of ``block_rows`` on every core above; 1 always
    runs the single call; n > 1 always runs the blocked path on n threads (a set against itself
    then computes the upper triangle of blocks and mirrors it). Every path gives the same
    integers. Both are ignored on CUDA.
    """
    if threads is not None:
        _check_positive_int("threads", threads)
    _check_positive_int("block_rows", block_rows)
    masks_a = np.asarray(masks_a, dtype=bool)
    masks_b = masks_a if masks_b is None else np.asarray(masks_b, dtype=bool)
    if masks_a.ndim != 2 or masks_b.ndim != 2 or masks_a.shape[1] != masks_b.shape[1]:
        raise ValueError(
            f"masks must be [N, D] with the same D, got {masks_a.shape} and {masks_b.shape}"
        )
    device = torch.device(device)
    if device.type == "cuda":
        if masks_a.shape[1] >= _MAX_EXACT_FLOAT32:
            raise ValueError(f"D={masks_a.shape[1]} is too long for exact float32 distances")
        return _pairwise_cuda(masks_a, masks_b, device)
    codes_a = pack_masks(masks_a)
    codes_b = codes_a if masks_b is masks_a else pack_masks(masks_b)
    return _pairwise_cpu(codes_a, codes_b, block_rows, threads)


def hamming_to(masks: np.ndarray, index: int, *, codes: np.ndarray | None = None) -> np.ndarray:
    """Distances from feature ``index`` to every feature: [N] int32 (0 at ``index``).

    Pass ``codes = pack_masks(masks)`` when querying the same masks many times.
    """
    codes = pack_masks(masks) if codes is None else codes
    return hamming_to_code(codes[index], codes)


def hamming_to_code(code: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Distances from one packed code to every packed code, in one popcount pass.

    code: [W] uint8, codes: [N, W] uint8, both in ``pack_masks``' layout (W a multiple of 8)
    -> [N] int32.
    """
    out = np.empty((1, codes.shape[0]), dtype=np.int32)
    _hamming_block(np.ascontiguousarray(code).reshape(1, -1), codes, out)
    return out[0]


class Neighbours(NamedTuple):
    indices: np.ndarray  # [n] int64, nearest first
    distances: np.ndarray  # [n] int32


def smallest_with_index_ties(values: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` smallest values, ordered by (value, index): a partial selection,
    then an exact sort of only the candidates."""
    if n >= values.size:
        return np.lexsort((np.arange(values.size), values))
    kth = np.partition(values, n - 1)[n - 1]
    candidates = np.flatnonzero(values <= kth)  # ascending indices
    order = np.lexsort((candidates, values[candidates]))
    return candidates[order][:n]


def nearest_features(
    masks: np.ndarray, index: int, n: int, *, codes: np.ndarray | None = None
) -> Neighbours:
    """The ``n`` features nearest to ``index`` by Hamming distance (itself excluded; ties go to
    the lower index). ``n`` larger than the number of other features is an input error."""
    total = masks.shape[0]
    if not 0 <= index < total:
        raise ValueError(
            f"--feature-idx {index} is out of range; this matrix has {total} "
            f"features (0-{total - 1})"
        )
    if not 1 <= n <= total - 1:
        raise ValueError(
            f"--n-features {n} is impossible: there are only {total - 1} other "
            "features; pass a smaller --n-features"
        )
    dist = hamming_to(masks, index, codes=codes).astype(np.int64)
    dist[index] = np.iinfo(np.int64).max  # never its own neighbour
    chosen = smallest_with_index_ties(dist, n)
    return Neighbours(chosen.astype(np.int64), dist[chosen].astype(np.int32))


def nearest_neighbour_distances(
    masks: np.ndarray, *, device: str | torch.device = "cpu", block: int = 4096
) -> np.ndarray:
    """For every feature, the Hamming distance to its nearest other feature: [N] int32."""
    n = masks.shape[0]
    out = np.empty(n, dtype=np.int32)
    for start in range(0, n, block):
        dist = pairwise_hamming(masks[start : start + block], masks, device=device)
        rows = np.arange(dist.shape[0])
        dist[rows, start + rows] = np.iinfo(np.int32).max
        out[start : start + block] = dist.min(axis=1)
    return out
