"""``featgeo sae train``: collect one block's activations, train an SAE on them, save it.

The SAE reads the output of block ``layer`` (``hook="resid_post"``, written to cfg.json as
``blocks.L.hook_resid_post``) or its input (``hook="resid_pre"``, ``blocks.L.hook_resid_pre``).
The activations of the ``sae_train`` split are collected into the activation cache
(:mod:`featgeo.activations.cache`): by default as many tokens as training uses
(``--tokens``; the whole split when it is smaller), or ``activation_tokens``; a finished cache
of a bigger collection of the same stream is reused (its first rows). Training then reads them
in seeded random order, epoch after epoch, until ``--tokens`` tokens are used. Both stages
resume after an interruption: collection from its finished shards, training from its last
checkpoint (kept next to the output folder as ``.NAME.checkpoint`` until the SAE is saved).
The output is a SAELens folder plus ``training.json`` (settings, learning curve, timings). A
finished folder with equal settings is reused; a folder with other settings is replaced only
with ``force``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from featgeo.activations.cache import (
    build_activation_cache,
    default_cache_dir,
    find_activation_cache,
    shuffled_batches,
)
from featgeo.activations.hooks import HookKind, HookPoint, check_hook_kind
from featgeo.files import check_output_dir, read_json
from featgeo.sae.architectures import SparseAutoencoder
from featgeo.sae.saelens_format import CFG_FILENAME, load_sae, save_sae
from featgeo.sae.training import RUNTIME_FIELDS, STATE_FILENAME, SAETrainer, TrainConfig

log = logging.getLogger(__name__)

TRAINING_FILENAME = "training.json"


def hook_name(layer: int, hook: HookKind = "resid_post") -> str:
    """SAELens's name for the output (``resid_post``) or input (``resid_pre``) of block
    ``layer``, e.g. ``blocks.6.hook_resid_post``."""
    return HookPoint(check_hook_kind(hook), layer).name


@dataclass
class SAETrainResult:
    """What :func:`train_sae` returns."""

    out: Path
    sae: SparseAutoencoder
    summary: dict[str, Any]
    """The content of ``training.json``."""
    reused: bool = False


def train_sae(
    out: str | Path,
    train: TrainConfig,
    *,
    layer: int,
    hook: HookKind = "resid_post",
    model: str = "embedded",
    corpus: str = "embedded",
    split: str = "sae_train",
    context_size: int = 256,
    collect_batch_size: int = 8,
    activation_tokens: int | None = None,
    device: str = "auto",
    force: bool = False,
    progress: bool = True,
) -> SAETrainResult:
    """Train an SAE on the residual stream at block ``layer`` of ``model``.

    Args:
        out: output folder (SAELens format + ``training.json``).
        train: the training hyper-parameters (``total_tokens`` = tokens to train on).
        layer: decoder block the SAE reads at.
        hook: ``resid_post`` (the block's output) or ``resid_pre`` (its input = the output of
            block ``layer - 1``, the embeddings for 0).
        activation_tokens: collect at most this many tokens of ``split`` (default:
            ``train.total_tokens``, what one epoch of training uses); training cycles over them
            as many times as ``train.total_tokens`` needs.
        force: replace an existing ``out`` trained with other settings.
    """
    from featgeo.activations.collect import check_layer, resumable_batches
    from featgeo.corpus import load_corpus
    from featgeo.models.loading import (
        load_model,
        load_tokenizer,
        model_fingerprint,
        resolve_device,
        resolve_model,
    )

    if not isinstance(train, TrainConfig):
        raise TypeError(f"train must be a TrainConfig, got {type(train).__name__}")
    hook = check_hook_kind(hook)
    activation_tokens = _check_activation_tokens(activation_tokens, train.batch_size)
    if activation_tokens is None and train.total_tokens < train.batch_size:
        raise ValueError(
            f"--tokens {train.total_tokens} is less than --batch-size {train.batch_size} (the "
            "tokens of one optimizer step); pass a larger --tokens or lower --batch-size"
        )
    out = Path(out)
    # --force replaces an SAE trained with other settings, never a folder of other files.
    check_output_dir(
        out, "--out", signature=("cfg.json", TRAINING_FILENAME),
        contents=("cfg.json", "sae_weights.safetensors", "*.json"),
    )  # fmt: skip
    torch_device = resolve_device(device)
    resolved = resolve_model(model)
    corpus_data = load_corpus(corpus)
    # an unknown split fails here, before anything is loaded
    corpus_data.split(split, option="--split")
    budget = train.total_tokens if activation_tokens is None else activation_tokens
    header = {
        "model": model_fingerprint(resolved.source),
        "layer": layer,
        "hook": hook,
        "split": split,
        "corpus_fingerprint": corpus_data.fingerprint,
        "context_size": context_size,
        "max_tokens": budget,
    }
    cfg = replace(
        train, device=str(torch_device), model_name=model, hook_name=hook_name(layer, hook)
    )
    settings = {
        "activations": header,
        "collect_batch_size": collect_batch_size,
        "train": {k: v for k, v in asdict(cfg).items() if k not in RUNTIME_FIELDS},
    }
    finished = _finished_summary(out, settings)
    if finished is not None and not force:
        log.info("reusing the SAE in %s (same settings; --force to retrain)", out)
        return SAETrainResult(out, load_sae(out), finished, reused=True)
    if out.exists() and not force:
        raise FileExistsError(
            f"--out {out} already exists and was not trained with these settings; pass --force "
            "to replace it or choose another --out"
        )
    checkpoint = out.parent / f".{out.name}.checkpoint"
    _discard_other_checkpoint(checkpoint, cfg, force)

    start = time.perf_counter()
    cache = find_activation_cache(header)
    if cache is None:
        lm = load_model(model, device=torch_device)
        check_layer(lm, layer)
        batches = resumable_batches(
            lm,
            load_tokenizer(model),
            corpus_data,
            split,
            layer,
            context_size=context_size,
            batch_size=collect_batch_size,
            max_tokens=budget,
            hook=hook,
        )
        cache = build_activation_cache(
            default_cache_dir(header), batches, header, progress=progress
        )
        lm = batches = None  # training needs only the cached activations: free the model
    else:
        log.info("reusing the activations in %s (%d tokens)", cache.folder, cache.n_tokens)
    acts = cache.acts[: min(budget, cache.n_tokens)]  # [n_rows, d_model]: a prefix if bigger
    collect_seconds = time.perf_counter() - start

    start = time.perf_counter()
    trainer = SAETrainer(replace(cfg, progress=progress))
    trainer.fit(shuffled_batches(acts, cfg.batch_size, cfg.seed), checkpoint_dir=checkpoint)
    train_seconds = time.perf_counter() - start
    summary = {
        "settings": settings,
        "activation_cache": str(cache.folder),
        "n_activation_tokens": int(acts.shape[0]),
        "epochs": trainer.tokens_seen_ / int(acts.shape[0]),
        "tokens_seen": trainer.tokens_seen_,
        "n_steps": trainer.n_steps_,
        "final": trainer.history_[-1],
        "history": trainer.history_,
        "seconds": {"collect_activations": collect_seconds, "train": train_seconds},
    }
    save_sae(trainer.sae_, out, extra_json={TRAINING_FILENAME: summary})
    shutil.rmtree(checkpoint, ignore_errors=True)
    return SAETrainResult(out, trainer.sae_, summary)


def _check_activation_tokens(activation_tokens: int | None, batch_size: int) -> int | None:
    """``--activation-tokens``: None (collect ``--tokens``) or at least one optimizer step's
    worth of tokens; checked before anything is loaded."""
    if activation_tokens is None:
        return None
    if isinstance(activation_tokens, bool) or not isinstance(activation_tokens, int | np.integer):
        raise TypeError(
            f"--activation-tokens must be an int, got {type(activation_tokens).__name__} "
            f"{activation_tokens!r}"
        )
    if activation_tokens < 1:
        raise ValueError(
            f"--activation-tokens must be >= 1, got {activation_tokens}; leave it out to "
            "collect --tokens tokens"
        )
    if activation_tokens < batch_size:
        raise ValueError(
            f"--activation-tokens {activation_tokens} is less than --batch-size {batch_size} "
            "(the tokens of one optimizer step); pass a larger --activation-tokens or lower "
            "--batch-size"
        )
    return int(activation_tokens)


def _discard_other_checkpoint(checkpoint: Path, cfg: TrainConfig, force: bool) -> None:
    """A checkpoint of an interrupted run with other settings is removed with ``force`` and
    otherwise reported (resuming from it would train a different SAE)."""
    state_file = checkpoint / STATE_FILENAME
    if not state_file.is_file():
        return
    saved = read_json(state_file).get("config", {})
    differs = [k for k, v in asdict(cfg).items() if k not in RUNTIME_FIELDS and saved.get(k) != v]
    if not differs:
        return
    if not force:
        raise FileExistsError(
            f"{checkpoint} holds an interrupted run with other settings ({', '.join(differs)}); "
            "pass --force to discard it, or rerun with its settings to resume"
        )
    shutil.rmtree(checkpoint)


def _finished_summary(out: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    if not (out / TRAINING_FILENAME).is_file() or not (out / CFG_FILENAME).is_file():
        return None
    summary = read_json(out / TRAINING_FILENAME)
    same = _upgraded_settings(summary) == _json_roundtrip(settings)
    return summary if same else None


def _upgraded_settings(summary: dict[str, Any]) -> Any:
    """The settings of a ``training.json`` in today's terms. Folders written before the hook
    kind and the default collection budget were recorded read resid_post and collected the whole
    split (``max_tokens`` null): that is the same collection as a budget of at least the
    ``n_activation_tokens`` they got, so they stay reusable when today's budget is that."""
    settings = summary.get("settings")
    acts = settings.get("activations") if isinstance(settings, dict) else None
    if not isinstance(acts, dict) or "hook" in acts:
        return settings
    acts = {**acts, "hook": "resid_post"}
    n_rows = summary.get("n_activation_tokens")
    if acts.get("max_tokens") is None and isinstance(n_rows, int):
        train = settings.get("train") or {}
        budget = train.get("total_tokens")
        if isinstance(budget, int) and n_rows <= budget:  # the whole split fit the budget
            acts["max_tokens"] = budget
    return {**settings, "activations": acts}


def _json_roundtrip(value: Any) -> Any:
    return json.loads(json.dumps(value))


__all__ = ["SAETrainResult", "TRAINING_FILENAME", "hook_name", "train_sae"]
