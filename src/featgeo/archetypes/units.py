"""Work units of Stage 1: groups of (cluster, k) models that train together and travel alone.

A :class:`TrainUnit` carries everything its models need — the clusters' training data
(:class:`~featgeo.archetypes.data.ClusterData`: codes, token rows, projection), the store size
the per-step draws index, the k values, the :class:`~featgeo.archetypes.config.AANetConfig`
(whose seed, with each cluster id and k, seeds every model) and the extrema / batch settings —
and nothing about the process that runs it. :func:`run_unit` is a pure function of the unit
(and the device): the same unit gives the same models in any process or on any machine of the
same kind, so a unit can be retried, resumed or shipped to another worker.

:func:`plan_units` cuts a run into units deterministically: clusters sorted by their number of
active tokens (stack-mates then need similar padding) and cut every ``models_per_unit // n_k``
clusters. The cut depends only on the clusters and ``models_per_unit``, so a resumed run
rebuilds exactly the units of the run it resumes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from featgeo.archetypes.config import AANetConfig
from featgeo.archetypes.data import ClusterData
from featgeo.archetypes.engine import ClusterFit, check_ks, train_cluster_aanets

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class TrainUnit:
    """One group of (cluster, k) models: every k of each of its clusters."""

    index: int
    """Position of the unit in its run's plan (0-based)."""
    datas: list[ClusterData]
    n_tokens: int
    """Tokens of the store the data was read from (the per-step draws index them)."""
    ks: tuple[int, ...]
    config: AANetConfig
    batch_tokens: int = 4096
    knn: int = 150
    max_warmup: int = 1000
    dtype: str = "float32"
    """Compute precision: ``float32`` or ``float64``."""

    @property
    def cluster_ids(self) -> list[int]:
        return [d.cluster_id for d in self.datas]

    @property
    def n_models(self) -> int:
        return len(self.datas) * len(self.ks)


def plan_units(
    datas: Sequence[ClusterData], ks: Sequence[int], models_per_unit: int
) -> list[list[int]]:
    """Positions in ``datas`` of each unit's clusters.

    Clusters are ordered by (active tokens, cluster id) and cut every
    ``max(1, models_per_unit // len(ks))`` clusters.

    Raises:
        ValueError: ``models_per_unit`` is not a positive int, or bad ``ks``.
    """
    ks = check_ks(ks)
    if (
        isinstance(models_per_unit, bool)
        or not isinstance(models_per_unit, int)
        or (models_per_unit < 1)
    ):
        raise ValueError(f"models_per_unit must be an int >= 1, got {models_per_unit!r}")
    order = sorted(range(len(datas)), key=lambda i: (datas[i].n_active, datas[i].cluster_id))
    per_unit = max(1, models_per_unit // len(ks))
    return [order[i : i + per_unit] for i in range(0, len(order), per_unit)]


def run_unit(
    unit: TrainUnit,
    *,
    device: str | torch.device = "cpu",
    on_step: Callable[[int, int], None] | None = None,
) -> list[ClusterFit]:
    """Train every model of ``unit`` in one stack; results cluster by cluster, k ascending.

    Models of clusters with too few active tokens come back untrained (status
    ``too_few_points``), as :func:`~featgeo.archetypes.engine.train_cluster_aanets` documents.
    """
    if unit.dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {unit.dtype!r}")
    return train_cluster_aanets(
        unit.datas,
        unit.n_tokens,
        ks=unit.ks,
        config=unit.config,
        batch_tokens=unit.batch_tokens,
        knn=unit.knn,
        max_warmup=unit.max_warmup,
        device=device,
        models_per_stack=None,
        dtype=DTYPES[unit.dtype],
        on_step=on_step,
    )


__all__ = ["DTYPES", "TrainUnit", "plan_units", "run_unit"]
