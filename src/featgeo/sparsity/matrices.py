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
        try:
            matrix = torch.from_numpy(np.load(path, allow_pickle=False))
        except ValueError as exc:
            raise ValueError(f"'{path}' is not a plain numeric .npy array ({exc})") from None
    return validate_matrix(matrix, name=str(path))


def _load_torch(path: Path) -> torch.Tensor:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"'{path}' is not a plain tensor file and was refused by weights_only loading "
            f"({first[:120]}); save the matrix with torch.save(tensor, path)"
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
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"'{path}' is not a readable safetensors file ({exc})") from None
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
