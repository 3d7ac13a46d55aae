"""Hamming engine speed: featgeo vs scipy vs faiss, side by side, on one machine in one run.

Cases (features are the columns of a [D, N] matrix; every tool gets the same [N, D] masks):

* a random 50% mask of LLaMA-7B down_proj's shape, 4096 x 11008 (N = 11008, D = 4096):
  all 121M pairs, and the top-129 use case of ``nearest_features`` (one reference + 128
  neighbours);
* the real exported matrices of one layer of one method (all seven components), all pairs;
* with ``--scan-dir``: the whole ``featgeo hamming scan`` (``run_scan``) over wanda + sparsegpt.

Tools: featgeo ``pairwise_hamming`` (bool masks in, packing included; ``--device cuda`` uses the
float32 matmul path), ``scipy.spatial.distance.cdist(..., "hamming")`` (x D for counts),
``faiss.hammings`` called directly on pre-packed codes, and ``faiss.IndexBinaryFlat`` (search
with k = N returns all pairs, sorted per query). Slow tools are timed on a subset of query rows
and extrapolated linearly in the number of queries (all-pairs work is linear in it); the
output says which. Every tool's integers are checked against featgeo's on the part it computed.

    python benchmarks/hamming.py
    python benchmarks/hamming.py --scan-dir demo_out/clustering_characterization --json h.json
    python benchmarks/hamming.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from _machine import machine_info
from rich.console import Console
from rich.table import Table

from featgeo.models.components import COMPONENTS
from featgeo.sparsity.hamming import nearest_features, pack_masks, pairwise_hamming
from featgeo.sparsity.matrices import feature_masks, load_matrix

console = Console(width=150)


def machine() -> dict:
    import faiss
    import scipy

    return {**machine_info(), "faiss_threads": faiss.omp_get_max_threads(),
            "scipy": scipy.__version__, "faiss": faiss.__version__}  # fmt: skip


def timed(fn: Callable, repeat: int = 1):
    """Best wall time of ``repeat`` calls, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


# --- the tools, each returning [Nq, N] integer distances --------------------------------------


def numpy_fallback(masks_q: np.ndarray, masks_db: np.ndarray) -> np.ndarray:
    """featgeo without faiss installed: blocked XOR + ``np.bitwise_count``."""
    from featgeo.sparsity import hamming

    real = hamming._faiss
    hamming._faiss = lambda: None
    try:
        return pairwise_hamming(masks_q, masks_db)
    finally:
        hamming._faiss = real


def faiss_codes(masks: np.ndarray) -> np.ndarray:
    """Plain packbits codes (D / 8 bytes per feature); IndexBinaryFlat needs D % 8 == 0."""
    return np.ascontiguousarray(np.packbits(masks, axis=1))


def faiss_hammings(codes_q: np.ndarray, codes_db: np.ndarray) -> np.ndarray:
    import faiss

    out = np.empty((codes_q.shape[0], codes_db.shape[0]), dtype=np.int32)
    faiss.hammings(
        faiss.swig_ptr(codes_q),
        faiss.swig_ptr(codes_db),
        codes_q.shape[0],
        codes_db.shape[0],
        codes_q.shape[1],
        faiss.swig_ptr(out),
    )
    return out


def binary_index(codes_db: np.ndarray, d: int):
    import faiss

    index = faiss.IndexBinaryFlat(d)
    index.add(codes_db)
    return index


def index_all_pairs(index, codes_q: np.ndarray) -> np.ndarray:
    """k = N search, scattered back from (sorted distances, labels) to an [Nq, N] matrix."""
    n = index.ntotal
    dist, labels = index.search(codes_q, n)
    out = np.empty((codes_q.shape[0], n), dtype=np.int32)
    np.put_along_axis(out, labels, dist, axis=1)
    return out


def scipy_counts(masks_q: np.ndarray, masks_db: np.ndarray) -> np.ndarray:
    from scipy.spatial.distance import cdist

    return np.rint(cdist(masks_q, masks_db, "hamming") * masks_q.shape[1]).astype(np.int32)


# --- cases -----------------------------------------------------------------------------------


def all_pairs_case(
    case: str, masks: np.ndarray, args, *, scipy_rows: int | None, index_rows: int | None
) -> list[dict]:
    """All pairs with every tool; ``*_rows`` = number of query rows timed for the slow tools
    (None = all), extrapolated linearly to all N queries."""
    n, d = masks.shape
    rows = []
    pairwise_hamming(masks[:8])  # warm-up: faiss import and OpenMP threads
    t, reference = timed(lambda: pairwise_hamming(masks), args.repeat)
    rows.append(_row(case, "featgeo pairwise_hamming (cpu, faiss)", t, n, n, d))
    if args.device == "cuda":
        pairwise_hamming(masks[:64], device="cuda")  # warm-up: context, kernels
        t, cuda = timed(lambda: pairwise_hamming(masks, device="cuda"), args.repeat)
        rows.append(_row(case, "featgeo pairwise_hamming (cuda matmul)", t, n, n, d))
        rows[-1]["identical"] = bool(np.array_equal(cuda, reference))
    q = n if index_rows is None else min(n, index_rows)
    t, got = timed(lambda: numpy_fallback(masks[:q], masks), args.repeat if q == n else 1)
    rows.append(_row(case, "featgeo pairwise_hamming (numpy fallback)", t, q, n, d))
    rows[-1]["identical"] = bool(np.array_equal(got, reference[:q]))

    codes = faiss_codes(masks)
    t, direct = timed(lambda: faiss_hammings(codes, codes), args.repeat)
    rows.append(_row(case, "faiss.hammings (pre-packed)", t, n, n, d))
    rows[-1]["identical"] = bool(np.array_equal(direct, reference))

    q = n if index_rows is None else min(n, index_rows)
    index = binary_index(codes, d)
    t, got = timed(lambda: index_all_pairs(index, codes[:q]), args.repeat if q == n else 1)
    rows.append(_row(case, "faiss.IndexBinaryFlat search k=N", t, q, n, d))
    rows[-1]["identical"] = bool(np.array_equal(got, reference[:q]))

    q = n if scipy_rows is None else min(n, scipy_rows)
    t, got = timed(lambda: scipy_counts(masks[:q], masks), args.repeat if q == n else 1)
    rows.append(_row(case, 'scipy cdist(..., "hamming") x D', t, q, n, d))
    rows[-1]["identical"] = bool(np.array_equal(got, reference[:q]))

    rows[0]["identical"] = True
    base = rows[0]["seconds"]
    for row in rows:
        row["ratio_vs_featgeo"] = row["seconds"] / base
    return rows


def _row(case: str, tool: str, measured: float, queries: int, n: int, d: int) -> dict:
    """Seconds for all N queries (measured, or extrapolated from ``queries``)."""
    return {
        "case": case,
        "tool": tool,
        "seconds": measured * n / queries,
        "measured_seconds": measured,
        "queries_timed": queries,
        "extrapolated": queries < n,
        "n": n,
        "d": d,
    }


def top_n_case(masks: np.ndarray, args) -> list[dict]:
    """The ``nearest_features`` use case: 128 nearest of one reference (k = 129 with itself)."""
    n, d = masks.shape
    refs = np.random.default_rng(0).choice(n, args.top_refs, replace=False)
    t_ours, ours = timed(lambda: [nearest_features(masks, int(i), 128) for i in refs])
    t_build, (codes, index) = timed(lambda: (c := faiss_codes(masks), binary_index(c, d)))
    t_one, theirs = timed(lambda: [index.search(codes[i : i + 1], 129) for i in refs])
    t_batch, batch = timed(lambda: index.search(codes[refs], 129))
    # Ties may be ordered differently; the distance lists (itself, at 0, dropped) must agree.
    expected = np.array([o.distances for o in ours])  # [refs, 128]
    one_by_one = np.array([np.sort(dist[0])[1:] for dist, _ in theirs])
    batched = np.sort(batch[0], axis=1)[:, 1:]
    same = np.array_equal(one_by_one, expected) and np.array_equal(batched, expected)
    case = f"top-128 of one reference, N={n} D={d} ({args.top_refs} references)"
    rows = [
        ("featgeo nearest_features (one at a time; packs all N masks per call)", t_ours),
        ("faiss.IndexBinaryFlat k=129 (one at a time; index built beforehand)", t_one),
        ("faiss.IndexBinaryFlat k=129 (all references in one search)", t_batch),
    ]
    out = [
        {
            "case": case,
            "tool": tool,
            "seconds": t / args.top_refs,
            "timed_on": f"per reference (mean of {args.top_refs})",
            "identical": same,
            "ratio_vs_featgeo": t / t_ours,
            "extrapolated": False,
        }
        for tool, t in rows
    ]
    out.append(
        {
            "case": case,
            "tool": "faiss packbits + IndexBinaryFlat.add (the index build)",
            "seconds": t_build,
            "timed_on": "once, not per reference",
            "identical": None,
            "ratio_vs_featgeo": t_build / (t_ours / args.top_refs),
            "extrapolated": False,
        }
    )
    return out


def real_masks(folder: Path, method: str, layer: int, axis: str) -> dict[str, np.ndarray]:
    out = {}
    for component in COMPONENTS:
        path = folder / method / f"layer{layer}-{component}.pt"
        if not path.is_file():
            raise FileNotFoundError(f"'{path}' does not exist; pass --matrices-dir and --layer")
        out[component] = feature_masks(load_matrix(path), axis, warn_dense=False)
    return out


def real_case(args) -> list[dict]:
    """All seven components of one layer, each tool on every component, seconds summed."""
    masks = real_masks(Path(args.matrices_dir), args.method, args.layer, "columns")
    per_component = [
        all_pairs_case(name, m, args, scipy_rows=None, index_rows=None) for name, m in masks.items()
    ]
    case = f"{args.method} layer {args.layer}, all 7 components, all pairs"
    rows = []
    for i, first in enumerate(per_component[0]):
        group = [rows_[i] for rows_ in per_component]
        rows.append(
            {
                "case": case,
                "tool": first["tool"],
                "seconds": sum(r["seconds"] for r in group),
                "extrapolated": False,
                "identical": all(r["identical"] for r in group),
                "shapes": {name: list(m.shape) for name, m in masks.items()},
            }
        )
    for row in rows:
        row["ratio_vs_featgeo"] = row["seconds"] / rows[0]["seconds"]
    return rows


def scan_case(args) -> list[dict]:
    from featgeo.sparsity.scan import run_scan

    with tempfile.TemporaryDirectory(prefix="featgeo-scan-bench-") as tmp:
        start = time.perf_counter()
        result = run_scan(
            matrices_dir=args.scan_dir,
            methods=args.scan_methods,
            out=Path(tmp) / "scan",
            device=args.device,
        )
        wall = time.perf_counter() - start
    return [
        {
            "case": f"featgeo hamming scan ({args.scan_methods}), {len(result.rows)} matrices",
            "tool": f"run_scan (order_by={result.config.order_by}, device={args.device})",
            "seconds": wall,
            "matrices": len(result.rows),
            "extrapolated": False,
            "identical": None,
            "ratio_vs_featgeo": 1.0,
        }
    ]


def report(rows: list[dict], info: dict) -> None:
    console.print(
        f"machine: {info['cpu']}, {info['cpu_count']} CPUs, torch {info['torch']} "
        f"({info['torch_threads']} threads), faiss {info['faiss']} ({info['faiss_threads']} "
        f"threads), scipy {info['scipy']}, numpy {info['numpy']}, GPU: {info['gpu']}"
    )
    for case in dict.fromkeys(row["case"] for row in rows):
        table = Table(title=case, title_justify="left")
        for column in ("tool", "seconds", "ratio vs featgeo", "same integers", "timed on"):
            right = column in ("seconds", "ratio vs featgeo")
            table.add_column(column, justify="right" if right else "left")
        for row in (r for r in rows if r["case"] == case):
            if row.get("extrapolated"):
                timed_on = (
                    f"{row['queries_timed']} of {row['n']} query rows "
                    f"({row['measured_seconds']:.2f} s), extrapolated x {row['n']}/"
                    f"{row['queries_timed']}"
                )
            elif row.get("timed_on"):
                timed_on = row["timed_on"]
            else:
                timed_on = "all"
            same = {True: "yes", False: "NO", None: "-"}[row.get("identical")]
            table.add_row(
                row["tool"],
                f"{row['seconds']:.4g}",
                f"{row['ratio_vs_featgeo']:.2f}x",
                same,
                timed_on,
            )
        console.print(table)
    console.print("seconds: best of --repeat for tools timed on all rows; ratio = tool / featgeo")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--matrices-dir", default="demo_out/clustering_characterization")
    parser.add_argument("--method", default="wanda", help="method folder of the real-matrix case")
    parser.add_argument("--layer", type=int, default=15, help="layer of the real-matrix case")
    parser.add_argument("--rows", type=int, default=4096, help="D of the synthetic mask")
    parser.add_argument("--cols", type=int, default=11008, help="N of the synthetic mask")
    parser.add_argument(
        "--scipy-rows", type=int, default=256, help="query rows timed for scipy (extrapolated)"
    )
    parser.add_argument(
        "--index-rows",
        type=int,
        default=1024,
        help="query rows timed for IndexBinaryFlat k=N (extrapolated)",
    )
    parser.add_argument("--top-refs", type=int, default=32, help="references of the top-N case")
    parser.add_argument("--repeat", type=int, default=3, help="best of R for the fast tools")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--scan-dir", default=None, help="also time run_scan over this folder")
    parser.add_argument("--scan-methods", default="wanda,sparsegpt")
    parser.add_argument("--json", default=None, help="also write machine + rows to this file")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs a CUDA device")

    info = machine()
    rng = np.random.default_rng(0)
    # [D, N] mask with 50% zeros, features = the N columns -> [N, D] feature masks.
    masks = np.ascontiguousarray((rng.random((args.rows, args.cols)) < 0.5).T)
    assert pack_masks(masks).shape[1] * 8 >= args.rows
    case = f"random 50% mask {args.rows} x {args.cols} (N={args.cols}, D={args.rows}), all pairs"
    rows = all_pairs_case(case, masks, args, scipy_rows=args.scipy_rows, index_rows=args.index_rows)
    rows += top_n_case(masks, args)
    del masks
    if args.matrices_dir and Path(args.matrices_dir).is_dir():
        rows += real_case(args)
    if args.scan_dir:
        rows += scan_case(args)
    report(rows, info)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
