"""Mask selection shared by the pruners. A *prune mask* is True where a weight is removed.

Scores come from dequantized Q4_1 weights, so exact ties are common (SPEC §0): every selection
here uses a stable sort, which breaks ties by position and makes masks reproducible.
"""

from __future__ import annotations

import torch


def _smallest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the ``k`` smallest entries along the last dim; ties go to the lower index.

    Same result as taking the first ``k`` indices of a stable ascending sort, in linear time:
    everything below the k-th smallest value, then as many of the values equal to it as are
    still needed, in index order.
    """
    if k <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if k >= scores.shape[-1]:
        return torch.ones_like(scores, dtype=torch.bool)
    kth = torch.kthvalue(scores, k, dim=-1, keepdim=True).values
    below = scores < kth
    tied = scores == kth
    still_needed = k - below.sum(dim=-1, keepdim=True)
    return below | (tied & (tied.cumsum(dim=-1) <= still_needed))


def _smallest_by_sort(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Reference implementation of :func:`_smallest` (stable sort), kept for parity tests."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k > 0:
        order = torch.sort(scores, dim=-1, stable=True).indices
        mask.scatter_(-1, order[..., :k], True)
    return mask


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune the same fraction in every output row: ``int(in_features * sparsity)`` per row.

    scores: [out, in] -> mask [out, in]
    """
    return _smallest(scores, int(scores.shape[1] * sparsity))


def matrix_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune ``int(numel * sparsity)`` entries anywhere in the matrix (per-row counts vary)."""
    flat = _smallest(scores.reshape(1, -1), int(scores.numel() * sparsity))
    return flat.reshape(scores.shape)


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """N:M: in every group of ``m`` consecutive input columns of a row, prune the ``n`` smallest.

    scores: [out, in] with in % m == 0 -> mask [out, in]
    """
    rows, cols = scores.shape
    if cols % m:
        raise ValueError(f"N:M needs in_features divisible by M, got in_features={cols}, M={m}")
    grouped = scores.reshape(rows, cols // m, m)  # [out, groups, m]
    return _smallest(grouped, n).reshape(rows, cols)


def parse_nm(text: str | None) -> tuple[int, int] | None:
    """``"2:4"`` -> (2, 4): N weights pruned in every M consecutive inputs. ``None`` -> None."""
    if text is None or text == "":
        return None
    parts = text.split(":")
    try:
        n, m = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"--nm must look like 'N:M' (e.g. 2:4 or 4:8), got '{text}'") from None
    if not 0 < n < m:
        raise ValueError(f"--nm {text}: need 0 < N < M (N of every M weights are pruned)")
    return n, m
