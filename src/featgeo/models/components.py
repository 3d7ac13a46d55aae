"""The seven addressable linear components of a Llama-style decoder layer, and helpers to
select layers and components from user strings like ``0-5,7`` and ``mlp.down_proj``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

COMPONENTS: tuple[str, ...] = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a ``*ForCausalLM`` (``model.model.layers`` for Llama-like models)."""
    inner = getattr(model, "model", model)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(
            f"{type(model).__name__} has no decoder layers at model.model.layers; featgeo supports "
            "Llama-style causal LMs (Llama, Mistral, Qwen2, SmolLM, ...)"
        )
    return layers


def get_component(layer: nn.Module, name: str) -> nn.Linear:
    module = layer.get_submodule(name)
    if not isinstance(module, nn.Linear):
        raise TypeError(f"component '{name}' is a {type(module).__name__}, not nn.Linear")
    return module


def parse_layers(text: str | None, n_layers: int) -> list[int]:
    """``None``/``all`` -> every layer; ``0-5,7`` -> [0..5, 7]. Out-of-range is an input error."""
    if text is None or text.strip().lower() == "all":
        return list(range(n_layers))
    picked: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if lo > hi:
                    raise ValueError
                picked.update(range(lo, hi + 1))
            else:
                picked.add(int(part))
        except ValueError:
            raise ValueError(f"--layers must look like '0-29' or '0,3,5-7', got '{text}'") from None
    bad = sorted(i for i in picked if not 0 <= i < n_layers)
    if bad:
        raise ValueError(
            f"--layers {text}: layer {bad[0]} does not exist; "
            f"this model has layers 0-{n_layers - 1}"
        )
    return sorted(picked)


def parse_components(text: str | None) -> list[str]:
    """``None``/``all`` -> all seven; else a comma list of names from :data:`COMPONENTS`."""
    if text is None or text.strip().lower() == "all":
        return list(COMPONENTS)
    names = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [c for c in names if c not in COMPONENTS]
    if unknown or not names:
        raise ValueError(
            f"--components: unknown component '{unknown[0] if unknown else text}'; "
            f"choose from {', '.join(COMPONENTS)}"
        )
    return [c for c in COMPONENTS if c in names]


@dataclass(frozen=True)
class ModelInfo:
    """What ``featgeo model info`` reports."""

    name: str
    architecture: str
    n_layers: int
    hidden_size: int
    intermediate_size: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    n_parameters: int
    tied_embeddings: bool
    components: dict[str, tuple[int, int]]
    """Component name -> weight shape (out_features, in_features), as in layer 0."""


def model_info(model: nn.Module) -> ModelInfo:
    cfg = model.config
    layer0 = decoder_layers(model)[0]
    shapes = {c: tuple(get_component(layer0, c).weight.shape) for c in COMPONENTS}
    # Tied embeddings share one tensor; count it once.
    n_params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    return ModelInfo(
        name=str(getattr(cfg, "name_or_path", "") or type(model).__name__),
        architecture=(cfg.architectures or [type(model).__name__])[0],
        n_layers=len(decoder_layers(model)),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        n_heads=cfg.num_attention_heads,
        n_kv_heads=getattr(cfg, "num_key_value_heads", cfg.num_attention_heads),
        vocab_size=cfg.vocab_size,
        n_parameters=n_params,
        tied_embeddings=bool(getattr(cfg, "tie_word_embeddings", False)),
        components=shapes,
    )


def weight_sparsity(weight: torch.Tensor) -> float:
    return float((weight == 0).sum().item()) / weight.numel()
