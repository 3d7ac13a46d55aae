"""AANet Stage 1 speed: featgeo's batched trainer vs the seed's one-model-at-a-time loop.

Both train the same (cluster, k) models on the same data: the clusters of an SAE's activation
store (x = a_c @ W_dec[c] over each step's active tokens, SPEC §3) and, optionally, synthetic
simplices. Same hyper-parameters (SPEC §3 Stage 1), same diffusion extrema, same per-step token
draws, same initial-parameter seeds.

- **peer** ("the seed's way"): :func:`featgeo.archetypes.reference.train_one`, one
  ``nn.Module`` per model with ``torch.optim.Adam``, ``ReduceLROnPlateau`` and
  ``clip_grad_norm_`` in d_model coordinates, one model after another. It is timed on every
  ``--peer-every``-th cluster (all k of it) and its models/minute extrapolated.
- **featgeo**: :func:`featgeo.archetypes.engine.train_cluster_aanets` on all clusters, in the
  decoder-subspace coordinates (default) and, for the same sampled clusters, in d_model
  coordinates (the stacking alone).

Printed: models/minute, speed-up, median relative difference of the final total loss against
the peer (same clusters), and the share of clusters with the same elbow k (recon, archetypal
and the default criterion).

    python benchmarks/aanet.py --sae demo_out/saes/layer6-demo \\
        --clusters demo_out/sae_clusters/clusters_128 --peer-every 16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from featgeo.activations.store import ActivationStore
from featgeo.archetypes.batched import ModelSpec
from featgeo.archetypes.config import AANetConfig
from featgeo.archetypes.criteria import DEFAULT_CRITERION, select_k
from featgeo.archetypes.data import check_store_matches_sae, clusters_data, read_clusters
from featgeo.archetypes.elbow import elbow
from featgeo.archetypes.engine import model_seed, train_cluster_aanets
from featgeo.archetypes.reference import train_one
from featgeo.archetypes.sources import ClusterBatches, cluster_extrema
from featgeo.sae import load_sae

console = Console(width=150)
KS = list(range(2, 9))


def _curves(finals: dict) -> dict[int, dict[str, np.ndarray]]:
    """{(cluster, k): final losses} -> per cluster, each loss as an array over k = 2..8."""
    out: dict[int, dict[str, list[float]]] = {}
    for (cid, _k), final in sorted(finals.items()):
        c = out.setdefault(cid, {"loss": [], "recon": [], "archetypal": []})
        for name in c:
            c[name].append(final[name])
    return {cid: {n: np.asarray(v) for n, v in c.items()} for cid, c in out.items()}


def _elbows(curve: dict[str, np.ndarray], inside: np.ndarray) -> tuple:
    """Recon elbow k, archetypal elbow k and the default criterion's k of one cluster."""
    return (
        elbow(curve["recon"], KS).k,
        elbow(curve["archetypal"], KS).k,
        select_k(curve["recon"], curve["archetypal"], KS, inside=inside).k,
    )


def _by_cluster(results) -> dict[int, list]:
    out: dict[int, list] = {}
    for r in results:
        out.setdefault(r.cluster_id, []).append(r)
    return out


def _peer(datas_full, extrema, n_tokens, config, batch_tokens):
    """The seed's way on the given clusters (d_model coordinates), one model at a time."""
    source = ClusterBatches(
        datas_full, extrema, n_tokens, batch_tokens=batch_tokens, seed=config.seed
    )
    results = {}
    start = time.perf_counter()
    for j, d in enumerate(datas_full):
        for k in KS:
            spec = ModelSpec(k, j, model_seed(config.seed, d.cluster_id, k))
            results[(d.cluster_id, k)] = train_one(spec, source, config)
    return results, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sae", required=True)
    parser.add_argument("--clusters", required=True, help="a clusters_{n} folder of sae cluster")
    parser.add_argument("--store", default=None, help="default: the store clustering.json names")
    parser.add_argument("--n-clusters", type=int, default=None, help="first N clusters only")
    parser.add_argument("--peer-every", type=int, default=16)
    parser.add_argument("--batch-tokens", type=int, default=4096)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--max-steps", type=int, default=3000, help="SPEC: 3000 (smoke: fewer)")
    parser.add_argument("--full", action="store_true", help="also featgeo in d_model coordinates")
    parser.add_argument(
        "--reseed", action="store_true", help="also the peer's own seed-to-seed difference"
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    sae = load_sae(args.sae)
    info = json.loads((Path(args.clusters) / "clustering.json").read_text())
    store = ActivationStore.open(args.store or info["store"])
    check_store_matches_sae(store, sae)
    clusters = read_clusters(args.clusters)
    ids = sorted(clusters)[: args.n_clusters] if args.n_clusters else sorted(clusters)
    config = AANetConfig(max_steps=args.max_steps)

    t0 = time.perf_counter()
    datas = clusters_data(sae, store, {c: clusters[c] for c in ids}, space="subspace")
    t_data = time.perf_counter() - t0

    def featgeo(datas, config=config):
        start = time.perf_counter()
        results = train_cluster_aanets(
            datas,
            store.n_tokens,
            ks=KS,
            config=config,
            device=args.device,
            batch_tokens=args.batch_tokens,
        )
        return results, time.perf_counter() - start

    ours, t_ours = featgeo(datas)
    t_ours += t_data

    sample = ids[:: args.peer_every]
    full = clusters_data(sae, store, {c: clusters[c] for c in sample}, space="full")
    # The peer uses the very same extrema points, written in d_model coordinates.
    sub_by_id = {d.cluster_id: d for d in datas}
    ext_full = []
    for d in full:
        own = sub_by_id[d.cluster_id]
        ext_full.append(own.to_model_space(cluster_extrema(own, KS[-1], seed=config.seed)))
    peer, t_peer = _peer(full, ext_full, store.n_tokens, config, args.batch_tokens)
    peer_final = {key: fit.final for key, fit in peer.items()}
    peer_steps = [fit.steps for fit in peer.values()]

    rows = [("peer: one model at a time, d_model (the seed's way)", peer_final, peer_steps, t_peer)]
    if args.full:
        mine, t_mine = featgeo(full)
        rows.append(
            (
                "featgeo batched, d_model",
                {(r.cluster_id, r.k): r.final for r in mine},
                [r.fit.steps for r in mine],
                t_mine,
            )
        )
    if args.reseed:
        # The peer's own spread: the same trainer in d_model coordinates (equal to the peer,
        # tests/archetypes/test_batched.py) with another seed. Differences below it are noise.
        other, t_other = featgeo(full, AANetConfig(max_steps=args.max_steps, seed=1))
        rows.append(
            (
                "the peer's training with seed 1 (noise floor)",
                {(r.cluster_id, r.k): r.final for r in other},
                [r.fit.steps for r in other],
                t_other,
            )
        )
    rows.append(
        (
            "featgeo batched, decoder subspace (default)",
            {(r.cluster_id, r.k): r.final for r in ours if r.fit is not None},
            [r.fit.steps for r in ours if r.fit is not None],
            t_ours,
        )
    )

    # Inside fractions are geometry of the points and anchors (the same for every trainer).
    inside = {
        cid: np.array([r.inside_fraction for r in sorted(group, key=lambda r: r.k)])
        for cid, group in _by_cluster(ours).items()
    }
    peer_elbows = {cid: _elbows(c, inside[cid]) for cid, c in _curves(peer_final).items()}
    table = Table(title=f"AANet Stage 1: {len(ids)} clusters x k = 2..8 of {args.clusters}")
    for col in (
        "trainer",
        "models",
        "seconds",
        "models/min",
        "speed-up",
        "median steps",
        "median rel. diff. of final loss vs peer",
        "same elbow k as peer: recon / archetypal / default criterion",
    ):
        table.add_column(col)
    rate_peer = len(peer_final) / t_peer * 60
    report = {"machine": _machine(args), "clusters": len(ids), "peer_clusters": len(sample)}
    for name, finals, steps, seconds in rows:
        rate = len(finals) / seconds * 60
        rel = [abs(finals[key]["loss"] - f["loss"]) / f["loss"] for key, f in peer_final.items()]
        curves = _curves({key: v for key, v in finals.items() if key[0] in peer_elbows})
        same = np.array(
            [
                [a == b for a, b in zip(_elbows(curves[c], inside[c]), peer_elbows[c], strict=True)]
                for c in peer_elbows
            ]
        ).mean(axis=0)
        table.add_row(
            name,
            str(len(finals)),
            f"{seconds:.1f}",
            f"{rate:.1f}",
            f"{rate / rate_peer:.1f}x",
            f"{np.median(steps):.0f}",
            "-" if finals is peer_final else f"{np.median(rel):.2%}",
            "-" if finals is peer_final else " / ".join(f"{v:.0%}" for v in same),
        )
        report[name] = {
            "models": len(finals),
            "seconds": seconds,
            "models_per_min": rate,
            "speedup": rate / rate_peer,
            "median_steps": float(np.median(steps)),
            "median_rel_loss_vs_peer": float(np.median(rel)),
            "same_elbow_recon_arch_default": same.tolist(),
        }
    console.print(table)
    console.print(
        f"{report['machine']}; the peer ran on every {args.peer_every}th cluster "
        f"({len(sample)} clusters, {len(peer_final)} models), featgeo on all; "
        f"default criterion: {DEFAULT_CRITERION}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


def _machine(args) -> str:
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, device {args.device}"
    )


if __name__ == "__main__":
    main()
