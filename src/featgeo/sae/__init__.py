"""Sparse autoencoders: config, architectures (standard / TopK / JumpReLU) and the SAELens
on-disk format (``cfg.json`` + ``sae_weights.safetensors``) that featgeo reads and writes."""

from featgeo.sae.architectures import (
    ARCHITECTURES,
    Architecture,
    SparseAutoencoder,
    get_architecture,
    register_architecture,
)
from featgeo.sae.config import SAEConfig
from featgeo.sae.saelens_format import (
    CFG_FILENAME,
    FEATGEO_FILENAME,
    WEIGHTS_FILENAME,
    check_sae_matches_model,
    load_sae,
    save_sae,
)

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "CFG_FILENAME",
    "FEATGEO_FILENAME",
    "SAEConfig",
    "SparseAutoencoder",
    "WEIGHTS_FILENAME",
    "check_sae_matches_model",
    "get_architecture",
    "load_sae",
    "register_architecture",
    "save_sae",
]
