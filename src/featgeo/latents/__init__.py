"""Latent clustering: clusters of an SAE's L2-normalised decoder directions (k-means,
k-subspaces, spectral; :mod:`.methods`), their per-cluster metrics (``decoder_dir_rank``,
``cluster_recon_error``, ``activation_pca_rank``; :mod:`.metrics`, SPEC §3) and the
``featgeo sae cluster`` run that writes ``clusters_{n}/`` folders (:mod:`.run`).

    from featgeo.latents import cluster_sae

    results = cluster_sae(sae, store, [128, 256], "runs/clusters")
"""

from featgeo.latents.clustering import cluster_latents, cluster_table
from featgeo.latents.run import cluster_sae, live_latents

__all__ = ["cluster_latents", "cluster_sae", "cluster_table", "live_latents"]
