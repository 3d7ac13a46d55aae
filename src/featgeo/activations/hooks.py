"""Where an SAE reads the model: hook names, the residual stream they point at, and hooks on the
decoder blocks that read (or replace) it there.

SAEs name their input in ``metadata.hook_name`` (SPEC §3, first bullet). featgeo reads the
residual stream *between* decoder blocks, under two names:

================================  ===========================================================
hook name                         what it is
================================  ===========================================================
``blocks.L.hook_resid_post``      output of block L (TransformerLens / SAELens)
``blocks.L.hook_resid_pre``       input of block L = output of block L-1; for L = 0 the hidden
                                  state entering block 0 (the embeddings)
``layers.L``, ``model.layers.L``  output of layer L (sparsify / Hugging Face module names),
                                  i.e. ``blocks.L.hook_resid_post``
================================  ===========================================================

Everything else (``hook_resid_mid``, ``hook_mlp_out``, ``attn.hook_z``, ``hook_embed``,
``layers.L.mlp``, ...) is not that residual stream and is refused with one line naming the hook.
A name without a layer number needs ``--layer``.

Both kinds are read with a hook on decoder block L itself: a forward hook on its output
(resid_post) or a forward *pre*-hook on its input (resid_pre). Block L's input is exactly the
tensor block L-1 returned (or the embeddings for L = 0), so ``blocks.L.hook_resid_pre`` equals
``blocks.{L-1}.hook_resid_post`` bit for bit, and equals ``hidden_states[L]`` of a Hugging Face
forward pass with ``output_hidden_states=True``. (``hidden_states[L + 1]`` is the output of
block L except for the last block, whose entry has the final norm applied.)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn

HookKind = Literal["resid_pre", "resid_post"]
HOOK_KINDS: tuple[str, ...] = get_args(HookKind)
"""The residual-stream positions featgeo reads (``--hook`` choices)."""

_TL_RESID = re.compile(r"^blocks\.(\d+)\.hook_(resid_pre|resid_post)$")
_TL_OTHER = re.compile(r"^blocks\.(\d+)\.(.+)$")
_MODULE = re.compile(r"^(?:[A-Za-z_]\w*\.)*?(?:layers|h)\.(\d+)$")
_MODULE_PART = re.compile(r"^(?:[A-Za-z_]\w*\.)*?(?:layers|h)\.(\d+)\.(.+)$")
_KIND_ONLY = re.compile(r"^(?:hook_)?(resid_pre|resid_post)$")
_NOT_RESIDUAL_NO_LAYER = re.compile(r"^(?:hook_\w+|ln_final\..*|unembed\..*|embed\..*)$")

_WHAT = {
    "hook_resid_mid": "the residual stream between attention and MLP",
    "hook_mlp_out": "the MLP output",
    "hook_attn_out": "the attention output",
    "attn.hook_z": "the attention heads' outputs before W_O",
    "mlp": "the MLP",
    "self_attn": "the attention module",
}


class HookNameError(ValueError):
    """An SAE hook name featgeo does not read (or cannot place without ``--layer``)."""


@dataclass(frozen=True)
class HookPoint:
    """A residual-stream position: the input (``resid_pre``) or output (``resid_post``) of
    decoder block ``layer``."""

    kind: HookKind
    """``resid_pre`` (input of the block) or ``resid_post`` (its output)."""
    layer: int
    """Decoder block index L."""

    def __post_init__(self) -> None:
        check_hook_kind(self.kind)
        if isinstance(self.layer, bool) or not isinstance(self.layer, int):
            raise TypeError(f"--layer must be an int, got {type(self.layer).__name__}")
        if self.layer < 0:
            raise ValueError(f"--layer {self.layer} is out of range; blocks are numbered from 0")

    @property
    def name(self) -> str:
        """The TransformerLens / SAELens hook name, e.g. ``blocks.1.hook_resid_pre``."""
        return f"blocks.{self.layer}.hook_{self.kind}"

    @property
    def n_blocks(self) -> int:
        """How many decoder blocks run before the stream exists: L (pre) or L + 1 (post)."""
        return self.layer + (self.kind == "resid_post")

    def describe(self) -> str:
        """E.g. ``blocks.1.hook_resid_pre: input of block 1 (= output of block 0)``."""
        if self.kind == "resid_post":
            return f"{self.name}: output of block {self.layer}"
        if self.layer == 0:
            return f"{self.name}: input of block 0 (= the embeddings)"
        return f"{self.name}: input of block {self.layer} (= output of block {self.layer - 1})"


def check_hook_kind(kind: str) -> str:
    """``kind`` if it is one of :data:`HOOK_KINDS`, else a ``ValueError`` listing them."""
    if kind not in HOOK_KINDS:
        raise ValueError(f"--hook must be one of {', '.join(HOOK_KINDS)}, got {kind!r}")
    return kind


def layer_in_hook_name(name: str) -> int | None:
    """The block number a hook name mentions (``blocks.L.*``, ``layers.L``, ``h.L.*``), if any."""
    for pattern in (_TL_OTHER, _MODULE, _MODULE_PART):
        match = pattern.match(name or "")
        if match:
            return int(match.group(1))
    return None


def parse_hook_name(name: str) -> tuple[HookKind | None, int | None]:
    """``(kind, layer)`` of a hook name; either may be ``None`` when the name does not say.

    Raises :class:`HookNameError` (a ``ValueError``) for a name that is not the residual
    stream between blocks, naming the hook and what featgeo reads instead.
    """
    name = (name or "").strip()
    if not name:
        return None, None
    match = _TL_RESID.match(name)
    if match:
        return match.group(2), int(match.group(1))  # type: ignore[return-value]
    match = _MODULE.match(name)
    if match:  # an HF / sparsify module name: that module's output
        return "resid_post", int(match.group(1))
    match = _KIND_ONLY.match(name)
    if match:
        return match.group(1), None  # type: ignore[return-value]
    match = _TL_OTHER.match(name) or _MODULE_PART.match(name)
    if match:
        part, block = match.group(2), match.group(1)
        _refuse(name, f"{_WHAT[part]} of block {block}" if part in _WHAT else "another activation")
    if _NOT_RESIDUAL_NO_LAYER.match(name):
        _refuse(name, "another activation")
    return None, None


def _refuse(name: str, what: str):
    raise HookNameError(
        f"SAE hook '{name}' is {what}, not the residual stream between blocks that featgeo "
        "reads (blocks.L.hook_resid_pre, blocks.L.hook_resid_post or layers.L); use an SAE "
        "trained on one of those"
    )


def resolve_hook(
    hook_name: str, *, layer: int | None = None, hook_layer: int | None = None
) -> HookPoint:
    """The residual-stream position an SAE reads.

    Args:
        hook_name: the SAE's ``metadata.hook_name``.
        layer: ``--layer``: replaces the block number of the hook name (the kind stays); needed
            when the name has none. A name that is not the residual stream stays refused.
        hook_layer: the SAE cfg's ``hook_layer``, used when the name has no number.

    Returns:
        A :class:`HookPoint`. A name that says pre or post nothing (e.g. empty) with ``layer``
        reads the output of that block (``resid_post``).
    """
    kind, named_layer = parse_hook_name(hook_name)
    chosen = layer if layer is not None else named_layer if named_layer is not None else hook_layer
    if chosen is None:
        shown = f"SAE hook '{hook_name}'" if hook_name else "the SAE's cfg.json (no hook_name)"
        raise HookNameError(
            f"{shown} names no layer; pass --layer L (the block whose output the SAE reads)"
        )
    if isinstance(chosen, bool) or not isinstance(chosen, int):
        raise TypeError(f"--layer must be an int, got {type(chosen).__name__} {chosen!r}")
    return HookPoint(kind or "resid_post", chosen)


def sae_hook_point(sae, layer: int | None = None) -> HookPoint:
    """:func:`resolve_hook` for an SAE (or an :class:`~featgeo.sae.config.SAEConfig`)."""
    cfg = getattr(sae, "cfg", sae)
    return resolve_hook(cfg.hook_name, layer=layer, hook_layer=cfg.layer)


@contextmanager
def residual_hook(
    model: nn.Module,
    point: HookPoint,
    edit: Callable[[torch.Tensor], torch.Tensor | None],
) -> Iterator[None]:
    """While open, every forward pass calls ``edit(h)`` on the residual stream at ``point``
    (``h``: [batch, seq, d_model]); a tensor it returns replaces the stream there, ``None``
    leaves it. ``edit`` may raise to end the forward pass (blocks after ``point`` never run)."""
    from featgeo.models.components import decoder_layers

    block = decoder_layers(model)[point.layer]
    if point.kind == "resid_post":

        def post_hook(_module, _args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            new = edit(hidden)
            if new is None:
                return None
            return (new, *output[1:]) if isinstance(output, tuple) else new

        handle = block.register_forward_hook(post_hook)
    else:

        def pre_hook(_module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            new = edit(hidden)
            if new is None:
                return None
            if args:
                return (new, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": new}

        handle = block.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


__all__ = [
    "HOOK_KINDS",
    "HookKind",
    "HookNameError",
    "HookPoint",
    "check_hook_kind",
    "layer_in_hook_name",
    "parse_hook_name",
    "residual_hook",
    "resolve_hook",
    "sae_hook_point",
]
