"""Stage 1 of seed 002: an AANet for every (latent cluster, k) of every n_clusters (SPEC §3).

    from featgeo.archetypes.stage1 import Stage1Config, run_stage1

    result = run_stage1("saes/layer6", "outputs/real_data_analysis_canonical",
                        Stage1Config(n_clusters=(128, 256)))

For every n in ``config.n_clusters`` it reads (or builds) the SAE's activation store and the
latent clusters of ``featgeo sae cluster``, trains every (cluster, k) model in work units
(:mod:`featgeo.archetypes.units`) and writes, in ``{save_dir}/clusters_{n}/``::

    consolidated_metrics_n{n}.csv   one row per (cluster, k): the seed's columns, then featgeo's
                                    (:mod:`featgeo.archetypes.consolidated`)
    training_curves_n{n}.jsonl      one record per model: logged steps, the four losses, lr
    aanet_cluster_{cid}_k{k}.pt     every trained model (:meth:`AANet.save`; torch.load with
                                    weights_only=True reads it)
    plots/                          the five plots of :mod:`featgeo.reports.aanet_plots`

and ``{save_dir}/stage1.json`` (configuration, versions, fingerprints, per-n counts and timings).
Latent clusters go to ``{save_dir}/latent_clusters`` unless ``clusters_dir`` names the output of
an earlier ``featgeo sae cluster``.

Resume: a ``clusters_{n}`` folder is built in its hidden sibling ``.clusters_{n}.partial`` and
swapped into place only when complete. Each finished unit leaves its models and one record file
there, so a killed run, started again with the same settings, trains only the units without a
record; the plan of units depends only on the clusters and ``models_per_unit``, and every unit's
models only on the unit, so an interrupted and an uninterrupted run write the same files. A
save dir holding a run with other settings is refused unless ``force``, which removes that run.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from featgeo.archetypes.cluster_inputs import LatentClusters, check_clusters_dir, latent_clusters
from featgeo.archetypes.config import AANetConfig
from featgeo.archetypes.consolidated import (
    COLUMNS,
    cluster_level,
    consolidated_rows,
    csv_cell,
    curve_record,
    model_record,
)
from featgeo.archetypes.criteria import DEFAULT_CRITERION, get_criterion
from featgeo.archetypes.data import SPACES, clusters_data, read_clusters
from featgeo.archetypes.engine import auto_models_per_stack, k_range, to_aanet
from featgeo.archetypes.executors import execute_units, resolve_workers
from featgeo.archetypes.quality import QualityFilters
from featgeo.archetypes.stage1_files import (
    CLUSTERS_DIR,
    STAGE1_FILE,
    UNITS_DIR,
    check_save_dir,
    check_settings,
    csv_name,
    curves_name,
    read_record,
    read_unit,
    remove_run,
    save_wall_seconds,
    start_units,
    wall_seconds,
)
from featgeo.archetypes.units import DTYPES, TrainUnit, plan_units
from featgeo.files import (
    dumps_strict,
    exclusive_dir,
    partial_dir,
    replace_dir,
    write_csv,
    write_json,
    write_text,
)
from featgeo.latents.run import check_live_n_clusters
from featgeo.progress import workers_busy

log = logging.getLogger(__name__)


def model_name(cluster_id: int, k: int) -> str:
    return f"aanet_cluster_{cluster_id}_k{k}.pt"


@dataclass(frozen=True)
class Stage1Config:
    """Settings of Stage 1 (defaults: SPEC §3 / seed 002's ``run_real_data_analysis.sh``)."""

    n_clusters: tuple[int, ...] = (128, 256, 512, 768)
    clustering: str = "kmeans"
    """Latent clustering method of ``featgeo sae cluster``: kmeans, k-subspaces or spectral."""
    k_min: int = 2
    k_max: int = 8
    aanet: AANetConfig = field(default_factory=AANetConfig)
    """Training hyper-parameters; its seed seeds the clustering and every model."""
    criterion: str = DEFAULT_CRITERION
    """The k criterion of the ``recommended_k`` column (:mod:`featgeo.archetypes.criteria`)."""
    filters: QualityFilters = field(default_factory=QualityFilters)
    """Quality filters of the zoomed plot, the end table and ``passes_quality_filters``."""
    batch_tokens: int = 4096
    """Store tokens drawn per step; each cluster trains on its active ones."""
    knn: int = 150
    max_warmup: int = 1000
    space: Literal["full", "subspace"] = "subspace"
    models_per_unit: int | Literal["auto"] = "auto"
    """Models trained together in one stack; "auto": 28 on CPU, 4096 on CUDA."""
    curve_every: int = 10
    """``training_curves``: log every this-many steps (and the last)."""
    dtype: Literal["float32", "float64"] = "float32"
    store_tokens: int = 262_144
    """Tokens of the activation store (0: the whole split)."""
    model: str | None = None
    """Model the SAE reads (default: the SAE's metadata, else the embedded one)."""
    layer: int | None = None
    corpus: str = "embedded"
    split: str = "sae_train"
    context_size: int = 256

    def __post_init__(self) -> None:
        from featgeo.latents.methods import get_cluster_method
        from featgeo.latents.run import parse_n_clusters

        object.__setattr__(self, "n_clusters", tuple(parse_n_clusters(list(self.n_clusters))))
        get_cluster_method(self.clustering)
        if len(k_range(self.k_min, self.k_max)) < 3:
            raise ValueError(
                f"Stage 1 needs at least 3 values of k for its elbow metrics, got k_min="
                f"{self.k_min}, k_max={self.k_max}; widen the range (the seed uses 2..8)"
            )
        get_criterion(self.criterion)
        if not isinstance(self.aanet, AANetConfig):
            raise TypeError(f"aanet must be an AANetConfig, got {type(self.aanet).__name__}")
        if self.space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}, got {self.space!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        ints = {"batch_tokens": 1, "knn": 1, "max_warmup": self.k_max, "curve_every": 1,
                "store_tokens": 0, "context_size": 2}  # fmt: skip
        for name, low in ints.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        mpu = self.models_per_unit
        if mpu != "auto" and (isinstance(mpu, bool) or not isinstance(mpu, int) or mpu < 1):
            raise ValueError(f"models_per_unit must be 'auto' or an int >= 1, got {mpu!r}")

    @property
    def ks(self) -> list[int]:
        return k_range(self.k_min, self.k_max)

    def settings(self) -> dict[str, Any]:
        """Everything that decides the results, except which n values are run."""
        out = asdict(self)
        out.pop("n_clusters")
        out["aanet"] = self.aanet.to_dict()
        out["aanet"].pop("extra", None)
        return out


@dataclass
class Stage1N:
    """What Stage 1 did for one n_clusters value."""

    n_clusters: int
    folder: Path
    n_clusters_found: int
    n_models: int
    status_counts: dict[str, int]
    n_passing: int
    seconds: dict[str, float]
    reused: bool = False


@dataclass
class Stage1Result:
    save_dir: Path
    per_n: list[Stage1N]
    info: dict[str, Any]


# -- the run ------------------------------------------------------------------------------------
def run_stage1(
    sae_path: str | Path,
    save_dir: str | Path,
    config: Stage1Config | None = None,
    *,
    clusters_dir: str | Path | None = None,
    device: str = "auto",
    workers: int | str = "auto",
    executor: str = "local",
    ray_address: str | None = None,
    force: bool = False,
    progress: bool = True,
) -> Stage1Result:
    """Run Stage 1 (see the module docstring) and return what it did per n.

    Args:
        sae_path: SAE folder (SAELens format).
        save_dir: output root (``clusters_{n}/`` per n, ``stage1.json``).
        config: the settings (:class:`Stage1Config`; its defaults are the seed's).
        clusters_dir: the output of ``featgeo sae cluster`` to reuse (never written); None
            clusters into ``save_dir/latent_clusters``.
        device: where the stacks train; workers: processes training units side by side
            (:func:`featgeo.archetypes.executors.resolve_workers`).
        executor, ray_address: ``local``, or ``ray`` to train the units as tasks on the Ray
            cluster at ``ray_address`` (:mod:`featgeo.executors`); the files are the same.
        force: replace a run of other settings in ``save_dir``.

    Raises:
        ValueError / FileNotFoundError / FileExistsError / NotADirectoryError: bad input,
        named with its fix, before anything is written (a save dir holding a run with other
        settings needs ``force``), or another process is writing the same save dir;
        ``executor="ray"`` without Ray installed, or no Ray cluster at ``ray_address``.
    """
    from featgeo.archetypes.executors import check_executor_options
    from featgeo.executors import connect

    config = config or Stage1Config()
    if not isinstance(config, Stage1Config):
        raise TypeError(f"config must be a Stage1Config, got {type(config).__name__}")
    if not str(save_dir).strip():
        raise ValueError("--save-dir is empty; pass the folder Stage 1 writes into")
    save_dir = Path(save_dir)
    check_save_dir(save_dir, config.n_clusters)
    spec = check_executor_options(executor, ray_address, workers)
    with connect(spec) as pool, exclusive_dir(save_dir, "--save-dir"):
        return _run_stage1(sae_path, save_dir, config, clusters_dir, device, workers, force,
                           progress, pool)  # fmt: skip


def _run_stage1(sae_path, save_dir, config, clusters_dir, device, workers, force, progress, pool):
    from featgeo.activations.hooks import sae_hook_point
    from featgeo.archetypes.executors import run_devices
    from featgeo.sae.saelens_format import load_sae, sae_fingerprint

    torch_device, driver_device = run_devices(device, pool)
    workers = pool.slots(1, torch_device.type == "cuda") if pool else resolve_workers(
        workers, torch_device
    )  # fmt: skip
    sae = load_sae(sae_path)
    sae_hook_point(sae, config.layer)  # an SAE whose hook names no layer needs --layer
    too_many = [n for n in config.n_clusters if n > sae.cfg.d_sae]
    if too_many:
        raise ValueError(
            f"--n-clusters {max(too_many)} is larger than the SAE's {sae.cfg.d_sae} latents; use "
            f"at most {sae.cfg.d_sae}"
        )
    explicit = clusters_dir is not None
    clusters_dir = Path(clusters_dir) if explicit else save_dir / CLUSTERS_DIR
    if explicit:
        check_clusters_dir(clusters_dir, config.n_clusters)
    previous = read_record(save_dir, force)
    mpu = config.models_per_unit
    if mpu == "auto":  # a resumed run keeps its plan, whatever the device now
        mpu = previous["plan"]["models_per_unit"] if previous else auto_models_per_stack(
            torch_device
        )  # fmt: skip
    settings = {
        **config.settings(),
        "models_per_unit": mpu,
        "sae_fingerprint": sae_fingerprint(sae),
        "clusters_dir": str(clusters_dir.resolve()) if explicit else None,
    }
    check_settings(save_dir, previous, settings)

    start = time.perf_counter()
    store = activation_store(sae, config, str(driver_device))
    store_seconds = time.perf_counter() - start
    check_live_n_clusters(store, list(config.n_clusters))
    if explicit:  # checked (and never written) before --force removes anything
        clusters = latent_clusters(sae, store, str(sae_path), clusters_dir, config, explicit=True)
    if force:
        remove_run(save_dir)
    if not explicit:
        clusters = latent_clusters(sae, store, str(sae_path), clusters_dir, config,
                                   explicit=False)  # fmt: skip

    run = _Run(sae, store, str(sae_path), save_dir, config, mpu, torch_device, workers, pool)
    info = dict(previous or {})
    info.setdefault("completed", {})
    todo = [n for n in config.n_clusters if not run.finished(n, info, clusters[n])]
    if todo:
        info.update(
            versions(),
            sae=str(sae_path),
            sae_fingerprint=settings["sae_fingerprint"],
            store=store_info(store),
            clusters_dir=str(clusters_dir),
            settings=settings,
            plan={"models_per_unit": mpu},
            device=str(torch_device),
            workers=workers,
            executor=pool.describe() if pool else {"executor": "local"},
            status="running",
        )
        info.setdefault("timings", {})["store"] = store_seconds
        save_dir.mkdir(parents=True, exist_ok=True)
        write_json(save_dir / STAGE1_FILE, info)
    total = sum(len(clusters[n].rows) * len(config.ks) for n in todo)
    per_n = []
    with models_progress(progress and bool(todo), total) as bar:
        run.train(todo, clusters, bar, settings, info)
    for n in config.n_clusters:
        per_n.append(run.result(n, info["completed"][str(n)], reused=n not in todo))
    if todo:
        info["status"] = "complete"
        write_json(save_dir / STAGE1_FILE, info)
    return Stage1Result(save_dir, per_n, info)


def versions() -> dict[str, str]:
    import numpy
    import torch

    from featgeo import __version__

    return {"featgeo_version": __version__, "torch_version": torch.__version__,
            "numpy_version": numpy.__version__}  # fmt: skip


def activation_store(sae, config: Stage1Config, device: str):
    """The SAE's activation store of ``config.split`` (built once, then reused from the cache)."""
    from featgeo.activations.store import build_sae_store

    return build_sae_store(
        sae,
        model=config.model or sae.cfg.model_name or "embedded",
        corpus=config.corpus,
        split=config.split,
        layer=config.layer,
        context_size=config.context_size,
        max_tokens=config.store_tokens or None,
        device=device,
    )


def store_info(store) -> dict[str, Any]:
    keys = ("model", "corpus_fingerprint", "encoder_fingerprint", "split", "layer",
            "context_size")  # fmt: skip
    return {
        "folder": str(store.folder),
        "key": Path(store.folder).name,
        "n_tokens": store.n_tokens,
        "nnz": store.nnz,
        "average_l0": store.nnz / max(store.n_tokens, 1),
        **{k: store.header.get(k) for k in keys},
    }


@dataclass(eq=False)
class _NWork:
    """One n's units while they train: built in ``folder`` (the hidden partial folder)."""

    n: int
    clusters: LatentClusters
    folder: Path
    plan: list[list[int]] = field(default_factory=list)
    finished: dict[int, dict] = field(default_factory=dict)
    pending: list[TrainUnit] = field(default_factory=list)
    remaining: int = 0
    """Pending units not yet finished."""
    data_seconds: float = 0.0
    wall: float = 0.0
    """Training wall seconds of earlier attempts, then of this one too once n is done."""

    @property
    def units_dir(self) -> Path:
        return self.folder / UNITS_DIR


class _Run:
    """The work of one :func:`run_stage1` call."""

    def __init__(self, sae, store, sae_id, save_dir, config, mpu, device, workers, pool):
        self.sae, self.store, self.sae_id, self.save_dir = sae, store, sae_id, save_dir
        self.config, self.mpu, self.device, self.workers = config, mpu, device, workers
        self.pool = pool

    def finished(self, n: int, info: dict, clusters: LatentClusters) -> bool:
        """Whether n is done; a finished n whose latent clusters changed since is an error."""
        record = info["completed"].get(str(n))
        if record is None or not (self.save_dir / f"clusters_{n}" / csv_name(n)).is_file():
            return False
        if record["clusters_sha256"] != clusters.sha256:
            raise FileExistsError(
                f"the latent clusters in {clusters.folder} changed since Stage 1 trained "
                f"n_clusters={n} in --save-dir '{self.save_dir}'; pass --force to train again"
            )
        return True

    def result(self, n: int, record: dict, reused: bool) -> Stage1N:
        return Stage1N(
            n_clusters=n,
            folder=self.save_dir / f"clusters_{n}",
            n_clusters_found=record["n_clusters_found"],
            n_models=record["n_models"],
            status_counts=record["status_counts"],
            n_passing=record["n_passing"],
            seconds=record["seconds"],
            reused=reused,
        )

    def train(self, todo: list[int], clusters: dict[int, LatentClusters], bar, settings: dict,
              info: dict) -> None:  # fmt: skip
        """Train (or finish) every unit of every n in ``todo`` in one stream, so that workers
        stay busy across n values; each n's folder is written as soon as its last unit is done
        and recorded in ``info["completed"]`` (and stage1.json)."""
        works = [self._plan_n(n, clusters[n], bar, settings) for n in todo]
        for work in works:
            if not work.pending:
                self._complete(work, info)
        pending = [unit for work in works for unit in work.pending]
        work_of = {id(unit): work for work in works for unit in work.pending}
        bar.set_running(min(self.workers, len(pending)))
        start = last = time.perf_counter()
        for unit, fits, seconds in execute_units(
            pending, device=self.device, workers=self.workers, on_step=bar.step, pool=self.pool,
            on_busy=bar.busy,
        ):
            work = work_of[id(unit)]
            work.finished[unit.index] = self._save_unit(work.n, unit, fits, seconds, work.folder)
            work.remaining -= 1
            now = time.perf_counter()
            save_wall_seconds(work.units_dir, work.wall + now - start)
            bar.finish_unit(unit.n_models)
            if not work.remaining:
                # n's share of the wall clock: since the previous n was done (the shares add up
                # to the whole; one process training n after n gets each n's own time)
                work.wall += now - last
                last = now
                self._complete(work, info)

    def _plan_n(self, n: int, clusters: LatentClusters, bar, settings: dict) -> _NWork:
        """n's units, finished (read back from an earlier attempt) and pending."""
        config, ks = self.config, self.config.ks
        work = _NWork(n, clusters, partial_dir(self.save_dir / f"clusters_{n}"))
        start = time.perf_counter()
        datas = clusters_data(self.sae, self.store, read_clusters(clusters.folder),
                              space=config.space)  # fmt: skip
        by_id = {d.cluster_id: d for d in datas}
        work.plan = [[datas[j].cluster_id for j in unit]
                     for unit in plan_units(datas, ks, self.mpu)]  # fmt: skip
        start_units(work.units_dir, work.plan, settings)
        work.data_seconds = time.perf_counter() - start
        for index, cluster_ids in enumerate(work.plan):
            done = read_unit(work.units_dir, index, cluster_ids, len(ks))
            if done is not None:
                work.finished[index] = done
                bar.finish_unit(len(cluster_ids) * len(ks))
                continue
            work.pending.append(TrainUnit(index, [by_id[c] for c in cluster_ids],
                                          self.store.n_tokens, tuple(ks), config.aanet,
                                          config.batch_tokens, config.knn, config.max_warmup,
                                          config.dtype))  # fmt: skip
        work.wall = wall_seconds(work.units_dir)
        work.remaining = len(work.pending)
        return work

    def _complete(self, work: _NWork, info: dict) -> None:
        """Write n's tables and folder from its finished units; record it in stage1.json."""
        config, n, clusters = self.config, work.n, work.clusters
        records = [r for index in range(len(work.plan)) for r in work.finished[index]["records"]]
        start = time.perf_counter()
        rows = consolidated_rows(
            clusters.rows,
            records,
            sae_id=self.sae_id,
            average_l0=self.store.nnz / max(self.store.n_tokens, 1),
            criterion=config.criterion,
            filters=config.filters,
        )
        passing = _write_tables(work.folder, n, rows, records)
        shutil.rmtree(work.units_dir)
        replace_dir(work.folder, self.save_dir / f"clusters_{n}")
        counts: dict[str, int] = {}
        for record in records:
            counts[record["status"]] = counts.get(record["status"], 0) + 1
        if not counts.get("ok"):
            log.warning("n_clusters=%d: no model was trained (statuses %s); see the "
                        "n_active_tokens column", n, counts)  # fmt: skip
        seconds = {
            # a reused clustering cost nothing in this run (its own time is in clustering.json)
            "clustering": float(clusters.info.get("seconds", 0.0)) if clusters.built else 0.0,
            "data": work.data_seconds,
            "training": work.wall,
            "tables_and_plots": time.perf_counter() - start,
        }
        info["completed"][str(n)] = {
            "n_clusters_found": len(clusters.rows),
            "n_models": len(records),
            "clusters_reused": not clusters.built,
            "clusters_sha256": clusters.sha256,
            "status_counts": counts,
            "n_passing": passing,
            "seconds": seconds,
            "unit_seconds": sum(done["seconds"] for done in work.finished.values()),
        }
        write_json(self.save_dir / STAGE1_FILE, info)

    def _save_unit(self, n: int, unit: TrainUnit, fits, seconds: float, work: Path) -> dict:
        """Write a finished unit's models, then its record (the resume marker)."""
        by_id = {d.cluster_id: d for d in unit.datas}
        for fit in fits:
            if fit.status != "ok":
                continue
            data = by_id[fit.cluster_id]
            about = {"n_clusters": n, "cluster_id": fit.cluster_id, "k": fit.k,
                     "latent_indices": data.latent_indices.tolist(),
                     "sae": self.sae_id}  # fmt: skip
            net = to_aanet(fit, data, replace(self.config.aanet, extra=about))
            net.save(work / model_name(fit.cluster_id, fit.k))
        done = {
            "index": unit.index,
            "cluster_ids": unit.cluster_ids,
            "seconds": seconds,
            "records": [model_record(fit, self.config.curve_every) for fit in fits],
        }
        write_json(work / UNITS_DIR / f"unit_{unit.index:05d}.json", done)
        return done


def _write_tables(work: Path, n: int, rows: list[dict], records: list[dict]) -> int:
    """The CSV, the curves and the plots of one n; returns the clusters passing the filters."""
    from featgeo.reports.aanet_plots import write_stage1_plots

    cells = [{c: csv_cell(row.get(c)) for c in COLUMNS} for row in rows]
    write_csv(work / csv_name(n), cells, COLUMNS)
    ordered = sorted(records, key=lambda r: (r["cluster_id"], r["k"]))
    write_text(work / curves_name(n), "".join(dumps_strict(curve_record(n, r)) + "\n"
                                              for r in ordered))  # fmt: skip
    clusters = cluster_level(rows)
    for cluster in clusters:
        cluster["passes_quality"] = cluster["passes_quality_filters"]
    write_stage1_plots(clusters, n, work / "plots")
    return sum(bool(c["passes_quality"]) for c in clusters)


class _Bar:
    """The models progress bar (or nothing): models done / total, models still training (one
    process) or workers busy (a pool), elapsed, ETA."""

    def __init__(self, progress, task):
        self.progress, self.task = progress, task
        self.done = 0  # models of finished units
        self.running = 1
        self.remote = False  # units run on Ray

    def _show(self, completed: int, status: str) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=completed, status=status)

    def set_running(self, workers: int) -> None:
        self.running = workers
        if workers > 1:
            self._show(self.done, workers_busy(workers))

    def busy(self, workers: int) -> None:
        """Ray: ``workers`` tasks are running."""
        self.running, self.remote = workers, True
        self._show(self.done, workers_busy(workers))

    def step(self, unit: TrainUnit, step: int, n_training: int) -> None:
        self._show(self.done + unit.n_models - n_training, f"{n_training} training")

    def finish_unit(self, n_models: int) -> None:
        self.done += n_models
        remote = self.running > 1 or self.remote
        busy = workers_busy(self.running) if remote else "0 training"
        self._show(self.done, busy)


class models_progress:
    """A models progress bar (:class:`_Bar`) as a context manager, or nothing."""

    def __init__(self, enabled: bool, total: int, description: str = "AANet models"):
        self.enabled, self.total, self.progress = enabled, total, None
        self.description = description

    def __enter__(self) -> _Bar:
        if not self.enabled:
            return _Bar(None, None)
        from featgeo.progress import progress_bar

        self.progress = progress_bar()
        self.progress.__enter__()
        return _Bar(self.progress, self.progress.add_task(self.description, total=self.total,
                                                          status=""))  # fmt: skip

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)


__all__ = [
    "CLUSTERS_DIR",
    "STAGE1_FILE",
    "Stage1Config",
    "Stage1N",
    "Stage1Result",
    "check_save_dir",
    "csv_name",
    "curves_name",
    "model_name",
    "run_stage1",
]
