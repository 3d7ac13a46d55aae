"""Magnitude pruning: remove the smallest |W| in each matrix (layer-wise, no calibration)."""

from __future__ import annotations

import torch

from featgeo.pruning.base import ScorePruner, register_pruner
from featgeo.pruning.masks import matrix_mask


@register_pruner
class MagnitudePruner(ScorePruner):
    """Unstructured: the ``sparsity`` fraction of smallest |W| over the whole matrix, as in the
    magnitude baseline of the Wanda paper; N:M: the N smallest |W| of each group of M inputs.

    Ties (unstructured): ``exact`` prunes k = int(numel * s) weights; ``reference`` prunes every
    |W| <= the (k+1)-th smallest |W| of the matrix (locuslab/wanda ``prune_magnitude``).
    """

    name = "magnitude"
    needs_inputs = False
    ties_apply = True

    def _accumulate(self, x: torch.Tensor) -> None:
        pass  # magnitude ignores inputs

    def _scores(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.abs()

    def _unstructured_mask(self, scores: torch.Tensor) -> torch.Tensor:
        return matrix_mask(scores, self.sparsity, self.ties)
