"""Wanda (Sun et al. 2023, "A Simple and Effective Pruning Approach for LLMs").

score_ij = |W_ij| * ||X_j||, with ||X_j|| = sqrt(mean over calibration tokens of x_j^2) (SPEC §1).
Unstructured: every output row keeps its top (1 - s) fraction (the paper's per-output comparison
group, §3). No weight update.

Ties: under both ``exact`` and ``reference`` each row loses exactly int(in * s) weights, ties
going to the lower column, because that is the reference's rule too (locuslab/wanda
``prune_wanda``: the first int(in * s) indices of a stable ascending sort per row). The
reference scales the statistic by the number of sequences instead of tokens, a constant
factor that leaves every row's order unchanged.
"""

from __future__ import annotations

import torch

from featgeo.pruning.base import ScorePruner, register_pruner
from featgeo.pruning.masks import row_mask


@register_pruner
class WandaPruner(ScorePruner):
    name = "wanda"

    def _accumulate(self, x: torch.Tensor) -> None:  # x: [tokens, in]
        # Squares are summed in the input dtype (a float64 copy of the input would cost more
        # than the forward pass of the layer) and accumulated across batches in float64.
        sq = x.float().pow(2).sum(dim=0).double()
        if hasattr(self, "input_sq_sum_"):
            self.input_sq_sum_ += sq
            self.n_tokens_ += x.shape[0]
        else:
            self.input_sq_sum_ = sq
            self.n_tokens_ = x.shape[0]

    def _statistics_finite(self) -> bool:
        return bool(torch.isfinite(self.input_sq_sum_).all())

    # The properties delegate to plain methods because mutmut skips decorated functions
    # (docs/testing.md); the formulas live in the methods so that they are mutation-tested.
    @property
    def input_norm_(self) -> torch.Tensor:
        """sqrt(mean x_j^2) per input column j: [in_features]."""
        return self._input_norm()

    def _input_norm(self) -> torch.Tensor:
        self._check_fitted()
        return (self.input_sq_sum_ / self.n_tokens_).sqrt().float()

    @property
    def dead_inputs_(self) -> torch.Tensor:
        """Boolean [in_features]: inputs that were 0 on every calibration token."""
        return self._dead_inputs()

    def _dead_inputs(self) -> torch.Tensor:
        self._check_fitted()
        return self.input_sq_sum_ == 0

    def _scores(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.abs() * self.input_norm_.to(weight.device).unsqueeze(0)

    def _unstructured_mask(self, scores: torch.Tensor) -> torch.Tensor:
        return row_mask(scores, self.sparsity)
