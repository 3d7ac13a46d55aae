"""Residual-stream activations of a decoder block over a corpus split (SPEC §3, first bullet).

Each document is tokenized on its own and cut into non-overlapping windows ("chunks") of
``context_size`` tokens. **Decision**: nothing (no BOS) is prepended; instead position 0 of every
chunk is dropped from the output, as the SPEC asks, because the first position of a window acts
as an attention sink with atypically large norm whether or not it is a BOS token. Chunks shorter
than 2 tokens therefore carry nothing and are skipped.

The activations are the residual stream at a :class:`~featgeo.activations.hooks.HookPoint`: the
output of block ``layer`` (``hook="resid_post"``, the default) or its input (``hook="resid_pre"``,
the output of block ``layer - 1``, the embeddings for layer 0). The forward pass stops right there
(a hook stores the tensor and raises), so later blocks and the LM head never run: on the embedded
model at layer 6 that is about 7x faster than a full forward pass (SPEC §0).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from featgeo.activations.hooks import HookKind, HookPoint, check_hook_kind, residual_hook
from featgeo.errors import InputError
from featgeo.models.components import decoder_layers

log = logging.getLogger(__name__)


class _StopForward(Exception):
    """Raised by the capture hook to end the forward pass once the wanted block has run."""


@dataclass(frozen=True)
class Chunk:
    """One non-overlapping window of a tokenized document."""

    doc_index: int
    """Index of the document within the split (``corpus.split(name)`` order)."""
    chunk_index: int
    """Index of the window within its document (0, 1, ...)."""
    token_ids: torch.Tensor
    """[n] int64 token ids, 2 <= n <= context_size."""


@dataclass
class ActivationBatch:
    """Activations of one batch of chunks, position 0 of every chunk dropped, padding removed.

    All arrays are aligned row by row: row ``i`` is token ``position[i]`` of chunk
    ``chunk_index[i]`` of document ``doc_index[i]``.
    """

    acts: torch.Tensor
    """[n_tokens, d_model] residual stream at the hook point (on the model's device, in the
    model's dtype: float32 for models from :func:`featgeo.models.load_model`)."""
    token_ids: np.ndarray
    """[n_tokens] int32."""
    doc_index: np.ndarray
    """[n_tokens] int32."""
    chunk_index: np.ndarray
    """[n_tokens] int32."""
    position: np.ndarray
    """[n_tokens] int32 position in the chunk, starting at 1."""

    @property
    def n_tokens(self) -> int:
        return int(self.acts.shape[0])


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_layer(model: nn.Module, layer: int) -> int:
    """Validate a block index against the model; returns it as an int."""
    n_layers = len(decoder_layers(model))
    if isinstance(layer, bool) or not isinstance(layer, int | np.integer):
        raise TypeError(f"--layer must be an int, got {type(layer).__name__} {layer!r}")
    if not 0 <= layer < n_layers:
        raise ValueError(f"--layer {layer} is out of range; this model has layers 0-{n_layers - 1}")
    return int(layer)


def check_context_size(model: nn.Module, context_size: int) -> int:
    """Validate a chunk length against the model's position limit; returns it as an int."""
    context_size = _check_int("--context-size", context_size, 2)
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if limit is not None and context_size > limit:
        raise ValueError(
            f"--context-size {context_size} is longer than the model's "
            f"max_position_embeddings {limit}; use --context-size {limit} or less"
        )
    return context_size


def document_chunks(corpus, split: str, tokenizer, context_size: int) -> Iterator[Chunk]:
    """Non-overlapping windows of ``context_size`` tokens of every document of ``split``.

    Each document is tokenized alone without special tokens; its last, shorter window is kept
    if it has at least 2 tokens (position 0 is dropped downstream, so 1 token carries nothing).
    The split is read (and an empty split reported) at call time; tokenizing is lazy.
    """
    context_size = _check_int("--context-size", context_size, 2)
    docs = corpus.split(split, option="--split")
    return _chunks(docs, tokenizer, context_size)


def _chunks(docs, tokenizer, context_size: int) -> Iterator[Chunk]:
    for doc_index, doc in enumerate(docs):
        ids = tokenizer(doc.text, add_special_tokens=False, return_attention_mask=False)
        tokens = torch.tensor(ids["input_ids"], dtype=torch.long)  # [n_doc_tokens]
        for chunk_index, start in enumerate(range(0, tokens.numel(), context_size)):
            window = tokens[start : start + context_size]
            if window.numel() >= 2:
                yield Chunk(doc_index, chunk_index, window)


@torch.no_grad()
def residual_activations(
    model: nn.Module,
    input_ids: torch.Tensor,
    layer: int,
    attention_mask: torch.Tensor | None = None,
    *,
    hook: HookKind = "resid_post",
) -> torch.Tensor:
    """The residual stream at block ``layer``: [b, s] ids -> [b, s, d_model].

    ``hook="resid_post"``: the output of block ``layer``, ``hidden_states[layer + 1]`` of a full
    forward pass with ``output_hidden_states`` (except for the last block, whose entry there has
    the final norm applied); blocks ``0..layer`` run. ``hook="resid_pre"``: the input of block
    ``layer`` (= output of block ``layer - 1``; the embeddings for 0), ``hidden_states[layer]``;
    blocks ``0..layer-1`` run.
    """
    layer = check_layer(model, layer)
    point = HookPoint(check_hook_kind(hook), layer)
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be 2-D [batch, seq], got shape {tuple(input_ids.shape)}")
    captured: dict[str, torch.Tensor] = {}

    def grab(hidden: torch.Tensor):
        captured["hidden"] = hidden
        raise _StopForward

    device = next(model.parameters()).device
    try:
        with residual_hook(model, point, grab):
            model(
                input_ids=input_ids.to(device),
                attention_mask=None if attention_mask is None else attention_mask.to(device),
                use_cache=False,
            )
    except _StopForward:
        pass
    assert "hidden" in captured, f"{point.name} was never reached"
    return captured["hidden"]


def iter_activation_batches(
    model: nn.Module,
    tokenizer,
    corpus,
    split: str,
    layer: int,
    *,
    context_size: int = 256,
    batch_size: int = 8,
    max_tokens: int | None = None,
    device: str | torch.device | None = None,
    skip_batches: int = 0,
    hook: HookKind = "resid_post",
) -> Iterator[ActivationBatch]:
    """Stream :class:`ActivationBatch` es over a corpus split, in a deterministic order.

    ``hook`` picks the output (``resid_post``) or the input (``resid_pre``) of block ``layer``
    (see :func:`residual_activations`).

    Chunks (see :func:`document_chunks`) are taken ``batch_size`` at a time in document order;
    shorter chunks are right-padded and masked, and padded positions are never emitted. With
    ``max_tokens`` the stream stops after exactly that many emitted tokens (the last batch is
    cut). Arguments are validated, and the split read, at call time. ``device`` defaults to the
    model's; if given, the model must already be there. ``skip_batches`` leaves out the first
    batches without running the model on them (a resumed build continues where it stopped).
    """
    layer = check_layer(model, layer)
    hook = check_hook_kind(hook)
    # Library names, not options: each command checks its own option (sae eval --tokens /
    # --batch-size, --store-tokens, sae train --activation-tokens) before it gets here, and
    # sae store / cluster / train collect with a fixed batch size.
    batch_size = _check_int("batch_size", batch_size, 1)
    if max_tokens is not None:
        max_tokens = _check_int("max_tokens", max_tokens, 1)
    context_size = check_context_size(model, context_size)
    model_device = next(model.parameters()).device
    if device is not None and torch.device(device).type != model_device.type:
        raise ValueError(
            f"device={str(device)!r} but the model is on {model_device}; "
            "load the model on that device (load_model(..., device=...))"
        )
    skip_batches = _check_int("skip_batches", skip_batches, 0)
    chunks = document_chunks(corpus, split, tokenizer, context_size)
    point = HookPoint(hook, layer)
    return _batches(model, chunks, point, batch_size, max_tokens, split, skip_batches)


def resumable_batches(
    model: nn.Module, tokenizer, corpus, split: str, layer: int, **kwargs
) -> Callable[[int], Iterator[ActivationBatch]]:
    """``skip -> iter_activation_batches(..., skip_batches=skip)``, for builds that resume
    (:mod:`featgeo.activations.sharded`). The arguments are checked now, before anything is
    written."""
    iter_activation_batches(model, tokenizer, corpus, split, layer, **kwargs)

    def batches(skip: int) -> Iterator[ActivationBatch]:
        return iter_activation_batches(
            model, tokenizer, corpus, split, layer, skip_batches=skip, **kwargs
        )

    return batches


def _batches(
    model: nn.Module,
    chunks: Iterator[Chunk],
    point: HookPoint,
    batch_size: int,
    max_tokens: int | None,
    split: str,
    skip_batches: int = 0,
) -> Iterator[ActivationBatch]:
    emitted = 0
    n_batches = 0
    pending: list[Chunk] = []
    pending_tokens = 0  # tokens the pending chunks will emit (position 0 dropped)
    for chunk in chunks:
        pending.append(chunk)
        pending_tokens += chunk.token_ids.numel() - 1
        # Run early once max_tokens is covered, so no chunk is computed only to be cut away.
        full = max_tokens is not None and emitted + pending_tokens >= max_tokens
        if len(pending) < batch_size and not full:
            continue
        n_batches += 1
        if n_batches <= skip_batches:  # the same batch boundaries, without the forward pass
            emitted = emitted + pending_tokens if not full else max_tokens
            pending, pending_tokens = [], 0
            if full:
                return
            continue
        batch, emitted, done = _cut(_run_batch(model, pending, point), emitted, max_tokens)
        pending, pending_tokens = [], 0
        yield batch
        if done:
            return
    if pending:
        n_batches += 1
        if n_batches <= skip_batches:
            emitted += pending_tokens
        else:
            batch, emitted, _ = _cut(_run_batch(model, pending, point), emitted, max_tokens)
            yield batch
    if emitted == 0:
        raise InputError(f"split {split!r} has no document of 2 or more tokens; nothing to collect")


def _cut(batch: ActivationBatch, emitted: int, max_tokens: int | None):
    """Trim ``batch`` so the running total does not pass ``max_tokens``."""
    if max_tokens is None or emitted + batch.n_tokens < max_tokens:
        return batch, emitted + batch.n_tokens, False
    keep = max_tokens - emitted
    cut = ActivationBatch(
        batch.acts[:keep],
        batch.token_ids[:keep],
        batch.doc_index[:keep],
        batch.chunk_index[:keep],
        batch.position[:keep],
    )
    return cut, max_tokens, True


def pad_chunks(chunks: list[Chunk]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids [b, seq] (int64) and the mask of real tokens [b, seq] (bool)."""
    lengths = torch.tensor([c.token_ids.numel() for c in chunks])
    seq = int(lengths.max())
    ids = torch.zeros(len(chunks), seq, dtype=torch.long)  # pad id is irrelevant: masked out
    for row, chunk in enumerate(chunks):
        ids[row, : chunk.token_ids.numel()] = chunk.token_ids
    valid = torch.arange(seq)[None, :] < lengths[:, None]  # [b, seq]
    return ids, valid


def _run_batch(model: nn.Module, chunks: list[Chunk], point: HookPoint) -> ActivationBatch:
    ids, valid = pad_chunks(chunks)
    mask = None if bool(valid.all()) else valid.long()
    hidden = residual_activations(  # [b, seq, d]
        model, ids, point.layer, attention_mask=mask, hook=point.kind
    )
    # Drop position 0 (attention sink) and padding; keep row-major order (chunk, position).
    keep = valid.clone()
    keep[:, 0] = False
    rows, cols = keep.nonzero(as_tuple=True)  # [n_tokens] each
    acts = hidden[rows.to(hidden.device), cols.to(hidden.device)]  # [n_tokens, d]
    doc = torch.tensor([c.doc_index for c in chunks], dtype=torch.int32)
    chunk_idx = torch.tensor([c.chunk_index for c in chunks], dtype=torch.int32)
    return ActivationBatch(
        acts=acts,
        token_ids=ids[rows, cols].to(torch.int32).numpy(),
        doc_index=doc[rows].numpy(),
        chunk_index=chunk_idx[rows].numpy(),
        position=cols.to(torch.int32).numpy(),
    )
