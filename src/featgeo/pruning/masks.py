"""Mask selection shared by the pruners. A *prune mask* is True where a weight is removed.

Scores come from dequantized Q4_1 weights, so exact ties are common (SPEC §0). Two tie rules:

- ``exact`` (featgeo's default): exactly ``k`` entries per group, ties broken by position (the
  first ``k`` of a stable ascending sort), so the target sparsity is met exactly.
- ``reference``: the rule of the reference code (locuslab/wanda ``lib/prune.py``
  ``prune_magnitude`` and ``lib/sparsegpt.py`` ``fasterprune``, taken from IST-DASLab/sparsegpt):
  ``thresh = sorted(scores)[k]`` (0-based, i.e. the (k+1)-th smallest) and every score
  ``<= thresh`` is pruned -- at least ``k + 1`` entries, plus all entries tied with the
  threshold. Wanda's per-row rule and every N:M rule in the reference take exactly ``k``
  (see :func:`row_mask`, :func:`nm_mask`), so ``reference`` changes only the per-matrix
  (magnitude) and per-block (SparseGPT) selections.
"""

from __future__ import annotations

from typing import Literal

import torch

Ties = Literal["exact", "reference"]
TIES: tuple[Ties, ...] = ("exact", "reference")


def check_ties(ties: str) -> None:
    """Raise a ValueError naming ``ties`` when it is not one of :data:`TIES`."""
    if ties not in TIES:
        raise ValueError(f"--ties must be one of {', '.join(TIES)}, got '{ties}'")


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


def _at_or_below_threshold(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The reference's tie rule along the last dim: True where ``score <= sorted(scores)[k]``.

    ``sorted(scores)[k]`` (0-based) is the (k+1)-th smallest score, so at least ``k + 1``
    entries are selected, plus every entry tied with it. ``k >= n`` selects everything (the
    reference would index past the end; featgeo never asks for it since sparsity < 1).
    """
    if k >= scores.shape[-1]:
        return torch.ones_like(scores, dtype=torch.bool)
    threshold = torch.kthvalue(scores, k + 1, dim=-1, keepdim=True).values
    return scores <= threshold


def _smallest_by_sort(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Reference implementation of :func:`_smallest` (stable sort), kept for parity tests."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k > 0:
        order = torch.sort(scores, dim=-1, stable=True).indices
        mask.scatter_(-1, order[..., :k], True)
    return mask


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune the same fraction in every output row: ``int(in_features * sparsity)`` per row.

    This is also the reference's rule (locuslab/wanda ``prune_wanda``: the first
    ``int(in * s)`` indices of a stable ascending sort of each row), so Wanda has one rule
    under both tie settings.

    scores: [out, in] -> mask [out, in]
    """
    return _smallest(scores, int(scores.shape[1] * sparsity))


def matrix_mask(scores: torch.Tensor, sparsity: float, ties: Ties = "exact") -> torch.Tensor:
    """Prune the lowest scores anywhere in the matrix (per-row counts vary); k = int(numel * s).

    ``ties="exact"``: exactly k entries. ``ties="reference"``: every score <= the (k+1)-th
    smallest (see the module docstring), which exceeds k by one plus the ties at the threshold
    -- even ``sparsity=0`` prunes the smallest score and its ties.

    scores: [out, in] -> mask [out, in]
    """
    check_ties(ties)
    flat = scores.reshape(1, -1)  # [1, numel]: one group over the whole matrix
    k = int(scores.numel() * sparsity)
    select = _smallest if ties == "exact" else _at_or_below_threshold
    return select(flat, k).reshape(scores.shape)


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """N:M: in every group of ``m`` consecutive input columns of a row, prune the ``n`` smallest.

    Exactly ``n`` per group under both tie settings: the reference also takes exactly ``n``
    (``torch.topk(..., largest=False)``), but topk does not specify which of several tied
    scores it returns, where featgeo takes the lower column.

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
