"""``featgeo prune``: validate, prune each method from the dense model, export, evaluate.

Every input is validated before anything is written. Each method is built in a hidden staging
folder ``{out}/.{method}.partial`` that is swapped into ``{out}/{method}`` only when complete.

One pass over the decoder layers does everything for a method: each layer is loaded (the whole
model stays on the device with ``--offload none``; with ``--offload layer`` one layer at a time
is read from the safetensors files), pruned on the calibration hidden states (in micro-batches
of ``--calib-batch-size`` windows), and the evaluation windows go through it too (through the
dense layer first when the dense perplexity is not cached yet), so perplexity needs no second
pass over the weights. An interrupted run leaves the staging folder with a checkpoint (the
layer to continue at and the hidden states entering it), and the same command resumes from
there. Checkpoints of the hidden states are spaced so that writing them costs at most
:data:`CHECKPOINT_COST_SHARE` of the run.
"""

from __future__ import annotations

import hashlib
import logging
import resource
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from featgeo import __version__
from featgeo.corpus.windows import calibration_windows, eval_windows, split_tokens
from featgeo.files import (
    PACKED_MASK_SUFFIX,
    check_output_dir,
    partial_dir,
    read_json,
    replace_dir,
    save_packed_mask,
    save_safetensors,
    save_tensor,
    save_torch_dict,
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
from featgeo.models.components import decoder_layers_path
from featgeo.models.loading import (
    load_tokenizer,
    local_model_folder,
    model_fingerprint,
    resolve_device,
    resolve_model,
)
from featgeo.models.perplexity import perplexity_of_last_layer
from featgeo.models.streaming import (
    SafetensorsCheckpoint,
    StreamedModel,
    StreamingUnsupportedError,
    resolve_dtype,
    tensor_names,
)
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
MODEL_DIR = "model"
CHECKPOINT_EVERY_S = 15.0
CHECKPOINT_COST_SHARE = 0.05
"""Hidden-state checkpoints are at least ``seconds to write one / this`` apart, so that on a
large run (GBs of hidden states) they never take more than about 5% of the time."""


def matrix_filename(layer: int, component: str) -> str:
    return f"layer{layer}-{component}.pt"


def mask_filename(layer: int, component: str) -> str:
    return f"layer{layer}-{component}{PACKED_MASK_SUFFIX}"


class InMemoryModel:
    """The whole model on the device (``--offload none``); same interface as StreamedModel."""

    def __init__(self, model: nn.Module):
        self.model = model

    @property
    def n_layers(self) -> int:
        return len(decoder_layers(self.model))

    def layer(self, index: int) -> nn.Module:
        return decoder_layers(self.model)[index]

    def release(self, index: int) -> None:
        pass


@dataclass
class PreparedRun:
    """Everything validated and loaded, before a single file is written."""

    config: PruneConfig
    model_source: str
    source: InMemoryModel | StreamedModel
    """The model to prune: wholly on the device, or streamed layer by layer."""
    checkpoint: SafetensorsCheckpoint | None
    dtype: torch.dtype
    offload: str
    """``none`` or ``layer`` (``auto`` resolved)."""
    tokenizer: object
    device: torch.device
    layers: list[int]
    components: list[str]
    calib_ids: torch.Tensor  # [calib_samples, seqlen]
    eval_ids: torch.Tensor  # [n_windows, seqlen]
    corpus_fingerprint: str
    calib_batch_size: int
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def model(self) -> nn.Module:
        return self.source.model


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
            contents=(SUMMARY, "layer*.pt", f"layer*{PACKED_MASK_SUFFIX}", MODEL_DIR),
        )  # fmt: skip
    device = resolve_device(config.device)
    resolved = resolve_model(config.model)
    folder = local_model_folder(resolved)
    checkpoint = None if folder is None else SafetensorsCheckpoint.open(folder, config.model)
    offload = config.offload
    if offload == "auto":
        offload = "layer" if checkpoint is not None else "none"
    elif offload == "layer" and checkpoint is None:
        raise ValueError(
            f"--offload layer reads the model's safetensors files, and '{config.model}' has "
            "none (a pytorch_model.bin checkpoint, or a hub id not in the local cache); use "
            "--offload none, or re-save the model with save_pretrained"
        )
    dtype = resolve_dtype(config.dtype, checkpoint.dtype() if checkpoint else torch.float32, device)
    try:
        source = open_model(config.model, checkpoint, offload, dtype, device)
    except StreamingUnsupportedError as exc:
        if config.offload != "auto":
            raise
        log.info("%s; loading the whole model instead", exc)
        offload = "none"
        source = open_model(config.model, checkpoint, offload, dtype, device)
    n_layers = source.n_layers
    layers = parse_layers(config.layers, n_layers)
    first = source.layer(0)  # the component checks run block 0
    components = parse_components(config.components, model_components(source.model))
    nm = config.nm_pattern
    if nm is not None:
        for name in components:
            cols = get_component(first, name).in_features
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
        check_component_inputs(source.model, components, calib[:1])
    source.release(0)
    t2 = time.perf_counter()
    return PreparedRun(
        config,
        resolved.source,
        source,
        checkpoint,
        dtype,
        offload,
        tokenizer,
        device,
        layers,
        components,
        calib,
        evals,
        corpus.fingerprint,
        config.resolved_calib_batch_size(),
        seconds={"load_model": t1 - t0, "tokenize": t2 - t1},
    )


def open_model(spec, checkpoint, offload, dtype, device) -> InMemoryModel | StreamedModel:
    """The dense model: streamed from ``checkpoint`` (``offload == "layer"``) or loaded whole."""
    if offload == "layer":
        return StreamedModel(checkpoint.folder, checkpoint, spec=spec, dtype=dtype, device=device)
    return InMemoryModel(load_model(spec, device=device, dtype=dtype))


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
        "dtype": _dtype_name(prep.dtype),
        "calib_batch_size": prep.calib_batch_size,
        "export": cfg.export,
    }


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def run_prune(config: PruneConfig) -> list[MethodResult]:
    """Prune with every method in ``config.methods``; return one result per method."""
    prep = prepare(config)
    out = Path(config.out)
    results: list[MethodResult] = []
    source = prep.source
    source_is_dense = True
    for method in config.methods:
        settings = method_settings(prep, method)
        finished = _finished_summary(out / method, settings)
        if finished is not None and not config.force:
            log.info("%s: reusing the finished run in %s (--force to redo)", method, out / method)
            results.append(_result_from_summary(out / method, finished))
            continue
        if not source_is_dense:  # pruning changed the weights held in memory: reload them
            source = open_model(
                config.model, prep.checkpoint, prep.offload, prep.dtype, prep.device
            )
        # A streamed model reads every layer afresh from the checkpoint: it stays dense.
        source_is_dense = prep.offload == "layer"
        results.append(_prune_method(prep, source, method, settings, out))
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


def _dense_cache(prep: PreparedRun, out: Path) -> Path:
    """Where the dense perplexity of this model, dtype and evaluation set is cached."""
    digest = hashlib.sha256(model_fingerprint(prep.model_source).encode())
    digest.update(_dtype_name(prep.dtype).encode())
    digest.update(prep.eval_ids.numpy().tobytes())
    return out / f".dense_ppl-{digest.hexdigest()[:16]}.json"


def _load_state(staging: Path, settings: dict, need_dense: bool) -> tuple[dict, dict] | None:
    """The checkpoint of an interrupted run with these settings: (state, hidden states)."""
    state_file = staging / STATE
    if state_file.is_file():
        state = read_json(state_file)
        try:
            hidden = torch.load(staging / HIDDEN, weights_only=True)
        except (OSError, RuntimeError, EOFError, ValueError):
            hidden = None
        usable = (
            state.get("settings") == settings
            and isinstance(hidden, dict)
            and (not need_dense or "dense_eval" in hidden)
        )
        if usable:
            return state, hidden
    if staging.exists():  # a partial run with other settings cannot be resumed
        shutil.rmtree(staging)
    return None


class _Clock:
    """Seconds per phase of a run (``prune``, ``eval_pruned``, ``eval_dense``)."""

    def __init__(self, seconds: dict[str, float]):
        self.seconds = seconds

    def add(self, phase: str, start: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start


def _prune_method(
    prep: PreparedRun, source, method: str, settings: dict, out: Path
) -> MethodResult:
    cfg = prep.config
    final = out / method
    staging = partial_dir(final)
    dense_cache = _dense_cache(prep, out)
    need_dense = not dense_cache.is_file()
    resumed = _load_state(staging, settings, need_dense)
    staging.mkdir(parents=True, exist_ok=True)
    model = source.model
    pruner_cls = get_pruner(method)
    make_pruner = lambda: pruner_cls(cfg.target_sparsity, cfg.nm_pattern, cfg.ties)  # noqa: E731
    state, saved = resumed if resumed is not None else ({}, {})
    start_layer = state.get("next_layer", 0)
    # "{layer}-{component}" -> zeros, shape, dense zeros, dead inputs (kept in checkpoints)
    stats: dict[str, dict] = state.get("matrix_stats", {})
    clock = _Clock(dict(prep.seconds, **state.get("seconds", {})))
    if prep.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(prep.device)

    last = max(prep.layers)
    batch = prep.calib_batch_size
    calib = None
    if pruner_cls.needs_inputs and start_layer <= last:
        calib = _inputs(model, prep.calib_ids, batch, saved.get("calib"))
    evals = _inputs(model, prep.eval_ids, batch, saved.get("eval"))
    dense = _inputs(model, prep.eval_ids, batch, saved.get("dense_eval")) if need_dense else None
    if resumed is not None:
        log.info("%s: resuming at layer %d from %s", method, start_layer, staging)

    writes = {"checkpoints": state.get("checkpoint_bytes", 0)}
    last_checkpoint, checkpoint_seconds = time.perf_counter(), 0.0
    with progress_bar() as bar:
        task = bar.add_task(
            f"{method} prune", total=source.n_layers, completed=start_layer, status=""
        )
        for index in range(start_layer, source.n_layers):
            t0 = time.perf_counter()
            layer = source.layer(index)
            clock.add("load_layers", t0)
            if dense is not None:
                t0 = time.perf_counter()
                dense.hidden = run_layer(layer, dense)
                clock.add("eval_dense", t0)
            t0 = time.perf_counter()
            if index in prep.layers:
                pruned = _prune(layer, calib, prep, make_pruner)
                for name, item in pruned.items():
                    stats[f"{index}-{name}"] = _export(staging, cfg.export, index, name, item)
            elif calib is not None:
                calib.hidden = run_layer(layer, calib)
            if index >= last:
                calib = None  # no later layer is pruned: free the calibration states
            if cfg.save_model:
                _save_layer(staging, model, layer, index)
            clock.add("prune", t0)
            t0 = time.perf_counter()
            evals.hidden = run_layer(layer, evals)
            clock.add("eval_pruned", t0)
            source.release(index)
            bar.update(task, advance=1, status=f"layer {index}")
            elapsed = time.perf_counter() - last_checkpoint
            if checkpoint_due(elapsed, checkpoint_seconds) or index == source.n_layers - 1:
                t0 = time.perf_counter()
                hidden = {"calib": calib, "eval": evals, "dense_eval": dense}
                _checkpoint(staging, settings, index + 1, hidden, stats, clock, writes)
                last_checkpoint = time.perf_counter()
                checkpoint_seconds = last_checkpoint - t0

    t1 = time.perf_counter()
    tuple_output = evals.tuple_output
    if dense is not None:
        dense_ppl = perplexity_of_last_layer(
            model, prep.eval_ids, dense.hidden, description="dense perplexity",
            tuple_output=tuple_output,
        )  # fmt: skip
        write_json(dense_cache, {"dense_ppl": dense_ppl, "seconds": clock.seconds["eval_dense"]})
    else:
        dense_ppl = read_json(dense_cache)["dense_ppl"]
    pruned_ppl = perplexity_of_last_layer(
        model, prep.eval_ids, evals.hidden, description=f"{method} perplexity",
        tuple_output=tuple_output,
    )  # fmt: skip
    clock.add("eval_pruned", t1)
    if cfg.save_model:
        _save_model_rest(staging, model, prep)
    summary = _summary(prep, method, settings, dense_ppl, pruned_ppl, clock.seconds, stats)
    summary["bytes_written"] = {
        "outputs": _folder_bytes(staging, skip=(STATE, HIDDEN)),
        "checkpoints": writes["checkpoints"],
    }
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
        clock.seconds,
        above_target=summary["above_target"],
    )


def checkpoint_due(elapsed: float, last_cost: float) -> bool:
    """Whether to write the hidden states again, ``elapsed`` seconds after the last checkpoint
    that took ``last_cost`` seconds to write: every CHECKPOINT_EVERY_S at most, and never
    more often than keeps checkpointing under CHECKPOINT_COST_SHARE of the time."""
    return elapsed > max(CHECKPOINT_EVERY_S, last_cost / CHECKPOINT_COST_SHARE)


def _inputs(model, ids, batch_size, saved: torch.Tensor | None) -> LayerInputs:
    """The states entering the next layer: the embedding's output, or a checkpoint's."""
    inputs = capture_layer0_inputs(model, ids, batch_size)
    if saved is not None:
        inputs.hidden = saved.to(inputs.hidden.device)
    return inputs


def _prune(layer, calib: LayerInputs | None, prep: PreparedRun, make_pruner):
    if calib is None:  # the method reads no inputs (magnitude)
        return prune_without_inputs(layer, prep.components, make_pruner)
    calib.hidden, pruned = prune_layer(
        layer, calib, prep.components, make_pruner, prep.config.order
    )
    return pruned


def _export(staging: Path, export: str, index: int, name: str, item) -> dict:
    """Write one pruned matrix as ``--export`` asks; return its statistics for the summary."""
    weight = item.weight
    zeros = int((weight == 0).sum())
    file = None
    if export == "dense":  # in the model's dtype, as the layer holds it
        file = matrix_filename(index, name)
        save_tensor(staging / file, weight)
    elif export == "masks":
        file = mask_filename(index, name)
        save_packed_mask(staging / file, weight != 0)
    return {
        "file": file,
        "shape": list(weight.shape),
        "zeros": zeros,
        "dense_zeros": item.dense_zeros,
        "dead_inputs": item.dead_inputs,
    }


def _save_layer(staging: Path, model: nn.Module, layer: nn.Module, index: int) -> None:
    """One decoder layer of the pruned model, as a shard of a Hugging Face folder."""
    prefix = f"{decoder_layers_path(model)}.{index}."
    tensors = {prefix + key: value for key, value in layer.state_dict().items()}
    folder = staging / MODEL_DIR
    folder.mkdir(exist_ok=True)
    save_safetensors(folder / f"layer-{index:05d}.safetensors", tensors, {"format": "pt"})


def _save_model_rest(staging: Path, model: nn.Module, prep: PreparedRun) -> None:
    """What lies outside the decoder layers, the shard index, config and tokenizer: with the
    layer shards, a folder ``from_pretrained`` loads (in the pruning dtype)."""
    folder = staging / MODEL_DIR
    layers_prefix = decoder_layers_path(model) + "."
    rest: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in model.state_dict(keep_vars=True).items():
        if key.startswith(layers_prefix) or id(value) in seen:
            continue  # tied weights (lm_head = embed_tokens) are saved once
        seen.add(id(value))
        rest[key] = value.detach()
    save_safetensors(folder / "rest.safetensors", rest, {"format": "pt"})
    weight_map = {key: "rest.safetensors" for key in rest}
    total = sum(t.numel() * t.element_size() for t in rest.values())
    for index in range(len(decoder_layers(model))):
        shard = f"layer-{index:05d}.safetensors"
        weight_map.update({key: shard for key in tensor_names(folder / shard)})
        total += (folder / shard).stat().st_size
    write_json(
        folder / "model.safetensors.index.json",
        {"metadata": {"total_size": total}, "weight_map": weight_map},
    )
    config = model.config
    config.dtype = prep.dtype
    config.save_pretrained(folder)
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        generation.save_pretrained(folder)
    prep.tokenizer.save_pretrained(folder)


def _checkpoint(staging, settings, next_layer, hidden, stats, clock, writes) -> None:
    """Write the hidden states entering ``next_layer`` and the run's state; ``writes``
    counts the checkpoint bytes of the run, across resumes."""
    tensors = {k: v.hidden for k, v in hidden.items() if v is not None}
    save_torch_dict(staging / HIDDEN, tensors)
    writes["checkpoints"] += (staging / HIDDEN).stat().st_size
    state = {
        "settings": settings,
        "next_layer": next_layer,
        "matrix_stats": stats,
        "seconds": clock.seconds,
        "checkpoint_bytes": writes["checkpoints"],
    }
    write_json(staging / STATE, state)


def _folder_bytes(folder: Path, skip: tuple[str, ...] = ()) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.name not in skip)


def _peak_memory(device: torch.device) -> dict:
    """Peak memory of this process: the device's (CUDA) and the host's resident set."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    device_bytes = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
    return {"peak_device_bytes": device_bytes, "peak_host_rss_bytes": int(rss)}


def _summary(prep, method, settings, dense_ppl, pruned_ppl, seconds, stats) -> dict:
    cfg = prep.config
    matrices, zeros, total = [], 0, 0
    for index in prep.layers:
        for name in prep.components:
            entry = stats[f"{index}-{name}"]
            numel = entry["shape"][0] * entry["shape"][1]
            zeros, total = zeros + entry["zeros"], total + numel
            matrix = {
                "layer": index,
                "component": name,
                "file": entry["file"],
                "shape": entry["shape"],
                "sparsity": entry["zeros"] / numel,
                "dense_zeros": entry["dense_zeros"],
                "dead_inputs": entry["dead_inputs"],
            }
            matrix["reasons_above_target"] = _reasons_above_target(
                method, cfg, matrix, entry["zeros"], numel
            )
            matrices.append(matrix)
    return {
        "method": method,
        "featgeo_version": __version__,
        "settings": settings,
        "config": cfg.to_dict(),
        "model_source": prep.model_source,
        "dtype": _dtype_name(prep.dtype),
        "offload": prep.offload,
        "export": cfg.export,
        "calibration": {
            "split": "calibration",
            "samples": cfg.calib_samples,
            "seqlen": cfg.seqlen,
            "seed": cfg.seed,
            "batch_size": prep.calib_batch_size,
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
        "memory": _peak_memory(prep.device),
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
