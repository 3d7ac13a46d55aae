"""A disk cache of dense residual-stream activations, the training data of an SAE.

Collecting activations is the slow part of SAE training on a CPU (the model runs ~1,800 tokens/s
up to layer 6 of the embedded model on 2 cores; the SAE trains faster than that), and a run of
several epochs, a second SAE size or a benchmark against another trainer all read the same
activations. So they are collected once per (model, corpus, split, layer, hook kind, context
size, token budget) into ``cache_dir()/activations/{key}``::

    header.json      model, layer, hook (resid_pre | resid_post), split, corpus_fingerprint,
                     context_size, max_tokens, n_tokens, d_model, complete
    acts.npy         float32 [n_tokens, d_model]   (memory-mapped when read; a bfloat16 /
                     float16 model's activations are stored as float32)
    token_ids.npy, doc_index.npy, chunk_index.npy, position.npy   int32 [n_tokens]

The build is resumable (see :mod:`featgeo.activations.sharded`). Collection is deterministic and a
budget cuts it exactly, so the first n rows of a bigger collection *are* the collection of n
tokens: :func:`find_activation_cache` reuses a finished cache whose budget covers the one asked
for (a smaller one never stands in for a bigger request). :func:`shuffled_batches` reads the
cache in seeded random order, epoch after epoch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from featgeo.activations.sharded import (
    FORMAT_VERSION,
    HEADER,
    TOKEN_ARRAYS,
    ShardedArrays,
    build_sharded,
    is_complete,
    same_header,
    token_columns,
)
from featgeo.cache import cache_dir
from featgeo.files import read_json


class ActivationCache(ShardedArrays):
    """Read access to a finished cache; use :meth:`open` or :func:`build_activation_cache`."""

    ARRAYS = ("acts", *TOKEN_ARRAYS)
    WHAT = "activation cache"
    acts: np.ndarray
    """float32 [n_tokens, d_model], memory-mapped."""

    @property
    def d_model(self) -> int:
        return int(self.acts.shape[1])

    def __repr__(self) -> str:
        return f"ActivationCache('{self.folder.name}', n_tokens={self.n_tokens}, d={self.d_model})"


def activation_cache_key(header: dict[str, Any]) -> str:
    """sha256 hex[:16] of the header (plus the format version)."""
    blob = json.dumps({"format_version": FORMAT_VERSION, "kind": "acts", **header}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def default_cache_dir(header: dict[str, Any]) -> Path:
    """``cache_dir()/activations/{activation_cache_key(header)}``."""
    return cache_dir() / "activations" / activation_cache_key(header)


def find_activation_cache(header: dict[str, Any]) -> ActivationCache | None:
    """A finished cache that holds the collection ``header`` asks for, or ``None``.

    That is the cache of ``header`` itself, else the finished cache with the smallest budget
    among those whose header equals ``header`` except ``max_tokens`` and whose ``max_tokens``
    covers it (``None`` = the whole split, or a number >= ``header["max_tokens"]``). Use its
    first ``min(header["max_tokens"], n_tokens)`` rows: they are exactly what collecting with
    ``header`` would store.
    """
    exact = default_cache_dir(header)
    if is_complete(exact, header):
        return ActivationCache.open(exact)
    wanted = header.get("max_tokens")
    rest = {k: v for k, v in header.items() if k != "max_tokens"}
    best: tuple[float, ActivationCache] | None = None
    root = cache_dir() / "activations"
    for path in sorted(root.glob(f"*/{HEADER}")) if root.is_dir() else ():
        if path.parent.name.startswith("."):  # an unfinished build (files.partial_dir)
            continue
        try:
            stored = read_json(path)
        except (OSError, ValueError):  # a folder being written or a damaged one: not a match
            continue
        budget = stored.get("max_tokens")
        covers = budget is None or (wanted is not None and budget >= wanted)
        if not (covers and stored.get("complete") is True and same_header(stored, rest)):
            continue
        size = float("inf") if budget is None else budget
        if best is None or size < best[0]:
            best = (size, ActivationCache.open(path.parent))
    return None if best is None else best[1]


def _acts_piece(batch, info: dict[str, Any]) -> dict[str, np.ndarray]:
    acts = batch.acts.detach().to("cpu", torch.float32).numpy()  # [n, d_model]
    if info.get("d_model") is None:
        info["d_model"] = int(acts.shape[1])
    return {"acts": acts, **token_columns(batch)}


def build_activation_cache(
    folder: str | Path,
    batches: Iterable[Any] | Callable[[int], Iterable[Any]],
    header: dict[str, Any],
    *,
    progress: bool = True,
    shard_tokens: int = 65_536,
) -> ActivationCache:
    """Store every batch's activations; a finished cache with an equal header is reused.

    ``batches`` are :class:`~featgeo.activations.collect.ActivationBatch` es from a deterministic
    iterator, or a function ``skip -> iterator`` that leaves out the first ``skip`` batches
    (``iter_activation_batches(..., skip_batches=skip)``), so a resumed build neither stores
    nor recomputes them.
    """
    return build_sharded(
        ActivationCache,
        Path(folder),
        batches,
        _acts_piece,
        header,
        info={"d_model": None},
        description="collecting activations",
        progress=progress,
        shard_tokens=shard_tokens,
    )


def shuffled_batches(acts: np.ndarray, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless float32 batches [batch_size, d] of ``acts`` rows: every epoch is a new seeded
    permutation, cut into whole batches (the last ``n % batch_size`` rows of each epoch's
    order are left out of that epoch). Deterministic for a given seed."""
    n = acts.shape[0]
    if n < batch_size:
        raise ValueError(
            f"only {n} activation rows for a batch size of {batch_size}; pass a larger "
            "--tokens / --activation-tokens, or a corpus whose split has more text, or lower "
            "--batch-size"
        )
    epoch = 0
    while True:
        order = np.random.default_rng([seed, epoch]).permutation(n)
        for start in range(0, n - batch_size + 1, batch_size):
            # Sorted indices read the memory map front to back; row order within a batch does
            # not matter to the loss.
            rows = np.sort(order[start : start + batch_size])
            yield torch.from_numpy(np.ascontiguousarray(acts[rows], dtype=np.float32))
        epoch += 1


__all__ = [
    "ActivationCache",
    "activation_cache_key",
    "build_activation_cache",
    "default_cache_dir",
    "find_activation_cache",
    "shuffled_batches",
]
