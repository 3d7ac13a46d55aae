"""Where work units run: in this process, in a pool of local worker processes, or on Ray.

:func:`execute_units` yields every unit's models as units finish, in any order; the caller
(the driver) writes all results, so the files do not depend on the executor or on the number
of workers (a unit's models depend only on the unit, :mod:`featgeo.archetypes.units`).

Workers are started with ``spawn`` (a fresh interpreter: no state inherited from the driver),
run one torch thread each (``workers`` processes share the cores instead of oversubscribing
them) and ignore Ctrl-C, which the driver handles by terminating the pool. On a Ray cluster
(``pool``, :mod:`featgeo.executors`) each unit is one task holding one CPU, or one GPU for
CUDA units; the unit (its clusters' training data included) travels in the task's arguments.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import torch

from featgeo.archetypes.engine import ClusterFit
from featgeo.archetypes.units import TrainUnit, run_unit

if TYPE_CHECKING:
    from featgeo.executors import ExecutorSpec, RayPool

Done = tuple[TrainUnit, list[ClusterFit], float]
"""A finished unit, its models (cluster by cluster, k ascending) and its wall seconds."""


MAX_AUTO_WORKERS = 8


def check_workers(workers: int | str) -> int | str:
    """``workers`` as an int >= 1 or ``"auto"``, or a ``ValueError`` naming the fix."""
    if workers == "auto":
        return workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"--workers must be 'auto' or an int >= 1, got {workers!r}")
    return workers


def check_executor_options(executor, ray_address, workers) -> ExecutorSpec:
    """The checked ``--executor`` / ``--ray-address`` (:func:`featgeo.executors.check_executor`)
    with ``--workers``, which only the local executor reads.

    Raises:
        ValueError: a bad option, or ``--workers N`` with ``--executor ray`` (the cluster's CPUs
            or GPUs decide how many units run at once there).
    """
    from featgeo.executors import check_executor

    spec = check_executor(executor, ray_address)
    workers = check_workers(workers)
    if spec.is_ray and workers != "auto":
        raise ValueError(
            f"--workers {workers} applies to --executor local; on Ray the cluster's CPUs (or GPUs "
            "with --device cuda) decide how many units run at once: drop --workers"
        )
    return spec


def run_devices(device: str | torch.device, pool: RayPool | None) -> tuple[torch.device, ...]:
    """``(where units train, where the driver's own tensors go)``: the same device locally; on
    Ray, ``auto`` trains on CUDA when the cluster has GPUs, whether or not the driver has one.

    Raises:
        ValueError: a device the driver (local) or the cluster (Ray) does not have.
    """
    from featgeo.archetypes.batched import check_device

    if pool is None:
        device = check_device(device)
        return device, device
    unit = pool.unit_device(str(device))
    return unit, check_device("auto") if unit.type == "cuda" else unit


def resolve_workers(workers: int | str, device: str | torch.device) -> int:
    """``"auto"``: one process per usable core on CPU (at most :data:`MAX_AUTO_WORKERS`),
    one on CUDA (the stacks already fill the GPU); an int is kept."""
    workers = check_workers(workers)
    if workers != "auto":
        return workers
    if torch.device(device).type == "cuda":
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, MAX_AUTO_WORKERS))


def execute_units(
    units: Sequence[TrainUnit],
    *,
    device: str | torch.device = "cpu",
    workers: int | str = 1,
    on_step: Callable[[TrainUnit, int, int], None] | None = None,
    pool: RayPool | None = None,
    on_busy: Callable[[int], None] | None = None,
) -> Iterator[Done]:
    """Run ``units``; yield each as it finishes.

    Args:
        units: the work.
        device: where the stacks train (every worker uses it).
        workers: 1 runs the units here, one after the other; more runs them in that many
            worker processes (CPU: one torch thread each); "auto": :func:`resolve_workers`.
        on_step: ``(unit, step, n_training)`` after every training step; in-process only
            (workers report a unit when it is done).
        pool: a connected Ray cluster; its units then run as Ray tasks (``workers`` unused).
        on_busy: ``(busy)`` with the number of Ray tasks running, as it changes.
    """
    jobs = [(position, unit, str(device)) for position, unit in enumerate(units)]
    if pool is not None:
        gpus = 1 if torch.device(device).type == "cuda" else 0
        done = pool.map_unordered(_work, jobs, num_cpus=1, num_gpus=gpus, on_busy=on_busy)
        for _, (position, fits, seconds) in done:
            yield units[position], fits, seconds
        return
    workers = resolve_workers(workers, device)
    if workers == 1 or len(units) <= 1:
        for unit in units:
            callback = None if on_step is None else _bind(on_step, unit)
            start = time.perf_counter()
            fits = run_unit(unit, device=device, on_step=callback)
            yield unit, fits, time.perf_counter() - start
        return
    context = multiprocessing.get_context("spawn")
    pool = context.Pool(min(workers, len(units)), initializer=_init_worker)
    try:
        for position, fits, seconds in pool.imap_unordered(_work, jobs):
            yield units[position], fits, seconds
        pool.close()
    except BaseException:
        pool.terminate()  # Ctrl-C or an error: stop the workers now, not after their units
        raise
    finally:
        pool.join()


def _bind(on_step, unit):
    return lambda step, n_training: on_step(unit, step, n_training)


def _init_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)


def _work(job: tuple[int, TrainUnit, str]) -> tuple[int, list[ClusterFit], float]:
    position, unit, device = job
    start = time.perf_counter()
    fits = run_unit(unit, device=device)
    return position, fits, time.perf_counter() - start


__all__ = [
    "MAX_AUTO_WORKERS",
    "check_executor_options",
    "check_workers",
    "execute_units",
    "resolve_workers",
    "run_devices",
]
