"""All file writing goes through here: every write is a temp file (or folder) plus a rename, so
an interrupted or failed run never leaves a half-written artifact where a finished one belongs."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
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
    """Write ``obj`` as strict JSON (RFC 8259): non-finite floats become ``null``.

    Python's ``json`` writes ``NaN`` / ``Infinity`` by default, which strict parsers (``jq``,
    JavaScript, ``json.loads(..., parse_constant=...)``) reject; :func:`to_json_safe` replaces
    them first and ``allow_nan=False`` makes any that slip through an error, not a bad file.
    Code that can produce an undefined value should also record *why* (a ``*_undefined`` field).
    """
    return write_text(path, dumps_strict(obj, indent=2) + "\n")


def dumps_strict(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` of :func:`to_json_safe` (obj) with ``allow_nan=False``."""
    return json.dumps(to_json_safe(obj), allow_nan=False, default=_json_default, **kwargs)


def to_json_safe(obj: Any) -> Any:
    """A copy of ``obj`` that strict JSON can hold: NaN / +-inf floats (Python, numpy or torch
    scalars, inside arrays and tensors too) become None, numpy / torch scalars become Python
    numbers, arrays and tensors become lists, tuples become lists, numpy integer keys become
    ints. Other objects are left for ``json.dumps``'s ``default``."""
    if obj is None or isinstance(obj, (str, bool, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {_json_key(k): to_json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json_safe(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu()
        if obj.dtype in (torch.bfloat16, torch.float16):  # numpy has no bfloat16
            obj = obj.float()
        return to_json_safe(obj.tolist())
    if isinstance(obj, np.ndarray):
        return to_json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        return to_json_safe(obj.item())
    return obj


def _json_key(key: Any) -> Any:
    return key.item() if isinstance(key, np.generic) else key


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


def check_output_file(path: str | os.PathLike | None, option: str) -> None:
    """Refuse, before any work, an output file path that is a folder or lies under a file.

    ``option`` names the parameter in the message (``--output-json``).
    """
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{option} '{path}' is a folder; pass a file path")
    _check_no_file_above(path, option, "a path in a folder")


def check_output_dir(
    path: str | os.PathLike,
    option: str,
    *,
    signature: tuple[str, ...] = (),
    contents: tuple[str, ...] = (),
) -> None:
    """Refuse, before any work, an output folder that featgeo would have to clobber.

    A command replaces its output folder as a whole (:func:`staging_dir`), so ``path`` must be
    new, an empty folder, or a folder this kind of command wrote before: one holding any of
    the ``signature`` files (relative paths, e.g. ``("scan.csv",)``) and, when ``contents`` is
    given, nothing but entries matching those patterns (the names the command writes, e.g.
    ``("scan.csv", "heatmap_*.png")``): a file a user added beside them would be deleted. An
    existing file, a path under a file, or a folder of someone else's files is an input error
    naming ``option``.

    Raises:
        NotADirectoryError: ``path`` is a file or lies under one.
        FileExistsError: ``path`` is a non-empty folder without any signature file, or one
            that also holds entries outside ``contents``.
    """
    import fnmatch

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{option} '{path}' is a file; pass a folder path")
    _check_no_file_above(path, option, "a folder path")
    if not path.is_dir():
        return
    if any((path / name).exists() for name in signature):
        foreign = sorted(
            p.name
            for p in path.iterdir()
            if contents and not any(fnmatch.fnmatchcase(p.name, c) for c in contents)
        )
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise FileExistsError(
                f"{option} '{path}' is an earlier featgeo output but also holds files featgeo "
                f"did not write there ({shown}), and the output folder is replaced as a whole; "
                "move them out or pass a new folder"
            )
        return
    names = sorted(p.name for p in path.iterdir())
    if names:
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise FileExistsError(
            f"{option} '{path}' already holds files that featgeo did not write there ({shown}), "
            "and the output folder is replaced as a whole; pass a new or empty folder"
        )


def check_writable_dir(path: str | os.PathLike, option: str) -> None:
    """Refuse, before any work, an output folder that cannot be written: a probe file is made
    and removed in ``path`` or, when it does not exist yet, in its nearest existing parent
    (nothing is left behind; works for root too, unlike ``os.access``).

    Raises:
        InputError: the folder (or the parent it would be created in) is not writable.
    """
    import tempfile

    from featgeo.errors import InputError

    path = Path(path)
    base = path
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        return  # a file on the way is check_output_dir's error
    try:
        with tempfile.TemporaryFile(dir=base):
            pass
    except OSError as exc:
        raise InputError(
            f"{option} '{path}' cannot be written ({exc.strerror or exc} in '{base}'); pass a "
            "folder you can write to"
        ) from None


def _check_no_file_above(path: Path, option: str, expected: str) -> None:
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise NotADirectoryError(
                f"{option} '{path}' lies under '{parent}', which is a file; pass {expected}"
            )


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def save_tensor(path: str | os.PathLike, tensor: torch.Tensor) -> Path:
    """Save a plain tensor (loadable with ``torch.load(..., weights_only=True)``)."""
    with atomic_path(path) as tmp:
        torch.save(tensor.detach().cpu().contiguous().clone(), tmp)
    return Path(path)


# --- bit-packed masks (``featgeo prune --export masks``) ---------------------------------------
# A pruned matrix's mask W != 0 in 1/8 of the bytes of a bool tensor (1/32 of float32):
# {root}/{method}/layer{L}-{component}.mask.safetensors, read by
# ``featgeo.sparsity.matrices.load_matrix``.
PACKED_MASK_FORMAT = "featgeo-packed-mask"
PACKED_MASK_VERSION = "1"
PACKED_MASK_TENSOR = "packed_mask"
PACKED_MASK_SUFFIX = ".mask.safetensors"
PACKED_MASK_MEANING = "bit set = weight kept (W != 0)"


def packed_mask_metadata(out_features: int, in_features: int) -> dict[str, str]:
    """The safetensors metadata of a packed mask of an [out_features, in_features] matrix."""
    return {
        "format": PACKED_MASK_FORMAT,
        "version": PACKED_MASK_VERSION,
        "shape": f"{int(out_features)},{int(in_features)}",
        "bitorder": "little",
        "meaning": PACKED_MASK_MEANING,
    }


def pack_mask(kept: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Pack a keep-mask into bits: 8 input columns per byte, least significant bit first.

    Works on the tensor's device (CUDA too) with integer bit operations; the only copy is one
    uint8 byte per weight, never a float.

    Args:
        kept: [out, in] bool, True where the weight is kept (``W != 0``); a torch tensor on
            any device or a numpy array.

    Returns:
        [out, ceil(in / 8)] uint8 on ``kept``'s device, equal to
        ``np.packbits(kept, axis=1, bitorder="little")``: bit j of byte b of row r is
        ``kept[r, 8 * b + j]``; the padding bits of each row's last byte are 0.

    Raises:
        TypeError: ``kept`` is not a bool torch tensor or numpy array.
        ValueError: ``kept`` is not 2-D.
    """
    if isinstance(kept, np.ndarray):
        if kept.dtype != np.bool_:
            raise TypeError(
                f"kept must be a bool mask, got a numpy array of dtype {kept.dtype}; pass W != 0"
            )
        kept = torch.from_numpy(np.ascontiguousarray(kept))  # no copy for a C-ordered array
    if not isinstance(kept, torch.Tensor):
        raise TypeError(f"kept must be a bool torch tensor or numpy array, got {type(kept)}")
    if kept.dtype != torch.bool:
        raise TypeError(f"kept must be a bool mask, got dtype {kept.dtype}; pass W != 0")
    if kept.ndim != 2:
        raise ValueError(f"kept must be 2-D [out, in], got shape {tuple(kept.shape)}")
    rows, cols = kept.shape
    n_bytes = -(-cols // 8)
    bits = torch.zeros((rows, n_bytes * 8), dtype=torch.uint8, device=kept.device)
    bits[:, :cols] = kept  # the padding columns stay 0
    bits = bits.view(rows, n_bytes, 8)  # [out, bytes, 8]: column 8*b + j -> [b, j]
    packed = bits[:, :, 0].clone()
    for j in range(1, 8):
        packed |= bits[:, :, j] << j  # bitorder "little": column 8*b + j is bit j (value 2**j)
    return packed


def save_packed_mask(path: str | os.PathLike, kept: torch.Tensor | np.ndarray) -> Path:
    """Write a pruned matrix's mask as a featgeo packed mask (the bits, not the weights).

    The file is a safetensors file with exactly one uint8 tensor ``packed_mask``
    [out, ceil(in / 8)] = ``np.packbits(kept, axis=1, bitorder="little")`` and the metadata
    :func:`packed_mask_metadata` (format, version, shape ``"OUT,IN"``, bitorder, meaning).
    The export layout names it ``{root}/{method}/layer{L}-{component}.mask.safetensors``.

    Args:
        path: where to write; must end with ``.safetensors`` (``.mask.safetensors`` in an
            export folder).
        kept: [out, in] bool in nn.Linear layout, True where the weight is kept (``W != 0``);
            a torch tensor (CPU or CUDA: packed there, only the packed bytes move) or a numpy
            array.

    Raises:
        TypeError / ValueError: see :func:`pack_mask`; ValueError for another suffix.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if not path.name.lower().endswith(".safetensors"):
        raise ValueError(
            f"packed mask path '{path}' must end with .safetensors (an export names it "
            f"layer{{L}}-{{component}}{PACKED_MASK_SUFFIX})"
        )
    packed = pack_mask(kept).cpu().contiguous()  # [out, ceil(in / 8)] uint8
    metadata = packed_mask_metadata(*kept.shape)
    with atomic_path(path) as tmp:
        save_file({PACKED_MASK_TENSOR: packed}, str(tmp), metadata=metadata)
        _sort_safetensors_header(tmp)
    return path


def save_safetensors(
    path: str | os.PathLike,
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, str] | None = None,
) -> Path:
    """Save named tensors as one safetensors file (what ``from_pretrained`` reads)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
        _sort_safetensors_header(tmp)
    return Path(path)


def _sort_safetensors_header(path: Path) -> None:
    """Rewrite a safetensors header with its keys sorted, in place.

    safetensors serialises the metadata from a hash map whose order changes from process to
    process, so the same tensors and metadata would give different bytes on every run. The
    sorted JSON has exactly the same length, so only the header bytes change.
    """
    with open(path, "r+b") as handle:
        size = int.from_bytes(handle.read(8), "little")
        raw = handle.read(size)
        body = raw.rstrip(b" ")
        canonical = json.dumps(json.loads(body), separators=(",", ":"), sort_keys=True).encode()
        if len(canonical) == len(body):  # the same content; anything else is left as written
            handle.seek(8)
            handle.write(canonical)


def save_torch_dict(path: str | os.PathLike, obj: dict[str, Any]) -> Path:
    """Save a dict of tensors, lists and JSON scalars that ``torch.load(..., weights_only=True)``
    reads back (no pickled classes)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)  # a file object: the archive's root is "archive", not the tmp name
    return Path(path)


def append_jsonl(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    """Append complete lines and fsync, so a crash can lose at most the rows of this call."""
    with open(path, "a", encoding="utf-8") as fh:
        for row in rows:
            fh.write(dumps_strict(row) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy the bytes of ``src`` to ``dst`` atomically (a reader never sees half a file)."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dst)


def truncate_file(path: str | os.PathLike, size: int) -> None:
    """Cut ``path`` back to its first ``size`` bytes (an append log resumed from a checkpoint);
    a missing file is created empty when ``size`` is 0."""
    path = Path(path)
    if not path.exists() and size == 0:
        path.touch()
        return
    with open(path, "r+b") as fh:
        fh.truncate(size)


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


@contextlib.contextmanager
def exclusive_dir(path: str | os.PathLike, option: str) -> Iterator[None]:
    """Hold an exclusive lock on output folder ``path`` for the block, so that two featgeo
    processes never write the same folder at once. The lock file lives in the featgeo cache
    (``locks/``), not in ``path``, and the operating system releases it when the process
    ends, however it ends.

    Raises:
        InputError: another process holds the lock.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    import hashlib

    from featgeo.cache import cache_dir
    from featgeo.errors import InputError

    key = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:16]
    locks = cache_dir() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{key}.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(
                f"another featgeo process is writing {option} '{path}'; wait for it to finish "
                "or pass another folder"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


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
