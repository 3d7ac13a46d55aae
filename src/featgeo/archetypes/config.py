"""Hyper-parameters of AANet training, shared by every model trained together (SPEC §3)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class AANetConfig:
    """Architecture, losses, optimiser, schedule and early stopping of AANets (SPEC §3).

    Defaults are SPEC §3's Stage 1 values (van Dijk et al. 2019 for the architecture).
    """

    hidden: tuple[int, ...] = (64, 32)
    """Encoder widths d -> 64 -> 32 -> (k-1); the decoder mirrors them."""
    noise_std: float = 0.05
    """Std of the Gaussian noise added to the bottleneck before decoding, in training only."""
    recon_weight: float = 1.0
    archetypal_weight: float = 4.0
    extrema_weight: float = 2.0
    lr: float = 0.0025
    """Adam learning rate (betas 0.9, 0.999, eps 1e-8)."""
    weight_decay: float = 1e-5
    """Adam's L2 penalty (added to the gradient after clipping, as torch.optim.Adam does)."""
    grad_clip: float = 1.0
    """Max global gradient norm per model (torch.nn.utils.clip_grad_norm_)."""
    lr_factor: float = 0.5
    """ReduceLROnPlateau factor, on each step's total loss."""
    lr_patience: int = 30
    lr_threshold: float = 1e-4
    """ReduceLROnPlateau relative threshold (torch's default)."""
    min_lr: float = 1e-6
    """Training stops once the learning rate has been reduced to this."""
    max_steps: int = 3000
    smoothing_window: int = 20
    """W: early stopping compares means of the last W step losses."""
    early_stop_patience: int = 250
    """Steps without a smoothed improvement before a model stops (Stage 1: 250)."""
    early_stop_delta: float = 1e-6
    final_window: int = 20
    """Reported losses are medians of the last this-many step losses."""
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    """Free-form notes saved with the config (not used by training)."""

    def __post_init__(self) -> None:
        def positive(name: str, integer: bool = False) -> None:
            value = getattr(self, name)
            kind = (int, np.integer) if integer else (int, float, np.integer, np.floating)
            if isinstance(value, bool) or not isinstance(value, kind) or not 0 < value < math.inf:
                what = "a positive int" if integer else "a positive finite number"
                raise ValueError(f"AANetConfig.{name} must be {what}, got {value!r}")

        for name in ("lr", "grad_clip", "min_lr", "lr_threshold"):
            positive(name)
        for name in ("lr_patience", "max_steps", "smoothing_window", "final_window"):
            positive(name, integer=True)
        if (
            isinstance(self.early_stop_patience, bool)
            or not isinstance(self.early_stop_patience, int)
            or self.early_stop_patience < 0
        ):
            raise ValueError(
                f"AANetConfig.early_stop_patience must be an int >= 0, "
                f"got {self.early_stop_patience!r}"
            )
        for name in (
            "noise_std",
            "weight_decay",
            "recon_weight",
            "archetypal_weight",
            "extrema_weight",
            "early_stop_delta",
        ):
            value = getattr(self, name)
            numeric = isinstance(value, (int, float, np.integer, np.floating))
            if isinstance(value, bool) or not numeric or not 0 <= value < math.inf:
                raise ValueError(f"AANetConfig.{name} must be a finite number >= 0, got {value!r}")
        if (
            isinstance(self.lr_factor, bool)
            or not isinstance(self.lr_factor, (int, float))
            or not (0 < self.lr_factor < 1)
        ):
            raise ValueError(f"AANetConfig.lr_factor must lie in (0, 1), got {self.lr_factor!r}")
        if (
            isinstance(self.seed, bool)
            or not isinstance(self.seed, (int, np.integer))
            or not (0 <= self.seed < 2**32)
        ):
            raise ValueError(f"AANetConfig.seed must be an int in 0..2**32-1, got {self.seed!r}")
        if self.min_lr >= self.lr:
            raise ValueError(
                f"AANetConfig.min_lr ({self.min_lr}) must be below lr ({self.lr}): training "
                "stops once the learning rate reaches min_lr"
            )
        try:
            json.dumps(self.extra, allow_nan=False)
        except (TypeError, ValueError):
            raise ValueError(
                "AANetConfig.extra must hold only JSON values (str, int, float, bool, None, "
                "lists, dicts): it is saved with every model"
            ) from None
        if isinstance(self.hidden, int) or not isinstance(self.hidden, (tuple, list)):
            raise ValueError(f"AANetConfig.hidden must be a tuple of ints, got {self.hidden!r}")
        if not self.hidden or any(
            isinstance(h, bool) or not isinstance(h, (int, np.integer)) or h < 1
            for h in self.hidden
        ):
            raise ValueError(f"AANetConfig.hidden must be positive ints, got {self.hidden!r}")
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        for name in ("lr_patience", "max_steps", "smoothing_window", "final_window",
                     "early_stop_patience", "seed"):  # fmt: skip
            object.__setattr__(self, name, int(getattr(self, name)))

    @property
    def check_interval(self) -> int:
        """Steps between early-stopping checks: W//2 + W//4 (SPEC §3)."""
        return max(1, self.smoothing_window // 2 + self.smoothing_window // 4)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["hidden"] = list(self.hidden)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AANetConfig:
        if not isinstance(data, dict):
            raise TypeError(f"AANetConfig.from_dict needs a dict, got {type(data).__name__}")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown AANetConfig fields {unknown}; known: {sorted(known)}")
        data = dict(data)
        if "hidden" in data:
            data["hidden"] = tuple(data["hidden"])
        return cls(**data)


OPTIONS = {
    "max_steps": "--max-steps",
    "early_stop_patience": "--early-stop-patience",
    "smoothing_window": "--loss-smoothing-window",
    "lr": "--lr",
    "seed": "--seed",
}
"""The command-line options of the AANetConfig fields that ``featgeo aanet`` commands set."""


def config_from_options(values: dict[str, Any], base: AANetConfig | None = None) -> AANetConfig:
    """``base`` (default: SPEC §3's config) with the fields of ``values`` (keys of
    :data:`OPTIONS`) replaced; an invalid value is reported under its option's name.

    Raises:
        ValueError: an unknown field, or a value the config refuses (e.g. "--max-steps must be
            a positive int, got 0").
    """
    from dataclasses import replace

    unknown = sorted(set(values) - set(OPTIONS))
    if unknown:
        raise ValueError(f"AANet settings {unknown} cannot be set here; use {sorted(OPTIONS)}")
    for name, value in values.items():
        try:
            AANetConfig(**{name: value})
        except (TypeError, ValueError) as exc:
            reason = str(exc).split(" must ", 1)[-1]
            raise ValueError(f"{OPTIONS[name]} must {reason}") from None
    return replace(base or AANetConfig(), **values)


__all__ = ["AANetConfig"]
