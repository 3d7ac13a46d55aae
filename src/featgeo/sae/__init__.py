"""Sparse autoencoders: config, architectures (standard / TopK / JumpReLU), the SAELens on-disk
format (``cfg.json`` + ``sae_weights.safetensors``), training on a block's residual stream and
evaluation (FVE, L0, CE loss recovered).

The stages after the SAE live in their own packages: :mod:`featgeo.activations` (activation
cache and the store of SAE codes), :mod:`featgeo.latents` (latent clustering) and
:mod:`featgeo.archetypes` (AANets). Their main names stay importable from here.

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
from featgeo.sae.train_run import train_sae
from featgeo.sae.training import SAETrainer, TrainConfig

# Imported on first use: featgeo.activations and featgeo.latents import featgeo.sae themselves.
_MOVED = {
    "ActivationStore": "featgeo.activations.store",
    "build_sae_store": "featgeo.activations.store",
    "cluster_latents": "featgeo.latents.clustering",
    "cluster_sae": "featgeo.latents.run",
    "cluster_table": "featgeo.latents.clustering",
    "live_latents": "featgeo.latents.run",
}


def __getattr__(name: str):
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module 'featgeo.sae' has no attribute {name!r}")


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
