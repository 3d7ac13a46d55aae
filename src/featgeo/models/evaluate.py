"""``featgeo ppl``: load a model and a corpus split, return its perplexity."""

from __future__ import annotations

import time
from typing import NamedTuple

from featgeo.corpus.windows import eval_windows, split_tokens
from featgeo.models.loading import load_model, load_tokenizer, resolve_device
from featgeo.models.perplexity import perplexity


class PerplexityResult(NamedTuple):
    perplexity: float
    windows: int
    tokens: int
    seconds: float


def evaluate_perplexity(
    model: str = "embedded",
    corpus: str = "embedded",
    split: str = "eval",
    seqlen: int = 512,
    max_windows: int | None = 32,
    device: str = "auto",
) -> PerplexityResult:
    from featgeo.corpus import load_corpus

    if seqlen < 2:
        raise ValueError(f"--seqlen must be >= 2, got {seqlen}")
    if max_windows is not None and max_windows < 1:
        raise ValueError(f"--eval-windows must be >= 1 (or 0 for all), got {max_windows}")
    torch_device = resolve_device(device)
    lm = load_model(model, device=torch_device)
    windows = eval_windows(
        split_tokens(load_corpus(corpus), split, load_tokenizer(model), option="--split"),
        seqlen,
        max_windows,
    )
    start = time.perf_counter()
    value = perplexity(lm, windows)
    return PerplexityResult(value, windows.shape[0], windows.numel(), time.perf_counter() - start)
