"""Stage 1's bookkeeping on disk: the save dir, ``stage1.json`` and the unit records of an
unfinished ``clusters_{n}`` (what resume reads). Every file read here is checked; a record
that does not have the expected shape is an input error (``stage1.json``) or is trained again
(a unit record), never a traceback.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

from featgeo.archetypes.batched import LOSS_NAMES
from featgeo.files import (
    check_output_dir,
    check_writable_dir,
    dumps_strict,
    read_json,
    write_json,
)

log = logging.getLogger(__name__)

STAGE1_FILE = "stage1.json"
UNITS_DIR = ".units"
CLUSTERS_DIR = "latent_clusters"
RECORD_KEYS = {"n_clusters_found": int, "n_models": int, "status_counts": dict,
               "n_passing": int, "seconds": dict, "clusters_sha256": str}  # fmt: skip
MODEL_KEYS = ("cluster_id", "k", "status", "n_active", "inside_fraction", "final", "steps",
              "stop_reason", "final_lr", "curve")  # fmt: skip


def csv_name(n: int) -> str:
    return f"consolidated_metrics_n{n}.csv"


def curves_name(n: int) -> str:
    return f"training_curves_n{n}.jsonl"


def check_save_dir(save_dir: Path, n_clusters: tuple[int, ...]) -> None:
    """Refuse a save dir that is a file, lies under one, cannot be written, or whose
    ``clusters_{n}`` folders hold files Stage 1 did not write."""
    if save_dir.exists() and not save_dir.is_dir():
        raise NotADirectoryError(f"--save-dir '{save_dir}' is a file; pass a folder path")
    check_writable_dir(save_dir, "--save-dir")
    for n in n_clusters:
        check_output_dir(
            save_dir / f"clusters_{n}", "--save-dir", signature=(csv_name(n),),
            contents=(csv_name(n), curves_name(n), "plots", "aanet_cluster_*.pt"),
        )  # fmt: skip


# -- stage1.json ----------------------------------------------------------------------------------
def read_record(save_dir: Path, force: bool) -> dict | None:
    """The save dir's ``stage1.json``, checked; None when there is none (or ``force``, which
    replaces the run whatever its record holds)."""
    path = save_dir / STAGE1_FILE
    if force or not path.is_file():
        return None
    try:
        info = read_json(path)
    except (OSError, ValueError):
        info = None
    problem = _record_problem(info)
    if problem:
        raise ValueError(
            f"{path} is not a Stage 1 record ({problem}); pass --force to replace the run, or "
            "another --save-dir"
        )
    return info


def _record_problem(info: Any) -> str:
    if not isinstance(info, dict):
        return "not a JSON object"
    if not isinstance(info.get("settings"), dict):
        return "no settings"
    if not isinstance(info.get("plan", {}).get("models_per_unit"), int):
        return "no plan"
    completed = info.get("completed", {})
    if not isinstance(completed, dict):
        return "'completed' is not an object"
    for n, record in completed.items():
        if not isinstance(record, dict):
            return f"completed[{n}] is not an object"
        for key, kind in RECORD_KEYS.items():
            if not isinstance(record.get(key), kind):
                return f"completed[{n}].{key} is missing or not a {kind.__name__}"
    return ""


def check_settings(save_dir: Path, previous: dict | None, settings: dict) -> None:
    """Equal settings resume or reuse; other settings are refused (``--force`` replaces)."""
    if previous is None:
        return
    old = previous["settings"]
    if json.loads(dumps_strict(old)) == json.loads(dumps_strict(settings)):
        return
    diff = differences(old, settings)
    shown = "; ".join(diff[:4]) + ("; ..." if len(diff) > 4 else "")
    raise FileExistsError(
        f"--save-dir '{save_dir}' holds a Stage 1 run with other settings ({shown}); pass "
        "--force to replace it or use another --save-dir"
    )


def differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``key old -> new`` for every leaf that differs between two settings dicts."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} {a!r} -> {b!r}")
    return out


def remove_run(save_dir: Path) -> None:
    """Remove what a Stage 1 run wrote into ``save_dir`` (``--force``) and nothing else: its
    ``clusters_{n}`` folders (those holding ``consolidated_metrics_n{n}.csv``), their partial
    siblings, the ``latent_clusters/clusters_{n}`` it clustered into, and ``stage1.json``."""
    for path in save_dir.glob("clusters_*"):
        match = re.fullmatch(r"clusters_(\d+)", path.name)
        if match and path.is_dir() and (path / csv_name(int(match[1]))).is_file():
            shutil.rmtree(path)
    for path in save_dir.glob(".clusters_*.partial"):
        if re.fullmatch(r"\.clusters_\d+\.partial", path.name) and path.is_dir():
            shutil.rmtree(path)
    clusters = save_dir / CLUSTERS_DIR
    for path in clusters.glob("clusters_*") if clusters.is_dir() else ():
        if re.fullmatch(r"clusters_\d+", path.name) and (path / "clustering.json").is_file():
            shutil.rmtree(path)
    if clusters.is_dir() and not any(clusters.iterdir()):
        clusters.rmdir()
    (save_dir / STAGE1_FILE).unlink(missing_ok=True)


# -- unit records of an unfinished n --------------------------------------------------------------
def start_units(units_dir: Path, plan: list[list[int]], settings: dict) -> None:
    """Keep an earlier attempt's finished units only when it had the same plan and settings."""
    plan_file = units_dir / "plan.json"
    want = json.loads(dumps_strict({"plan": plan, "settings": settings}))
    if plan_file.is_file():
        try:
            same = read_json(plan_file) == want
        except (OSError, ValueError):
            same = False
        if same:
            return
        log.info("%s: the plan or the settings changed since the interrupted run; starting "
                 "this n over", units_dir.parent)  # fmt: skip
        shutil.rmtree(units_dir.parent)
    units_dir.mkdir(parents=True, exist_ok=True)
    write_json(plan_file, want)


def read_unit(units_dir: Path, index: int, cluster_ids: list[int], n_k: int) -> dict | None:
    """A finished unit's record, or None (not finished, or a record of the wrong shape, which
    is then trained again)."""
    path = units_dir / f"unit_{index:05d}.json"
    if not path.is_file():
        return None
    try:
        done = read_json(path)
    except (OSError, ValueError):
        done = None
    if _unit_ok(done, index, cluster_ids, n_k):
        return done
    log.warning("%s is damaged; training its unit again", path)
    return None


def _unit_ok(done: Any, index: int, cluster_ids: list[int], n_k: int) -> bool:
    if not isinstance(done, dict) or done.get("index") != index:
        return False
    if done.get("cluster_ids") != cluster_ids or not isinstance(done.get("seconds"), int | float):
        return False
    records = done.get("records")
    if not isinstance(records, list) or len(records) != len(cluster_ids) * n_k:
        return False
    return all(
        isinstance(r, dict)
        and all(key in r for key in MODEL_KEYS)
        and isinstance(r["final"], dict)
        and all(name in r["final"] for name in LOSS_NAMES)
        for r in records
    )


def wall_seconds(units_dir: Path) -> float:
    """Wall-clock seconds earlier attempts spent training this n (0 for a fresh start)."""
    try:
        seconds = read_json(units_dir / "wall.json")["seconds"]
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0
    return float(seconds) if isinstance(seconds, int | float) else 0.0


def save_wall_seconds(units_dir: Path, seconds: float) -> None:
    write_json(units_dir / "wall.json", {"seconds": seconds})


__all__ = [
    "CLUSTERS_DIR",
    "STAGE1_FILE",
    "UNITS_DIR",
    "check_save_dir",
    "check_settings",
    "differences",
    "csv_name",
    "read_record",
    "read_unit",
    "remove_run",
    "save_wall_seconds",
    "start_units",
    "wall_seconds",
]
