"""Per-cluster geometry of SAE latent clusters (SPEC §3, seed 002).

- :func:`decoder_dir_rank`: rank of the cluster's normalised decoder rows.
- :func:`cluster_recon_error`: how well those rows fit their own rank-``decoder_dir_rank``
  subspace (the original code left this NaN by a bug; it is computed here).
- :func:`activation_pca_rank`: PCA rank of the cluster's latent activations over tokens.
- :func:`cluster_table`: one row per cluster with the decoder metrics.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from featgeo.latents.methods import ArrayLike, _as_float_matrix, normalized_directions

VARIANCE_FRACTION = 0.95
"""Share of sum sigma^2 (or of variance) the rank must explain (SPEC §3)."""
SPECTRAL_GAP = 2.0
"""sigma_i / sigma_{i+1} at or above this ends the rank at i (SPEC §3)."""
ACTIVE_TOKEN_L1 = 1e-5
"""Tokens with sum|a| at or below this are left out of the activation PCA (SPEC §3)."""
_TOL = 1e-12


def _energy_rank(values_sq: np.ndarray, fraction: float) -> int:
    """Smallest r >= 1 with sum(values_sq[:r]) >= fraction * sum(values_sq)."""
    total = values_sq.sum()
    if total <= 0:
        return 1
    cum = np.cumsum(values_sq) / total
    return int(np.searchsorted(cum, fraction - _TOL) + 1)


def _gap_rank(sigma: np.ndarray, gap: float) -> int:
    """Smallest 1-based i with sigma_i / sigma_{i+1} >= gap; len(sigma) if there is none.

    ``sigma_{i+1} == 0`` (numerically: below 1e-12 * sigma_1) counts as an infinite gap.
    """
    tiny = _TOL * max(float(sigma[0]), _TOL)
    for i in range(len(sigma) - 1):  # 0-based i compares sigma[i] with sigma[i + 1]
        if sigma[i + 1] <= tiny or sigma[i] / sigma[i + 1] >= gap:
            return i + 1
    return len(sigma)


def decoder_dir_rank(
    directions: ArrayLike, fraction: float = VARIANCE_FRACTION, gap: float = SPECTRAL_GAP
) -> int:
    """Rank of a cluster's decoder directions (SPEC §3).

    With sigma_1 >= sigma_2 >= ... the singular values of the L2-normalised rows (uncentred
    SVD, 1-based indices), the rank is ``min(r_energy, r_gap)`` where

    - ``r_energy`` = smallest r with sigma_1^2 + ... + sigma_r^2 >= ``fraction`` * sum sigma^2;
    - ``r_gap`` = smallest i with sigma_i / sigma_{i+1} >= ``gap`` (a zero sigma_{i+1} counts
      as an infinite ratio), or the number of singular values when no such gap exists.

    So a rank of r means "the first r directions"; a one-row cluster has rank 1.

    Args:
        directions: decoder rows of one cluster [n_latents, d_in] (normalised here).

    Returns:
        int in [1, min(n_latents, d_in)].
    """
    x = normalized_directions(directions)
    if x.shape[0] == 0:
        raise ValueError("directions must have at least one row, got shape (0, d_in)")
    sigma = np.linalg.svd(x, compute_uv=False)  # descending
    return min(_energy_rank(sigma**2, fraction), _gap_rank(sigma, gap))


def cluster_recon_error(directions: ArrayLike, rank: int | None = None) -> float:
    """Mean squared residual of a cluster's normalised rows against their own subspace.

    The subspace is spanned by the top ``rank`` right singular vectors of the normalised rows
    (uncentred, through the origin); ``rank`` defaults to :func:`decoder_dir_rank`. The error is
    the mean over rows of ||x - U U^T x||^2 (each row has unit norm, so this is the average
    fraction of a direction left unexplained, in [0, 1]).

    Args:
        directions: decoder rows of one cluster [n_latents, d_in].
        rank: subspace dimension; None uses :func:`decoder_dir_rank`.
    """
    x = normalized_directions(directions)
    if x.shape[0] == 0:
        raise ValueError("directions must have at least one row, got shape (0, d_in)")
    r = decoder_dir_rank(x) if rank is None else rank
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    u = vt[:r].T  # [d_in, r]
    residual = x - (x @ u) @ u.T  # [n_latents, d_in]
    return float((residual**2).sum(axis=1).mean())


def activation_pca_rank(
    acts: ArrayLike, fraction: float = VARIANCE_FRACTION, active_l1: float = ACTIVE_TOKEN_L1
) -> int:
    """Number of PCA components explaining ``fraction`` of the activation variance (SPEC §3).

    PCA is over tokens with sum_j |a_j| > ``active_l1`` (centred, as PCA is). A single-latent
    cluster has rank 1. With fewer than two active tokens, or zero variance, the rank is 0.

    Args:
        acts: latent activations of one cluster [n_tokens, n_latents_in_cluster].
    """
    a = _as_float_matrix(acts, "acts")
    if not np.isfinite(a).all():
        raise ValueError("acts contains NaN or inf; check the SAE activations")
    if a.shape[1] == 1:
        return 1
    a = a[np.abs(a).sum(axis=1) > active_l1]  # [n_active, n_latents]
    if a.shape[0] < 2:
        return 0
    sigma = np.linalg.svd(a - a.mean(axis=0), compute_uv=False)
    if (sigma**2).sum() <= _TOL * max(1.0, float((a**2).sum())):
        return 0
    return _energy_rank(sigma**2, fraction)


def cluster_table(labels: ArrayLike, directions: ArrayLike) -> list[dict[str, Any]]:
    """Decoder metrics of every cluster.

    Args:
        labels: cluster label per latent [d_sae] (``-1`` = dead, skipped).
        directions: decoder rows [d_sae, d_in].

    Returns:
        One dict per non-empty cluster, by ascending ``cluster_id``, with keys ``cluster_id``,
        ``n_latents``, ``latent_indices`` (list of int), ``decoder_dir_rank``,
        ``cluster_recon_error``.
    """
    labels = np.asarray(labels)
    x = normalized_directions(directions)
    if labels.shape != (x.shape[0],):
        raise ValueError(
            f"labels must have shape ({x.shape[0]},) to match directions, got {labels.shape}"
        )
    rows = []
    for cid in np.unique(labels[labels >= 0]):
        idx = np.flatnonzero(labels == cid)
        rank = decoder_dir_rank(x[idx])
        rows.append(
            {
                "cluster_id": int(cid),
                "n_latents": int(idx.size),
                "latent_indices": idx.tolist(),
                "decoder_dir_rank": rank,
                "cluster_recon_error": cluster_recon_error(x[idx], rank),
            }
        )
    return rows
