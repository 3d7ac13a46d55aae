"""Sparse autoencoders: config, architectures (standard / TopK / JumpReLU), the SAELens on-disk
format (``cfg.json`` + ``sae_weights.safetensors``), training on a block's residual stream,
evaluation (FVE, L0, CE loss recovered), the activation store of SAE codes and latent clustering.

    from featgeo.sae import TrainConfig, train_sae, evaluate_sae, build_sae_store, cluster_sae

    result = train_sae("saes/layer6", TrainConfig(d_sae=4608, total_tokens=2_000_000), layer=6)
"""

from featgeo.sae.architectures import (
    ARCHITECTURES,
    Architecture,
    SparseAutoencoder,
    get_architecture,
    register_architecture,
)
from featgeo.sae.cluster_run import build_sae_store, cluster_sae, live_latents
from featgeo.sae.clustering import cluster_latents, cluster_table
from featgeo.sae.config import SAEConfig
from featgeo.sae.evaluate import SAEEvaluation, evaluate_sae
from featgeo.sae.saelens_format import (
    CFG_FILENAME,
    FEATGEO_FILENAME,
    WEIGHTS_FILENAME,
    check_sae_matches_model,
    load_sae,
    save_sae,
)
from featgeo.sae.store import ActivationStore
from featgeo.sae.train_run import train_sae
from featgeo.sae.training import SAETrainer, TrainConfig

__all__ = [
    "ARCHITECTURES",
    "ActivationStore",
    "Architecture",
    "CFG_FILENAME",
    "FEATGEO_FILENAME",
    "SAEConfig",
    "SAEEvaluation",
    "SAETrainer",
    "SparseAutoencoder",
    "TrainConfig",
    "WEIGHTS_FILENAME",
    "build_sae_store",
    "check_sae_matches_model",
    "cluster_latents",
    "cluster_sae",
    "cluster_table",
    "evaluate_sae",
    "get_architecture",
    "live_latents",
    "load_sae",
    "register_architecture",
    "save_sae",
    "train_sae",
]
