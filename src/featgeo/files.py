"""All file writing goes through here: every write is a temp file (or folder) plus a rename, so
an interrupted or failed run never leaves a half-written artifact where a finished one belongs."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _tmp_sibling(path: Path, suffix: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    # mkstemp makes 0600 files; finished artifacts get the usual permissions.
    os.chmod(name, 0o666 & ~_current_umask())
    return Path(name)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    tmp = _tmp_sibling(path, path.suffix)
    try:
        yield tmp
        if tmp.is_file():  # writers that recreate the file (safetensors) leave it 0600
            os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(
        path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"
    )


def write_csv(path: str | os.PathLike, rows: list[dict[str, Any]], columns: list[str]) -> Path:
    """Write ``rows`` (dicts) as CSV with exactly ``columns``, in that order."""
    import pandas as pd

    frame = pd.DataFrame(rows, columns=columns)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def save_tensor(path: str | os.PathLike, tensor: torch.Tensor) -> Path:
    """Save a plain tensor (loadable with ``torch.load(..., weights_only=True)``)."""
    with atomic_path(path) as tmp:
        torch.save(tensor.detach().cpu().contiguous().clone(), tmp)
    return Path(path)


def append_jsonl(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    """Append complete lines and fsync, so a crash can lose at most the rows of this call."""
    with open(path, "a", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, default=_json_default) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


@contextlib.contextmanager
def staging_dir(final: str | os.PathLike, *, keep_on_error: bool = False) -> Iterator[Path]:
    """Build a folder next to ``final`` and swap it into place when the block succeeds.

    With ``keep_on_error`` the staging folder survives a failure or Ctrl-C so that a later run
    can resume from it (see :func:`resumable_dir`); otherwise it is removed.
    """
    final = Path(final)
    staging = partial_dir(final)
    staging.mkdir(parents=True, exist_ok=True)
    ok = False
    try:
        yield staging
        ok = True
    finally:
        if ok:
            replace_dir(staging, final)
        elif not keep_on_error:
            shutil.rmtree(staging, ignore_errors=True)


def partial_dir(final: str | os.PathLike) -> Path:
    """The hidden sibling where an unfinished ``final`` folder is built (and resumed from)."""
    final = Path(final)
    return final.parent / f".{final.name}.partial"


def replace_dir(src: Path, dst: Path) -> None:
    """Move ``src`` onto ``dst``, replacing an existing folder with as short a gap as possible."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if dst.exists():
        old = dst.parent / f".{dst.name}.old-{os.getpid()}"
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
