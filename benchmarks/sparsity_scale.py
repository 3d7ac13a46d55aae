"""The sparsity analyses at LLaMA-7B scale: seconds and peak memory of every ``featgeo hamming``
command on 7B-shaped pruned matrices.

The script writes a folder shaped like ``featgeo prune``'s export,
``{root}/{method}/layer{L}-{component}.pt``, holding all seven Llama components of ``--layers``
layers at LLaMA-7B's shapes (q, k, v, o: 4096 x 4096; gate, up: 11008 x 4096; down:
4096 x 11008; nn.Linear layout [out, in]). The weights are random (fixed seed) and pruned to 50%
as Wanda prunes: in every output row, the half of the weights with the lowest |W| x ||X_j||
(the per-input-channel activation norm, here drawn at random too) is set to zero. Under the
default ``--axis columns`` that gives 11008 features of length 4096 for down_proj and 4096
features of length 11008 for gate/up.

Then every ``featgeo hamming`` command runs on it as a user would run it, in a child process
(``python -m featgeo hamming ...``), one at a time: ``single``, ``multi`` and ``seeds`` on one
matrix of each shape (layer 0's q_proj, up_proj and down_proj), ``scan`` over the whole folder
and ``report`` over what ``multi``, ``seeds`` and ``scan`` wrote. For each run: wall seconds and
the peak resident memory of the command's process (``ru_maxrss`` from ``os.wait4``, taken by a
small launcher process: see ``run_child``). Defaults are the commands' own (128 neighbours,
k = 8, 10 executions, 10 seeds x k in 4 8 16); ``--n-features`` widens the neighbourhood.

With ``--masks`` the same matrices are also written as bit-packed mask files
(``layer{L}-{component}.mask.safetensors``, :func:`featgeo.files.save_packed_mask`) in a
second folder, and the same commands are measured on them; the bytes on disk of both folders
are reported, and every output of the mask run is checked equal to the dense run's
(``differing_outputs``).

No peer library runs these analyses (they are the seed's own scripts). ``--baseline`` adds the
plain-numpy way to get the one quantity that needs all pairs, each feature's Hamming distance to
its nearest other feature (``scan``'s ``nn_hamming_*``), on layer 0's down_proj: the
float32 matmul identity d(a, b) = |a| + |b| - 2 a.b over the full [N, N] matrix at once
(scipy's ``cdist(..., "hamming")`` would need ~270 s for this shape, see
benchmarks/hamming.py). Its min / mean / median / max are checked against the scan's row.

    python benchmarks/sparsity_scale.py
    python benchmarks/sparsity_scale.py --masks --baseline --json sparsity_scale.json
    python benchmarks/sparsity_scale.py --dtype bfloat16 --layers 1 --seeds 3
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from _machine import machine_info
from rich.console import Console
from rich.table import Table

from featgeo.models.components import COMPONENTS

console = Console(width=160)

SHAPES = {  # nn.Linear layout [out_features, in_features] of LLaMA-7B
    "self_attn.q_proj": (4096, 4096),
    "self_attn.k_proj": (4096, 4096),
    "self_attn.v_proj": (4096, 4096),
    "self_attn.o_proj": (4096, 4096),
    "mlp.gate_proj": (11008, 4096),
    "mlp.up_proj": (11008, 4096),
    "mlp.down_proj": (4096, 11008),
}
assert tuple(SHAPES) == COMPONENTS
ANALYSED = ("self_attn.q_proj", "mlp.up_proj", "mlp.down_proj")
"""One matrix of each shape, analysed by single, multi and seeds."""
GiB = 2**30


# --- the matrices ----------------------------------------------------------------------------


def wanda_pruned(out_features: int, in_features: int, generator: torch.Generator) -> torch.Tensor:
    """A random [out, in] float32 matrix with, per output row, the in/2 weights of lowest
    |W| x ||X_j|| set to zero (Wanda's score and comparison group, Sun et al. 2023, §3)."""
    weight = torch.randn(out_features, in_features, generator=generator) * 0.02
    act_norm = torch.rand(in_features, generator=generator) * 4 + 0.1  # ||X_j||_2, [in]
    score = weight.abs() * act_norm  # [out, in]
    pruned = torch.topk(score, in_features // 2, dim=1, largest=False).indices  # [out, in/2]
    del score
    return weight.scatter_(1, pruned, 0.0)


def write_exports(root: Path, method: str, layers: int, dtype: torch.dtype, seed: int) -> None:
    """{root}/{method}/layer{L}-{component}.pt for every layer and component."""
    folder = root / method
    folder.mkdir(parents=True, exist_ok=True)
    for layer in range(layers):
        for i, (component, shape) in enumerate(SHAPES.items()):
            generator = torch.Generator().manual_seed(seed * 1000 + layer * 10 + i)
            weight = wanda_pruned(*shape, generator).to(dtype).contiguous()
            torch.save(weight, folder / f"layer{layer}-{component}.pt")


def write_masks(dense_root: Path, masks_root: Path, method: str) -> None:
    """The same matrices as bit-packed masks: {masks_root}/{method}/layer{L}-{component}
    .mask.safetensors (written by ``featgeo.files.save_packed_mask``)."""
    from featgeo.files import save_packed_mask

    folder = masks_root / method
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted((dense_root / method).glob("layer*.pt")):
        weight = torch.load(path, weights_only=True)
        save_packed_mask(folder / (path.stem + ".mask.safetensors"), weight != 0)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# --- running a command -----------------------------------------------------------------------


@dataclass
class Run:
    input: str
    """dense (.pt matrices) or masks (.mask.safetensors)."""
    command: str
    """single, multi, seeds, scan, report, baseline."""
    matrix: str
    """What it ran on: a component and its shape, or the whole folder."""
    seconds: float
    peak_rss_gib: float
    returncode: int
    load_average: float
    """1-minute load average when the command ended (other jobs sharing the CPUs show here)."""
    argv: str
    log: str


# ``ru_maxrss`` of a child forked from this process starts at this process's own peak (Linux
# carries the forked copy's high-water mark across exec), and this process held the generated
# matrices. So each command is started by a small launcher that reports the peak of its own
# child: what the command alone used.
LAUNCHER = """
import os, sys
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as fh:
    fh.write(str(usage.ru_maxrss))  # KiB on Linux
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_child(argv: list[str], log: Path, timeout: float | None) -> tuple[float, float, int]:
    """Run ``argv`` (``argv[0]`` an absolute path) with its output in ``log``; (wall seconds,
    peak RSS GiB of the command's process, return code). A command past ``timeout`` seconds is
    killed with its launcher (return code -9)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    peak_file = log.with_suffix(".maxrss")
    peak_file.unlink(missing_ok=True)
    launcher = [sys.executable, "-c", LAUNCHER, str(peak_file), *argv]
    with open(log, "wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(launcher, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
        try:
            returncode = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            returncode = proc.wait()
        wall = time.perf_counter() - start
    peak = int(peak_file.read_text()) * 1024 / GiB if peak_file.is_file() else float("nan")
    return wall, peak, returncode


def featgeo_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "featgeo", "hamming", *args]


def commands(root: Path, work: Path, args) -> list[tuple[str, str, list[str]]]:
    """(command, matrix description, argv) of every run, in order."""
    method, runs = args.method, []
    for component in ANALYSED:
        out_f, in_f = SHAPES[component]
        what = f"layer0 {component} [{out_f}, {in_f}]"
        path = next((root / method).glob(f"layer0-{component}.*"))
        name = f"{method}-layer0-{component}"
        single = ["single", str(path), "--n-features", str(args.n_features)]
        single += ["--output-json", str(work / "single" / f"{name}.json")]
        runs.append(("single", what, featgeo_argv(*single)))
        multi = ["multi", str(path), "--n-executions", str(args.n_executions)]
        multi += ["--n-features", str(args.n_features)]
        multi += ["--output-json", str(work / "multi" / f"{name}.json")]
        runs.append(("multi", what, featgeo_argv(*multi)))
        seeds = ["seeds", "--method", method, "--layer", "0", "--component", component]
        seeds += ["--seeds", str(args.seeds), "--n-similar", str(args.n_features)]
        seeds += ["--matrices-dir", str(root)]
        seeds += ["--output-dir", str(work / "seeds" / method / component)]
        runs.append(("seeds", what, featgeo_argv(*seeds)))
    n = len(list((root / method).iterdir()))
    scan = ["scan", "--matrices-dir", str(root), "--methods", method]
    scan += ["--out", str(work / "scan"), "--device", "cpu"]
    runs.append(("scan", f"all {n} matrices ({args.layers} layers x 7)", featgeo_argv(*scan)))
    report = ["report", "--results-dir", str(work / "multi"), "--out", str(work / "report")]
    report += ["--seeds-dir", str(work / "seeds"), "--scan-csv", str(work / "scan" / "scan.csv")]
    runs.append(("report", "3 multi JSONs, 3 seeds trees, the scan", featgeo_argv(*report)))
    return runs


def measure(kind: str, root: Path, work: Path, args) -> list[Run]:
    shutil.rmtree(work, ignore_errors=True)  # every command writes into a fresh folder
    rows = []
    for command, what, argv in commands(root, work, args):
        log = work / "logs" / f"{len(rows):02d}-{command}.log"
        console.print(f"[dim]{kind}: {shlex.join(argv[3:])}[/dim]", highlight=False)
        seconds, rss, rc = run_child(argv, log, args.timeout)
        load = os.getloadavg()[0]
        rows.append(Run(kind, command, what, seconds, rss, rc, load, shlex.join(argv), str(log)))
        status = "ok" if rc == 0 else f"[red]exit {rc}[/red] (see {log})"
        console.print(
            f"  {seconds:.1f} s, peak RSS {rss:.2f} GiB, load {load:.1f}, {status}",
            highlight=False,
        )
    return rows


# --- the plain-numpy baseline ----------------------------------------------------------------

BASELINE = """
import json, sys, time
import numpy as np
import torch
start = time.perf_counter()
w = torch.load(sys.argv[1], weights_only=True)
a = (w != 0).numpy().T.astype(np.float32)  # [N, D] masks of the columns
ones = a.sum(axis=1)  # [N]
dist = ones[:, None] + ones[None, :] - 2 * (a @ a.T)  # [N, N] float32, exact integers < 2^24
np.fill_diagonal(dist, np.inf)
nn = dist.min(axis=1).astype(np.float64) / a.shape[1]  # as the scan: int / D in float64
print(json.dumps({"min": float(nn.min()), "mean": float(nn.mean()),
                  "median": float(np.median(nn)), "max": float(nn.max()),
                  "seconds": time.perf_counter() - start}))
"""


def baseline(root: Path, work: Path, args) -> tuple[Run, dict | None]:
    path = root / args.method / "layer0-mlp.down_proj.pt"
    log = work / "logs" / "baseline.log"
    argv = [sys.executable, "-c", BASELINE, str(path)]
    console.print("[dim]baseline: numpy float32 matmul, all pairs of down_proj[/dim]")
    seconds, rss, rc = run_child(argv, log, args.timeout)
    stats = json.loads(log.read_text().strip().splitlines()[-1]) if rc == 0 else None
    what = "layer0 mlp.down_proj [4096, 11008]"
    cmd = "numpy NN-Hamming (all pairs, matmul)"
    load = os.getloadavg()[0]
    run = Run("dense", cmd, what, seconds, rss, rc, load, f"python -c BASELINE {path}", str(log))
    return run, stats


def scan_row(work: Path, method: str, component: str) -> dict | None:
    csv_path = work / "scan" / "scan.csv"
    if not csv_path.is_file():
        return None
    with open(csv_path, newline="") as fh:
        for row in csv.DictReader(fh):
            if (row["method"], row["layer"], row["component"]) == (method, "0", component):
                return row
    return None


PATH_KEYS = ("path", "matrices_dir", "out")
"""JSON keys that name files or folders (they differ between the dense and the masks runs)."""


def _without_paths(value):
    """A JSON value without the ``PATH_KEYS``, at any depth."""
    if isinstance(value, dict):
        return {k: _without_paths(v) for k, v in value.items() if k not in PATH_KEYS}
    if isinstance(value, list):
        return [_without_paths(v) for v in value]
    return value


def differing_outputs(dense_work: Path, masks_work: Path) -> list[str]:
    """Output files of the dense and the masks runs that differ: JSON compared without the
    ``PATH_KEYS``, everything else (CSV, PNG figures) byte for byte. Logs are skipped, and the
    report's two pages, which name their input folders (its figures are compared)."""
    skip = ("logs/", "report/report.")
    names = {
        p.relative_to(root).as_posix()
        for root in (dense_work, masks_work)
        for p in root.rglob("*")
        if p.is_file()
    }
    differing = []
    for name in sorted(n for n in names if not n.startswith(skip)):
        a, b = dense_work / name, masks_work / name
        if not (a.is_file() and b.is_file()):
            differing.append(f"{name} (only one run wrote it)")
        elif name.endswith(".json"):
            same = _without_paths(json.loads(a.read_text())) == _without_paths(
                json.loads(b.read_text())
            )
            differing += [] if same else [name]
        elif a.read_bytes() != b.read_bytes():
            differing.append(name)
    return differing


# --- report ----------------------------------------------------------------------------------


def report(rows: list[Run], info: dict, sizes: dict[str, int], args) -> None:
    console.print(
        f"machine: {info['cpu']}, {info['cpu_count']} CPUs, {info['ram_gib']:.0f} GiB RAM, "
        f"torch {info['torch']}, numpy {info['numpy']}, OMP_NUM_THREADS="
        f"{info['omp_num_threads']}, load average at start {info['load_average_start']}"
    )
    table = Table(title=f"featgeo hamming on LLaMA-7B-shaped matrices ({args.dtype})")
    for column in ("input", "command", "matrix", "seconds", "peak RSS GiB", "load", "exit"):
        right = column in ("seconds", "peak RSS GiB", "load", "exit")
        table.add_column(column, justify="right" if right else "left")
    for row in rows:
        table.add_row(
            row.input,
            row.command,
            row.matrix,
            f"{row.seconds:.1f}",
            f"{row.peak_rss_gib:.2f}",
            f"{row.load_average:.1f}",
            str(row.returncode),
        )
    console.print(table)
    for kind, size in sizes.items():
        console.print(f"{kind} inputs on disk: {size:,} bytes ({size / GiB:.3f} GiB)")


def machine(args) -> dict:
    info = machine_info()
    info["ram_gib"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB
    info["omp_num_threads"] = os.environ.get("OMP_NUM_THREADS", "unset")
    info["load_average_start"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return info


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--root", default=None, help="work folder (default: a temporary one, removed at the end)")
    add("--method", default="wanda", help="method folder name of the export")
    add("--layers", type=int, default=2, help="layers exported (7 matrices each)")
    add("--dtype", default="float32", choices=["float32", "bfloat16"])
    add("--seed", type=int, default=0, help="seed of the random weights")
    add("--n-executions", type=int, default=10, help="hamming multi --n-executions")
    add("--seeds", type=int, default=10, help="hamming seeds --seeds")
    add("--n-features", type=int, default=128, help="neighbours: --n-features / --n-similar")
    add("--masks", action="store_true", help="also measure on packed .mask.safetensors files")
    add("--baseline", action="store_true", help="also run the plain-numpy NN-Hamming baseline")
    add("--timeout", type=float, default=None, help="kill a command after this many seconds")
    add("--json", default=None, help="also write machine + rows to this file")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    info = machine(args)
    temporary = args.root is None
    base = Path(tempfile.mkdtemp(prefix="featgeo-sparsity-scale-") if temporary else args.root)
    dense_root, masks_root = base / "dense" / "matrices", base / "masks" / "matrices"
    try:
        start = time.perf_counter()
        if not (dense_root / args.method).is_dir():
            dtype = getattr(torch, args.dtype)
            write_exports(dense_root, args.method, args.layers, dtype, args.seed)
        console.print(f"wrote the dense exports in {time.perf_counter() - start:.1f} s")
        sizes = {"dense": folder_bytes(dense_root)}
        rows = measure("dense", dense_root, base / "dense" / "work", args)
        checks = {}
        if args.baseline:
            run, stats = baseline(dense_root, base / "dense" / "work", args)
            rows.append(run)
            ours = scan_row(base / "dense" / "work", args.method, "mlp.down_proj")
            if stats is not None and ours is not None:
                same = all(
                    abs(stats[k] - float(ours[f"nn_hamming_{k}"])) <= 1e-12
                    for k in ("min", "mean", "median", "max")
                )
                checks["baseline_equals_scan_nn_hamming"] = same
                console.print(f"baseline NN-Hamming stats equal the scan's: {same}")
        if args.masks:
            if not (masks_root / args.method).is_dir():
                write_masks(dense_root, masks_root, args.method)
            sizes["masks"] = folder_bytes(masks_root)
            rows += measure("masks", masks_root, base / "masks" / "work", args)
            differing = differing_outputs(base / "dense" / "work", base / "masks" / "work")
            checks["masks_outputs_equal_dense"] = not differing
            checks["masks_outputs_differing"] = differing
            console.print(
                "every output of the masks run equals the dense run's (JSON without input "
                f"paths, other files byte for byte): {not differing}"
                + (f"; differing: {', '.join(differing)}" if differing else "")
            )
        report(rows, info, sizes, args)
        if args.json:
            payload = {
                "machine": info,
                "config": vars(args),
                "bytes_on_disk": sizes,
                "checks": checks,
                "rows": [asdict(r) for r in rows],
            }
            Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
    finally:
        if temporary:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
