"""Evaluate an SAE on held-out text: reconstruction, sparsity and the language-model loss.

Per token (position 0 of every chunk dropped, as in training):

- ``fve``: fraction of variance explained, 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over
  all evaluated tokens (mean taken over those tokens);
- ``l0``: mean number of non-zero latents;
- ``dead_fraction``: latents that never fire on the evaluated tokens; ``dense_fraction``:
  latents firing on more than ``dense_threshold`` of them;
- ``ce_clean`` / ``ce_sae`` / ``ce_zero``: next-token cross-entropy of the model as is, with the
  SAE reconstruction spliced into the residual stream where the SAE reads it, and with that
  residual stream zeroed; ``ce_recovered`` = (ce_zero - ce_sae) / (ce_zero - ce_clean).

Where the SAE reads comes from its hook name (:mod:`featgeo.activations.hooks`): ``resid_post`` of
block L is the output of block L, ``resid_pre`` of block L its input (the reconstruction then
replaces the input of block L: the output of block L-1, or the embeddings for L = 0). The SAE runs
in float32 whatever dtype it is stored in (bfloat16 / float16 SAEs are upcast, in a copy).

**Decision**: splicing (and zeroing) covers positions 1.. of every chunk, the positions the SAE
was trained on; the cross-entropy is averaged over the predictions made at those positions
(targets 2..), so position 0's prediction, which all three runs share, does not dilute it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from featgeo.activations.collect import (
    Chunk,
    check_context_size,
    check_layer,
    document_chunks,
    pad_chunks,
)
from featgeo.activations.hooks import HookPoint, residual_hook, sae_hook_point
from featgeo.progress import progress_bar
from featgeo.sae.architectures import SparseAutoencoder
from featgeo.sae.saelens_format import check_sae_matches_model


@dataclass
class SAEEvaluation:
    """The numbers :func:`evaluate_sae` reports (see the module docstring)."""

    layer: int
    hook: str
    """The hook point evaluated, e.g. ``blocks.1.hook_resid_pre``."""
    split: str
    n_tokens: int
    fve: float
    mse: float
    l0: float
    dead_fraction: float
    dense_fraction: float
    dense_threshold: float
    ce_clean: float
    ce_sae: float
    ce_zero: float
    ce_recovered: float
    seconds: float


def _check_fraction(name: str, value: float) -> float:
    if not (isinstance(value, int | float) and 0 < value < 1):
        raise ValueError(f"{name} must be a fraction in (0, 1), got {value!r}")
    return float(value)


def sae_layer(sae: SparseAutoencoder, layer: int | None) -> int:
    """The block number the SAE reads at (``layer`` overrides its hook name's); see
    :func:`featgeo.activations.hooks.sae_hook_point`, which also gives the hook kind."""
    return sae_hook_point(sae, layer).layer


def evaluate_sae(
    sae: SparseAutoencoder,
    model: nn.Module,
    tokenizer,
    corpus,
    *,
    layer: int | None = None,
    split: str = "eval",
    context_size: int = 256,
    batch_size: int = 8,
    max_tokens: int = 16_384,
    dense_threshold: float = 0.1,
    progress: bool = True,
) -> SAEEvaluation:
    """Evaluate ``sae`` on up to ``max_tokens`` tokens of ``split`` (three forward passes each).

    ``layer`` replaces the block number of the SAE's hook name (its kind, resid_pre or
    resid_post, stays); it is needed when the name has none.
    """
    with torch.no_grad():  # not a decorator: mutmut skips decorated functions
        point = sae_hook_point(sae, layer)
        check_layer(model, point.layer)
        check_sae_matches_model(sae, model.config.hidden_size)
        context_size = check_context_size(model, context_size)
        dense_threshold = _check_fraction("--dense-threshold", dense_threshold)
        for option, value in (("--tokens", max_tokens), ("--batch-size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{option} must be a positive int, got {value!r}")
        device = next(model.parameters()).device
        sae = sae.for_compute(device)  # float32; the caller's SAE is left as it is
        stats = _Stats(sae.cfg.d_sae, device)
        start = time.perf_counter()
        bar = progress_bar(transient=True)
        bar.disable = not progress
        with bar:
            task = bar.add_task("evaluating SAE", total=max_tokens, status="")
            for chunks in _chunk_batches(
                corpus, split, tokenizer, context_size, batch_size, max_tokens
            ):
                n = _evaluate_batch(model, sae, point, chunks, stats)
                bar.update(task, advance=n, status=stats.status())
        return stats.result(point, split, dense_threshold, time.perf_counter() - start)


def _evaluate_batch(model, sae, point: HookPoint, chunks: list[Chunk], stats: _Stats) -> int:
    """Add one batch of chunks to ``stats``; returns the number of evaluated tokens."""
    device = next(model.parameters()).device
    ids, valid = (t.to(device) for t in pad_chunks(chunks))
    spliced = valid.clone()
    spliced[:, 0] = False  # [b, s] the positions the SAE reads and replaces
    captured: dict[str, torch.Tensor] = {}

    def capture(h: torch.Tensor) -> torch.Tensor:
        captured["h"] = h
        return h

    def with_sae(h: torch.Tensor) -> torch.Tensor:
        return torch.where(spliced[..., None], sae(h.float()).to(h.dtype), h)

    def zeroed(h: torch.Tensor) -> torch.Tensor:
        return torch.where(spliced[..., None], torch.zeros_like(h), h)

    ce_clean = _ce(model, ids, valid, point, capture)
    x = captured["h"][spliced].float()  # [n, d]
    codes = sae.encode(x)  # [n, d_sae]
    stats.add(x, codes, sae.decode(codes))
    stats.add_ce(
        ce_clean, _ce(model, ids, valid, point, with_sae), _ce(model, ids, valid, point, zeroed)
    )
    return int(x.shape[0])


def _chunk_batches(corpus, split, tokenizer, context_size, batch_size, max_tokens):
    """Batches of chunks holding ``max_tokens`` evaluated tokens in all (the last one cut)."""
    chunks: Iterator[Chunk] = document_chunks(corpus, split, tokenizer, context_size)
    batch: list[Chunk] = []
    left = max_tokens
    for chunk in chunks:
        n = chunk.token_ids.numel() - 1  # position 0 is not evaluated
        if n > left:
            chunk = Chunk(chunk.doc_index, chunk.chunk_index, chunk.token_ids[: left + 1])
            n = left
        batch.append(chunk)
        left -= n
        if len(batch) == batch_size or left == 0:
            yield batch
            batch = []
        if left == 0:
            return
    if batch:
        yield batch


def _ce(model, ids, valid, point: HookPoint, edit) -> tuple[float, int]:
    """(summed next-token cross-entropy, count) over predictions at positions 1.. ."""
    with residual_hook(model, point, edit):
        logits = model(input_ids=ids, attention_mask=valid.long(), use_cache=False).logits
    pred = logits[:, 1:-1].float()  # [b, s-2, V]: predictions made at positions 1..s-2
    target = ids[:, 2:]  # [b, s-2]
    mask = valid[:, 2:]
    loss = F.cross_entropy(pred.flatten(0, 1), target.flatten(), reduction="none")
    return float(loss[mask.flatten()].sum()), int(mask.sum())


class _Stats:
    """Running sums (float64) for the evaluation numbers."""

    def __init__(self, d_sae: int, device: torch.device):
        self.n = 0
        self.sum_x: torch.Tensor | float = 0.0
        self.sum_sq_x = 0.0
        self.sq_err = 0.0
        self.n_values = 0
        self.active = 0.0
        self.fired = torch.zeros(d_sae, dtype=torch.float64, device=device)
        self.ce = {"clean": [0.0, 0], "sae": [0.0, 0], "zero": [0.0, 0]}

    def add(self, x: torch.Tensor, codes: torch.Tensor, recon: torch.Tensor) -> None:
        x64 = x.double()
        self.n += x.shape[0]
        self.n_values += x.numel()
        self.sum_x = self.sum_x + x64.sum(0)
        self.sum_sq_x += float(x64.pow(2).sum())
        self.sq_err += float((x64 - recon.double()).pow(2).sum())
        on = codes != 0
        self.active += float(on.sum())
        self.fired += on.sum(0, dtype=torch.float64)

    def add_ce(self, *runs: tuple[float, int]) -> None:
        for name, (loss, count) in zip(("clean", "sae", "zero"), runs, strict=True):
            self.ce[name][0] += loss
            self.ce[name][1] += count

    def fve(self) -> float:
        mean = self.sum_x / max(self.n, 1)
        total = self.sum_sq_x - self.n * float(mean.pow(2).sum())
        return 1.0 - self.sq_err / total if total > 0 else float("nan")

    def ce_mean(self, name: str) -> float:
        loss, count = self.ce[name]
        return loss / count if count else float("nan")

    def status(self) -> str:
        return f"FVE {self.fve():.3f}  L0 {self.active / max(self.n, 1):.1f}"

    def result(self, point: HookPoint, split, dense_threshold, seconds) -> SAEEvaluation:
        if self.n == 0:
            raise ValueError(f"split {split!r} gave no tokens to evaluate on")
        freq = self.fired / self.n
        clean, sae, zero = (self.ce_mean(k) for k in ("clean", "sae", "zero"))
        gap = zero - clean
        return SAEEvaluation(
            layer=point.layer,
            hook=point.name,
            split=split,
            n_tokens=self.n,
            fve=self.fve(),
            mse=self.sq_err / self.n_values,
            l0=self.active / self.n,
            dead_fraction=float((freq == 0).double().mean()),
            dense_fraction=float((freq > dense_threshold).double().mean()),
            dense_threshold=dense_threshold,
            ce_clean=clean,
            ce_sae=sae,
            ce_zero=zero,
            ce_recovered=(zero - sae) / gap if gap != 0 else float("nan"),
            seconds=seconds,
        )


__all__ = ["SAEEvaluation", "evaluate_sae", "sae_layer"]
