"""The quality filters of Stage 2/3 cluster selection (SPEC §3 "Selection", seed 002).

A cluster passes when, over its models for k = k_min..k_max:

- it has at least ``min_latents`` latents (2: a single-latent cluster is a ray, not a shape);
- both loss curves are monotonic up to their elbow (``recon_is_monotonic`` and
  ``arch_is_monotonic``) when ``require_monotonic``;
- both curves fall by at least ``min_pct_decrease`` percent (``recon_pct_decrease``,
  ``arch_pct_decrease``);
- the two elbows are at most ``max_k_differential`` apart.

An undefined curve (a model not trained or diverged) has NaN metrics and fails every filter.
Stage 1 uses them for the zoomed recon-vs-arch plot and the end table; selection reuses them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class QualityFilters:
    """Thresholds of the quality filters (SPEC §3 defaults)."""

    min_latents: int = 2
    """Clusters with fewer latents are left out."""
    min_pct_decrease: float = 20.0
    """Both ``*_pct_decrease`` must be at least this (percent)."""
    max_k_differential: int = 1
    """``|recon elbow k - arch elbow k|`` must be at most this."""
    require_monotonic: bool = True
    """Both curves must be non-increasing up to their elbow."""

    def __post_init__(self) -> None:
        for name in ("min_latents", "max_k_differential"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        value = self.min_pct_decrease
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not (math.isfinite(value) and 0 <= value <= 100)
        ):
            raise ValueError(f"min_pct_decrease must be a number in 0..100, got {value!r}")

    def failures(self, cluster: Mapping[str, Any]) -> list[str]:
        """Names of the filters ``cluster`` (one row of cluster-level metrics, the CSV's column
        names) fails; empty when it passes."""
        out = []
        if not _at_least(cluster.get("n_latents"), self.min_latents):
            out.append("min_latents")
        if self.require_monotonic and not (
            cell_flag(cluster.get("recon_is_monotonic"))
            and cell_flag(cluster.get("arch_is_monotonic"))
        ):
            out.append("monotonic")
        if not (
            _at_least(cluster.get("recon_pct_decrease"), self.min_pct_decrease)
            and _at_least(cluster.get("arch_pct_decrease"), self.min_pct_decrease)
        ):
            out.append("pct_decrease")
        diff = cell_number(cluster.get("k_differential"))
        if not (math.isfinite(diff) and diff <= self.max_k_differential):
            out.append("k_differential")
        return out

    def passes(self, cluster: Mapping[str, Any]) -> bool:
        """Whether ``cluster`` passes every filter."""
        return not self.failures(cluster)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cell_number(value: Any) -> float:
    """A Python value or a CSV cell as a float; None, empty and unparsable cells are NaN."""
    if isinstance(value, str):
        value = value.strip()
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def cell_flag(value: Any) -> bool:
    """``True`` / ``"True"`` / ``"true"`` / ``1`` (as written to or read from a CSV); anything
    else (False, NaN, "", None) is False."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "1.0")
    number = cell_number(value)
    return math.isfinite(number) and number != 0


def _at_least(value: Any, threshold: float) -> bool:
    number = cell_number(value)
    return math.isfinite(number) and number >= threshold


__all__ = ["QualityFilters", "cell_flag", "cell_number"]
