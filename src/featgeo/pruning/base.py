"""The pruner contract and the registry of pruning methods.

A pruner follows the scikit-learn pattern: ``__init__`` stores settings, ``partial_fit`` /
``fit`` accumulate statistics of a linear layer's inputs, ``prune`` returns the pruned weight.
Components that read the same input (q/k/v, gate/up) share one fitted pruner.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from featgeo.pruning.masks import Ties, check_ties, nm_mask

PRUNERS: dict[str, type[Pruner]] = {}


def register_pruner(cls: type[Pruner]) -> type[Pruner]:
    PRUNERS[cls.name] = cls
    return cls


def get_pruner(name: str) -> type[Pruner]:
    try:
        return PRUNERS[name]
    except KeyError:
        raise ValueError(
            f"unknown pruning method '{name}'; choose from {', '.join(sorted(PRUNERS))}"
        ) from None


class Pruner:
    """Base class. Subclasses set ``name`` and ``needs_inputs`` and implement ``_prune``.

    ``ties`` picks the tie rule of unstructured selections (:mod:`featgeo.pruning.masks`):
    ``exact`` prunes exactly k per group, ``reference`` reproduces the reference code.
    """

    name: ClassVar[str]
    needs_inputs: ClassVar[bool] = True
    zeroes_dead_inputs: ClassVar[bool] = False
    """True when the method zeroes every weight of an input that never fired, whatever its
    mask (SparseGPT), which can push a matrix above the target sparsity."""

    def __init__(
        self, sparsity: float = 0.5, nm: tuple[int, int] | None = None, ties: Ties = "exact"
    ):
        self.sparsity = sparsity
        self.nm = nm
        self.ties = ties

    # -- fitting ---------------------------------------------------------------------------
    def fit(self, inputs: torch.Tensor) -> Pruner:
        """Reset and accumulate statistics of ``inputs`` [..., in_features]."""
        self._reset()
        return self.partial_fit(inputs)

    def partial_fit(self, inputs: torch.Tensor) -> Pruner:
        """Accumulate statistics of one more batch of inputs [..., in_features]."""
        self._accumulate(inputs.reshape(-1, inputs.shape[-1]))
        # Any NaN/inf input makes the accumulated statistic non-finite, and checking the
        # statistic costs O(in_features) instead of a pass over every calibration token.
        if not self._statistics_finite():
            raise ValueError(
                "pruner inputs contain NaN or inf; check the model and calibration data"
            )
        return self

    def _statistics_finite(self) -> bool:
        return True

    def _reset(self) -> None:
        for attr in [a for a in vars(self) if a.endswith("_") and not a.startswith("_")]:
            delattr(self, attr)

    def _accumulate(self, x: torch.Tensor) -> None:  # x: [tokens, in]
        raise NotImplementedError

    @property
    def dead_inputs_(self) -> torch.Tensor | None:
        """Boolean [in_features]: inputs that were exactly 0 on every calibration token
        (None for pruners that read no inputs)."""
        return None

    def _check_fitted(self) -> None:
        if self.needs_inputs and not hasattr(self, "n_tokens_"):
            raise RuntimeError(
                f"this {type(self).__name__} is not fitted yet; call fit(inputs) before prune()"
            )

    # -- pruning ---------------------------------------------------------------------------
    def prune(self, weight: torch.Tensor) -> torch.Tensor:
        """Return a pruned copy of ``weight`` [out_features, in_features] (nn.Linear layout)."""
        self._check_fitted()
        check_ties(self.ties)
        if weight.ndim != 2:
            raise ValueError(f"weight must be 2-D [out, in], got shape {tuple(weight.shape)}")
        if self.nm is not None and weight.shape[1] % self.nm[1]:
            raise ValueError(
                f"N:M {self.nm[0]}:{self.nm[1]} needs in_features divisible by {self.nm[1]}, "
                f"got {weight.shape[1]}"
            )
        return self._prune(weight)

    def _prune(self, weight: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class ScorePruner(Pruner):
    """Pruners that zero the lowest-scoring weights without updating the rest."""

    def _scores(self, weight: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _unstructured_mask(self, scores: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def prune_mask(self, weight: torch.Tensor) -> torch.Tensor:
        """Boolean [out, in], True where the weight is removed."""
        self._check_fitted()
        scores = self._scores(weight.float())
        if self.nm is not None:
            return nm_mask(scores, *self.nm)
        return self._unstructured_mask(scores)

    def _prune(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.masked_fill(self.prune_mask(weight), 0)
