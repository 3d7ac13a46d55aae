"""Per-split sizes of a corpus: documents, characters and (with a tokenizer) tokens."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from featgeo.corpus.documents import Corpus

TOTAL = "total"


class SplitInfo(NamedTuple):
    """Size of one split."""

    split: str
    documents: int
    characters: int
    tokens: int | None
    """Tokens without special tokens; ``None`` when no tokenizer was given."""


def corpus_info(corpus: Corpus, tokenizer: Any = None, *, batch_size: int = 32) -> list[SplitInfo]:
    """Documents, characters and tokens of every split (empty splits included).

    Parameters
    ----------
    corpus : Corpus
    tokenizer : transformers tokenizer, optional
        Called as ``tokenizer(texts, add_special_tokens=False)``; tokens are not counted
        without one.
    batch_size : int
        Documents per tokenizer call.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
    rows = []
    for split in corpus.splits:
        docs = corpus.split(split, allow_empty=True)
        texts = [doc.text for doc in docs]
        tokens = count_tokens(texts, tokenizer, batch_size=batch_size) if tokenizer else None
        rows.append(SplitInfo(split, len(docs), sum(map(len, texts)), tokens))
    return rows


def count_tokens(texts: Sequence[str], tokenizer: Any, *, batch_size: int = 32) -> int:
    """Total tokens of ``texts`` (no special tokens), tokenized ``batch_size`` at a time."""
    total = 0
    for start in range(0, len(texts), batch_size):
        # verbose=False: whole chapters exceed the model's context, which is fine for counting
        batch = tokenizer(
            list(texts[start : start + batch_size]),
            add_special_tokens=False,
            return_attention_mask=False,
            verbose=False,
        )
        total += sum(len(ids) for ids in batch["input_ids"])
    return total


def totals(rows: Sequence[SplitInfo]) -> SplitInfo:
    """One row summing ``rows``; tokens stay ``None`` if any row has none."""
    tokens = [row.tokens for row in rows]
    return SplitInfo(
        TOTAL,
        sum(row.documents for row in rows),
        sum(row.characters for row in rows),
        None if any(t is None for t in tokens) else sum(t for t in tokens if t is not None),
    )
