"""SparseGPT (Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately
Pruned in One-Shot"), written from the paper's Algorithm 1.

With H = (2/n) sum x x^T over calibration tokens, columns are visited left to right; each pruned
weight's error is spread over the not-yet-visited columns through the upper Cholesky factor of
H^-1 (an OBS update). Updates are applied lazily in blocks of 128 columns. Unstructured masks
are chosen per 128-column block across all rows by w^2 / [H^-1]_jj^2, so per-row sparsity
varies (SPEC §1); N:M masks are chosen per group of M columns just before the group is visited.

Ties (unstructured), per 128-column block over all rows, k = int(rows * width * s): ``exact``
prunes exactly k weights of the block; ``reference`` prunes every score <= the (k+1)-th smallest
of the block (the reference ``fasterprune``: ``thresh = sort(tmp.flatten())[k]; tmp <= thresh``).
Inputs that never fired (zero Hessian diagonal) have their weights zeroed before the masks are
chosen, so a block with many of them ends above the target sparsity.
"""

from __future__ import annotations

import torch

from featgeo.pruning.base import Pruner, register_pruner
from featgeo.pruning.masks import Ties, _smallest, matrix_mask


@register_pruner
class SparseGPTPruner(Pruner):
    name = "sparsegpt"
    zeroes_dead_inputs = True
    ties_apply = True

    def __init__(
        self,
        sparsity: float = 0.5,
        nm: tuple[int, int] | None = None,
        ties: Ties = "exact",
        blocksize: int = 128,
        percdamp: float = 0.01,
    ):
        super().__init__(sparsity, nm, ties)
        self.blocksize = blocksize
        self.percdamp = percdamp

    def _accumulate(self, x: torch.Tensor) -> None:  # x: [tokens, in]
        x = x.float()
        if not hasattr(self, "hessian_"):
            self.hessian_ = torch.zeros(x.shape[1], x.shape[1], device=x.device)
            self.n_tokens_ = 0
        # Running mean of 2 x x^T, rescaled so that H = (2/n) X^T X over all tokens seen.
        total = self.n_tokens_ + x.shape[0]
        self.hessian_ *= self.n_tokens_ / total
        self.hessian_.addmm_(x.t(), x, alpha=2.0 / total)
        self.n_tokens_ = total

    def _statistics_finite(self) -> bool:
        # H_jj = (2/n) sum x_j^2: NaN or inf in any input column shows up on the diagonal.
        return bool(torch.isfinite(self.hessian_.diagonal()).all())

    # A plain method behind the property: mutmut skips decorated functions (docs/testing.md).
    @property
    def dead_inputs_(self) -> torch.Tensor:
        """Boolean [in_features]: inputs that were 0 on every calibration token (H_jj == 0)."""
        return self._dead_inputs()

    def _dead_inputs(self) -> torch.Tensor:
        self._check_fitted()
        return torch.diag(self.hessian_) == 0

    def _inverse_hessian_factor(self, weight: torch.Tensor) -> torch.Tensor:
        """Upper Cholesky factor of (H + damp I)^-1, zeroing ``weight``'s dead input columns."""
        hessian = self.hessian_.to(weight.device).clone()
        dead = torch.diag(hessian) == 0
        hessian[dead, dead] = 1  # inputs that never fire: keep H invertible, drop their weights
        weight[:, dead] = 0
        damp = self.percdamp * torch.diag(hessian).mean()
        hessian.diagonal().add_(damp)
        chol = torch.linalg.cholesky(hessian)
        hinv = torch.cholesky_inverse(chol)
        return torch.linalg.cholesky(hinv, upper=True)

    def _block_size(self) -> int:
        # N:M groups must not straddle a block, so the block is a multiple of M.
        if self.nm is None:
            return self.blocksize
        return max(self.nm[1], self.blocksize // self.nm[1] * self.nm[1])

    def _prune(self, weight: torch.Tensor) -> torch.Tensor:
        w = weight.detach().float().clone()  # [out, in]
        hinv = self._inverse_hessian_factor(w)  # [in, in], upper triangular
        cols = w.shape[1]
        block = self._block_size()
        for start in range(0, cols, block):
            stop = min(start + block, cols)
            errors = self._prune_block(w, hinv, start, stop)  # [out, stop - start]
            # Lazy batch update: propagate this block's errors to every later column at once.
            w[:, stop:] -= errors @ hinv[start:stop, stop:]
        return w.to(weight.dtype)

    def _prune_block(self, w: torch.Tensor, hinv: torch.Tensor, start: int, stop: int):
        """Prune columns [start, stop) of ``w`` in place; return the scaled errors [out, width]."""
        w_block = w[:, start:stop].clone()
        h_block = hinv[start:stop, start:stop]
        h_diag = torch.diag(h_block)
        errors = torch.zeros_like(w_block)
        if self.nm is None:
            mask = matrix_mask(w_block.pow(2) / h_diag.pow(2), self.sparsity, self.ties)
        else:
            n, m = self.nm
            mask = torch.zeros_like(w_block, dtype=torch.bool)
        for i in range(stop - start):
            col = w_block[:, i]
            if self.nm is not None and i % m == 0:
                group = w_block[:, i : i + m].pow(2) / h_diag[i : i + m].pow(2)
                mask[:, i : i + m] = _smallest(group, n)
            pruned = col.masked_fill(mask[:, i], 0)
            err = (col - pruned) / h_block[i, i]
            w_block[:, i:] -= err.unsqueeze(1) * h_block[i, i:].unsqueeze(0)
            w_block[:, i] = pruned
            errors[:, i] = err
        w[:, start:stop] = w_block
        return errors
