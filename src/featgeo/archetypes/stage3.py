"""Stage 3 of seed 002: refit (or reuse) the selected clusters' AANets and collect vertex samples.

    from featgeo.archetypes.stage3 import Stage3Config, run_stage3

    result = run_stage3("outputs/real_data_analysis_canonical",
                        "outputs/selected_clusters_canonical",
                        Stage3Config(n_clusters=(512, 768), skip_training=True))

1. **Selection** (:mod:`featgeo.archetypes.selection`) on Stage 1's CSVs in ``csv_dir``, or the
   table of ``featgeo aanet select --out`` (``selection``).
2. **Models.** MODE 1 retrains every selected cluster at its refit k with the batched trainer on
   Stage 1's training store and settings (:mod:`featgeo.archetypes.units`; AANet settings can be
   overridden); MODE 2 (``skip_training``) copies Stage 1's ``aanet_cluster_{cid}_k{k}.pt``.
   Both write ``cluster_{cid}_k{k}_category{cat}.pt`` and ``..._curves.json``.
3. **Vertex samples** (:mod:`featgeo.archetypes.vertices`): the SAE's activation store of the
   held-out ``split`` (``vertex``; never the split the AANets trained on) is built once (cached
   and reused by later runs) and scanned once for all selected clusters together.

Executors: locally, MODE 1's units train in ``workers`` processes and the scan runs in this
process; with ``executor="ray"`` (:mod:`featgeo.executors`) the refits and the scan's blocks
run as tasks on a Ray cluster, the same files either way. Only arrays and small models travel,
through Ray's object store: each refit unit its clusters' training data, the scan the AANets
once and then each block's arrays (read here from the store); the driver writes every file, so
the nodes need no shared filesystem. ``stage3.json`` records the executor.

Files: :mod:`featgeo.archetypes.stage3_files`. Resume: the run is built in
``{save_dir}/.stage3.partial``; a retrained unit leaves a record, the scan a checkpoint after
every block (the samples files are cut back to it on resume, so no record is written twice),
and a rerun with the same settings continues where the last one stopped. A finished run with
the same settings is reused; other settings need ``force``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from featgeo.archetypes.aanet import AANet
from featgeo.archetypes.config import OPTIONS, AANetConfig, config_from_options
from featgeo.archetypes.consolidated import CLUSTER_COLUMNS
from featgeo.archetypes.selection import (
    SELECTION_COLUMNS,
    SelectionCriteria,
    csv_name,
    find_csv,
    read_selection,
    read_stage1_csv,
    select_clusters,
    selection_cells,
)
from featgeo.archetypes.stage1 import store_info, versions
from featgeo.archetypes.stage1_files import differences
from featgeo.archetypes.stage3_files import (
    SELECTION_FILE,
    STAGE3_FILE,
    WORK_DIR,
    ChunkText,
    check_save_dir,
    n_dir,
    read_checkpoint,
    read_previous,
    read_stage1_record,
    remove_run,
    same,
    save_checkpoint,
    selection_n_name,
    stage1_model_path,
    start_work,
    stem,
)
from featgeo.archetypes.vertices import (
    ScanState,
    VertexModel,
    VertexSettings,
    check_scan,
    scan_vertices,
)
from featgeo.files import (
    append_jsonl,
    copy_file,
    exclusive_dir,
    read_json,
    replace_dir,
    write_csv,
    write_json,
)
from featgeo.progress import workers_busy

log = logging.getLogger(__name__)

TRAINING_FIELDS = tuple(OPTIONS)
"""AANet settings MODE 1 may change from Stage 1's (``Stage3Config.training``)."""


@dataclass(frozen=True)
class Stage3Config:
    """Settings of Stage 3 (defaults: seed 002's ``run_refit_selected_clusters.sh``)."""

    n_clusters: tuple[int, ...] = (512, 768)
    criteria: SelectionCriteria = field(default_factory=SelectionCriteria)
    """Selection thresholds (ignored when a selection table is given)."""
    skip_training: bool = False
    """MODE 2: reuse Stage 1's models instead of retraining (MODE 1)."""
    collect_vertex_samples: bool = True
    vertex: VertexSettings = field(default_factory=VertexSettings)
    split: str = "vertex"
    """Corpus split the vertex samples come from; must differ from Stage 1's training split."""
    store_tokens: int = 0
    """Tokens of the held-out split's activation store (0: the whole split)."""
    training: dict[str, Any] = field(default_factory=dict)
    """MODE 1: AANet settings replacing Stage 1's (keys of :data:`TRAINING_FIELDS`)."""
    models_per_unit: int | Literal["auto"] = "auto"

    def __post_init__(self) -> None:
        from featgeo.latents.run import parse_n_clusters

        object.__setattr__(self, "n_clusters", tuple(parse_n_clusters(list(self.n_clusters))))
        if not isinstance(self.criteria, SelectionCriteria):
            raise TypeError(f"criteria must be SelectionCriteria, got {type(self.criteria)}")
        if not isinstance(self.vertex, VertexSettings):
            raise TypeError(f"vertex must be VertexSettings, got {type(self.vertex).__name__}")
        config_from_options(dict(self.training))  # checks names and values
        st = self.store_tokens
        if isinstance(st, bool) or not isinstance(st, int) or st < 0:
            raise ValueError(f"--store-tokens must be an int >= 0 (0: the whole split), got {st!r}")
        mpu = self.models_per_unit
        if mpu != "auto" and (isinstance(mpu, bool) or not isinstance(mpu, int) or mpu < 1):
            raise ValueError(f"--models-per-unit must be 'auto' or an int >= 1, got {mpu!r}")


@dataclass
class Stage3Result:
    save_dir: Path
    rows: list[dict[str, Any]]
    """The selection rows, each with ``files`` (paths written) and, when collected, ``stats``."""
    info: dict[str, Any]
    reused: bool = False


# -- the run ------------------------------------------------------------------------------------
def run_stage3(
    csv_dir: str | Path,
    save_dir: str | Path,
    config: Stage3Config | None = None,
    *,
    selection: str | Path | None = None,
    stage1_models_dir: str | Path | None = None,
    sae: str | Path | None = None,
    device: str = "auto",
    workers: int | str = "auto",
    executor: str = "local",
    ray_address: str | None = None,
    force: bool = False,
    progress: bool = True,
) -> Stage3Result:
    """Run Stage 3 (see the module docstring).

    Args:
        csv_dir: Stage 1's ``--save-dir`` (``clusters_{n}/consolidated_metrics_n{n}.csv``,
            ``stage1.json``).
        save_dir: output root (``n{n}/`` per n, ``stage3.json``, ``selection.csv``).
        config: :class:`Stage3Config`.
        selection: a table of ``featgeo aanet select --out`` to use instead of selecting.
        stage1_models_dir: MODE 2: Stage 1's root holding ``clusters_{n}/aanet_cluster_*.pt``
            (default ``csv_dir``).
        sae: the SAE folder (default: the one ``stage1.json`` names; its fingerprint must match).
        device, workers: where and in how many processes MODE 1 trains; the scan's device.
        executor, ray_address: ``local``, or ``ray`` to run MODE 1's refits and the vertex
            scan's blocks as tasks on the Ray cluster at ``ray_address``
            (:mod:`featgeo.executors`); the files are the same.
        force: replace a Stage 3 run of other settings in ``save_dir``.

    Raises:
        FileNotFoundError: "CSV not found", "Model not found" (MODE 2), no SAE.
        ValueError: bad settings or inputs (a CSV without elbow columns, a Stage 1 model whose k
            is not the refit k, the training split as ``split``, ...).
        NoClustersSelected: selection kept nothing (per-filter counts in the message).
        FileExistsError: ``save_dir`` holds a run with other settings (pass ``force``).
        ValueError: ``executor="ray"`` without Ray installed, ``--workers N`` with it, or no Ray
            cluster at ``ray_address``.
        Every input error is raised before anything is written.
    """
    from featgeo.archetypes.executors import check_executor_options
    from featgeo.executors import connect

    config = config or Stage3Config()
    if not isinstance(config, Stage3Config):
        raise TypeError(f"config must be a Stage3Config, got {type(config).__name__}")
    for value, option in ((csv_dir, "--csv-dir"), (save_dir, "--save-dir")):
        if not str(value).strip():
            raise ValueError(f"{option} is empty; pass a folder")
    csv_dir, save_dir = Path(csv_dir), Path(save_dir)
    if not csv_dir.is_dir():
        raise FileNotFoundError(
            f"--csv-dir '{csv_dir}' is not a folder; pass the --save-dir of `featgeo aanet stage1`"
        )
    if selection is not None and config.criteria != SelectionCriteria():
        raise ValueError(
            "--selection replaces the selection options (the filters, --sigma-a, --sigma-bc, "
            "--manual, --refit-k); drop them, or drop --selection to select here"
        )
    check_save_dir(save_dir, config.n_clusters)
    spec = check_executor_options(executor, ray_address, workers)
    with connect(spec) as pool, exclusive_dir(save_dir, "--save-dir"):
        run = _Run(csv_dir, save_dir, config, device, workers, progress, pool)
        return run.run(selection, stage1_models_dir, sae, force)


class _Run:
    def __init__(self, csv_dir, save_dir, config, device, workers, progress, pool):
        from featgeo.archetypes.executors import check_workers, run_devices

        self.csv_dir, self.save_dir, self.config = csv_dir, save_dir, config
        # units (refits, scan blocks) run on ``device``; the driver builds the stores on its own
        self.device, self.driver_device = run_devices(device, pool)
        self.workers = check_workers(workers)
        self.pool = pool
        self.progress = progress
        self.work = save_dir / WORK_DIR
        self.seconds: dict[str, float] = {}

    # -- checks, all before anything is written ---------------------------------------------------
    def run(self, selection, models_dir, sae_path, force) -> Stage3Result:
        from featgeo.sae.saelens_format import sae_fingerprint

        config = self.config
        start = time.perf_counter()
        self.stage1 = read_stage1_record(self.csv_dir)
        self.rows, self.clusters, selection_info = self._select(selection)
        self.seconds["selection"] = time.perf_counter() - start
        if self.stage1 is None and not config.skip_training:
            above = self.csv_dir.resolve().parent / "stage1.json"
            hint = f" (there is one in '{above.parent}')" if above.is_file() else ""
            raise ValueError(
                f"--csv-dir '{self.csv_dir}' has no stage1.json{hint}, and MODE 1 retrains with "
                "Stage 1's settings from it; point --csv-dir at Stage 1's --save-dir, or pass "
                "--skip-training"
            )
        self.s1 = stage1_config(self.stage1)
        if config.collect_vertex_samples and config.split == self.s1.split:
            raise ValueError(
                f"--split {config.split} is the split the AANets trained on (Stage 1's --split); "
                "vertex samples must come from held-out text: use --split vertex"
            )
        if config.collect_vertex_samples and "all" in (config.split, self.s1.split):
            raise ValueError(
                f"--split {config.split} shares documents with the split the AANets trained on "
                f"(Stage 1's --split {self.s1.split}); vertex samples must come from held-out "
                "text: use --split vertex, or --no-collect-vertex-samples"
            )
        self.sae, self.sae_id = self._sae(sae_path)
        if self.stage1 is None:  # MODE 2 on CSVs without Stage 1's record: say what is assumed
            log.warning(
                "--csv-dir '%s' has no stage1.json: the vertex store uses featgeo's defaults "
                "for the model, corpus and context size",
                self.csv_dir,
            )
        if models_dir is not None and not config.skip_training:
            raise ValueError(
                "--stage1-models-dir is read only with --skip-training (MODE 2: reuse Stage 1's "
                "models); add --skip-training, or drop --stage1-models-dir to retrain"
            )
        self.models_dir = Path(models_dir) if models_dir is not None else self.csv_dir
        models_sha = self._check_stage1_models() if config.skip_training else None
        self.aanet = config_from_options(dict(config.training), self.s1.aanet)
        self.settings = {
            "n_clusters": list(config.n_clusters),
            "rows": [{c: r[c] for c in SELECTION_COLUMNS} for r in self.rows],
            "mode": "stage1_models" if config.skip_training else "retrain",
            "stage1_csv_sha256": {str(n): s for n, s in self.csv_sha.items()},
            "stage1_models_sha256": models_sha,
            "training": None if config.skip_training else self._training_settings(),
            "collect_vertex_samples": config.collect_vertex_samples,
            "vertex": config.vertex.to_dict(),
            "split": config.split,
            "store_tokens": config.store_tokens,
            "sae_fingerprint": sae_fingerprint(self.sae),
        }
        previous = read_previous(self.save_dir, force)
        if previous is not None:
            if not same(previous["settings"], self.settings):
                changed = _changes(previous["settings"], self.settings)
                shown = "; ".join(changed[:3]) + ("; ..." if len(changed) > 3 else "")
                raise FileExistsError(
                    f"--save-dir '{self.save_dir}' holds a Stage 3 run with other settings "
                    f"({shown[:300]}); pass --force to replace it or use another --save-dir"
                )
            if previous.get("status") == "complete" and self._outputs_exist():
                return Stage3Result(
                    self.save_dir, self._rows_with_files(previous), previous, reused=True
                )
        if config.collect_vertex_samples:  # a bad or empty split fails before any write
            self.text = self._chunk_text()
            start = time.perf_counter()  # built once, then reused from the featgeo cache
            self.store = self._vertex_store()
            self.seconds["vertex_store"] = time.perf_counter() - start
            check_scan(self.store, config.vertex)
        if force:
            remove_run(self.save_dir)
        self.info = {
            **versions(),
            "csv_dir": str(self.csv_dir),
            "sae": self.sae_id,
            "model": self.s1.model or self.sae.cfg.model_name or "embedded",
            "selection": selection_info,
            "settings": self.settings,
            "device": str(self.device),
            "executor": self.pool.describe() if self.pool else {"executor": "local"},
            "status": "running",
        }
        self.save_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.save_dir / STAGE3_FILE, self.info)
        start_work(self.work, self.settings)
        start = time.perf_counter()
        if config.skip_training:
            self._copy_stage1_models()
        else:
            self._retrain()
        self.seconds["models"] = time.perf_counter() - start
        scan = self._collect() if config.collect_vertex_samples else None
        return self._finish(scan)

    def _select(self, selection):
        config = self.config
        if selection is None:
            found = select_clusters(self.csv_dir, config.n_clusters, config.criteria)
            rows, clusters = found.rows, found.clusters
            self.csv_sha = {s.n_clusters: s.csv_sha256 for s in found.per_n}
            info = {"source": "criteria", **found.info()}
        else:
            from featgeo.archetypes.selection import csv_sha256

            rows = read_selection(selection, config.n_clusters)
            clusters, self.csv_sha = {}, {}
            for n in sorted({r["n_clusters"] for r in rows}):
                path = find_csv(self.csv_dir, n)
                clusters.update({(n, c.cluster_id): c for c in read_stage1_csv(path, n)})
                self.csv_sha[n] = csv_sha256(path)
            info = {"source": str(selection), "sha256": _sha256(Path(selection))}
        for row in rows:
            key = (row["n_clusters"], row["cluster_id"])
            cluster = clusters.get(key)
            name = csv_name(key[0])
            if cluster is None or cluster.cells["latent_indices"] != row["latent_indices"]:
                raise ValueError(
                    f"the selection's cluster {key[1]} of n_clusters={key[0]} is not the one in "
                    f"{name} (another Stage 1 run?); select again from this --csv-dir"
                )
            if row["refit_k"] not in cluster.ks:
                raise ValueError(
                    f"refit k={row['refit_k']} of cluster {key[1]} (n_clusters={key[0]}) is not "
                    f"among the k values {cluster.ks} of {name}; choose another --refit-k"
                )
        return rows, clusters, info

    def _sae(self, sae_path):
        from featgeo.sae.saelens_format import load_sae, sae_fingerprint

        if sae_path is None:
            if self.stage1 is None:
                raise ValueError(
                    f"--csv-dir '{self.csv_dir}' has no stage1.json naming the SAE; pass --sae"
                )
            sae_path = self.stage1["sae"]
            if not Path(sae_path).exists():
                raise FileNotFoundError(
                    f"the SAE Stage 1 used, '{sae_path}' (from stage1.json), is not found from "
                    "here; pass --sae"
                )
        sae = load_sae(sae_path)
        expected = (self.stage1 or {}).get("sae_fingerprint")
        if expected is not None and sae_fingerprint(sae) != expected:
            raise ValueError(
                f"--sae '{sae_path}' is not the SAE Stage 1 trained on (fingerprint "
                f"{sae_fingerprint(sae)}, Stage 1's {expected}); pass that SAE"
            )
        too_big = [
            r
            for r in self.rows
            if max(int(v) for v in r["latent_indices"].split()) >= sae.cfg.d_sae
        ]
        if too_big:
            raise ValueError(
                f"cluster {too_big[0]['cluster_id']} names latents beyond the SAE's "
                f"{sae.cfg.d_sae}; pass the SAE of this Stage 1 run with --sae"
            )
        return sae, str(sae_path)

    def _check_stage1_models(self) -> dict[str, str]:
        """MODE 2: every selected model exists, loads, and is the model of its row."""
        w_dec = self.sae.W_dec.detach().double().cpu().numpy()
        out = {}
        for row in self.rows:
            n, cid, k = row["n_clusters"], row["cluster_id"], row["refit_k"]
            path = stage1_model_path(self.models_dir, n, cid, k)
            if not path.is_file():
                raise FileNotFoundError(
                    f"Model not found: {path}; point --stage1-models-dir at Stage 1's --save-dir "
                    "(it holds clusters_{n}/aanet_cluster_{cid}_k{k}.pt), or drop "
                    "--skip-training to retrain"
                )
            net = AANet.load(path)
            extra = net.config_.extra
            latents = [int(v) for v in row["latent_indices"].split()]
            if net.k != k:
                raise ValueError(
                    f"{path} holds a k={net.k} model but the CSV's refit k for cluster {cid} is "
                    f"{k}; the models are not those of this Stage 1 run: point "
                    "--stage1-models-dir at the right one or drop --skip-training"
                )
            if net.space != self.s1.space:
                raise ValueError(
                    f"{path} was trained in the {net.space} space but Stage 1 trains in the "
                    f"{self.s1.space} space; point --stage1-models-dir at the Stage 1 run of "
                    "--csv-dir or drop --skip-training"
                )
            if net.n_features_in_ != self.sae.cfg.d_in:
                raise ValueError(
                    f"{path} takes {net.n_features_in_} features but the SAE has d_in="
                    f"{self.sae.cfg.d_in}; pass the SAE of this Stage 1 run with --sae"
                )
            if (
                extra.get("cluster_id", cid) != cid
                or extra.get("latent_indices", latents) != latents
                or not _spans_latents(net, w_dec[latents])
            ):
                raise ValueError(
                    f"{path} was trained on other latents than cluster {cid} of "
                    f"{csv_name(n)}; point --stage1-models-dir at the Stage 1 run of --csv-dir "
                    "or drop --skip-training"
                )
            out[f"{n}:{cid}"] = _sha256(path)
        return out

    def _training_settings(self) -> dict[str, Any]:
        s1 = self.s1
        aanet = self.aanet.to_dict()
        aanet.pop("extra", None)
        return {
            "aanet": aanet,
            "batch_tokens": s1.batch_tokens,
            "knn": s1.knn,
            "max_warmup": s1.max_warmup,
            "space": s1.space,
            "dtype": s1.dtype,
            "store_tokens": s1.store_tokens,
            "split": s1.split,
            "models_per_unit": self.config.models_per_unit,
        }

    def _outputs_exist(self) -> bool:
        from featgeo.archetypes.stage3_files import output_names

        collect = self.config.collect_vertex_samples
        return all(
            (self.save_dir / n_dir(r["n_clusters"]) / name).is_file()
            for r in self.rows
            for name in output_names(r, collect)
        )

    def _rows_with_files(self, info) -> list[dict[str, Any]]:
        from featgeo.archetypes.stage3_files import output_names

        out = []
        for row in self.rows:
            folder = self.save_dir / n_dir(row["n_clusters"])
            entry = {
                **row,
                "files": [
                    folder / name for name in output_names(row, self.config.collect_vertex_samples)
                ],
            }
            stats = folder / f"{stem(row)}_vertex_stats.json"
            if stats.is_file():
                entry["stats"] = read_json(stats)
            out.append(entry)
        return out

    # -- models ---------------------------------------------------------------------------------
    def _path(self, row, suffix: str) -> Path:
        folder = self.work / n_dir(row["n_clusters"])
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{stem(row)}{suffix}"

    def _copy_stage1_models(self) -> None:
        for row in self.rows:
            n, cid, k = row["n_clusters"], row["cluster_id"], row["refit_k"]
            source = stage1_model_path(self.models_dir, n, cid, k)
            copy_file(source, self._path(row, ".pt"))
            net = AANet.load(source)
            curve = _curve_from_net(net, self.s1.curve_every)
            write_json(
                self._path(row, "_curves.json"),
                {
                    "n_clusters": n,
                    "cluster_id": cid,
                    "k": k,
                    "source": "stage1",
                    "file": str(source),
                    **curve,
                },
            )

    def _retrain(self) -> None:
        from featgeo.archetypes.consolidated import model_record
        from featgeo.archetypes.data import clusters_data
        from featgeo.archetypes.engine import auto_models_per_stack, to_aanet
        from featgeo.archetypes.executors import execute_units, resolve_workers
        from featgeo.archetypes.stage1 import activation_store, models_progress
        from featgeo.archetypes.units import TrainUnit, plan_units

        s1, config = self.s1, self.config
        store = activation_store(self.sae, s1, str(self.driver_device))
        mpu = config.models_per_unit
        mpu = auto_models_per_stack(self.device) if mpu == "auto" else mpu
        units, rows_of = [], {}
        for n in config.n_clusters:
            rows = [r for r in self.rows if r["n_clusters"] == n]
            if not rows:
                continue
            latents = {r["cluster_id"]: [int(v) for v in r["latent_indices"].split()] for r in rows}
            datas = {
                d.cluster_id: d for d in clusters_data(self.sae, store, latents, space=s1.space)
            }
            for k in sorted({r["refit_k"] for r in rows}):
                group = [datas[r["cluster_id"]] for r in rows if r["refit_k"] == k]
                for cut in plan_units(group, (k,), mpu):
                    unit = TrainUnit(
                        len(units),
                        [group[i] for i in cut],
                        store.n_tokens,
                        (k,),
                        self.aanet,
                        s1.batch_tokens,
                        s1.knn,
                        s1.max_warmup,
                        s1.dtype,
                    )
                    rows_of[unit.index] = {r["cluster_id"]: r for r in rows if r["refit_k"] == k}
                    units.append(unit)
        units_dir = self.work / ".units"
        units_dir.mkdir(parents=True, exist_ok=True)
        pending = [u for u in units if not self._unit_done(units_dir, u, rows_of[u.index])]
        if self.pool is not None:
            workers = self.pool.slots(1, self.device.type == "cuda")
        else:
            workers = resolve_workers(self.workers, self.device)
        total = sum(u.n_models for u in pending)
        with models_progress(self.progress and bool(pending), total, "refit AANets") as bar:
            bar.set_running(min(workers, len(pending)))
            for unit, fits, seconds in execute_units(
                pending,
                device=self.device,
                workers=workers,
                on_step=bar.step,
                pool=self.pool,
                on_busy=bar.busy,
            ):
                by_id = {d.cluster_id: d for d in unit.datas}
                for fit in fits:
                    row = rows_of[unit.index][fit.cluster_id]
                    record = model_record(fit, s1.curve_every)
                    write_json(
                        self._path(row, "_curves.json"),
                        {
                            "n_clusters": row["n_clusters"],
                            "cluster_id": fit.cluster_id,
                            "k": fit.k,
                            "source": "retrained",
                            "status": fit.status,
                            "steps": record["steps"],
                            "stop_reason": record["stop_reason"],
                            "final_lr": record["final_lr"],
                            "final": record["final"],
                            **(record["curve"] or {}),
                        },
                    )
                    if fit.status != "ok":
                        log.warning(
                            "cluster %d (n_clusters=%d) k=%d was not retrained (%s); it "
                            "gets no model and no vertex samples",
                            fit.cluster_id,
                            row["n_clusters"],
                            fit.k,
                            fit.status,
                        )
                        continue
                    about = {
                        "n_clusters": row["n_clusters"],
                        "cluster_id": fit.cluster_id,
                        "k": fit.k,
                        "latent_indices": by_id[fit.cluster_id].latent_indices.tolist(),
                        "sae": self.sae_id,
                        "category": row["category"],
                    }
                    net = to_aanet(
                        fit, by_id[fit.cluster_id], dataclasses.replace(self.aanet, extra=about)
                    )
                    net.save(self._path(row, ".pt"))
                write_json(
                    units_dir / f"unit_{unit.index:05d}.json",
                    {
                        "index": unit.index,
                        "cluster_ids": unit.cluster_ids,
                        "statuses": [f.status for f in fits],
                        "seconds": seconds,
                    },
                )
                bar.finish_unit(unit.n_models)

    def _unit_done(self, units_dir: Path, unit, rows: dict[int, dict]) -> bool:
        path = units_dir / f"unit_{unit.index:05d}.json"
        try:
            done = read_json(path)
        except (OSError, ValueError):
            return False
        if not isinstance(done, dict) or done.get("cluster_ids") != unit.cluster_ids:
            return False
        statuses = done.get("statuses") or []
        return len(statuses) == len(unit.cluster_ids) and all(
            (s != "ok" or self._path(rows[c], ".pt").is_file())
            and self._path(rows[c], "_curves.json").is_file()
            for c, s in zip(unit.cluster_ids, statuses, strict=True)
        )

    def _chunk_text(self) -> ChunkText:
        """The held-out split's documents and the tokenizer (checked before anything is written:
        an unknown or empty ``--split`` is an input error)."""
        from featgeo.corpus import load_corpus
        from featgeo.models.loading import load_tokenizer

        s1 = self.s1
        documents = load_corpus(s1.corpus).split(self.config.split, option="--split")
        model = s1.model or self.sae.cfg.model_name or "embedded"  # also stage3.json's "model"
        return ChunkText(documents, load_tokenizer(model), s1.context_size)

    # -- vertex samples -------------------------------------------------------------------------
    def _vertex_store(self):
        """The SAE's activation store of the held-out split (the model, layer and corpus of
        Stage 1)."""
        from featgeo.archetypes.stage1 import activation_store

        config = self.config
        vertex = dataclasses.replace(self.s1, split=config.split, store_tokens=config.store_tokens)
        return activation_store(self.sae, vertex, str(self.driver_device))

    def _collect(self) -> ScanState:
        config = self.config
        start = time.perf_counter()
        w_dec = self.sae.W_dec.detach().float().cpu().numpy()
        models, files, rows_of = [], {}, {}
        for row in self.rows:
            path = self._path(row, ".pt")
            if not path.is_file():  # not retrained (too few points or diverged)
                continue
            key = f"{row['n_clusters']}:{row['cluster_id']}"
            latents = np.array([int(v) for v in row["latent_indices"].split()], dtype=np.int64)
            models.append(VertexModel(key, latents, w_dec[latents], AANet.load(path)))
            files[key] = self._path(row, "_vertex_samples.jsonl")
            rows_of[key] = row
        saved = read_checkpoint(self.work, list(files.values()))
        state = ScanState.from_dict(saved) if saved else None
        text = self.text
        budget = config.vertex.max_tokens or self.store.n_tokens
        with _token_bar(self.progress, min(budget, self.store.n_tokens)) as bar:
            scan = scan_vertices(self.store, models, config.vertex, state=state, device=self.device,
                                 pool=self.pool, on_busy=bar.busy)  # fmt: skip
            for state, records in scan:  # noqa: B020 - the last state is the result
                for key, found in records.items():
                    append_jsonl(files[key], [_record_json(rows_of[key], r, text) for r in found])
                save_checkpoint(self.work, state.to_dict(), list(files.values()))
                bar(state)
        self.seconds["vertex_collection"] = time.perf_counter() - start
        return state

    # -- the end ----------------------------------------------------------------------------------
    def _finish(self, scan: ScanState | None) -> Stage3Result:
        from featgeo.archetypes.stage3_files import output_names

        config = self.config
        for row in self.rows:
            if scan is not None and self._path(row, ".pt").is_file():
                stats = _stats(row, scan, config, self.store)
                write_json(self._path(row, "_vertex_stats.json"), stats)
            write_json(self._path(row, "_metadata.json"), self._metadata(row))
        for n in config.n_clusters:
            rows = [r for r in self.rows if r["n_clusters"] == n]
            if rows:
                write_csv(
                    self.work / n_dir(n) / selection_n_name(n),
                    selection_cells(rows),
                    SELECTION_COLUMNS,
                )
        write_csv(self.save_dir / SELECTION_FILE, selection_cells(self.rows), SELECTION_COLUMNS)
        for n in config.n_clusters:
            if (self.work / n_dir(n)).is_dir():
                replace_dir(self.work / n_dir(n), self.save_dir / n_dir(n))
        self.info.update(status="complete", seconds=self.seconds)
        if scan is not None:
            self.info["vertex_scan"] = {
                "store": store_info(self.store),
                "tokens_scanned": scan.tokens_scanned,
                "chunks_scanned": scan.chunks_scanned,
                "stopped": scan.stopped,
            }
        write_json(self.save_dir / STAGE3_FILE, self.info)
        shutil.rmtree(self.work, ignore_errors=True)
        missing = [
            r
            for r in self.rows
            if not all(
                (self.save_dir / n_dir(r["n_clusters"]) / name).is_file()
                for name in output_names(r, config.collect_vertex_samples)
            )
        ]
        if missing:
            log.warning(
                "%d selected clusters have no model (not retrained); see their _curves.json",
                len(missing),
            )
        return Stage3Result(self.save_dir, self._rows_with_files(self.info), self.info)

    def _metadata(self, row) -> dict[str, Any]:
        n, cid = row["n_clusters"], row["cluster_id"]
        cluster = self.clusters[(n, cid)]
        model_path = self._path(row, ".pt")
        model = None
        if model_path.is_file():
            net = AANet.load(model_path)
            model = {
                "file": f"{stem(row)}.pt",
                "sha256": _sha256(model_path),
                "k": net.k,
                "steps": net.n_steps_,
                "stop_reason": net.stop_reason_,
                "final_losses": net.final_losses_,
                "space": net.space,
                "subspace_dim": None if net.basis_ is None else int(net.basis_.shape[1]),
            }
        thresholds = next(
            (s for s in self.info["selection"].get("per_n", []) if s["n_clusters"] == n), None
        )
        return {
            "n_clusters": n,
            "cluster_id": cid,
            "n_latents": row["n_latents"],
            "latent_indices": [int(v) for v in row["latent_indices"].split()],
            "category": row["category"],
            "categories": row["categories"].split(),
            "refit_k": row["refit_k"],
            "refit_k_source": row["refit_k_source"],
            "refit_k_reason": _refit_reason(row),
            "mode": self.settings["mode"],
            "stage1": {c: _typed(cluster.cells[c]) for c in CLUSTER_COLUMNS if c in cluster.cells},
            "stage1_losses": {
                "k": cluster.ks,
                "recon": cluster.recon,
                "archetypal": cluster.archetypal,
            },
            "selection": None
            if thresholds is None
            else {
                "recon_thresholds": thresholds["recon_thresholds"],
                "arch_thresholds": thresholds["arch_thresholds"],
                "criteria": self.info["selection"]["criteria"],
            },
            "model": model,
            "training": self.settings["training"],
            "vertex_settings": self.settings["vertex"]
            if self.config.collect_vertex_samples
            else None,
            "fingerprints": {
                "sae": self.settings["sae_fingerprint"],
                "stage1_csv_sha256": self.csv_sha[n],
                "stage1_model_sha256": (self.settings["stage1_models_sha256"] or {}).get(
                    f"{n}:{cid}"
                ),
                "vertex_store": None
                if not self.config.collect_vertex_samples
                else Path(self.store.folder).name,
                "corpus": None
                if not self.config.collect_vertex_samples
                else self.store.header.get("corpus_fingerprint"),
            },
            "featgeo_version": self.info["featgeo_version"],
        }


def _typed(cell: str) -> Any:
    """A CSV cell as the JSON value it stands for (int, float, bool, None or text)."""
    if cell in ("True", "False"):
        return cell == "True"
    if cell == "":
        return None
    for kind in (int, float):
        try:
            return kind(cell)
        except ValueError:
            pass
    return cell


def _changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two Stage 3 settings, in words: the selected clusters added and
    removed, the Stage 1 files that changed, then every other setting as ``key old -> new``."""
    out = []

    def label(row: dict) -> str:
        return f"{row['n_clusters']}:{row['cluster_id']} k={row['refit_k']} {row['category']}"

    before = {label(r) for r in old.get("rows") or []}
    after = {label(r) for r in new.get("rows") or []}
    if before != after:
        added, removed = sorted(after - before), sorted(before - after)
        out.append(f"selected clusters: {len(added)} added {added[:3]}, {len(removed)} removed "
                   f"{removed[:3]}")  # fmt: skip
    elif not same(old.get("rows"), new.get("rows")):
        out.append("the selected clusters' Stage 1 cells")
    for key, what in (("stage1_csv_sha256", "Stage 1 CSV"),
                      ("stage1_models_sha256", "Stage 1 model")):  # fmt: skip
        a, b = old.get(key) or {}, new.get(key) or {}
        if a != b:
            names = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            out.append(f"{what} files of {names[:3]}" if a and b else f"{key} set or unset")
    skip = {"rows", "stage1_csv_sha256", "stage1_models_sha256"}
    out += differences({k: v for k, v in old.items() if k not in skip},
                       {k: v for k, v in new.items() if k not in skip})  # fmt: skip
    return out


def _spans_latents(net: AANet, w_rows: np.ndarray, rtol: float = 1e-3) -> bool:
    """Whether a subspace AANet's basis spans exactly the decoder rows ``w_rows [n_latents,
    d_model]`` of its cluster (what Stage 1 trained it in): the same dimension as their
    numerical rank, and every row inside it. This catches a model of another cluster even in
    files that record no latents; a full-space model cannot tell, and passes."""
    from featgeo.archetypes.data import RANK_RTOL

    if net.basis_ is None:
        return True
    basis = net.basis_.astype(np.float64)  # [d_model, r], orthonormal columns
    sigma = np.linalg.svd(w_rows, compute_uv=False)
    rank = int((sigma > RANK_RTOL * sigma[0]).sum()) if sigma.size and sigma[0] > 0 else 0
    residual = w_rows - (w_rows @ basis) @ basis.T
    return basis.shape[1] == rank and bool(
        np.linalg.norm(residual) <= rtol * np.linalg.norm(w_rows)
    )


def _refit_reason(row) -> str:
    source = row["refit_k_source"]
    if source == "arch":
        return "the archetypal-loss elbow k of Stage 1 (seed 002's rule)"
    if source == "recon":
        return "the recon-loss elbow k of Stage 1"
    return f"the k of criterion {source!r} on Stage 1's loss curves"


def stage1_config(stage1: dict | None):
    """Stage 1's settings as a :class:`Stage1Config` (its defaults without ``stage1.json``)."""
    from featgeo.archetypes.quality import QualityFilters
    from featgeo.archetypes.stage1 import Stage1Config

    if stage1 is None:
        return Stage1Config()
    settings = stage1["settings"]
    names = {f.name for f in dataclasses.fields(Stage1Config)} - {"n_clusters"}
    kwargs = {k: v for k, v in settings.items() if k in names}
    try:
        kwargs["aanet"] = AANetConfig.from_dict(kwargs.get("aanet", {}))
        kwargs["filters"] = QualityFilters(**kwargs.get("filters", {}))
        if kwargs.get("models_per_unit") is None:
            kwargs.pop("models_per_unit", None)
        return Stage1Config(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"stage1.json's settings are not readable ({exc}); rerun `featgeo aanet stage1`"
        ) from None


def _curve_from_net(net: AANet, every: int) -> dict[str, Any]:
    from featgeo.archetypes.batched import LOSS_NAMES

    curve = net.loss_curve_
    steps = curve.shape[0]
    keep = np.unique(np.r_[np.arange(0, steps, every), steps - 1]) if steps else np.zeros(0, int)
    out: dict[str, Any] = {
        "steps": int(steps),
        "stop_reason": net.stop_reason_,
        "final": net.final_losses_,
        "step": [int(i) + 1 for i in keep],
    }
    for j, name in enumerate(LOSS_NAMES):
        out[name] = [float(v) if math.isfinite(v) else None for v in curve[keep, j].tolist()]
    return out


def _record_json(row, record, text: ChunkText) -> dict[str, Any]:
    ids = text.token_ids(record.doc_index, record.chunk_index)
    for trigger in record.triggers:
        position = trigger["position"]
        if position >= len(ids) or ids[position] != trigger["token_id"]:
            raise ValueError(
                "the corpus no longer matches the vertex activation store (token "
                f"{trigger['token_id']} at document {record.doc_index}, chunk "
                f"{record.chunk_index}, position {position}); rebuild the corpus cache"
            )
    return {
        "n_clusters": row["n_clusters"],
        "cluster_id": row["cluster_id"],
        "k": row["refit_k"],
        "category": row["category"],
        "vertex": record.vertex,
        "doc_index": record.doc_index,
        "chunk_index": record.chunk_index,
        "document": text.title(record.doc_index),
        "text": text.text(ids),
        "token_ids": ids,
        "triggers": [{**t, "word": text.word(t["token_id"])} for t in record.triggers],
    }


def _stats(row, scan: ScanState, config: Stage3Config, store) -> dict[str, Any]:
    progress = scan.clusters[f"{row['n_clusters']}:{row['cluster_id']}"]
    quota = config.vertex.samples_per_vertex
    return {
        "n_clusters": row["n_clusters"],
        "cluster_id": row["cluster_id"],
        "k": row["refit_k"],
        "category": row["category"],
        "split": config.split,
        "store": Path(store.folder).name,
        "store_tokens": store.n_tokens,
        "threshold": config.vertex.threshold,
        "samples_per_vertex": quota,
        "max_tokens": config.vertex.max_tokens,
        "tokens_scanned": progress.tokens_scanned,
        "active_tokens": progress.active_tokens,
        "stopped": "quota" if progress.done else scan.stopped,
        "quota_met": progress.done,
        "vertices": [
            {"vertex": i, "triggers": t, "records": r, "quota_met": r >= quota}
            for i, (t, r) in enumerate(zip(progress.triggers, progress.records, strict=True))
        ],
    }


def top_trigger_words(path: str | Path, top: int = 5) -> dict[int, list[tuple[str, int]]]:
    """The ``top`` most frequent trigger words per vertex of a ``_vertex_samples.jsonl`` file
    (words without their surrounding spaces; ties by first appearance), for a quick look at
    what each archetype stands for."""
    import json

    counts: dict[int, Counter] = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            record = json.loads(line)
            counter = counts.setdefault(int(record["vertex"]), Counter())
            counter.update(t["word"].strip() or t["word"] for t in record["triggers"])
    return {v: counts[v].most_common(top) for v in sorted(counts)}


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class _TokenBar:
    """Store tokens scanned, clusters full and, on Ray, the workers busy."""

    def __init__(self, progress, task):
        self.progress, self.task = progress, task
        self.completed, self.full, self.workers = 0, "", ""

    def _show(self) -> None:
        if self.progress is not None:
            status = ", ".join(part for part in (self.full, self.workers) if part)
            self.progress.update(self.task, completed=self.completed, status=status)

    def __call__(self, state: ScanState) -> None:
        done = sum(p.done for p in state.clusters.values())
        self.completed = state.tokens_scanned
        self.full = f"{done}/{len(state.clusters)} clusters full"
        self._show()

    def busy(self, workers: int) -> None:
        """Ray: ``workers`` tasks are running."""
        self.workers = workers_busy(workers)
        self._show()


class _token_bar:
    """A rich bar of store tokens scanned (:class:`_TokenBar`), or nothing."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total, self.progress = enabled, total, None

    def __enter__(self) -> _TokenBar:
        if not self.enabled:
            return _TokenBar(None, None)
        from featgeo.progress import progress_bar

        self.progress = progress_bar()
        self.progress.__enter__()
        task = self.progress.add_task("vertex samples (tokens)", total=self.total, status="")
        return _TokenBar(self.progress, task)

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)


__all__ = [
    "Stage3Config",
    "Stage3Result",
    "TRAINING_FIELDS",
    "run_stage3",
    "stage1_config",
    "top_trigger_words",
]
