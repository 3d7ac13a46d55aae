"""Loading pruned matrices and turning them into feature masks (SPEC §2).

A matrix is read as [D, N] and a feature is a column (``axis="columns"``, the default) or a row
(``axis="rows"``); the mask is ``W != 0``. Masks are returned feature-major, [N, D] bool.

A matrix file holds the pruned weights (``.pt``, ``.safetensors``, ``.npy``) or only their mask,
bit-packed (``featgeo prune --export masks``: ``layer{L}-{component}.mask.safetensors``, written
by :func:`featgeo.files.save_packed_mask`). :func:`load_matrix` reads a packed mask as a bool
matrix (True = kept), so every mask analysis gives the same numbers as from the weights; what
needs the weight values (``--cluster-on weights``) refuses it.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from featgeo.files import (
    PACKED_MASK_FORMAT,
    PACKED_MASK_SUFFIX,
    PACKED_MASK_TENSOR,
    PACKED_MASK_VERSION,
)

SUPPORTED_SUFFIXES = (".pt", ".pth", ".safetensors", ".npy")
"""Suffixes of a matrix file; a ``.safetensors`` file may also hold a packed mask."""
Axis = Literal["columns", "rows"]
_ACCEPTED = f"{', '.join(SUPPORTED_SUFFIXES)} or a bit-packed mask {PACKED_MASK_SUFFIX}"
_MASK_FIX = (
    "re-export it with `featgeo prune --export masks` (or write it with "
    "featgeo.files.save_packed_mask)"
)


class DenseMatrixWarning(UserWarning):
    """The matrix has (almost) no zeros, so Hamming distances between its masks mean nothing."""


def load_matrix(path: str | os.PathLike, *, values_needed_by: str | None = None) -> torch.Tensor:
    """Load a 2-D matrix from ``.pt`` (a plain tensor, ``weights_only``), ``.safetensors``
    (one tensor, or a featgeo packed mask) or ``.npy``; refuse anything else with a clear error.

    The dtype is kept as stored: bfloat16 / float16 matrices (numpy's ``.npy`` holds float16
    but has no bfloat16) give the same masks (``W != 0``) as their float32 copy; the analyses
    that use weight values (``--cluster-on weights``) upcast them to float64 through torch.
    A packed mask (recognised by its metadata, whatever its name) comes back as [out, in] bool,
    True = kept, whose ``!= 0`` is the mask of the weights it was packed from.

    Args:
        path: the matrix file.
        values_needed_by: the option that needs the weight values (``"--cluster-on weights"``);
            when given, a packed mask is refused, since it holds no values.

    Raises:
        FileNotFoundError / IsADirectoryError: ``path`` is missing or a folder.
        ValueError: unsupported suffix, unreadable or malformed file (a packed mask whose
            metadata, tensor, shape or padding bits are wrong), a packed mask when
            ``values_needed_by`` is given, or a matrix that is not 2-D / finite.
        TypeError: a complex or non-numeric matrix.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(
            f"matrix file '{path}' is a folder; pass a matrix file inside it, e.g. one exported "
            "by `featgeo prune` ({out}/{method}/layer{L}-{component}.pt)"
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"matrix file '{path}' does not exist; pass a file exported by "
            "`featgeo prune` ({out}/{method}/layer{L}-{component}.pt)"
        )
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise ValueError(
            f"matrix file '{path}' has an unsupported extension '{suffix}'; use one of {_ACCEPTED}"
        )
    if suffix in (".pt", ".pth"):
        matrix = _load_torch(path)
    elif suffix == ".safetensors":
        matrix = _load_safetensors(path, values_needed_by)
    else:
        matrix = _load_npy(path)
    return validate_matrix(matrix, name=str(path))


_NOT_READABLE = "it is empty, truncated or not written by {writer}"


def _load_npy(path: Path) -> torch.Tensor:
    # np.load raises EOFError on an empty file (which click would turn into "Aborted."),
    # ValueError on a bad header or object data, OSError/UnpicklingError on other bytes.
    try:
        array = np.load(path, allow_pickle=False)
    except (EOFError, OSError, ValueError, pickle.UnpicklingError) as exc:
        if isinstance(exc, ValueError) and "allow_pickle" in str(exc) and _is_npy(path):
            raise ValueError(
                f"'{path}' holds an object (pickled) array, not a numeric matrix; save the "
                "matrix with np.save(path, numeric_array)"
            ) from None
        raise ValueError(
            f"'{path}' is not a readable .npy file ({_NOT_READABLE.format(writer='np.save')}); "
            "save the matrix with np.save(path, array)"
        ) from None
    if not isinstance(array, np.ndarray):
        raise ValueError(f"'{path}' is not a plain .npy array; save the matrix with np.save")
    try:
        return torch.from_numpy(array)
    except TypeError:
        raise TypeError(
            f"'{path}' holds a .npy array of dtype {array.dtype}, not numbers; save a numeric "
            "matrix with np.save(path, array)"
        ) from None


def _is_npy(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(6) == b"\x93NUMPY"


def _load_torch(path: Path) -> torch.Tensor:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - garbage bytes reach the unpickler's KeyError etc.
        # torch's own messages are long (a paragraph about PyTorch 2.6) and would be cut
        # mid-word: say in one clean sentence which of the two problems it is.
        if "Unsupported global" in str(exc):
            raise ValueError(
                f"'{path}' holds Python objects, not a plain tensor, and was refused by "
                "weights_only loading; save the matrix itself with torch.save(tensor, path)"
            ) from None
        raise ValueError(
            f"'{path}' is not a readable .pt tensor file "
            f"({_NOT_READABLE.format(writer='torch.save')}); save the matrix with "
            "torch.save(tensor, path)"
        ) from None
    if not isinstance(obj, torch.Tensor):
        raise ValueError(
            f"'{path}' holds a {type(obj).__name__}, not a tensor; save the matrix "
            "itself with torch.save(tensor, path)"
        )
    return obj


def _load_safetensors(path: Path, values_needed_by: str | None = None) -> torch.Tensor:
    from safetensors import SafetensorError, safe_open

    try:
        handle = safe_open(str(path), framework="pt")
    except (SafetensorError, OSError, ValueError, EOFError) as exc:
        detail = " ".join(str(exc).split())[:100]
        fix = (
            _MASK_FIX
            if path.name.lower().endswith(PACKED_MASK_SUFFIX)
            else "save the matrix with safetensors.torch.save_file({'weight': tensor}, path)"
        )
        message = f"'{path}' is not a readable .safetensors file ({detail}); {fix}"
        raise ValueError(message) from None
    with handle:
        metadata = handle.metadata() or {}
        names = sorted(handle.keys())
        # A tensor named packed_mask without our metadata is a damaged mask, not a uint8
        # matrix: reading it as weights would analyse the packed bytes.
        if metadata.get("format") == PACKED_MASK_FORMAT or PACKED_MASK_TENSOR in names:
            if values_needed_by is not None:
                raise ValueError(
                    f"'{path}' holds a bit-packed mask ({PACKED_MASK_FORMAT}), not weight "
                    f"values, and {values_needed_by} needs the values; re-export the matrix "
                    "with `featgeo prune --export dense`"
                )
            return _read_packed_mask(path, handle, metadata, names)
        if len(names) != 1:
            raise ValueError(
                f"'{path}' holds {len(names)} tensors ({', '.join(names)}); "
                "featgeo reads one matrix per file"
            )
        return handle.get_tensor(names[0])


def _read_packed_mask(
    path: Path, handle: Any, metadata: dict[str, str], names: list[str]
) -> torch.Tensor:
    """[out, in] bool (True = kept) from an open packed-mask file, after checking every field
    that :func:`featgeo.files.save_packed_mask` writes."""
    where = f"packed mask '{path}'"
    if metadata.get("format") != PACKED_MASK_FORMAT:
        raise ValueError(
            f"{where} has metadata format {metadata.get('format')!r}, expected "
            f"'{PACKED_MASK_FORMAT}'; {_MASK_FIX}"
        )
    if metadata.get("version") != PACKED_MASK_VERSION:
        raise ValueError(
            f"{where} has format version {metadata.get('version')!r}; this featgeo reads "
            f"version '{PACKED_MASK_VERSION}'; {_MASK_FIX}"
        )
    if names != [PACKED_MASK_TENSOR]:
        raise ValueError(
            f"{where} holds {len(names)} tensor(s) ({', '.join(names)}), expected exactly one, "
            f"'{PACKED_MASK_TENSOR}'; {_MASK_FIX}"
        )
    if metadata.get("bitorder") != "little":
        raise ValueError(
            f"{where} has bitorder {metadata.get('bitorder')!r}, expected 'little'; {_MASK_FIX}"
        )
    shape = re.fullmatch(r"([1-9]\d*),([1-9]\d*)", metadata.get("shape", ""))
    if shape is None:
        raise ValueError(
            f"{where} has metadata shape {metadata.get('shape')!r}, expected 'OUT,IN' (two "
            f"positive integers); {_MASK_FIX}"
        )
    rows, cols = int(shape.group(1)), int(shape.group(2))
    stored = handle.get_slice(PACKED_MASK_TENSOR)
    if stored.get_dtype() != "U8":
        raise ValueError(
            f"{where} stores '{PACKED_MASK_TENSOR}' as {stored.get_dtype()}, expected uint8 "
            f"(U8); {_MASK_FIX}"
        )
    expected = [rows, -(-cols // 8)]
    if list(stored.get_shape()) != expected:
        raise ValueError(
            f"{where} has a packed tensor of shape {list(stored.get_shape())}, but its metadata "
            f"shape {rows},{cols} needs {expected} (ceil({cols} / 8) bytes per row); {_MASK_FIX}"
        )
    packed = handle.get_tensor(PACKED_MASK_TENSOR).numpy()  # [out, ceil(in / 8)] uint8
    if cols % 8:
        # Bits 8*b + j >= in of the last byte hold no weight; set ones mean the writer
        # used another bit order or a wrong shape, so the whole mask cannot be trusted.
        padding = (0xFF << (cols % 8)) & 0xFF
        bad_rows = np.flatnonzero(packed[:, -1] & padding)
        if bad_rows.size:
            raise ValueError(
                f"{where} has padding bits set (beyond column {cols - 1}) in {bad_rows.size} "
                f"row(s), first row {bad_rows[0]}; {_MASK_FIX}"
            )
    kept = np.unpackbits(packed, axis=1, count=cols, bitorder="little")  # [out, in] uint8 0/1
    return torch.from_numpy(kept.view(np.bool_))


def matrix_stem(path: str | os.PathLike) -> str:
    """The file name without its matrix suffix: ``layer1-mlp.down_proj`` for both
    ``layer1-mlp.down_proj.pt`` and ``layer1-mlp.down_proj.mask.safetensors``."""
    name = Path(path).name
    if name.lower().endswith(PACKED_MASK_SUFFIX):
        return name[: -len(PACKED_MASK_SUFFIX)]
    return Path(name).stem


def validate_matrix(matrix: torch.Tensor, *, name: str = "matrix") -> torch.Tensor:
    if matrix.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix, got shape {tuple(matrix.shape)}")
    if matrix.shape[0] < 1 or matrix.shape[1] < 2:
        raise ValueError(f"{name} has shape {tuple(matrix.shape)}; need at least 2 features")
    if matrix.is_complex():
        raise TypeError(f"{name} has dtype {matrix.dtype}; expected a real-valued matrix")
    if matrix.is_floating_point() and not torch.isfinite(matrix).all():
        raise ValueError(f"{name} contains NaN or inf; pruned weights must be finite")
    return matrix


def feature_masks(
    matrix: torch.Tensor, axis: Axis = "columns", *, name: str = "matrix", warn_dense: bool = True
) -> np.ndarray:
    """Masks of the features, feature-major: [N, D] bool (``W != 0``)."""
    if axis not in ("columns", "rows"):
        raise ValueError(f"--axis must be 'columns' or 'rows', got '{axis}'")
    mask = (matrix != 0).cpu().numpy()
    masks = np.ascontiguousarray(mask.T if axis == "columns" else mask)
    if warn_dense and masks.mean() > 0.99:
        warnings.warn(
            f"{name} is dense ({masks.mean():.2%} of weights are non-zero): Hamming distances "
            "between all-ones masks are meaningless; analyse a pruned matrix",
            DenseMatrixWarning,
            stacklevel=2,
        )
    return masks


def sparsity(matrix: torch.Tensor) -> float:
    return float((matrix == 0).sum()) / matrix.numel()
