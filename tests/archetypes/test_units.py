"""Stage 1's work units: a deterministic plan, and results that do not depend on the process
that ran the unit (a unit shipped to a fresh interpreter gives bit-identical models)."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
import torch

from featgeo.archetypes.config import AANetConfig
from featgeo.archetypes.data import ClusterData
from featgeo.archetypes.units import TrainUnit, plan_units, run_unit

N_TOKENS = 600


def cluster(cid: int, n_active: int, n_latents: int = 3, seed: int = 0) -> ClusterData:
    """Points on a triangle: Dirichlet codes times a random projection (full space, d=8)."""
    rng = np.random.default_rng(seed + cid)
    rows = np.sort(rng.choice(N_TOKENS, n_active, replace=False))
    codes = rng.dirichlet(np.ones(n_latents), size=n_active).astype(np.float32)
    projection = rng.normal(size=(n_latents, 8)).astype(np.float32)
    return ClusterData(cid, np.arange(n_latents) + 3 * cid, rows, codes, projection, None, 8)


def test_plan_orders_by_active_tokens_then_id_and_cuts_by_models():
    datas = [cluster(0, 50), cluster(1, 20), cluster(2, 50), cluster(3, 30), cluster(4, 20)]
    plan = plan_units(datas, [2, 3], models_per_unit=4)  # 2 clusters (4 models) per unit
    ids = [[datas[i].cluster_id for i in unit] for unit in plan]
    assert ids == [[1, 4], [3, 0], [2]]
    assert plan_units(datas, [2, 3], models_per_unit=1) == [[i] for i in (1, 4, 3, 0, 2)]
    assert plan_units(list(reversed(datas)), [2, 3], 4) != plan  # positions, not ids
    reversed_ids = [
        [datas[::-1][i].cluster_id for i in u] for u in plan_units(datas[::-1], [2, 3], 4)
    ]
    assert reversed_ids == ids  # the same units whatever order the clusters come in


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "auto"])
def test_plan_rejects_bad_unit_sizes(bad):
    with pytest.raises(ValueError, match="models_per_unit must be an int >= 1"):
        plan_units([cluster(0, 30)], [2, 3], bad)


def _run(unit: TrainUnit):
    torch.set_num_threads(1)
    return [(f.cluster_id, f.k, f.status, [p.numpy() for p in f.fit.params], f.fit.curve)
            for f in run_unit(unit)]  # fmt: skip


def test_a_unit_gives_identical_models_in_another_process():
    unit = TrainUnit(0, [cluster(0, 80), cluster(1, 60)], N_TOKENS, (2, 3),
                     AANetConfig(max_steps=25), batch_tokens=200, knn=10,
                     max_warmup=60)  # fmt: skip
    here = _run(unit)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        there = pool.submit(_run, unit).result()
    assert [m[:3] for m in here] == [(0, 2, "ok"), (0, 3, "ok"), (1, 2, "ok"), (1, 3, "ok")]
    assert [m[:3] for m in there] == [m[:3] for m in here]
    for a, b in zip(here, there, strict=True):
        for pa, pb in zip(a[3], b[3], strict=True):
            np.testing.assert_array_equal(pa, pb)
        np.testing.assert_array_equal(a[4], b[4])


def test_unit_dtype_is_checked():
    unit = TrainUnit(0, [cluster(0, 30)], N_TOKENS, (2,), AANetConfig(), dtype="float16")
    with pytest.raises(ValueError, match="dtype must be one of"):
        run_unit(unit)
