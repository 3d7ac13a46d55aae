"""Perplexity of a causal LM on fixed token windows."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

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
        body, head = model.get_decoder(), model.get_output_embeddings()
        total_nll, total_tokens = 0.0, 0
        with progress_bar(transient=True) as bar:
            task = bar.add_task(description, total=windows.shape[0], status="")
            for batch in windows.split(batch_size):
                batch = batch.to(device)
                hidden = body(input_ids=batch, use_cache=False).last_hidden_state  # [b, seqlen, d]
                # One sequence at a time through the LM head: [seqlen, vocab] logits instead of
                # [b, seqlen, vocab] keeps peak memory small for large vocabularies.
                for h, ids in zip(hidden, batch, strict=True):
                    logits = head(h[:-1]).float()
                    total_nll += F.cross_entropy(logits, ids[1:], reduction="sum").item()
                    total_tokens += ids.numel() - 1
                status = f"ppl {math.exp(total_nll / total_tokens):.2f}"
                bar.update(task, advance=batch.shape[0], status=status)
    return math.exp(total_nll / total_tokens)
