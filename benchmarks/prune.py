"""Pruning speed: featgeo vs llm-compressor on the embedded SmolLM2-135M, side by side.

Both prune all 30 decoder layers (all seven linear components) to 50% with the same 32 x 512
calibration windows from the embedded corpus; pruning time is measured apart from evaluation.
Perplexity of both results is computed by the same featgeo code on the same eval windows, so
speed is compared at equal quality.

    python benchmarks/prune.py                                   # featgeo only
    python benchmarks/prune.py --peer-python .bench/llmc/bin/python   # + llm-compressor

`make bench` builds the peer's virtual environment (.bench/llmc: torch==2.13.0 CPU and
llmcompressor==0.14.0.1, which pins its own transformers) and runs the second form.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from featgeo.models import load_model
from featgeo.models.perplexity import perplexity
from featgeo.pruning.config import PruneConfig
from featgeo.pruning.run import prepare, run_prune

PEER_SCRIPT = Path(__file__).with_name("_llmcompressor_peer.py")
console = Console(width=160)


def peer_prune(python: str, model_dir: str, calib: Path, method: str, nm: str, work: Path):
    out = work / f"peer-{method}-{nm.replace(':', '_')}"
    start = time.perf_counter()
    proc = subprocess.run(
        [python, str(PEER_SCRIPT), model_dir, str(calib), method, nm, str(out)],
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        console.print(f"[red]peer failed[/red] ({method} {nm}):\n{proc.stderr[-3000:]}")
        return None
    line = next(x for x in reversed(proc.stdout.splitlines()) if x.startswith('{"peer"'))
    result = json.loads(line)
    result["wall_seconds"] = wall
    result["weights"] = torch.load(out / "weights.pt", weights_only=True)
    return result


def peer_perplexity(weights: dict, model_spec: str, eval_ids, device) -> tuple[float, float]:
    model = load_model(model_spec, device=device)
    zeros = total = 0
    for name, weight in weights.items():
        module = model.get_submodule(name)
        module.weight.data.copy_(weight)
        zeros += int((weight == 0).sum())
        total += weight.numel()
    return perplexity(model, eval_ids, description="peer perplexity"), zeros / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model",
        default="embedded",
        help="embedded, or a local folder (e.g. a random-init model of the same "
        "shape, where the real weights cannot travel)",
    )
    parser.add_argument("--methods", default="magnitude,wanda,sparsegpt")
    parser.add_argument("--structures", default="unstructured,2:4")
    parser.add_argument("--peer-python", default=None, help="python of the llm-compressor venv")
    parser.add_argument("--calib-samples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--eval-windows", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="featgeo-bench-"))
    rows = []
    for structure in args.structures.split(","):
        nm = None if structure == "unstructured" else structure
        for method in args.methods.split(","):
            config = PruneConfig(
                model=args.model,
                methods=[method],
                nm=nm,
                sparsity=None if nm else 0.5,
                calib_samples=args.calib_samples,
                seqlen=args.seqlen,
                eval_windows=args.eval_windows,
                device=args.device,
                out=str(work / structure.replace(":", "_")),
            )
            result = run_prune(config)[0]
            row = {
                "method": method,
                "structure": structure,
                "featgeo_prune_s": result.seconds["prune"],
                "featgeo_eval_s": result.seconds["eval_pruned"],
                "featgeo_ppl": result.pruned_ppl,
                "dense_ppl": result.dense_ppl,
                "featgeo_sparsity": result.sparsity,
            }
            if args.peer_python and method != "magnitude":
                prep = prepare(config)
                calib = work / "calib.pt"
                torch.save(prep.calib_ids.cpu(), calib)
                peer = peer_prune(
                    args.peer_python,
                    prep.model_source,
                    calib,
                    method,
                    "none" if nm is None else nm,
                    work,
                )
                if peer is not None:
                    ppl, sparsity = peer_perplexity(
                        peer["weights"], config.model, prep.eval_ids, prep.device
                    )
                    row.update(
                        peer_prune_s=peer["seconds"],
                        peer_ppl=ppl,
                        peer_sparsity=sparsity,
                        speedup=peer["seconds"] / row["featgeo_prune_s"],
                    )
            rows.append(row)
            console.print(row)
    report(rows, args)


def report(rows: list[dict], args) -> None:
    machine = (
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, "
        f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU only'}"
    )
    table = Table(
        title=f"pruning {args.model} to 50%, {args.calib_samples} x {args.seqlen} "
        f"calibration ({machine})"
    )
    for col in (
        "method",
        "structure",
        "featgeo prune s",
        "llm-compressor prune s",
        "speed-up",
        "featgeo ppl",
        "llm-compressor ppl",
        "sparsity",
    ):
        table.add_column(col, justify="left" if col in ("method", "structure") else "right")
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    for r in rows:
        table.add_row(
            r["method"],
            r["structure"],
            fmt(r["featgeo_prune_s"], ".1f"),
            fmt(r.get("peer_prune_s"), ".1f"),
            fmt(r.get("speedup"), ".2f") + "x",
            fmt(r["featgeo_ppl"], ".2f"),
            fmt(r.get("peer_ppl"), ".2f"),
            fmt(r["featgeo_sparsity"], ".2%"),
        )
    console.print(table)
    console.print(
        f"dense perplexity {rows[0]['dense_ppl']:.2f} on {args.eval_windows} x "
        f"{args.seqlen} eval tokens; command: {' '.join(sys.argv)}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
