"""Pruning LLaMA-7B-class models on one device: featgeo vs llm-compressor, side by side.

For each method (Wanda, SparseGPT; 50% unstructured unless --nm) both tools prune every decoder
linear layer (not lm_head) of the same randomly initialised LLaMA-shaped model with exactly the
same calibration windows (featgeo's: --calib-samples x --seqlen tokens of the embedded corpus's
calibration split, seed --seed), each in its own fresh process, and each is measured from
outside by benchmarks/_measure.py:

- seconds: the pruning call alone (featgeo: ``seconds.prune`` of ``prune_summary.json``;
  llm-compressor: its ``oneshot`` call) and the wall time of the whole process (imports, model
  loading, featgeo's perplexity evaluations, writing the output);
- peak device memory: ``torch.cuda.max_memory_allocated()`` as the process reports it
  (featgeo: ``memory.peak_device_bytes`` of the summary); CUDA only;
- peak host memory: ``ru_maxrss`` of the process, read by the wrapper after it exits;
- bytes written: the ``write_bytes`` I/O counter of the process (every byte it sent towards the
  disk, checkpoints later deleted included), and the size of what it left on disk.

featgeo runs ``featgeo prune`` as a user would (``--device auto --dtype auto --offload auto``,
micro-batches of --calib-batch-size windows, ``--export dense``: every pruned matrix written).
llm-compressor loads the model on the CPU and runs ``oneshot(pipeline="sequential")``, which
onloads one decoder layer at a time to the GPU (its documented way to compress models bigger
than the GPU), with ``batch_size`` = --calib-batch-size, then ``save_pretrained``
(benchmarks/_llmcompressor_scale_peer.py). Both compute in the same dtype: the checkpoint's
(bfloat16) on CUDA, float32 on the CPU.

    python benchmarks/prune_scale.py --shape tiny --calib-samples 4 --seqlen 128   # smoke
    python benchmarks/prune_scale.py --shape 1b --calib-samples 8 --seqlen 512 \\
        --calib-batch-size 2 --peer-python .bench/llmc/bin/python                  # CPU
    python benchmarks/prune_scale.py --shape 7b --peer-python .bench/llmc/bin/python  # GPU

`make bench-prune-scale ARGS="..."` builds the peer's environment and runs the last form with
ARGS added. Outputs are deleted after measuring (--keep-outputs keeps them); the model is built
once into $FEATGEO_CACHE/prune_scale (benchmarks/_scale_model.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _machine import machine_info
from _scale_model import SHAPES, default_cache, ensure_model, host_bound, model_sizes
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
MEASURE = HERE / "_measure.py"
PEER_SCRIPT = HERE / "_llmcompressor_scale_peer.py"
GB = 1e9
# What a featgeo prune process holds besides the model: its imports and the tokenized corpus
# splits it draws calibration and evaluation windows from.
BASELINE = (
    "import featgeo.cli, featgeo.pruning.run\n"
    "from featgeo.corpus import load_corpus\n"
    "from featgeo.corpus.windows import split_tokens\n"
    "from featgeo.models.loading import load_tokenizer\n"
    "corpus, tok = load_corpus('embedded'), load_tokenizer({model!r})\n"
    "ids = [split_tokens(corpus, s, tok) for s in ('calibration', 'eval')]"
)
WRAPPER_GRACE_S = 120.0
GOAL_GB = 24.0  # in 10^9 bytes: stricter than 24 GiB
console = Console(width=160)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=tuple(SHAPES), default="7b")
    p.add_argument("--methods", default="wanda,sparsegpt")
    p.add_argument("--nm", default=None, help="N:M pattern (e.g. 2:4); unstructured 50%% if absent")
    p.add_argument("--calib-samples", type=int, default=128)
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument(
        "--calib-batch-size",
        type=int,
        default=None,
        help="windows per micro-batch, both sides (default: featgeo's, 16384 tokens' worth)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration windows")
    p.add_argument("--model-seed", type=int, default=0, help="seed of the random weights")
    p.add_argument("--eval-windows", type=int, default=1, help="featgeo's perplexity windows")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    p.add_argument("--offload", default="auto", choices=("auto", "none", "layer"))
    p.add_argument(
        "--export",
        default="dense",
        choices=("dense", "masks", "none"),
        help="featgeo's --export; none also skips llm-compressor's save_pretrained",
    )
    p.add_argument("--peer-python", default=None, help="python of the llm-compressor venv")
    p.add_argument("--sides", default="featgeo,llm-compressor")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per process")
    p.add_argument("--cache", default=None, help="model cache (default $FEATGEO_CACHE/...)")
    p.add_argument("--work", default=None, help="work folder (default: TMPDIR/prune_scale-SHAPE)")
    p.add_argument("--keep-outputs", action="store_true", help="keep the pruned outputs")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--build-only", action="store_true", help="build the model, print its folder")
    p.add_argument("--report", default=None, help="print the table of a saved JSON, run nothing")
    return p.parse_args(argv)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> None:
    signal.signal(signal.SIGTERM, _raise_interrupt)  # so that a running wrapper is stopped too
    args = parse_args(argv)
    cache = Path(args.cache) if args.cache else default_cache()
    if args.build_only:
        print(ensure_model(args.shape, args.model_seed, cache))
        return
    if args.report:
        print_report(json.loads(Path(args.report).read_text()))
        return
    work = Path(args.work or Path(tempfile.gettempdir()) / f"prune_scale-{args.shape}")
    (work / "logs").mkdir(parents=True, exist_ok=True)
    device = _resolve_device(args.device)
    args.calib_batch_size = _resolve_batch(args)
    dtype = _resolve_dtype(args.dtype, device)

    # The model is built in its own process, so that none of it stays in this one.
    t0 = time.perf_counter()
    build = [
        sys.executable,
        __file__,
        "--shape",
        args.shape,
        "--model-seed",
        str(args.model_seed),
        "--cache",
        str(cache),
        "--build-only",
    ]
    model = Path(
        subprocess.run(build, check=True, capture_output=True, text=True)
        .stdout.strip()
        .splitlines()[-1]
    )
    console.print(f"model {model} ({time.perf_counter() - t0:.1f} s to build or find)")
    calib = _write_calibration(model, args, work / "calib.pt")

    report = {
        "machine": _machine(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "settings": {
            **vars(args),
            "model_dir": str(model),
            "resolved_device": device,
            "resolved_dtype": dtype,
            "calib_shape": list(calib.shape),
        },
        "baseline": measure(
            [sys.executable, "-c", BASELINE.format(model=str(model))],
            work,
            "baseline",
            args.timeout,
        ),
        "rows": [],
    }
    sides = args.sides.split(",")
    for method in args.methods.split(","):
        row = {"method": method, "structure": args.nm or "unstructured"}
        if "featgeo" in sides:
            row["featgeo"] = run_featgeo(args, model, method, device, work)
            console.print({"featgeo": row["featgeo"]})
        if "llm-compressor" in sides and args.peer_python:
            row["llm-compressor"] = run_peer(args, model, method, device, dtype, work)
            console.print({"llm-compressor": row["llm-compressor"]})
        report["rows"].append(row)
        _save(report, args.json, work)
    print_report(report)  # adds the host bound on the CPU
    _save(report, args.json, work)


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _resolve_batch(args) -> int:
    """featgeo's rule for the micro-batch: as many windows as hold AUTO_CALIB_TOKENS tokens."""
    from featgeo.pruning.config import AUTO_CALIB_TOKENS

    if args.calib_batch_size is not None:
        return min(args.calib_batch_size, args.calib_samples)
    return max(1, min(args.calib_samples, AUTO_CALIB_TOKENS // args.seqlen))


def _resolve_dtype(dtype: str, device: str) -> str:
    """featgeo's rule for --dtype auto: the checkpoint's dtype on CUDA, float32 on the CPU."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if device.startswith("cuda") else "float32"


def _write_calibration(model: Path, args, path: Path) -> torch.Tensor:
    """featgeo's calibration windows, drawn as ``featgeo.pruning.run.prepare`` draws them (the
    model folder's tokenizer, the calibration split, the seed), without loading the model."""
    from featgeo.corpus import load_corpus
    from featgeo.corpus.windows import calibration_windows, split_tokens
    from featgeo.models.loading import load_tokenizer

    tokens = split_tokens(load_corpus("embedded"), "calibration", load_tokenizer(str(model)))
    calib = calibration_windows(tokens, args.calib_samples, args.seqlen, args.seed)
    torch.save(calib, path)  # [calib_samples, seqlen] int64
    return calib


def measure(cmd: list[str], work: Path, name: str, timeout: float, env=None) -> dict:
    """Run ``cmd`` under benchmarks/_measure.py; its log goes to work/logs/NAME.log."""
    result_file = work / "logs" / f"{name}.measure.json"
    result_file.unlink(missing_ok=True)
    log = work / "logs" / f"{name}.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, str(MEASURE), str(result_file), "--timeout", str(timeout), "--", *cmd],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:  # the wrapper kills the command at `timeout`; this is only a last resort
            proc.wait(timeout=timeout + WRAPPER_GRACE_S)
        except subprocess.TimeoutExpired:
            pid_file = Path(f"{result_file}.pid")
            proc.kill()
            if pid_file.is_file():  # the command's process group
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(int(pid_file.read_text()), signal.SIGKILL)
            proc.wait()
            return {"status": f"timeout after {timeout:.0f} s", "log": str(log)}
        except BaseException:  # Ctrl-C or SIGTERM here: the wrapper stops its command too
            proc.terminate()
            proc.wait()
            raise
    Path(f"{result_file}.pid").unlink(missing_ok=True)
    if not result_file.is_file():
        return {"status": f"wrapper failed (exit {proc.returncode})", "log": str(log)}
    result = json.loads(result_file.read_text())
    if result["timed_out"]:
        result["status"] = f"timeout after {timeout:.0f} s"
    elif result.get("stopped_by_signal"):
        result["status"] = f"stopped by signal {result['stopped_by_signal']} from outside"
    else:
        result["status"] = "ok" if result["returncode"] == 0 else f"exit {result['returncode']}"
    result["log"] = str(log)
    return result


def _child_env(device: str) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if device == "cpu":  # llm-compressor picks the GPU whenever one is visible
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def _tail(log: str, lines: int = 15) -> str:
    return "\n".join(Path(log).read_text(errors="replace").splitlines()[-lines:])


def _flags(pairs: dict[str, object]) -> list[str]:
    """``{"--a": 1, "--b": None}`` -> ``["--a", "1"]`` (None values left out)."""
    return [x for key, value in pairs.items() if value is not None for x in (key, str(value))]


def run_featgeo(args, model: Path, method: str, device: str, work: Path):
    """``featgeo prune`` in a fresh process, measured; its output is then deleted."""
    out = work / f"featgeo-{method}"
    shutil.rmtree(out, ignore_errors=True)
    flags = {
        "--model": model, "--method": method, "--calib-samples": args.calib_samples,
        "--seqlen": args.seqlen, "--seed": args.seed, "--eval-windows": args.eval_windows,
        "--device": args.device, "--out": out, "--nm": args.nm, "--dtype": args.dtype,
        "--offload": args.offload, "--calib-batch-size": args.calib_batch_size,
        "--export": args.export,
    }  # fmt: skip
    cmd = [sys.executable, "-m", "featgeo", "prune", *_flags(flags)]
    result = measure(cmd, work, f"featgeo-{method}", args.timeout, _child_env(device))
    result["command"] = " ".join(["featgeo", *cmd[3:]])
    collect_featgeo(result, out, method)
    if not args.keep_outputs:
        shutil.rmtree(out, ignore_errors=True)
    return result


def collect_featgeo(result: dict, out: Path, method: str) -> dict:
    """Add the output's size and what ``prune_summary.json`` says to a measured run."""
    result["output_bytes"] = _tree_bytes(out)
    summary_file = out / method / "prune_summary.json"
    if result["status"] == "ok" and summary_file.is_file():
        summary = json.loads(summary_file.read_text())
        memory = summary.get("memory") or {}
        result.update(
            prune_s=summary["seconds"].get("prune"),
            peak_device_bytes=memory.get("peak_device_bytes"),
            summary_peak_host_rss_bytes=memory.get("peak_host_rss_bytes"),
            sparsity=summary.get("achieved_sparsity"),
            perplexity=summary.get("perplexity"),
            summary_seconds=summary["seconds"],
        )
    elif result["status"] != "ok":  # how far it got: the layer its checkpoint would resume at
        state = out / f".{method}.partial" / "resume_state.json"
        result["progress"] = (
            f"layer {json.loads(state.read_text())['next_layer']}" if state.is_file() else None
        )
        console.print(f"[red]featgeo {method}: {result['status']}[/red] at "
                      f"{result['progress']}\n{_tail(result['log'])}")  # fmt: skip
    return result


def run_peer(args, model: Path, method: str, device: str, dtype: str, work: Path):
    """The llm-compressor peer in a fresh process, measured; its output is then deleted."""
    out = work / f"llmc-{method}"
    shutil.rmtree(out, ignore_errors=True)
    flags = {
        "--model": model, "--calib": work / "calib.pt", "--method": method, "--dtype": dtype,
        "--batch-size": args.calib_batch_size, "--out": out, "--nm": args.nm,
    }  # fmt: skip
    cmd = [args.peer_python, str(PEER_SCRIPT), *_flags(flags)]
    if args.export == "none":  # neither side writes the pruned model
        cmd.append("--no-save")
    result = measure(cmd, work, f"llmc-{method}", args.timeout, _child_env(device))
    collect_peer(result, out, method)
    if not args.keep_outputs:
        shutil.rmtree(out, ignore_errors=True)
    return result


def collect_peer(result: dict, out: Path, method: str) -> dict:
    """Add the output's size and the peer's JSON line to a measured run."""
    result["output_bytes"] = _tree_bytes(out)
    lines = Path(result["log"]).read_text(errors="replace").splitlines()
    line = next((x for x in reversed(lines) if x.startswith('{"peer"')), None)
    if result["status"] == "ok" and line:
        peer = json.loads(line)
        result.update(
            prune_s=peer["seconds"]["oneshot"],
            peer_seconds=peer["seconds"],
            peak_device_bytes=peer["peak_device_bytes"],
            sparsity=peer["sparsity"],
            main_device=peer["main_device"],
        )
    elif result["status"] != "ok":
        # how far it got: the last "(k/n): Calibrating" of the sequential pipeline
        done = [x for x in lines if "): Calib" in x]  # splitlines splits at tqdm's \r too
        result["progress"] = done[-1].split(":")[0].strip() if done else None
        console.print(f"[red]llm-compressor {method}: {result['status']}[/red] at subgraph "
                      f"{result['progress']}\n{_tail(result['log'])}")  # fmt: skip
    return result


def _machine() -> dict:
    info = machine_info()
    try:
        with open("/proc/meminfo") as fh:
            info["ram_gb"] = round(int(fh.readline().split()[1]) * 1024 / GB, 1)
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / GB, 1)
    return info


def _save(report: dict, path: str | None, work: Path) -> None:
    text = json.dumps(report, indent=2)
    (work / "prune_scale.json").write_text(text)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)


METRICS = (  # (label, key, scale, format)
    ("prune s", "prune_s", 1, ".1f"),
    ("process wall s", "wall_s", 1, ".1f"),
    ("peak device GB", "peak_device_bytes", GB, ".3g"),
    ("peak host GB (RSS)", "peak_rss_bytes", GB, ".3g"),
    ("  anonymous (sampled)", "sampled_peak_rss_anon_bytes", GB, ".3g"),
    ("  file-backed (sampled)", "sampled_peak_rss_file_bytes", GB, ".3g"),
    ("GB written", "write_bytes", GB, ".3g"),
    ("GB left on disk", "output_bytes", GB, ".3g"),
)


def goal(method: str, key: str, fg: dict, peer: dict, settings: dict) -> str:
    """The issue's goals, which hold for the 7B shape on a CUDA GPU only."""
    if settings["shape"] != "7b" or not settings["resolved_device"].startswith("cuda"):
        return ""
    value = fg.get(key)
    if value is None:
        return "?"
    if key == "peak_device_bytes" or key == "peak_rss_bytes":
        return f"< {GOAL_GB:.0f}: {'met' if value < GOAL_GB * GB else 'NOT met'}"
    if key == "prune_s" and method == "wanda":
        return f"< 60: {'met' if value < 60 else 'NOT met'}"
    if key == "prune_s" and method == "sparsegpt" and peer.get("prune_s") is not None:
        return f"<= peer: {'met' if value <= peer['prune_s'] else 'NOT met'}"
    return ""


def print_report(report: dict) -> None:
    """The side-by-side table, the machine, and on the CPU the analytical host bound."""
    s = report["settings"]
    if s["resolved_device"] == "cpu" and (Path(s["model_dir"]) / "config.json").is_file():
        sizes = model_sizes(Path(s["model_dir"]))
        report["host_bound"] = {
            m: host_bound(sizes, s["calib_samples"], s["seqlen"], s["calib_batch_size"], m,
                          evaluate=s["eval_windows"] > 0)
            for m in s["methods"].split(",")
        }  # fmt: skip
    m = report["machine"]
    machine = (
        f"{m['cpu']}, {m['cpu_count']} cores, {m.get('ram_gb', '?')} GB RAM, torch "
        f"{m['torch']}, GPU {m['gpu']}"
        + (f" ({m['gpu_memory_gb']} GB)" if "gpu_memory_gb" in m else "")
    )
    table = Table(
        title=f"pruning a random {s['shape']} LLaMA to 50% {s['nm'] or 'unstructured'}, "
        f"{s['calib_samples']} x {s['seqlen']} calibration, micro-batch "
        f"{s['calib_batch_size']}, {s['resolved_dtype']} on {s['resolved_device']}"
    )
    for col in (
        "method",
        "metric",
        "featgeo",
        "llm-compressor",
        "featgeo / llm-compressor",
        "goal (7B, CUDA)",
    ):
        table.add_column(col, justify="left" if col in ("method", "metric") else "right")
    for row in report["rows"]:
        fg, peer = row.get("featgeo", {}), row.get("llm-compressor", {})
        for label, key, scale, spec in METRICS:
            a, b = _value(fg, key, scale), _value(peer, key, scale)
            ratio = f"{a / b:.2f}x" if a is not None and b else "-"
            table.add_row(
                row["method"],
                label,
                _fmt(a, spec, fg),
                _fmt(b, spec, peer),
                ratio,
                goal(row["method"], key, fg, peer, s),
            )
        table.add_section()
    console.print(table)
    console.print(f"machine: {machine}")
    base = report["baseline"].get("peak_rss_bytes")
    if base:
        console.print(
            f"baseline: featgeo imports + tokenized corpus splits = {base / GB:.2f} GB RSS"
        )
    for method, bound in report.get("host_bound", {}).items():
        fg = next((r.get("featgeo", {}) for r in report["rows"] if r["method"] == method), {})
        terms = ", ".join(f"{k} {v / GB:.3f}" for k, v in bound.items() if k != "total")
        measured, anon = fg.get("peak_rss_bytes"), fg.get("sampled_peak_rss_anon_bytes")
        console.print(
            f"host bound, {method} (float32, GB): {terms}; total {bound['total'] / GB:.2f}"
            + (f" + baseline {base / GB:.2f} = {(bound['total'] + base) / GB:.2f}" if base else "")
            + (f"; featgeo measured {measured / GB:.2f}" if measured else "")
            + (f" (anonymous {anon / GB:.2f})" if anon else "")
        )
    console.print(f"command: {report['command']}")


def _value(side: dict, key: str, scale: float):
    value = side.get(key)
    return None if value is None else value / scale


def _fmt(value, spec: str, side: dict) -> str:
    if value is not None:
        return format(value, spec)
    return side.get("status", "-") if side and side.get("status") != "ok" else "-"


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: the running command was stopped too
        console.print(f"[red]interrupted ({exc or 'Ctrl-C'}); the running command was stopped")
        sys.exit(130)
