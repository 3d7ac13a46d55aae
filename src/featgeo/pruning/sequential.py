"""Layer-by-layer pruning of a decoder stack (SPEC §1).

The calibration batch goes through the model one decoder layer at a time. Inside a layer each
selected linear component is pruned by a forward pre-hook the moment its input arrives, so the
input it is fitted on already reflects the pruned components before it (SparseGPT's "true
sequential" order: q/k/v, then o, then gate/up, then down), and the layer's output, which is
the next layer's input, comes from the fully pruned layer. One forward pass per layer does it
all. Components that read the same tensor (q/k/v; gate/up) share one fitted pruner.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from featgeo.models.components import decoder_layers, get_component
from featgeo.pruning.base import Pruner


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
class PrunedLayer:
    index: int
    weights: dict[str, torch.Tensor]
    """Component name -> pruned weight (on the compute device)."""


@torch.no_grad()
def prune_layer(
    layer: nn.Module,
    inputs: LayerInputs,
    components: list[str],
    make_pruner: Callable[[], Pruner],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Prune ``components`` of one layer in place during its forward pass.

    Returns the layer's output hidden states and the pruned weights by component name.
    """
    pruned: dict[str, torch.Tensor] = {}
    # Inputs seen so far with the pruner fitted on each. Holding the tensor keeps its memory
    # from being reused by a later input, so identity really means "the same input".
    fitted: list[tuple[torch.Tensor, Pruner]] = []

    def hook_for(name: str, linear: nn.Linear):
        def prune_on_input(_module, args):
            x = args[0]
            pruner = next((p for seen, p in fitted if seen is x), None)
            if pruner is None:
                pruner = make_pruner()
                if pruner.needs_inputs:
                    pruner.fit(x)
                fitted.append((x, pruner))
            linear.weight.copy_(pruner.prune(linear.weight))
            pruned[name] = linear.weight
            handles.pop(name).remove()  # prune once, on the full calibration batch

        return prune_on_input

    handles = {}
    for name in components:
        linear = get_component(layer, name)
        handles[name] = linear.register_forward_pre_hook(hook_for(name, linear))
    try:
        out = run_layer(layer, inputs)
    finally:
        for handle in handles.values():
            handle.remove()
    missing = [c for c in components if c not in pruned]
    assert not missing, f"components never called during the forward pass: {missing}"
    return out, pruned


@torch.no_grad()
def prune_without_inputs(
    layer: nn.Module, components: list[str], make_pruner: Callable[[], Pruner]
) -> dict[str, torch.Tensor]:
    """For pruners that ignore inputs (magnitude): no forward pass needed."""
    pruned = {}
    for name in components:
        linear = get_component(layer, name)
        linear.weight.copy_(make_pruner().prune(linear.weight))
        pruned[name] = linear.weight
    return pruned
