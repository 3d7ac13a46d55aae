"""``featgeo prune``: validate, prune each method from the dense model, export, evaluate.

Every input is validated before anything is written. Each method is built in a hidden staging
folder ``{out}/.{method}.partial`` that is swapped into ``{out}/{method}`` only when complete;
an interrupted run leaves the staging folder with a checkpoint (pruned layers so far and the
hidden states entering the next layer), and the same command resumes from there.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from featgeo import __version__
from featgeo.corpus.windows import calibration_windows, eval_windows, split_tokens
from featgeo.files import (
    check_output_dir,
    partial_dir,
    read_json,
    replace_dir,
    save_tensor,
    write_json,
)
from featgeo.models import (
    check_component_inputs,
    decoder_layers,
    get_component,
    load_model,
    model_components,
    parse_components,
    parse_layers,
)
from featgeo.models.loading import load_tokenizer, model_fingerprint, resolve_device, resolve_model
from featgeo.models.perplexity import perplexity
from featgeo.progress import progress_bar
from featgeo.pruning.base import get_pruner
from featgeo.pruning.config import PruneConfig
from featgeo.pruning.sequential import (
    LayerInputs,
    capture_layer0_inputs,
    prune_layer,
    prune_without_inputs,
    run_layer,
)

log = logging.getLogger(__name__)

SUMMARY = "prune_summary.json"
STATE = "resume_state.json"
HIDDEN = "resume_hidden.pt"
CHECKPOINT_EVERY_S = 15.0


def matrix_filename(layer: int, component: str) -> str:
    return f"layer{layer}-{component}.pt"


@dataclass
class PreparedRun:
    """Everything validated and loaded, before a single file is written."""

    config: PruneConfig
    model_source: str
    model: nn.Module
    tokenizer: object
    device: torch.device
    layers: list[int]
    components: list[str]
    calib_ids: torch.Tensor  # [calib_samples, seqlen]
    eval_ids: torch.Tensor  # [n_windows, seqlen]
    corpus_fingerprint: str
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class MethodResult:
    method: str
    out_dir: Path
    dense_ppl: float
    pruned_ppl: float
    sparsity: float
    seconds: dict[str, float]
    reused: bool = False
    above_target: dict = field(default_factory=dict)
    """The summary's ``above_target`` block: matrices whose achieved sparsity exceeds the
    target, and why (see :func:`_above_target`)."""


def prepare(config: PruneConfig) -> PreparedRun:
    from featgeo.corpus import load_corpus

    t0 = time.perf_counter()
    # The export root may hold anything; each method's folder is replaced as a whole.
    if Path(config.out).exists() and not Path(config.out).is_dir():
        raise NotADirectoryError(
            f"--out '{config.out}' exists and is not a folder; pass a folder path"
        )
    for method in config.methods:
        check_output_dir(
            Path(config.out) / method, f"--out (its '{method}' folder)", signature=(SUMMARY,),
            contents=(SUMMARY, "layer*.pt"),
        )  # fmt: skip
    device = resolve_device(config.device)
    resolved = resolve_model(config.model)
    model = load_model(config.model, device=device)
    n_layers = len(decoder_layers(model))
    layers = parse_layers(config.layers, n_layers)
    components = parse_components(config.components, model_components(model))
    nm = config.nm_pattern
    if nm is not None:
        for name in components:
            cols = get_component(decoder_layers(model)[0], name).in_features
            if cols % nm[1]:
                raise ValueError(
                    f"--nm {config.nm} is impossible for {name}: in_features={cols} "
                    f"is not divisible by M={nm[1]}; choose an M that divides {cols}, or "
                    f"leave {name} out of --components"
                )
    t1 = time.perf_counter()
    corpus = load_corpus(config.corpus)
    tokenizer = load_tokenizer(config.model)
    calib = calibration_windows(
        split_tokens(corpus, "calibration", tokenizer),
        config.calib_samples,
        config.seqlen,
        config.seed,
    )
    evals = eval_windows(
        split_tokens(corpus, config.eval_split, tokenizer), config.seqlen, config.eval_windows
    )
    if any(get_pruner(method).needs_inputs for method in config.methods):
        check_component_inputs(model, components, calib[:1])
    t2 = time.perf_counter()
    return PreparedRun(
        config,
        resolved.source,
        model,
        tokenizer,
        device,
        layers,
        components,
        calib,
        evals,
        corpus.fingerprint,
        seconds={"load_model": t1 - t0, "tokenize": t2 - t1},
    )


def method_settings(prep: PreparedRun, method: str) -> dict:
    """What must match for a finished or partial run to be reused."""
    cfg = prep.config
    return {
        "method": method,
        "model": cfg.model,
        "sparsity": cfg.target_sparsity,
        "nm": cfg.nm,
        "order": cfg.order,
        "ties": cfg.ties,
        "calib_samples": cfg.calib_samples,
        "seqlen": cfg.seqlen,
        "seed": cfg.seed,
        "layers": prep.layers,
        "components": prep.components,
        "corpus": prep.corpus_fingerprint,
        "eval_split": cfg.eval_split,
        "eval_windows": int(prep.eval_ids.shape[0]),
        "save_model": cfg.save_model,
    }


def run_prune(config: PruneConfig) -> list[MethodResult]:
    """Prune with every method in ``config.methods``; return one result per method."""
    prep = prepare(config)
    out = Path(config.out)
    results: list[MethodResult] = []
    dense_ppl: float | None = None
    model_is_dense = True
    for method in config.methods:
        settings = method_settings(prep, method)
        finished = _finished_summary(out / method, settings)
        if finished is not None and not config.force:
            log.info("%s: reusing the finished run in %s (--force to redo)", method, out / method)
            results.append(_result_from_summary(out / method, finished))
            continue
        if dense_ppl is None:
            dense_ppl = _dense_perplexity(prep, out)
        model = prep.model if model_is_dense else load_model(config.model, device=prep.device)
        model_is_dense = False
        results.append(_prune_method(prep, model, method, settings, dense_ppl, out))
    return results


def _finished_summary(folder: Path, settings: dict) -> dict | None:
    path = folder / SUMMARY
    if not path.is_file():
        return None
    summary = read_json(path)
    return summary if summary.get("settings") == settings else None


def _result_from_summary(folder: Path, summary: dict) -> MethodResult:
    return MethodResult(
        summary["method"],
        folder,
        summary["perplexity"]["dense"],
        summary["perplexity"]["pruned"],
        summary["achieved_sparsity"],
        summary["seconds"],
        reused=True,
        above_target=summary.get("above_target", {}),
    )


def _dense_perplexity(prep: PreparedRun, out: Path) -> float:
    """Dense perplexity, cached under ``out`` so reruns and extra methods skip it."""
    digest = hashlib.sha256(model_fingerprint(prep.model_source).encode())
    digest.update(prep.eval_ids.numpy().tobytes())
    key = digest.hexdigest()[:16]
    cache = out / f".dense_ppl-{key}.json"
    if cache.is_file():
        return read_json(cache)["dense_ppl"]
    start = time.perf_counter()
    ppl = perplexity(prep.model, prep.eval_ids, description="dense perplexity")
    prep.seconds["eval_dense"] = time.perf_counter() - start
    write_json(cache, {"dense_ppl": ppl, "seconds": prep.seconds["eval_dense"]})
    return ppl


def _load_state(staging: Path, settings: dict) -> dict | None:
    state_file = staging / STATE
    if state_file.is_file():
        state = read_json(state_file)
        if state.get("settings") == settings:
            return state
    if staging.exists():  # a partial run with other settings cannot be resumed
        shutil.rmtree(staging)
    return None


def _prune_method(
    prep: PreparedRun, model: nn.Module, method: str, settings: dict, dense_ppl: float, out: Path
) -> MethodResult:
    cfg = prep.config
    final = out / method
    staging = partial_dir(final)
    state = _load_state(staging, settings)
    staging.mkdir(parents=True, exist_ok=True)
    layers = decoder_layers(model)
    pruner_cls = get_pruner(method)
    make_pruner = lambda: pruner_cls(cfg.target_sparsity, cfg.nm_pattern, cfg.ties)  # noqa: E731
    start_layer = 0 if state is None else state["next_layer"]
    # "{layer}-{component}" -> dense zeros / dead inputs, kept in checkpoints for the summary
    stats: dict[str, dict] = {} if state is None else state.get("matrix_stats", {})
    seconds = dict(prep.seconds)
    t0 = time.perf_counter()

    last = max(prep.layers)
    inputs = None
    if pruner_cls.needs_inputs and start_layer <= last:
        inputs = capture_layer0_inputs(model, prep.calib_ids)
        if state is not None:
            inputs.hidden = torch.load(staging / HIDDEN, weights_only=True).to(prep.device)
    for index in (i for i in prep.layers if i < start_layer):  # restore finished layers
        for name in prep.components:
            saved = torch.load(staging / matrix_filename(index, name), weights_only=True)
            get_component(layers[index], name).weight.data.copy_(saved)
    if state is not None:
        log.info("%s: resuming at layer %d from %s", method, start_layer, staging)

    last_checkpoint = time.perf_counter()
    with progress_bar() as bar:
        task = bar.add_task(f"{method} prune", total=last + 1, completed=start_layer, status="")
        for index in range(start_layer, last + 1):
            pruned = _prune_or_forward(
                layers[index], index, prep, inputs, make_pruner, pruner_cls.needs_inputs
            )
            for name, item in pruned.items():
                save_tensor(staging / matrix_filename(index, name), item.weight)
                stats[f"{index}-{name}"] = {
                    "dense_zeros": item.dense_zeros,
                    "dead_inputs": item.dead_inputs,
                }
            if time.perf_counter() - last_checkpoint > CHECKPOINT_EVERY_S:
                _checkpoint(staging, settings, index + 1, inputs, stats)
                last_checkpoint = time.perf_counter()
            bar.update(task, advance=1, status=f"layer {index}")
    seconds["prune"] = time.perf_counter() - t0
    if start_layer <= last:  # so that an interrupted evaluation does not redo the pruning
        _checkpoint(staging, settings, last + 1, None, stats)

    t1 = time.perf_counter()
    pruned_ppl = perplexity(model, prep.eval_ids, description=f"{method} perplexity")
    seconds["eval_pruned"] = time.perf_counter() - t1
    summary = _summary(prep, model, method, settings, dense_ppl, pruned_ppl, seconds, stats)
    if cfg.save_model:
        model.save_pretrained(staging / "model")
        prep.tokenizer.save_pretrained(staging / "model")
    write_json(staging / SUMMARY, summary)
    (staging / STATE).unlink(missing_ok=True)
    (staging / HIDDEN).unlink(missing_ok=True)
    replace_dir(staging, final)
    return MethodResult(
        method,
        final,
        dense_ppl,
        pruned_ppl,
        summary["achieved_sparsity"],
        seconds,
        above_target=summary["above_target"],
    )


def _prune_or_forward(layer, index, prep, inputs: LayerInputs | None, make_pruner, needs_inputs):
    selected = index in prep.layers
    if not needs_inputs:
        return prune_without_inputs(layer, prep.components, make_pruner) if selected else {}
    if selected:
        inputs.hidden, pruned = prune_layer(
            layer, inputs, prep.components, make_pruner, prep.config.order
        )
        return pruned
    with torch.no_grad():
        inputs.hidden = run_layer(layer, inputs)
    return {}


def _checkpoint(
    staging: Path, settings: dict, next_layer: int, inputs: LayerInputs | None, stats: dict
):
    if inputs is not None:
        save_tensor(staging / HIDDEN, inputs.hidden)
    state = {"settings": settings, "next_layer": next_layer, "matrix_stats": stats}
    write_json(staging / STATE, state)


def _summary(prep, model, method, settings, dense_ppl, pruned_ppl, seconds, stats) -> dict:
    layers = decoder_layers(model)
    cfg = prep.config
    matrices, zeros, total = [], 0, 0
    for index in prep.layers:
        for name in prep.components:
            weight = get_component(layers[index], name).weight
            n_zero = int((weight == 0).sum())
            zeros, total = zeros + n_zero, total + weight.numel()
            entry = {
                "layer": index,
                "component": name,
                "file": matrix_filename(index, name),
                "shape": list(weight.shape),
                "sparsity": n_zero / weight.numel(),
                **stats.get(f"{index}-{name}", {"dense_zeros": None, "dead_inputs": None}),
            }
            entry["reasons_above_target"] = _reasons_above_target(
                method, cfg, entry, n_zero, weight.numel()
            )
            matrices.append(entry)
    return {
        "method": method,
        "featgeo_version": __version__,
        "settings": settings,
        "config": cfg.to_dict(),
        "model_source": prep.model_source,
        "calibration": {
            "split": "calibration",
            "samples": cfg.calib_samples,
            "seqlen": cfg.seqlen,
            "seed": cfg.seed,
        },
        "evaluation": {
            "split": cfg.eval_split,
            "windows": int(prep.eval_ids.shape[0]),
            "seqlen": cfg.seqlen,
            "tokens": int(prep.eval_ids.numel()),
        },
        "perplexity": {"dense": dense_ppl, "pruned": pruned_ppl},
        "target_sparsity": cfg.target_sparsity,
        "achieved_sparsity": zeros / total if total else 0.0,
        "above_target": _above_target(matrices),
        "device": str(prep.device),
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "matrices": matrices,
    }


def _reasons_above_target(method: str, cfg: PruneConfig, entry: dict, zeros: int, numel: int):
    """Why a matrix has more zeros than the target asks for; [] when it has not.

    Every rule removes at most ``target * numel`` weights by itself (exact ties, N:M). More
    zeros come from ``--ties reference`` (k + 1 plus ties per group) and from inputs that never
    fired (SparseGPT zeroes their weights whatever the mask); those are listed when they apply.
    Otherwise zeros already in the dense matrix (score 0, so beyond the k a group removes they
    stay) explain it; failing that, ``other``.
    """
    if zeros <= cfg.target_sparsity * numel + 1e-6:
        return []
    pruner_cls = get_pruner(method)
    reasons = []
    if cfg.ties == "reference" and cfg.nm_pattern is None and pruner_cls.ties_apply:
        reasons.append("reference_ties")
    if pruner_cls.zeroes_dead_inputs and entry["dead_inputs"]:
        reasons.append("dead_inputs")
    if not reasons and entry["dense_zeros"]:
        reasons.append("dense_zeros")
    return reasons or ["other"]


def _above_target(matrices: list[dict]) -> dict:
    """Matrices above the target sparsity: how many, the highest sparsity, counts per reason."""
    above = [m for m in matrices if m["reasons_above_target"]]
    reasons: dict[str, int] = {}
    for m in above:
        for reason in m["reasons_above_target"]:
            reasons[reason] = reasons.get(reason, 0) + 1
    return {
        "matrices": len(above),
        "of": len(matrices),
        "max_sparsity": max((m["sparsity"] for m in above), default=None),
        "reasons": reasons,
    }
