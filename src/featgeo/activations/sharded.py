"""Resumable writing of per-token arrays in shards: the machinery behind the activation store
(:mod:`featgeo.activations.store`, sparse SAE codes) and the activation cache
(:mod:`featgeo.activations.cache`, dense residual-stream activations).

A finished folder holds one ``.npy`` file per array (opened memory-mapped) and ``header.json``
with ``complete: true``. While building, the folder lives at ``files.partial_dir(folder)`` and
fills with shards (each a folder of whole batches, renamed into place atomically) plus
``progress.json`` listing finished shards and the number of batches they consumed. A rerun with
the same header skips that many batches of the (deterministic) batch iterator, so no row is
written twice. At the end the shards are concatenated and the folder is renamed to ``folder``.

Pieces are dicts of arrays made from one batch; ``token_ids`` has one entry per token. A piece
key ``counts`` (entries per token) becomes the CSR row pointer array ``indptr`` at the end.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

import featgeo
from featgeo.errors import InputError
from featgeo.files import atomic_path, partial_dir, read_json, staging_dir, write_json
from featgeo.progress import progress_bar

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
HEADER = "header.json"
PROGRESS = "progress.json"

MakePiece = Callable[[Any, dict[str, Any]], dict[str, np.ndarray]]
"""``(batch, info) -> piece``; may record facts it learns (e.g. ``d_sae``) in ``info``."""

TOKEN_ARRAYS = ("token_ids", "doc_index", "chunk_index", "position")
"""Per-token int32 arrays every folder holds (see ``ActivationBatch``)."""


def token_columns(batch) -> dict[str, np.ndarray]:
    """The :data:`TOKEN_ARRAYS` of an ``ActivationBatch`` as int32 pieces, one entry per token."""
    n = batch.n_tokens
    columns = {}
    for name in TOKEN_ARRAYS:
        columns[name] = np.asarray(getattr(batch, name), dtype=np.int32).reshape(-1)
        if columns[name].size != n:
            raise ValueError(f"batch.{name} has {columns[name].size} entries for {n} tokens")
    return columns


class ShardedArrays:
    """Read access to a finished folder: its ``header`` and one read-only memory map per name
    in ``ARRAYS`` (set as attributes). Subclasses name their arrays and ``WHAT`` they are."""

    ARRAYS: tuple[str, ...] = TOKEN_ARRAYS
    WHAT = "folder"
    token_ids: np.ndarray
    doc_index: np.ndarray
    chunk_index: np.ndarray
    position: np.ndarray

    def __init__(self, folder: Path, header: dict[str, Any], arrays: dict[str, np.ndarray]):
        self.folder = folder
        self.header = header
        for name in self.ARRAYS:
            setattr(self, name, arrays[name])

    @classmethod
    def open(cls, folder: str | Path):
        """Open a finished folder (arrays memory-mapped read-only)."""
        folder = Path(folder)
        header, arrays = open_arrays(folder, cls.ARRAYS, cls.WHAT)
        return cls(folder, header, arrays)

    @property
    def n_tokens(self) -> int:
        return int(self.header["n_tokens"])


ShardedArraysT = TypeVar("ShardedArraysT", bound=ShardedArrays)


def same_header(stored: dict[str, Any], header: dict[str, Any]) -> bool:
    """Whether a stored header was written for ``header`` (every key of ``header`` equal)."""
    wanted = json.loads(json.dumps(header, default=str))
    return stored.get("format_version") == FORMAT_VERSION and all(
        stored.get(k) == v for k, v in wanted.items()
    )


def is_complete(folder: Path, header: dict[str, Any]) -> bool:
    """Whether ``folder`` holds a finished build made with ``header``."""
    if not (folder / HEADER).is_file():
        return False
    stored = read_json(folder / HEADER)
    return stored.get("complete") is True and same_header(stored, header)


def open_arrays(folder: Path, names: Iterable[str], what: str):
    """``(header, {name: read-only memmap})`` of a finished folder; clear errors otherwise."""
    if not (folder / HEADER).is_file():
        raise FileNotFoundError(f"{what} '{folder}' does not exist (no {HEADER}); build it first")
    header = read_json(folder / HEADER)
    if header.get("format_version") != FORMAT_VERSION or not header.get("complete"):
        raise ValueError(
            f"{what} '{folder}' is incomplete or of format version "
            f"{header.get('format_version')!r} (expected {FORMAT_VERSION}); rebuild it"
        )
    arrays = {}
    for name in names:
        try:
            arrays[name] = np.load(folder / f"{name}.npy", mmap_mode="r")
        except (EOFError, OSError, ValueError) as exc:  # EOFError would print click's "Aborted."
            raise ValueError(
                f"{what} '{folder}': {name}.npy is not a readable .npy file "
                f"({type(exc).__name__}: empty, truncated or missing); delete '{folder}' so "
                "that it is rebuilt"
            ) from None
    return header, arrays


def build_sharded(
    reader: type[ShardedArraysT],
    folder: Path,
    batches: Iterable[Any] | Callable[[int], Iterable[Any]],
    make_piece: MakePiece,
    header: dict[str, Any],
    *,
    info: dict[str, Any] | None = None,
    description: str,
    progress: bool = True,
    shard_tokens: int = 65_536,
) -> ShardedArraysT:
    """``reader.open(folder)``, after building it unless a finished build with an equal header
    is there: turn every batch into a piece, write pieces in shards, assemble ``folder``.

    ``batches`` is a deterministic iterable, or a function ``skip -> iterable`` that leaves out
    the first ``skip`` batches itself (so a resumed build does not recompute them).

    ``header`` (JSON values) identifies the content: an interrupted build with an equal header
    is resumed. ``info`` seeds facts that ``make_piece`` may fill in; they are saved with the
    progress and merged into the final header. A batch needs ``n_tokens`` (for the bar).
    """
    if is_complete(folder, header):
        opened = reader.open(folder)
        log.info("reusing %s %s (%d tokens)", reader.WHAT, folder, opened.n_tokens)
        return opened
    staging = partial_dir(folder)
    state = _resume_state(staging, header, dict(info or {}))
    if callable(batches):  # a factory skips what is stored without computing it
        batches, skip = batches(state["batches_done"]), 0
    else:
        skip = state["batches_done"]
    try:
        with staging_dir(folder, keep_on_error=True) as staging:
            _fill_shards(
                staging, batches, skip, make_piece, state, description, progress, shard_tokens
            )
            _finish(staging, state)
    except BaseException:
        if not state["shards"]:  # nothing worth resuming
            shutil.rmtree(staging, ignore_errors=True)
        raise
    return reader.open(folder)


def _resume_state(staging: Path, header: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """The progress of an earlier interrupted build with this header, or a fresh start."""
    progress_file = staging / PROGRESS
    if progress_file.is_file():
        state = read_json(progress_file)
        if state.get("format_version") == FORMAT_VERSION and state.get("header") == header:
            log.info(
                "resuming %s from %d shards (%d batches)",
                staging.name,
                len(state["shards"]),
                state["batches_done"],
            )
            return state
    if staging.exists():
        shutil.rmtree(staging)
    return {
        "format_version": FORMAT_VERSION,
        "header": header,
        "shards": [],
        "batches_done": 0,
        "info": info,
    }


def _fill_shards(staging, batches, skip, make_piece, state, description, progress, shard_tokens):
    pending: list[dict[str, np.ndarray]] = []
    pending_batches = 0
    n_done = sum(s["n_tokens"] for s in state["shards"])
    total = state["header"].get("max_tokens")
    bar = progress_bar(transient=True)
    bar.disable = not progress
    with bar:
        task = bar.add_task(description, total=total, completed=n_done, status="")
        for i, batch in enumerate(batches):
            if i < skip:
                continue  # written by an earlier, interrupted run
            pending.append(make_piece(batch, state["info"]))
            pending_batches += 1
            bar.update(task, advance=batch.n_tokens)
            if sum(p["token_ids"].size for p in pending) >= shard_tokens:
                _write_shard(staging, pending, pending_batches, state)
                pending, pending_batches = [], 0
        if pending:
            _write_shard(staging, pending, pending_batches, state)
    if not state["shards"]:
        split = state["header"].get("split")
        raise InputError(f"split {split!r} gave no tokens; nothing to store")


def _write_shard(staging: Path, pieces, n_batches: int, state: dict[str, Any]) -> None:
    """Write whole batches as one shard folder (atomically), then record it in progress.json."""
    name = f"shard-{len(state['shards']):05d}"
    sizes = {}
    with staging_dir(staging / name) as shard:
        for key in pieces[0]:
            joined = np.concatenate([p[key] for p in pieces])
            np.save(shard / f"{key}.npy", joined)
            sizes[key] = int(joined.shape[0])
    state["shards"].append(
        {"name": name, "n_tokens": sizes["token_ids"], "sizes": sizes, "batches": n_batches}
    )
    state["batches_done"] += n_batches
    write_json(staging / PROGRESS, state)


def _finish(staging: Path, state: dict[str, Any]) -> None:
    """Concatenate the shards into the final arrays and write the header."""
    shards = state["shards"]
    first = staging / shards[0]["name"]
    for key in shards[0]["sizes"]:
        size = sum(s["sizes"][key] for s in shards)
        sample = np.load(first / f"{key}.npy", mmap_mode="r")
        name, dtype, shape = key, sample.dtype, (size, *sample.shape[1:])
        if key == "counts":
            name, dtype, shape = "indptr", np.dtype(np.int64), (size + 1,)
        with atomic_path(staging / f"{name}.npy") as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
            _concat_into(out, key, staging, shards)
            out.flush()
            del out
    # Without progress.json a crash from here on restarts cleanly rather than half-resuming.
    (staging / PROGRESS).unlink()
    for shard in shards:
        shutil.rmtree(staging / shard["name"])
    write_json(
        staging / HEADER,
        {
            "format_version": FORMAT_VERSION,
            **state["header"],
            "n_tokens": sum(s["n_tokens"] for s in shards),
            **state["info"],
            "featgeo_version": featgeo.__version__,
            "complete": True,
        },
    )


def _concat_into(out: np.ndarray, key: str, staging: Path, shards) -> None:
    pos, entries = 0, 0
    if key == "counts":
        out[0] = 0
    for shard in shards:
        part = np.load(staging / shard["name"] / f"{key}.npy", mmap_mode="r")
        if key == "counts":
            out[pos + 1 : pos + 1 + part.size] = entries + np.cumsum(part)
            entries += int(part.sum())
        else:
            out[pos : pos + part.shape[0]] = part
        pos += part.shape[0]
