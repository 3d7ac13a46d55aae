"""Pruning: magnitude, Wanda and SparseGPT, unstructured and N:M, applied layer by layer."""

from featgeo.pruning import magnitude, sparsegpt, wanda  # noqa: F401  (register the methods)
from featgeo.pruning.base import PRUNERS, Pruner, get_pruner
from featgeo.pruning.magnitude import MagnitudePruner
from featgeo.pruning.masks import matrix_mask, nm_mask, parse_nm, row_mask
from featgeo.pruning.sparsegpt import SparseGPTPruner
from featgeo.pruning.wanda import WandaPruner

__all__ = [
    "PRUNERS",
    "MagnitudePruner",
    "Pruner",
    "SparseGPTPruner",
    "WandaPruner",
    "get_pruner",
    "matrix_mask",
    "nm_mask",
    "parse_nm",
    "row_mask",
]
