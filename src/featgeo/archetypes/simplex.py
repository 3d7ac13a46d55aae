"""The fixed regular simplex of an AANet's latent space and barycentric coordinates in it.

An AANet with k archetypes embeds data in R^(k-1), where k fixed vertices form a regular simplex
centred at the origin (van Dijk et al. 2019, "Finding archetypal spaces using neural networks",
§3). A point z has barycentric coordinates lambda (sum 1) with z = sum_i lambda_i v_i; inside
the simplex every lambda_i >= 0, which is what the archetypal loss rewards (SPEC §3).
"""

from __future__ import annotations

import math

import numpy as np
import torch


def simplex_vertices(k: int, *, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Vertices of the regular simplex with k vertices in R^(k-1), centroid 0, circumradius 1.

    Built from the Helmert basis of the hyperplane ``sum(w) = 0`` of R^k (closed form, so every
    platform gets the same numbers): vertex i is ``e_i - 1/k`` written in that basis.

    Returns ``[k, k-1]``. Raises ``ValueError`` for k < 2.
    """
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 2:
        raise ValueError(f"k must be an int >= 2 (an AANet needs two archetypes), got {k!r}")
    k = int(k)
    helmert = torch.zeros(k - 1, k, dtype=torch.float64)  # orthonormal rows, each orthogonal to 1
    for j in range(1, k):
        helmert[j - 1, :j] = 1.0
        helmert[j - 1, j] = -float(j)
        helmert[j - 1] /= math.sqrt(j * (j + 1))
    # e_i - 1/k has norm sqrt((k-1)/k); rescale to circumradius 1.
    return (helmert.T * math.sqrt(k / (k - 1))).to(dtype)


def barycentric_operator(k: int, *, dtype: torch.dtype = torch.float64):
    """``(A, c)`` with ``lambda = z @ A + c`` the barycentric coordinates of z in the simplex.

    Solves the k x k affine system ``[V^T; 1^T] lambda = [z; 1]`` once (V =
    :func:`simplex_vertices`). Returns ``A [k-1, k]`` and ``c [k]``.
    """
    system = torch.ones(k, k, dtype=torch.float64)
    system[: k - 1] = simplex_vertices(k).T
    inverse = torch.linalg.inv(system)  # [k, k]; lambda = inverse @ [z; 1]
    return inverse[:, : k - 1].T.contiguous().to(dtype), inverse[:, k - 1].contiguous().to(dtype)


def barycentric(z: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """Barycentric coordinates ``[n, k]`` of embeddings ``z [n, k-1]`` (rows sum to 1)."""
    k = z.shape[-1] + 1 if k is None else k
    if z.shape[-1] != k - 1:
        raise ValueError(f"z must have k-1 = {k - 1} columns, got shape {tuple(z.shape)}")
    a, c = barycentric_operator(k, dtype=z.dtype)
    return z @ a.to(z.device) + c.to(z.device)


__all__ = ["barycentric", "barycentric_operator", "simplex_vertices"]
