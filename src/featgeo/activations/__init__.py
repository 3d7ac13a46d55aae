"""Residual-stream activations and the SAE codes computed from them: document chunks and hooked
forward passes (:mod:`.collect`), the cache of raw activations SAE training reads
(:mod:`.cache`), and the sharded, resumable activation store of SAE codes every later stage reads
instead of re-running the model (:mod:`.store`, on :mod:`.sharded`).

    from featgeo.activations import build_sae_store

    store = build_sae_store(sae, layer=6, max_tokens=262_144)
    codes = store.codes  # [n_tokens, d_sae] float32, memory-mapped
"""

from featgeo.activations.store import ActivationStore, build_sae_store

__all__ = ["ActivationStore", "build_sae_store"]
