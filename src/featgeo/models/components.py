"""The addressable linear components of a decoder layer, discovered from the layer itself, and
helpers to select layers and components from user strings like ``0-5,7`` and ``mlp.down_proj``.

A *component* is an ``nn.Linear`` inside one decoder block, named by its path relative to the
block: ``self_attn.q_proj`` and ``mlp.down_proj`` in Llama/Mistral/Qwen2/Gemma,
``self_attn.qkv_proj`` and ``mlp.gate_up_proj`` in Phi-3 (fused projections),
``attention.query_key_value`` and ``mlp.dense_h_to_4h`` in GPT-NeoX. Components are listed in
the order the block registers them, which for Llama is q, k, v, o, gate, up, down.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)

LLAMA_COMPONENTS: tuple[str, ...] = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)
COMPONENTS = LLAMA_COMPONENTS
"""The components of a Llama-style block (the embedded model's); other layouts are discovered
with :func:`model_components`."""

# Where ``*ForCausalLM`` classes keep their decoder blocks, most common first.
LAYER_PATHS: tuple[str, ...] = (
    "model.layers",  # Llama, Mistral, Qwen2, Gemma, Phi-3, SmolLM, ...
    "gpt_neox.layers",  # GPT-NeoX, Pythia
    "transformer.h",  # GPT-2, GPT-J, Falcon, BLOOM
    "model.decoder.layers",  # OPT
    "layers",  # a bare decoder (LlamaModel, ...)
)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a causal LM, found at one of :data:`LAYER_PATHS`."""
    return model.get_submodule(decoder_layers_path(model))


def decoder_layers_path(model: nn.Module) -> str:
    """Where ``model`` keeps its decoder blocks: the first of :data:`LAYER_PATHS` that holds a
    non-empty ``nn.ModuleList``. Raises ValueError naming the supported layouts otherwise."""
    for path in LAYER_PATHS:
        try:
            layers = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return path
    raise ValueError(
        f"model: {type(model).__name__} keeps no decoder blocks at any of "
        f"{', '.join(LAYER_PATHS)}; featgeo reads decoder-only causal LMs laid out like "
        "Llama, Mistral, Qwen2, Gemma, Phi-3, GPT-NeoX or GPT-2"
    )


def _is_conv1d(module: nn.Module) -> bool:
    """transformers' ``Conv1D`` (GPT-2): a linear map whose weight is stored [in, out]."""
    return type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None


@dataclass(frozen=True)
class LayerProjections:
    """The projections of one decoder block, by name relative to the block."""

    linear: dict[str, tuple[int, int]]
    """``nn.Linear`` components -> weight shape (out_features, in_features)."""
    conv1d: dict[str, tuple[int, int]]
    """transformers ``Conv1D`` projections (GPT-2) -> (out_features, in_features)."""


def layer_projections(layer: nn.Module) -> LayerProjections:
    """Every ``nn.Linear`` (and ``Conv1D``) inside ``layer``, in registration order."""
    linear: dict[str, tuple[int, int]] = {}
    conv1d: dict[str, tuple[int, int]] = {}
    for name, module in layer.named_modules():
        if isinstance(module, nn.Linear):
            linear[name] = (module.out_features, module.in_features)
        elif _is_conv1d(module):
            n_in, n_out = module.weight.shape  # Conv1D stores weight as [in, out]
            conv1d[name] = (int(n_out), int(n_in))
    return LayerProjections(linear, conv1d)


def model_components(model: nn.Module) -> list[str]:
    """The prunable components of ``model``: the ``nn.Linear`` layers of its decoder blocks.

    Every block must hold the same components with the same shapes (the layer-by-layer driver
    prunes the same list in each). A block without ``nn.Linear`` layers (GPT-2's ``Conv1D``),
    or blocks that differ from each other, are refused with a ``ValueError``.
    """
    layers = decoder_layers(model)
    first = layer_projections(layers[0])
    if not first.linear:
        found = ", ".join(first.conv1d) or "none"
        kind = (
            "transformers Conv1D layers, whose weight is stored transposed"
            if first.conv1d
            else "no linear layers"
        )
        raise ValueError(
            f"model: {type(model).__name__} cannot be pruned by featgeo: its decoder blocks hold "
            f"{kind} ({found}); featgeo prunes nn.Linear projections, as in Llama, Mistral, "
            "Qwen2, Gemma, Phi-3 or GPT-NeoX models"
        )
    for index, layer in enumerate(layers):
        other = layer_projections(layer).linear
        if other != first.linear:
            diff = sorted(set(other.items()) ^ set(first.linear.items()))
            raise ValueError(
                f"model: decoder block {index} of {type(model).__name__} does not hold the same "
                f"linear layers as block 0 (differs in {diff[0][0] if diff else 'order'}); "
                "featgeo prunes models whose blocks all share one layout"
            )
    return _in_call_order(model, list(first.linear))


class _StopAfterBlock(Exception):
    pass


@torch.no_grad()
def _block0_calls(model: nn.Module, names: Sequence[str], input_ids: torch.Tensor) -> list:
    """Run ``input_ids`` [samples, seqlen] up to the end of decoder block 0 and return the
    calls of its components in order, as (name, token rows read)."""
    block = decoder_layers(model)[0]
    calls: list[tuple[str, int]] = []

    def record(name: str):
        def hook(_module, args):
            x = args[0] if args else None  # [..., in_features]
            calls.append((name, x.numel() // x.shape[-1] if isinstance(x, torch.Tensor) else 0))

        return hook

    handles = [get_component(block, n).register_forward_pre_hook(record(n)) for n in names]

    def stop(*_):
        raise _StopAfterBlock

    handles.append(block.register_forward_hook(stop))
    device = next(model.parameters()).device
    try:
        model(input_ids=input_ids.to(device), use_cache=False)
    except _StopAfterBlock:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _in_call_order(model: nn.Module, names: list[str]) -> list[str]:
    """``names`` in the order block 0 calls them (Phi-3 registers o_proj before qkv_proj but
    calls it after); registration order for those never called."""
    try:
        calls = _block0_calls(model, names, torch.zeros((1, 2), dtype=torch.long))
    except Exception as exc:  # noqa: BLE001 - the order is cosmetic; never fail a listing on it
        log.debug("could not trace the call order of %s: %s", type(model).__name__, exc)
        return names
    order = list(dict.fromkeys(name for name, _ in calls))
    return order + [n for n in names if n not in order]


def get_component(layer: nn.Module, name: str) -> nn.Linear:
    """The ``nn.Linear`` called ``name`` inside ``layer`` (e.g. ``mlp.down_proj``)."""
    try:
        module = layer.get_submodule(name)
    except AttributeError:
        valid = ", ".join(layer_projections(layer).linear) or "none"
        raise ValueError(
            f"component '{name}' does not exist in {type(layer).__name__}; its linear "
            f"components are: {valid}"
        ) from None
    if not isinstance(module, nn.Linear):
        raise TypeError(f"component '{name}' is a {type(module).__name__}, not nn.Linear")
    return module


def check_component_inputs(
    model: nn.Module, components: Sequence[str], input_ids: torch.Tensor
) -> None:
    """Check that each component of block 0 reads every token, once per forward pass.

    The layer-by-layer driver fits a component on the input of its one call. A component that
    is skipped, called several times, or called on a subset of the tokens (a mixture-of-experts
    expert sees only the tokens routed to it) would be fitted on the wrong data, so it is
    refused here, before anything is written.

    input_ids: [samples, seqlen] token ids (one short window is enough); the forward pass
    stops at the end of block 0.
    """
    calls = _block0_calls(model, components, input_ids)
    seen: dict[str, list[int]] = {name: [] for name in components}
    for name, rows in calls:
        seen[name].append(rows)
    tokens = input_ids.numel()
    for name, rows in seen.items():
        if rows != [tokens]:
            what = (
                "is never called"
                if not rows
                else f"is called {len(rows)} times"
                if len(rows) > 1
                else f"reads {rows[0]} of the {tokens} tokens"
            )
            raise ValueError(
                f"component '{name}' of {type(model).__name__} {what} in a forward pass of "
                "decoder block 0 (a mixture-of-experts expert or a shared layer?); featgeo fits "
                "each component on every calibration token once, so select the other "
                "components (--components)"
            )


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


def parse_components(text: str | None, available: Sequence[str] = COMPONENTS) -> list[str]:
    """``None``/``all`` -> every name in ``available``; else a comma list of some of them.

    ``available`` is the model's own list (:func:`model_components`); the result keeps its
    order whatever the order typed.
    """
    if text is None or text.strip().lower() == "all":
        return list(available)
    names = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [c for c in names if c not in available]
    if unknown or not names:
        raise ValueError(
            f"--components: unknown component '{unknown[0] if unknown else text}'; "
            f"this model's components are {', '.join(available)} (or all)"
        )
    return [c for c in available if c in names]


@dataclass(frozen=True)
class ModelInfo:
    """What ``featgeo model info`` reports. Fields a config does not define are None."""

    name: str
    architecture: str
    n_layers: int
    hidden_size: int | None
    intermediate_size: int | None
    n_heads: int | None
    n_kv_heads: int | None
    vocab_size: int | None
    n_parameters: int
    tied_embeddings: bool
    components: dict[str, tuple[int, int]]
    """Prunable component name -> weight shape (out_features, in_features), as in layer 0."""
    other_projections: dict[str, tuple[int, int]]
    """Projections featgeo does not prune (GPT-2's Conv1D) -> (out_features, in_features)."""
    prune_refusal: str | None
    """Why ``featgeo prune`` refuses this model, or None when it can prune it."""


def _config_int(cfg, *names: str) -> int | None:
    for name in names:
        value = getattr(cfg, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def model_info(model: nn.Module) -> ModelInfo:
    """Describe ``model`` from its config and its decoder blocks (any layout)."""
    cfg = model.config
    layers = decoder_layers(model)
    projections = layer_projections(layers[0])
    try:
        names, refusal = model_components(model), None
    except ValueError as exc:
        names, refusal = list(projections.linear), str(exc)
    # Tied embeddings share one tensor; count it once.
    n_params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    n_heads = _config_int(cfg, "num_attention_heads", "n_head")
    return ModelInfo(
        name=str(getattr(cfg, "name_or_path", "") or type(model).__name__),
        architecture=(getattr(cfg, "architectures", None) or [type(model).__name__])[0],
        n_layers=len(layers),
        hidden_size=_config_int(cfg, "hidden_size", "n_embd", "d_model"),
        intermediate_size=_config_int(cfg, "intermediate_size", "n_inner", "ffn_dim"),
        n_heads=n_heads,
        n_kv_heads=_config_int(cfg, "num_key_value_heads", "num_kv_heads") or n_heads,
        vocab_size=_config_int(cfg, "vocab_size"),
        n_parameters=n_params,
        tied_embeddings=bool(getattr(cfg, "tie_word_embeddings", False)),
        components={name: projections.linear[name] for name in names},
        other_projections=projections.conv1d,
        prune_refusal=refusal,
    )
