"""Which criterion reads k* off AANet loss curves? The synthetic suite with known answers.

Every set of :func:`featgeo.archetypes.synthetic.synthetic_suite` (simplices with k* = 3, 4, 5
vertices in subspaces of rank k*, 8, 16 of R^576, Dirichlet(1) and Dirichlet(0.3) weights, noise
0.01 and 0.05 of an edge; Gaussian blobs and uniform balls of rank 2..16 as controls) is scaled
to the size of real SAE-cluster reconstructions (``--scale``: RMS radius ~8, as the demo SAE's
clusters have), gets its diffusion extrema and an AANet per k = 2..8 with SPEC §3's Stage 1
settings, all trained in one batched run. Then every criterion of
:data:`featgeo.archetypes.criteria.CRITERIA` picks k per set:

- exact: share of simplex sets where k = k*; within 1: |k - k*| <= 1;
- AUROC: how well the criterion's strength separates simplex sets (positive) from controls;
- rerun agreement (with two seeds or more): share of sets where every seed picks the same k.

    python benchmarks/aanet_elbows.py --seeds 0,1 --out docs/aanet_elbows.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from sklearn.metrics import roc_auc_score

from featgeo.archetypes.aanet import span_basis
from featgeo.archetypes.batched import ModelSpec, train_stack
from featgeo.archetypes.config import AANetConfig
from featgeo.archetypes.criteria import CRITERIA, DEFAULT_CRITERION, inside_fraction, select_k
from featgeo.archetypes.extrema import diffusion_extrema
from featgeo.archetypes.sources import ArrayBatches
from featgeo.archetypes.synthetic import synthetic_suite

KS = list(range(2, 9))
console = Console(width=140)


def run_suite(seed: int, scale: float, n: int, batch_size: int) -> list[dict]:
    """Final losses per k of every suite set (one batched run)."""
    suite = synthetic_suite(n=n, d=576, seed=seed)
    arrays, extrema, inside = [], [], []
    for s in suite:
        X = s.X * scale
        Y = X @ span_basis(X)  # subspace coordinates, as Stage 1 trains by default
        warm = np.random.default_rng(seed).permutation(len(Y))[:1000]
        arrays.append(Y)
        extrema.append(Y[warm[diffusion_extrema(Y[warm], KS[-1], seed=seed)]])
        inside.append([inside_fraction(Y, extrema[-1][:k]) for k in KS])
    source = ArrayBatches(
        arrays, extrema, batch_size=batch_size, seed=seed, d_model=[576] * len(suite)
    )
    specs = [ModelSpec(k, i, seed * 100_000 + i * 64 + k) for i in range(len(suite)) for k in KS]
    fits = train_stack(specs, source, AANetConfig(seed=seed))
    out = []
    for i, s in enumerate(suite):
        mine = [f for f in fits if f.spec.data == i]
        out.append(
            {
                "name": s.name,
                "kind": s.kind,
                "k_star": s.k_star,
                "seed": seed,
                "recon": [f.final["recon"] for f in mine],
                "archetypal": [f.final["archetypal"] for f in mine],
                "inside": inside[i],
                "steps": [f.steps for f in mine],
            }
        )
    return out


def score(runs: dict[int, list[dict]]) -> list[dict]:
    rows = []
    for name in CRITERIA:
        exact, near, auroc, picks = [], [], [], {}
        for sets in runs.values():
            labels, strengths = [], []
            for s in sets:
                choice = select_k(s["recon"], s["archetypal"], KS, name, inside=s["inside"])
                strength = choice.strength if np.isfinite(choice.strength) else 0.0
                labels.append(s["kind"] == "simplex")
                strengths.append(strength)
                picks.setdefault(s["name"], []).append(choice.k)
                if s["kind"] == "simplex":
                    exact.append(choice.k == s["k_star"])
                    near.append(choice.k is not None and abs(choice.k - s["k_star"]) <= 1)
            auroc.append(roc_auc_score(labels, strengths))
        agree = np.mean([len(set(v)) == 1 for v in picks.values()]) if len(runs) > 1 else None
        rows.append(
            {
                "criterion": name,
                "exact": float(np.mean(exact)),
                "within_1": float(np.mean(near)),
                "auroc": float(np.mean(auroc)),
                "rerun_agreement": None if agree is None else float(agree),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0", help="comma-separated suite/training seeds")
    parser.add_argument("--scale", type=float, default=28.0)
    parser.add_argument("--n", type=int, default=2000, help="points per set")
    parser.add_argument("--batch-size", type=int, default=512, help="rows per set per step")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--from-json", default=None, help="score saved curves instead of training")
    parser.add_argument("--out", default=None, help="write curves and scores as JSON")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.from_json:
        runs = {int(k): v for k, v in json.loads(Path(args.from_json).read_text())["runs"].items()}
    else:
        runs = {}
        for seed in (int(s) for s in args.seeds.split(",")):
            start = time.perf_counter()
            runs[seed] = run_suite(seed, args.scale, args.n, args.batch_size)
            console.print(
                f"seed {seed}: {len(runs[seed])} sets x {len(KS)} k trained in "
                f"{time.perf_counter() - start:.0f} s"
            )
    rows = score(runs)
    n_simplex = sum(s["kind"] == "simplex" for s in next(iter(runs.values())))
    n_control = len(next(iter(runs.values()))) - n_simplex
    table = Table(
        title=f"k* recovery on {n_simplex} simplex sets and {n_control} controls, "
        f"seeds {sorted(runs)}"
    )
    for col in (
        "criterion",
        "k = k*",
        "|k - k*| <= 1",
        "AUROC simplex vs control",
        "same k on every seed",
    ):
        table.add_column(col)
    for r in rows:
        mark = " (default)" if r["criterion"] == DEFAULT_CRITERION else ""
        agree = "-" if r["rerun_agreement"] is None else f"{r['rerun_agreement']:.0%}"
        table.add_row(
            r["criterion"] + mark,
            f"{r['exact']:.0%}",
            f"{r['within_1']:.0%}",
            f"{r['auroc']:.2f}",
            agree,
        )
    console.print(table)
    if args.out:
        saved = {"scale": args.scale, "scores": rows, "runs": {str(k): v for k, v in runs.items()}}
        Path(args.out).write_text(json.dumps(saved))


if __name__ == "__main__":
    main()
