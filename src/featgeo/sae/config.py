"""The SAE configuration and its SAELens ``cfg.json`` form.

featgeo reads and writes SAEs in the SAELens on-disk layout (SPEC §0 "SAEs"): ``cfg.json`` with
``architecture``, ``d_in``, ``d_sae``, ``dtype``, ``device``, ``apply_b_dec_to_input``,
``normalize_activations``, ``metadata`` (``model_name``, ``hook_name``, ``hook_layer``, ...) and
``k`` for TopK. Older SAELens releases (< 6.0) kept ``model_name`` / ``hook_name`` (or
``hook_point``) at the top level and had no ``architecture`` key; those are read too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from featgeo.activations.hooks import layer_in_hook_name
from featgeo.sae.architectures import get_architecture

DTYPES = ("float32", "float64", "float16", "bfloat16")
"""Parameter dtypes an SAE may be stored in (the ``dtype`` key of ``cfg.json``)."""

NORMALIZE_ACTIVATIONS = ("none",)
"""Input normalisations featgeo implements; SAELens' others rescale inputs at run time."""

SAELENS_FORMAT_VERSION = "6.0.0"
"""The SAELens cfg.json layout we write. SAELens >= 6 reads ``metadata`` only when it finds a
``sae_lens_version`` >= 6.0 there; without it the file is treated as the older flat layout."""


@dataclass
class SAEConfig:
    """Shape, activation and provenance of one sparse autoencoder."""

    d_in: int
    """Width of the activations the SAE reads (the model's hidden size)."""
    d_sae: int
    """Number of latents (dictionary size)."""
    architecture: Literal["standard", "topk", "jumprelu"] = "standard"
    """Activation rule; one of :data:`featgeo.sae.architectures.ARCHITECTURES`."""
    k: int | None = None
    """Latents kept per token by TopK; only for ``architecture="topk"``."""
    dtype: str = "float32"
    """Parameter dtype name (float32, float64, float16, bfloat16)."""
    model_name: str = ""
    """Name or path of the model whose activations the SAE reads."""
    hook_name: str = ""
    """Where the activations are read, e.g. ``blocks.3.hook_resid_post`` (output of block 3) or
    ``blocks.3.hook_resid_pre`` (its input); see :mod:`featgeo.activations.hooks`."""
    layer: int | None = None
    """Block number of ``hook_name`` (SAELens ``hook_layer``); parsed from it when not given."""
    apply_b_dec_to_input: bool = True
    """Subtract ``b_dec`` from the input before encoding (SAELens default)."""
    normalize_activations: str = "none"
    """Input normalisation; featgeo supports only ``"none"``."""

    def __post_init__(self) -> None:
        for name in ("d_in", "d_sae"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        get_architecture(self.architecture)  # lists the valid names when unknown
        if self.architecture == "topk":
            if self.k is None:
                raise ValueError("architecture 'topk' needs k (latents kept per token)")
            if isinstance(self.k, bool) or not isinstance(self.k, int):
                raise TypeError(f"k must be an int, got {type(self.k).__name__} {self.k!r}")
            if self.k < 1:
                raise ValueError(f"k must be >= 1, got {self.k}")
            if self.k > self.d_sae:
                raise ValueError(f"k={self.k} is larger than d_sae={self.d_sae}; choose k <= d_sae")
        elif self.k is not None:
            raise ValueError(
                f"k={self.k} is only used by architecture 'topk', got architecture "
                f"'{self.architecture}'; drop k or use architecture 'topk'"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got '{self.dtype}'")
        if self.normalize_activations not in NORMALIZE_ACTIVATIONS:
            raise ValueError(
                f"normalize_activations='{self.normalize_activations}' is not supported; "
                f"featgeo SAEs use 'none' (fold any input scaling into the weights first)"
            )
        if self.layer is None and self.hook_name:
            self.layer = layer_in_hook_name(self.hook_name)

    # -- SAELens cfg.json ------------------------------------------------------------------
    def to_saelens_cfg(self, device: str = "cpu") -> dict[str, Any]:
        """The SAELens ``cfg.json`` dict of this config (``device`` is where it loads to)."""
        cfg: dict[str, Any] = {
            "architecture": self.architecture,
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "dtype": self.dtype,
            "device": device,
            "apply_b_dec_to_input": self.apply_b_dec_to_input,
            "normalize_activations": self.normalize_activations,
            "reshape_activations": "none",
            "metadata": {
                "model_name": self.model_name,
                "hook_name": self.hook_name,
                "hook_layer": self.layer,
                "sae_lens_version": SAELENS_FORMAT_VERSION,
            },
        }
        if self.architecture == "topk":
            cfg["k"] = self.k
        return cfg

    @classmethod
    def from_saelens_cfg(cls, cfg: dict[str, Any]) -> SAEConfig:
        """Read a SAELens ``cfg.json`` dict (the >= 6.0 ``metadata`` layout or the older flat one).

        Raises ``ValueError`` naming the key when a required key is missing or a value is bad.
        """
        if not isinstance(cfg, dict):
            raise TypeError(f"an SAE cfg must be a JSON object, got {type(cfg).__name__}")
        for key in ("d_in", "d_sae"):
            if key not in cfg:
                raise ValueError(f"the SAE cfg has no '{key}' key; add it (an int)")
        meta = cfg.get("metadata") or cfg.get("meta") or {}
        if not isinstance(meta, dict):
            raise ValueError(f"'metadata' must be a JSON object, got {type(meta).__name__}")

        def pick(*keys: str) -> Any:
            for key in keys:  # metadata wins over the older top-level keys
                if meta.get(key) is not None:
                    return meta[key]
            for key in keys:
                if cfg.get(key) is not None:
                    return cfg[key]
            return None

        architecture = cfg.get("architecture") or "standard"
        k = cfg.get("k")
        # SAELens < 6 stored TopK as architecture "standard" with activation_fn "topk".
        activation = cfg.get("activation_fn") or cfg.get("activation_fn_str")
        if activation == "topk" and architecture == "standard":
            architecture = "topk"
            k = k if k is not None else (cfg.get("activation_fn_kwargs") or {}).get("k")
        dtype = str(cfg.get("dtype") or "float32").removeprefix("torch.")
        normalize = cfg.get("normalize_activations", "none")
        if normalize is False or normalize is None:  # SAELens < 4 used a bool
            normalize = "none"
        layer = pick("hook_layer", "hook_point_layer")
        return cls(
            d_in=cfg["d_in"],
            d_sae=cfg["d_sae"],
            architecture=architecture,
            k=k if architecture == "topk" else None,
            dtype=dtype,
            model_name=pick("model_name") or "",
            hook_name=pick("hook_name", "hook_point") or "",
            layer=int(layer) if layer is not None else None,
            apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
            normalize_activations=normalize,
        )


__all__ = ["DTYPES", "NORMALIZE_ACTIVATIONS", "SAEConfig", "SAELENS_FORMAT_VERSION"]
