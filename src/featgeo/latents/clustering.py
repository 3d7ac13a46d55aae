"""Latent clustering of SAE decoder directions: the public entry point (SPEC §3).

The methods live in :mod:`featgeo.latents.methods` and the per-cluster metrics in
:mod:`featgeo.latents.metrics`; this module gathers them and adds :func:`cluster_latents`.

Example::

    labels = cluster_latents(W_dec, "k-subspaces", n_clusters=256, live=live)
    table = cluster_table(labels, W_dec)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from featgeo.latents.methods import (
    CLUSTER_METHODS,
    DUPLICATE_COS,
    ArrayLike,
    KMeansClusterer,
    KSubspacesClusterer,
    LatentClusterer,
    SpectralClusterer,
    deduplicate_rows,
    get_cluster_method,
    make_clusterer,
    normalized_directions,
    register_cluster_method,
)
from featgeo.latents.metrics import (
    activation_pca_rank,
    cluster_recon_error,
    cluster_table,
    decoder_dir_rank,
)

__all__ = [
    "CLUSTER_METHODS",
    "DUPLICATE_COS",
    "KMeansClusterer",
    "KSubspacesClusterer",
    "LatentClusterer",
    "SpectralClusterer",
    "activation_pca_rank",
    "cluster_latents",
    "cluster_recon_error",
    "cluster_table",
    "decoder_dir_rank",
    "deduplicate_rows",
    "get_cluster_method",
    "make_clusterer",
    "normalized_directions",
    "register_cluster_method",
]


def cluster_latents(
    W_dec: ArrayLike,
    method: str = "kmeans",
    n_clusters: int = 128,
    *,
    live: ArrayLike | None = None,
    cooccurrence: ArrayLike | None = None,
    random_state: int = 0,
    **params: Any,
) -> np.ndarray:
    """Cluster the live decoder directions of an SAE.

    Args:
        W_dec: decoder matrix [d_sae, d_in] (numpy or torch); rows are L2-normalised here.
        method: a name in :data:`CLUSTER_METHODS` (``kmeans``, ``k-subspaces``, ``spectral``).
        n_clusters: number of clusters; at most the number of live latents.
        live: optional boolean mask [d_sae]; dead latents get label -1.
        cooccurrence: [d_sae, d_sae] matrix for ``spectral`` with ``affinity="cooccurrence"``.
        random_state: seed; the same seed gives the same labels.
        **params: method settings (``subspace_dim``, ``n_restarts``, ``affinity``, ...).

    Returns:
        labels [d_sae] int64 in ``[0, m)``, ``-1`` for dead latents; m = ``n_clusters``, or
        fewer when the live rows hold fewer distinct directions (a ``ClusterCountWarning`` says
        so; use :func:`make_clusterer` to read ``n_clusters_`` and ``n_distinct_``).
    """
    est = make_clusterer(method, n_clusters=n_clusters, random_state=random_state, **params)
    return est.fit(W_dec, live=live, cooccurrence=cooccurrence).labels_
