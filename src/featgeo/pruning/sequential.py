"""Layer-by-layer pruning of a decoder stack (SPEC §1).

The calibration batch goes through the model one decoder layer at a time, and the next layer
always sees the output of the pruned layer. Inside a layer, two orders (``--order``):

- ``sequential`` (default): each selected linear component is pruned by a forward pre-hook the
  moment its input arrives, so the input it is fitted on already reflects the pruned
  components before it (SparseGPT's "true sequential" order: q/k/v, then o, then gate/up, then
  down). One forward pass per layer.
- ``reference``: the order of locuslab/wanda's ``prune_wanda`` / ``prune_sparsegpt``: one
  forward pass through the *dense* layer collects every component's input, then all
  components are pruned, then a second forward pass through the pruned layer computes the
  output. o_proj and down_proj are thus fitted on dense-layer inputs.

Components that read the same tensor (q/k/v; gate/up) share one fitted pruner.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from featgeo.models.components import decoder_layers, get_component
from featgeo.pruning.base import Pruner

Order = Literal["sequential", "reference"]
ORDERS: tuple[Order, ...] = ("sequential", "reference")


class _StopForward(Exception):
    pass


@dataclass
class LayerInputs:
    """The hidden states entering a decoder layer and the keyword arguments the model passes
    to every layer (rotary position embeddings, causal mask, ...)."""

    hidden: torch.Tensor  # [samples, seqlen, hidden]
    kwargs: dict = field(default_factory=dict)


@torch.no_grad()
def capture_layer0_inputs(model: nn.Module, input_ids: torch.Tensor) -> LayerInputs:
    """Run the embedding only and catch what the first decoder layer would receive.

    input_ids: [samples, seqlen]
    """
    captured: dict = {}

    def grab(_module, args, kwargs):
        captured["hidden"] = args[0] if args else kwargs.pop("hidden_states")
        captured["kwargs"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        raise _StopForward

    first = decoder_layers(model)[0]
    handle = first.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        model(input_ids=input_ids.to(next(model.parameters()).device), use_cache=False)
    except _StopForward:
        pass
    finally:
        handle.remove()
    return LayerInputs(captured["hidden"], captured["kwargs"])


def run_layer(layer: nn.Module, inputs: LayerInputs) -> torch.Tensor:
    out = layer(inputs.hidden, **inputs.kwargs)
    return out[0] if isinstance(out, tuple) else out  # older transformers return tuples


@dataclass
class PrunedComponent:
    """One pruned linear component and what it takes to explain its achieved sparsity."""

    weight: torch.Tensor
    """The pruned weight [out, in], on the compute device (the module's own parameter)."""
    dense_zeros: int
    """Weights that were already 0 before pruning."""
    dead_inputs: int | None
    """Inputs that were 0 on every calibration token (None: the method reads no inputs)."""


def _prune_component(linear: nn.Linear, pruner: Pruner) -> PrunedComponent:
    dense_zeros = int((linear.weight == 0).sum())
    dead = pruner.dead_inputs_
    linear.weight.copy_(pruner.prune(linear.weight))
    return PrunedComponent(linear.weight, dense_zeros, None if dead is None else int(dead.sum()))


@torch.no_grad()
def prune_layer(
    layer: nn.Module,
    inputs: LayerInputs,
    components: list[str],
    make_pruner: Callable[[], Pruner],
    order: Order = "sequential",
) -> tuple[torch.Tensor, dict[str, PrunedComponent]]:
    """Prune ``components`` of one layer in place, in the given ``order`` (module docstring).

    inputs.hidden: [samples, seqlen, hidden]. Returns the pruned layer's output hidden states
    (same shape; the next layer's input) and the pruned components by name.
    """
    if order not in ORDERS:
        raise ValueError(f"--order must be one of {', '.join(ORDERS)}, got '{order}'")
    pruned: dict[str, PrunedComponent] = {}
    # Inputs seen so far with the pruner fitted on each. Holding the tensor keeps its memory
    # from being reused by a later input, so identity really means "the same input".
    fitted: list[tuple[torch.Tensor, Pruner]] = []
    pruner_of: dict[str, Pruner] = {}
    linears = {name: get_component(layer, name) for name in components}

    def hook_for(name: str):
        def on_input(_module, args):
            x = args[0]  # [samples, seqlen, in]
            pruner = next((p for seen, p in fitted if seen is x), None)
            if pruner is None:
                pruner = make_pruner()
                if pruner.needs_inputs:
                    pruner.fit(x)
                fitted.append((x, pruner))
            pruner_of[name] = pruner
            if order == "sequential":  # prune now, before the linear uses its weight
                pruned[name] = _prune_component(linears[name], pruner)
            handles.pop(name).remove()  # fit once, on the full calibration batch

        return on_input

    handles = {
        name: linear.register_forward_pre_hook(hook_for(name)) for name, linear in linears.items()
    }
    try:
        out = run_layer(layer, inputs)
    finally:
        for handle in handles.values():
            handle.remove()
    missing = [c for c in components if c not in pruner_of]
    assert not missing, f"components never called during the forward pass: {missing}"
    if order == "reference":  # the pass above read the dense layer; prune, then recompute
        for name in components:
            pruned[name] = _prune_component(linears[name], pruner_of[name])
        out = run_layer(layer, inputs)
    return out, pruned


@torch.no_grad()
def prune_without_inputs(
    layer: nn.Module, components: list[str], make_pruner: Callable[[], Pruner]
) -> dict[str, PrunedComponent]:
    """For pruners that ignore inputs (magnitude): no forward pass needed."""
    return {
        name: _prune_component(get_component(layer, name), make_pruner()) for name in components
    }
