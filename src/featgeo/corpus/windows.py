"""Token windows cut from a corpus split: random ones for calibration, consecutive ones for
perplexity (the WikiText-2 protocol of the Wanda and SparseGPT papers: join the split's text,
tokenize once, cut non-overlapping windows)."""

from __future__ import annotations

import torch

from featgeo.errors import InputError

DOC_SEPARATOR = "\n\n"


def split_tokens(corpus, split: str, tokenizer, *, option: str | None = None) -> torch.Tensor:
    """All documents of ``split`` joined by a blank line and tokenized: [n_tokens] int64.

    ``option``: the command-line option that chose ``split``, for the empty-split error.
    """
    docs = corpus.split(split, option=option)
    text = DOC_SEPARATOR.join(d.text for d in docs)
    if not text.strip():
        raise InputError(f"corpus '{corpus.name}' has no text in split '{split}'")
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def _check_length(tokens: torch.Tensor, seqlen: int, what: str) -> None:
    if tokens.numel() < seqlen + 1:
        raise InputError(
            f"the {what} text has {tokens.numel()} tokens, fewer than one window of "
            f"--seqlen {seqlen}; use a smaller --seqlen or a bigger corpus"
        )


def calibration_windows(
    tokens: torch.Tensor, n_samples: int, seqlen: int, seed: int
) -> torch.Tensor:
    """``n_samples`` windows of ``seqlen`` tokens at seeded random offsets: [n_samples, seqlen]."""
    _check_length(tokens, seqlen, "calibration")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, tokens.numel() - seqlen, (n_samples,), generator=gen)
    return torch.stack([tokens[s : s + seqlen] for s in starts.tolist()])


def eval_windows(tokens: torch.Tensor, seqlen: int, max_windows: int | None = None) -> torch.Tensor:
    """Consecutive non-overlapping windows from the start: [min(n_full, max_windows), seqlen]."""
    _check_length(tokens, seqlen, "evaluation")
    n = tokens.numel() // seqlen
    if max_windows is not None:
        n = min(n, max_windows)
    return tokens[: n * seqlen].reshape(n, seqlen)
