"""Perplexity of a causal LM on fixed token windows."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from featgeo.models.components import decoder_layers, decoder_layers_path
from featgeo.progress import progress_bar


def perplexity(
    model: nn.Module,
    windows: torch.Tensor,
    *,
    batch_size: int = 4,
    description: str = "perplexity",
) -> float:
    """exp(mean next-token NLL) over every predicted position of ``windows`` [n, seqlen].

    Each window is scored independently (no context carried across windows), as in the
    WikiText-2 evaluation of the Wanda and SparseGPT papers.
    """
    # torch.no_grad as a block, not a decorator: mutmut does not mutate decorated functions.
    with torch.no_grad():
        device = next(model.parameters()).device
        body = model.get_decoder()
        return _score(
            model,
            windows,
            lambda batch, _start: body(input_ids=batch.to(device), use_cache=False),
            batch_size,
            description,
        )


def perplexity_of_last_layer(
    model: nn.Module,
    windows: torch.Tensor,
    last_hidden: torch.Tensor,
    *,
    batch_size: int = 4,
    description: str = "perplexity",
    tuple_output: bool = False,
) -> float:
    """:func:`perplexity` from the outputs of the model's last decoder layer.

    last_hidden: [n, seqlen, hidden], what the last decoder layer returned for ``windows``
    (computed layer by layer, e.g. while pruning). The model's own code applies what follows
    the layers (final norm; the LM head as in :func:`perplexity`), so both functions give the
    same number for the same hidden states. The decoder layers themselves are not needed
    (they may be on the ``meta`` device).
    """
    with torch.no_grad():
        device = last_hidden.device
        parent_path, _, attr = decoder_layers_path(model).rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        layers = decoder_layers(model)
        injector = _LastHidden(layers[-1], tuple_output)
        setattr(parent, attr, nn.ModuleList([injector]))
        body = model.get_decoder()
        try:

            def forward(batch, start):
                injector.hidden = last_hidden[start : start + batch.shape[0]]
                return body(input_ids=batch.to(device), use_cache=False)

            return _score(model, windows, forward, batch_size, description)
        finally:
            setattr(parent, attr, layers)


class _LastHidden(nn.Module):
    """Stands in for the whole decoder stack: returns the precomputed last-layer output."""

    def __init__(self, last: nn.Module, tuple_output: bool):
        super().__init__()
        self.hidden: torch.Tensor | None = None
        self.tuple_output = tuple_output
        # Models that pick a mask per layer read these (Gemma-2/3, Qwen2 sliding windows).
        for attr in ("attention_type", "layer_idx", "is_sliding"):
            if hasattr(last, attr):
                setattr(self, attr, getattr(last, attr))

    def forward(self, hidden_states, *args, **kwargs):
        return (self.hidden,) if self.tuple_output else self.hidden


def _score(model, windows, forward, batch_size: int, description: str) -> float:
    head = model.get_output_embeddings()
    total_nll, total_tokens = 0.0, 0
    with progress_bar(transient=True) as bar:
        task = bar.add_task(description, total=windows.shape[0], status="")
        for start in range(0, windows.shape[0], batch_size):
            batch = windows[start : start + batch_size]
            hidden = forward(batch, start).last_hidden_state  # [b, seqlen, d]
            ids = batch.to(hidden.device)
            # One sequence at a time through the LM head: [seqlen, vocab] logits instead of
            # [b, seqlen, vocab] keeps peak memory small for large vocabularies.
            for h, seq in zip(hidden, ids, strict=True):
                logits = head(h[:-1]).float()
                total_nll += F.cross_entropy(logits, seq[1:], reduction="sum").item()
                total_tokens += seq.numel() - 1
            status = f"ppl {math.exp(total_nll / total_tokens):.2f}"
            bar.update(task, advance=batch.shape[0], status=status)
    return math.exp(total_nll / total_tokens)
