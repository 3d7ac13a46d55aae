"""Loading pruned matrices and turning them into feature masks (SPEC §2).

A matrix is read as [D, N] and a feature is a column (``axis="columns"``, the default) or a row
(``axis="rows"``); the mask is ``W != 0``. Masks are returned feature-major, [N, D] bool.
"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import torch

SUPPORTED_SUFFIXES = (".pt", ".pth", ".safetensors", ".npy")
Axis = Literal["columns", "rows"]


class DenseMatrixWarning(UserWarning):
    """The matrix has (almost) no zeros, so Hamming distances between its masks mean nothing."""


def load_matrix(path: str | os.PathLike) -> torch.Tensor:
    """Load a 2-D float matrix from ``.pt`` (a plain tensor, ``weights_only``), ``.safetensors``
    (one tensor) or ``.npy``; refuse anything else with a clear error.

    The dtype is kept as stored: bfloat16 / float16 matrices (numpy's ``.npy`` holds float16
    but has no bfloat16) give the same masks (``W != 0``) as their float32 copy; the analyses
    that use weight values (``--cluster-on weights``) upcast them to float64 through torch.
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
            f"matrix file '{path}' has an unsupported extension '{suffix}'; "
            f"use one of {', '.join(SUPPORTED_SUFFIXES)}"
        )
    if suffix in (".pt", ".pth"):
        matrix = _load_torch(path)
    elif suffix == ".safetensors":
        matrix = _load_safetensors(path)
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


def _load_safetensors(path: Path) -> torch.Tensor:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError, EOFError) as exc:
        detail = " ".join(str(exc).split())[:100]
        raise ValueError(
            f"'{path}' is not a readable .safetensors file ({detail}); save the matrix with "
            "safetensors.torch.save_file({'weight': tensor}, path)"
        ) from None
    if len(tensors) != 1:
        raise ValueError(
            f"'{path}' holds {len(tensors)} tensors ({', '.join(sorted(tensors))}); "
            "featgeo reads one matrix per file"
        )
    return next(iter(tensors.values()))


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
