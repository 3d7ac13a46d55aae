"""Stage 3's files: names, the Stage 1 inputs it reads (``stage1.json``, models), the text of
vertex-sample records and the checkpoint of an unfinished collection.

Layout of a Stage 3 ``--save-dir``::

    stage3.json                               settings, selection, fingerprints, counts, seconds
    selection.csv                             the selected clusters (featgeo aanet select's table)
    n{n}/selection_n{n}.csv                   the rows of this n
    n{n}/cluster_{cid}_k{k}_category{cat}.pt                  the AANet (retrained or Stage 1's)
    n{n}/cluster_{cid}_k{k}_category{cat}_curves.json         its training curves
    n{n}/cluster_{cid}_k{k}_category{cat}_metadata.json       cluster, category, refit k, params
    n{n}/cluster_{cid}_k{k}_category{cat}_vertex_samples.jsonl   one record per (chunk, vertex)
    n{n}/cluster_{cid}_k{k}_category{cat}_vertex_stats.json      tokens, triggers, records, quota

An unfinished run lives in ``.stage3.partial/`` (same ``n{n}/`` layout plus ``plan.json``, unit
records of retraining and ``collection.json``, the checkpoint of the vertex scan).
"""

from __future__ import annotations

import functools
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

from featgeo.files import (
    check_output_dir,
    check_writable_dir,
    dumps_strict,
    read_json,
    truncate_file,
    write_json,
)

log = logging.getLogger(__name__)

STAGE3_FILE = "stage3.json"
SELECTION_FILE = "selection.csv"
WORK_DIR = ".stage3.partial"
CHECKPOINT = "collection.json"


def n_dir(n: int) -> str:
    return f"n{n}"


def selection_n_name(n: int) -> str:
    return f"selection_n{n}.csv"


def stem(row: dict[str, Any]) -> str:
    """``cluster_{cid}_k{k}_category{cat}`` of a selection row (seed 002's names)."""
    return f"cluster_{row['cluster_id']}_k{row['refit_k']}_category{row['category']}"


def output_names(row: dict[str, Any], collect: bool) -> list[str]:
    """The files Stage 3 writes for one selected cluster (in ``n{n}/``)."""
    base = stem(row)
    names = [f"{base}.pt", f"{base}_curves.json", f"{base}_metadata.json"]
    if collect:
        names += [f"{base}_vertex_samples.jsonl", f"{base}_vertex_stats.json"]
    return names


def check_save_dir(save_dir: Path, n_clusters: tuple[int, ...]) -> None:
    """Refuse a save dir that is a file, lies under one, cannot be written, or whose ``n{n}``
    folders hold files Stage 3 did not write."""
    if save_dir.exists() and not save_dir.is_dir():
        raise NotADirectoryError(f"--save-dir '{save_dir}' is a file; pass a folder path")
    check_writable_dir(save_dir, "--save-dir")
    for n in n_clusters:
        check_output_dir(
            save_dir / n_dir(n), "--save-dir", signature=(selection_n_name(n),),
            contents=(selection_n_name(n), "cluster_*"),
        )  # fmt: skip


def read_stage1_record(csv_dir: Path) -> dict[str, Any] | None:
    """Stage 1's ``stage1.json`` in ``csv_dir`` (None when there is none: CSVs of another
    Stage 1 implementation, which then needs ``--sae``)."""
    return _read_record(csv_dir / "stage1.json", "Stage 1", "point --csv-dir at the --save-dir "
                        "of `featgeo aanet stage1`")  # fmt: skip


def _read_record(path: Path, what: str, fix: str) -> dict[str, Any] | None:
    """A run record (a JSON object with ``settings``), None when there is no file."""
    if not path.is_file():
        return None
    try:
        info = read_json(path)
    except (OSError, ValueError):
        info = None
    if not isinstance(info, dict) or not isinstance(info.get("settings"), dict):
        raise ValueError(f"{path} is not a {what} record; {fix}")
    return info


def stage1_model_path(models_dir: Path, n: int, cluster_id: int, k: int) -> Path:
    """``{models_dir}/clusters_{n}/aanet_cluster_{cid}_k{k}.pt`` (Stage 1's layout), or the
    file directly in ``models_dir`` when that is the ``clusters_{n}`` folder itself."""
    name = f"aanet_cluster_{cluster_id}_k{k}.pt"
    if models_dir.name == f"clusters_{n}" and not (models_dir / f"clusters_{n}").is_dir():
        return models_dir / name
    return models_dir / f"clusters_{n}" / name


def read_previous(save_dir: Path, force: bool) -> dict[str, Any] | None:
    """A finished or running ``stage3.json`` (None when absent, or with ``force``)."""
    if force:
        return None
    return _read_record(save_dir / STAGE3_FILE, "Stage 3", "pass --force to replace the run, "
                        "or another --save-dir")  # fmt: skip


def same(a: Any, b: Any) -> bool:
    """Equal as JSON (tuples and lists alike, floats as written)."""
    return json.loads(dumps_strict(a)) == json.loads(dumps_strict(b))


def remove_run(save_dir: Path) -> None:
    """Remove what Stage 3 wrote into ``save_dir`` (``--force``) and nothing else."""
    for path in save_dir.glob("n*"):
        match = re.fullmatch(r"n(\d+)", path.name)
        if match and path.is_dir() and (path / selection_n_name(int(match[1]))).is_file():
            shutil.rmtree(path)
    shutil.rmtree(save_dir / WORK_DIR, ignore_errors=True)
    for name in (STAGE3_FILE, SELECTION_FILE):
        (save_dir / name).unlink(missing_ok=True)


def start_work(work: Path, settings: dict[str, Any]) -> None:
    """Keep an interrupted run's work only when it had the same settings."""
    plan = work / "plan.json"
    if plan.is_file():
        try:
            kept = same(read_json(plan), settings)
        except (OSError, ValueError):
            kept = False
        if kept:
            return
        log.info("%s: the settings changed since the interrupted run; starting over", work)
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    write_json(plan, settings)


# -- the collection checkpoint --------------------------------------------------------------------
def read_checkpoint(work: Path, files: list[Path]) -> dict[str, Any] | None:
    """The scan state saved after the last finished block, with every samples file cut back
    to its size at that moment (so rows of a block that was not checkpointed are dropped);
    None (and empty files) when there is no usable checkpoint."""
    path = work / CHECKPOINT
    info = None
    if path.is_file():
        try:
            info = read_json(path)
        except (OSError, ValueError):
            info = None
        sizes = info.get("bytes") if isinstance(info, dict) else None
        if not (
            isinstance(sizes, dict)
            and isinstance(info.get("state"), dict)
            and set(sizes) == {f.name for f in files}
            and all(f.is_file() and f.stat().st_size >= sizes[f.name] for f in files)
        ):
            log.warning("%s is damaged or stale; collecting vertex samples from the start", path)
            info = None
    for f in files:
        truncate_file(f, info["bytes"][f.name] if info else 0)
    return info["state"] if info else None


def save_checkpoint(work: Path, state: dict[str, Any], files: list[Path]) -> None:
    write_json(
        work / CHECKPOINT, {"state": state, "bytes": {f.name: f.stat().st_size for f in files}}
    )


# -- chunk text -----------------------------------------------------------------------------------
class ChunkText:
    """Token ids and text of a store's chunks, re-read from the corpus split (the store keeps
    positions 1.. of each chunk; a record shows the whole chunk, position 0 included)."""

    def __init__(self, documents, tokenizer, context_size: int):
        self.documents, self.tokenizer, self.context_size = documents, tokenizer, context_size
        self._words: dict[int, str] = {}

    @functools.lru_cache(maxsize=64)  # noqa: B019 - one instance per run; documents are few
    def _document(self, doc_index: int) -> list[int]:
        text = self.documents[doc_index].text
        return self.tokenizer(text, add_special_tokens=False, return_attention_mask=False)[
            "input_ids"
        ]

    def token_ids(self, doc_index: int, chunk_index: int) -> list[int]:
        start = chunk_index * self.context_size
        return list(self._document(doc_index)[start : start + self.context_size])

    def title(self, doc_index: int) -> str:
        return self.documents[doc_index].title

    def text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def word(self, token_id: int) -> str:
        if token_id not in self._words:
            self._words[token_id] = self.tokenizer.decode([token_id])
        return self._words[token_id]


__all__ = [
    "CHECKPOINT",
    "ChunkText",
    "SELECTION_FILE",
    "STAGE3_FILE",
    "WORK_DIR",
    "check_save_dir",
    "n_dir",
    "output_names",
    "read_checkpoint",
    "read_previous",
    "read_stage1_record",
    "remove_run",
    "same",
    "save_checkpoint",
    "selection_n_name",
    "stage1_model_path",
    "start_work",
    "stem",
]
