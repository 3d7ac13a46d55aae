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

Micro-batches (``LayerInputs.batch_size``): the windows go through a layer a few at a time and
the statistics are accumulated over all of them before a group of components is pruned. Under
``sequential`` that takes one pass per group, each stopped at the group's input
(:func:`_prune_layer_staged`, docs/pruning.md). Every pruner accumulates one window at a time,
so the statistics, and thus the masks, do not depend on the micro-batch size.
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
    to every layer (rotary position embeddings, causal mask, ...).

    With ``batch_size`` set, the windows go through a layer in micro-batches of that many
    windows (the last one may be smaller); each micro-batch's output overwrites its input in
    ``hidden``, so a layer pass needs one buffer of hidden states, not two.
    """

    hidden: torch.Tensor  # [samples, seqlen, hidden]
    kwargs: dict = field(default_factory=dict)
    """Layer keyword arguments for a micro-batch of ``batch_size`` windows (all windows when
    ``batch_size`` is None)."""
    batch_size: int | None = None
    kwargs_by_size: dict[int, dict] = field(default_factory=dict)
    """Keyword arguments per micro-batch size (a causal mask can have a batch dimension)."""
    tuple_output: bool = False
    """Whether the layers return a tuple (older transformers) rather than the hidden states."""

    def micro_batches(self) -> list[tuple[slice, dict]]:
        """(windows, layer kwargs) of every micro-batch, in order."""
        n = self.hidden.shape[0]
        size = min(self.batch_size or n, n)
        return [
            (slice(start, min(start + size, n)), self._kwargs(min(start + size, n) - start))
            for start in range(0, n, size)
        ]

    def _kwargs(self, size: int) -> dict:
        return self.kwargs_by_size.get(size, self.kwargs)


@torch.no_grad()
def capture_layer0_inputs(
    model: nn.Module, input_ids: torch.Tensor, batch_size: int | None = None
) -> LayerInputs:
    """Run the embedding only and catch what the first decoder layer would receive.

    input_ids: [samples, seqlen]; ``batch_size``: windows per micro-batch (None: all at once).
    Only the embedding (and whatever the model computes before its first layer) has to be
    loaded: the forward pass stops before layer 0 touches its weights.
    """
    n = input_ids.shape[0]
    size = min(batch_size or n, n)
    hidden = None
    kwargs_by_size: dict[int, dict] = {}
    for start in range(0, n, size):
        part, kwargs = _capture(model, input_ids[start : start + size])
        if size == n:
            hidden = part
        else:
            if hidden is None:
                hidden = part.new_empty((n, *part.shape[1:]))
            hidden[start : start + part.shape[0]] = part
        kwargs_by_size.setdefault(part.shape[0], kwargs)
    return LayerInputs(hidden, kwargs_by_size[size], batch_size, kwargs_by_size)


def _capture(model: nn.Module, input_ids: torch.Tensor) -> tuple[torch.Tensor, dict]:
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
    return captured["hidden"], captured["kwargs"]


def _call(layer: nn.Module, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
    out = layer(hidden, **kwargs)
    return out[0] if isinstance(out, tuple) else out  # older transformers return tuples


def run_layer(layer: nn.Module, inputs: LayerInputs) -> torch.Tensor:
    """The layer's output for every window: a new tensor for a single batch; with micro-batches
    written over ``inputs.hidden`` (which is returned)."""
    with torch.no_grad():  # a block, not a decorator: mutmut skips decorated functions
        batches = inputs.micro_batches()
        if len(batches) == 1:
            out = layer(inputs.hidden, **batches[0][1])
            inputs.tuple_output = isinstance(out, tuple)
            return out[0] if inputs.tuple_output else out
        for windows, kwargs in batches:
            out = layer(inputs.hidden[windows], **kwargs)
            inputs.tuple_output = isinstance(out, tuple)
            inputs.hidden[windows] = out[0] if inputs.tuple_output else out
        return inputs.hidden


def _fit_windows(pruner: Pruner, x: torch.Tensor) -> None:
    """Accumulate ``x`` [samples, seqlen, in] one window at a time, so that the statistics
    are summed in the same order whatever the micro-batch size."""
    if not pruner.needs_inputs:
        return
    for window in x if x.ndim == 3 else (x,):
        pruner.partial_fit(window)


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
    (same shape; the next layer's input) and the pruned components by name. With micro-batches
    (``inputs.batch_size``) the statistics of each group of components are accumulated over
    every micro-batch before the group is pruned, so the result is that of one full batch.
    """
    if order not in ORDERS:
        raise ValueError(f"--order must be one of {', '.join(ORDERS)}, got '{order}'")
    if len(inputs.micro_batches()) > 1:
        return _prune_layer_staged(layer, inputs, components, make_pruner, order)
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
                _fit_windows(pruner, x)
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
    _check_called(components, pruner_of)
    if order == "reference":  # the pass above read the dense layer; prune, then recompute
        for name in components:
            pruned[name] = _prune_component(linears[name], pruner_of[name])
        out = run_layer(layer, inputs)
    return out, pruned


def _check_called(components: list[str], seen) -> None:
    missing = [c for c in components if c not in seen]
    if missing:
        raise RuntimeError(f"components never called during the forward pass: {missing}")


def _input_groups(
    layer: nn.Module, linears: dict[str, nn.Linear], inputs: LayerInputs
) -> list[list[str]]:
    """The components grouped by the input tensor they read (q/k/v; gate/up), groups in the
    order the layer calls them, from a forward pass of the first micro-batch."""
    calls: list[tuple[str, torch.Tensor]] = []

    def hook_for(name: str):
        def on_input(_module, args):
            calls.append((name, args[0]))
            if len(calls) == len(linears):
                raise _StopForward

        return on_input

    hooks = {linears[n]: hook_for(n) for n in linears}
    _run_hooked(layer, hooks, inputs, inputs.micro_batches()[:1])
    _check_called(list(linears), dict(calls))
    groups: list[tuple[torch.Tensor, list[str]]] = []
    for name, x in calls:
        group = next((names for seen, names in groups if seen is x), None)
        if group is None:
            groups.append((x, [name]))
        elif name not in group:
            group.append(name)
    return [names for _, names in groups]


def _run_hooked(layer: nn.Module, hooks: dict, inputs: LayerInputs, batches) -> None:
    """Run ``batches`` of ``inputs`` through ``layer`` with forward pre-hooks (module -> hook)
    installed; a hook may end a pass early by raising _StopForward. Outputs are discarded."""
    handles = [module.register_forward_pre_hook(hook) for module, hook in hooks.items()]
    try:
        for windows, kwargs in batches:
            try:
                _call(layer, inputs.hidden[windows], kwargs)
            except _StopForward:
                pass
    finally:
        for handle in handles:
            handle.remove()


def _prune_layer_staged(
    layer: nn.Module,
    inputs: LayerInputs,
    components: list[str],
    make_pruner: Callable[[], Pruner],
    order: Order,
) -> tuple[torch.Tensor, dict[str, PrunedComponent]]:
    """:func:`prune_layer` over micro-batches. ``sequential``: for each input group in call
    order, every micro-batch is run up to the group's input (the forward stops there), the
    group's statistics accumulated, and the group pruned before the next group is fitted.
    ``reference``: one pass of every micro-batch through the dense layer fits all groups."""
    linears = {name: get_component(layer, name) for name in components}
    groups = _input_groups(layer, linears, inputs)
    pruners = [make_pruner() for _ in groups]
    pruned: dict[str, PrunedComponent] = {}

    def fit(pruner: Pruner, stop: bool):
        def on_input(_module, args):
            _fit_windows(pruner, args[0])
            if stop:
                raise _StopForward

        return on_input

    def calibrate(hooks: list[tuple[str, Pruner]], stop: bool) -> None:
        hooked = {linears[n]: fit(p, stop) for n, p in hooks}
        _run_hooked(layer, hooked, inputs, inputs.micro_batches())

    needs_inputs = pruners[0].needs_inputs
    if order == "reference" and needs_inputs:
        calibrate([(g[0], p) for g, p in zip(groups, pruners, strict=True)], stop=False)
    for group, pruner in zip(groups, pruners, strict=True):
        if order == "sequential" and needs_inputs:
            calibrate([(group[0], pruner)], stop=True)
        for name in group:
            pruned[name] = _prune_component(linears[name], pruner)
    return run_layer(layer, inputs), {name: pruned[name] for name in components}


@torch.no_grad()
def prune_without_inputs(
    layer: nn.Module, components: list[str], make_pruner: Callable[[], Pruner]
) -> dict[str, PrunedComponent]:
    """For pruners that ignore inputs (magnitude): no forward pass needed."""
    return {
        name: _prune_component(get_component(layer, name), make_pruner()) for name in components
    }
