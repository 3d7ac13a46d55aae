"""``featgeo sae train``: collect one block's activations, train an SAE on them, save it.

The activations of the ``sae_train`` split are collected once into the activation cache
(:mod:`featgeo.sae.activation_cache`); training then reads them in seeded random order, epoch
after epoch, until ``--tokens`` tokens are used. Both stages resume after an interruption:
collection from its finished shards, training from its last checkpoint (kept next to the output
folder as ``.NAME.checkpoint`` until the SAE is saved). The output is a SAELens folder plus
``training.json`` (settings, learning curve, timings). A finished folder with equal settings is
reused; a folder with other settings is replaced only with ``force``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from featgeo.files import read_json
from featgeo.sae.activation_cache import (
    build_activation_cache,
    default_cache_dir,
    shuffled_batches,
)
from featgeo.sae.architectures import SparseAutoencoder
from featgeo.sae.saelens_format import CFG_FILENAME, load_sae, save_sae
from featgeo.sae.training import RUNTIME_FIELDS, STATE_FILENAME, SAETrainer, TrainConfig

log = logging.getLogger(__name__)

TRAINING_FILENAME = "training.json"


def hook_name(layer: int) -> str:
    """SAELens's name for the residual stream after block ``layer``."""
    return f"blocks.{layer}.hook_resid_post"


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
    """Train an SAE on the residual stream after block ``layer`` of ``model``.

    Args:
        out: output folder (SAELens format + ``training.json``).
        train: the training hyper-parameters (``total_tokens`` = tokens to train on).
        layer: decoder block whose output the SAE reads.
        activation_tokens: collect at most this many tokens of ``split`` (default: all of it);
            training cycles over them as many times as ``train.total_tokens`` needs.
        force: replace an existing ``out`` trained with other settings.
    """
    from featgeo.corpus import load_corpus
    from featgeo.models.loading import (
        load_model,
        load_tokenizer,
        model_fingerprint,
        resolve_device,
        resolve_model,
    )
    from featgeo.sae.activations import check_layer, resumable_batches

    if not isinstance(train, TrainConfig):
        raise TypeError(f"train must be a TrainConfig, got {type(train).__name__}")
    out = Path(out)
    torch_device = resolve_device(device)
    resolved = resolve_model(model)
    corpus_data = load_corpus(corpus)
    corpus_data.split(split)  # an unknown split fails here, before anything is loaded
    header = {
        "model": model_fingerprint(resolved.source),
        "layer": layer,
        "split": split,
        "corpus_fingerprint": corpus_data.fingerprint,
        "context_size": context_size,
        "max_tokens": activation_tokens,
    }
    cfg = replace(train, device=str(torch_device), model_name=model, hook_name=hook_name(layer))
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

    lm = load_model(model, device=torch_device)
    check_layer(lm, layer)
    tokenizer = load_tokenizer(model)
    start = time.perf_counter()
    batches = resumable_batches(
        lm,
        tokenizer,
        corpus_data,
        split,
        layer,
        context_size=context_size,
        batch_size=collect_batch_size,
        max_tokens=activation_tokens,
    )
    cache = build_activation_cache(default_cache_dir(header), batches, header, progress=progress)
    collect_seconds = time.perf_counter() - start
    lm = batches = None  # training needs only the cached activations: free the model

    start = time.perf_counter()
    trainer = SAETrainer(replace(cfg, progress=progress))
    trainer.fit(
        shuffled_batches(cache.acts, cfg.batch_size, cfg.seed),
        checkpoint_dir=checkpoint,
    )
    train_seconds = time.perf_counter() - start
    summary = {
        "settings": settings,
        "activation_cache": str(cache.folder),
        "n_activation_tokens": cache.n_tokens,
        "epochs": trainer.tokens_seen_ / cache.n_tokens,
        "tokens_seen": trainer.tokens_seen_,
        "n_steps": trainer.n_steps_,
        "final": trainer.history_[-1],
        "history": trainer.history_,
        "seconds": {"collect_activations": collect_seconds, "train": train_seconds},
    }
    save_sae(trainer.sae_, out, extra_json={TRAINING_FILENAME: summary})
    shutil.rmtree(checkpoint, ignore_errors=True)
    return SAETrainResult(out, trainer.sae_, summary)


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
    same = summary.get("settings") == _json_roundtrip(settings)
    return summary if same else None


def _json_roundtrip(value: Any) -> Any:
    return json.loads(json.dumps(value))


__all__ = ["SAETrainResult", "TRAINING_FILENAME", "hook_name", "train_sae"]
