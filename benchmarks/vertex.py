"""Vertex collection speed: one scan for all clusters vs one cluster at a time (the seed's way).

Stage 3 collects vertex samples (:func:`featgeo.archetypes.vertices.scan_vertices`): it reads the
SAE's activation store of the held-out ``vertex`` split and evaluates every selected cluster's
AANet on its active tokens. Both ways below run on the **same prebuilt store**, with the same
models, settings and device:

- **(a) one pass, all clusters** (featgeo): ``scan_vertices(store, models, settings)`` run to
  completion: the store is read once, block by block, for every cluster together.
- **(b) one cluster at a time** (the seed's loop): ``scan_vertices(store, [m], settings)`` for
  each model in turn: the store is read again for every cluster.

What is compared, and what is not:

- The seed streamed the text through the language model again for every cluster (model forward
  to the SAE's layer + SAE encode, per cluster). Here **both ways read the same prebuilt store**,
  so the speed-up measured is only the one from scanning once instead of once per cluster; the
  seed's language-model cost is not in it.
- That cost is printed apart: the store build seconds when the store was built in this run
  (loading the LM once, its forward to the SAE's layer and the SAE encode; a store reused from
  featgeo's cache was not timed), and from it a **projected** cost of the seed's language-model
  passes: build seconds x clusters (every cluster streams the whole split), and build seconds x
  cluster-token visits / store tokens (every cluster streams only until its quota is full, as
  the seed stopped). Projected, not measured.
- Loading the SAE and the models (once, for both) and Stage 3's decoding of chunk text and
  writing of JSONL records are not timed. Timed: the scan generator's own work (its per-model
  set-up included); the checking of the records (a digest per cluster) is left out of the clock.
- (a) and (b) must give identical records and counts per cluster (records are compared through a
  sha256 of their JSON, counts as :class:`ClusterProgress`); the script stops if they do not.

Reported: clusters, total vertices, store tokens (the rows of the store covered for every
cluster, the same for both ways), store rows read (a: once; b: once per cluster), cluster-token
visits (tokens scanned while a cluster still collected, summed over clusters: the same work in
both ways), best and median seconds of ``--repeats`` runs, and per second of wall time: store
tokens/s (store tokens covered for every cluster; the tokens per second of the issue), store
rows read/s and cluster-token visits/s; speed-up = seconds (b) / seconds (a). With
``--peer-every N`` (b) runs on every N-th cluster only and its seconds are extrapolated to all
clusters by cluster-token visits (labelled). On a shared or small CPU pass ``--threads 1``: the
AANets' matmuls are tiny, and torch's threads competing with other processes make the times
swing by 10x from run to run.

    python benchmarks/vertex.py --stage1-dir real_data_analysis_canonical \\
        --sae saes/layer6-demo --n-clusters 128 --clusters all --store-tokens 65536 \\
        --samples-per-vertex 50 --threads 1
    python benchmarks/vertex.py --stage1-dir stage1_default --n-clusters 768 --clusters all \\
        --threads 1 --json vertex_768_all.json
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from _machine import machine_info
from rich.console import Console
from rich.table import Table

from featgeo.archetypes.aanet import AANet
from featgeo.archetypes.batched import check_device
from featgeo.archetypes.selection import (
    SelectionCriteria,
    find_csv,
    read_stage1_csv,
    refit_k,
    select_clusters,
)
from featgeo.archetypes.stage1 import activation_store, store_info
from featgeo.archetypes.stage3 import stage1_config
from featgeo.archetypes.stage3_files import read_stage1_record, stage1_model_path
from featgeo.archetypes.vertices import (
    ClusterProgress,
    ScanState,
    VertexModel,
    VertexSettings,
    scan_vertices,
)
from featgeo.latents.run import parse_n_clusters
from featgeo.sae import load_sae

console = Console(width=160)


def machine(device: torch.device) -> dict:
    return {**machine_info(), "device": str(device)}


# -- inputs -------------------------------------------------------------------------------------
def load_sae_checked(args, stage1: dict | None):
    from featgeo.sae.saelens_format import sae_fingerprint

    path = args.sae
    if path is None:
        if stage1 is None:
            sys.exit(f"--stage1-dir '{args.stage1_dir}' has no stage1.json naming the SAE: --sae")
        path = stage1["sae"]
        if not Path(path).exists():
            sys.exit(
                f"the SAE of stage1.json, '{path}', is not found from {Path.cwd()}; run from the "
                "folder Stage 1 ran in or pass --sae"
            )
    sae = load_sae(path)
    expected = (stage1 or {}).get("sae_fingerprint")
    if expected is not None and sae_fingerprint(sae) != expected:
        sys.exit(f"--sae '{path}' is not the SAE Stage 1 trained on ({expected}); pass that SAE")
    return sae, str(path)


def cluster_rows(args, n_values: list[int]) -> tuple[list[dict], dict]:
    """(n_clusters, cluster_id, k, latents) of the clusters to scan, and what was left out."""
    stage1_dir = Path(args.stage1_dir)
    skipped = {"no archetypal elbow k": 0, "no Stage 1 model file": 0}
    if args.clusters == "selected":
        criteria = SelectionCriteria(sigma_a=args.sigma_a, sigma_bc=args.sigma_bc)
        rows = [
            {"n_clusters": r["n_clusters"], "cluster_id": r["cluster_id"], "k": r["refit_k"],
             "latents": [int(v) for v in r["latent_indices"].split()]}
            for r in select_clusters(stage1_dir, n_values, criteria).rows
        ]  # fmt: skip
    else:
        rows = []
        for n in n_values:
            for c in read_stage1_csv(find_csv(stage1_dir, n), n):
                k = refit_k(c, "arch")
                if k is None:
                    skipped["no archetypal elbow k"] += 1
                    continue
                rows.append({"n_clusters": n, "cluster_id": c.cluster_id, "k": k,
                             "latents": c.latent_indices})  # fmt: skip
    kept = []
    for row in rows:
        path = stage1_model_path(stage1_dir, row["n_clusters"], row["cluster_id"], row["k"])
        if not path.is_file():
            skipped["no Stage 1 model file"] += 1
            continue
        kept.append(row)
    if args.max_clusters:
        kept = kept[: args.max_clusters]
    return kept, skipped


def load_models(args, rows: list[dict], sae) -> list[VertexModel]:
    w_dec = sae.W_dec.detach().float().cpu().numpy()
    models = []
    for row in rows:
        n, cid, k = row["n_clusters"], row["cluster_id"], row["k"]
        net = AANet.load(stage1_model_path(Path(args.stage1_dir), n, cid, k))
        if net.k != k:
            sys.exit(f"clusters_{n}/aanet_cluster_{cid}_k{k}.pt holds a k={net.k} model")
        latents = np.asarray(row["latents"], dtype=np.int64)
        models.append(VertexModel(f"{n}:{cid}", latents, w_dec[latents], net))
    return models


def build_store(args, sae, s1, device: torch.device):
    """The held-out split's store (featgeo's cache), and its build seconds (None: reused)."""
    from featgeo.activations.store import default_store_dir

    root = default_store_dir("x").parent
    before = {p.name for p in root.iterdir()} if root.is_dir() else set()
    config = dataclasses.replace(s1, split=args.split, store_tokens=args.store_tokens)
    start = time.perf_counter()
    store = activation_store(sae, config, str(device))
    seconds = time.perf_counter() - start
    folder = Path(store.folder)
    if folder.parent == root and folder.name in before:
        return store, None, "reused from featgeo's cache, build not timed"
    if f".{folder.name}.partial" in before:
        return store, seconds, "resumed from an interrupted build (partial build time)"
    return store, seconds, "built in this run"


def warm_page_cache(store) -> None:
    """Read every array of the store once, so neither way pays the first read from disk."""
    for name in ("indptr", "latents", "values", "doc_index", "chunk_index", "position",
                 "token_ids"):  # fmt: skip
        array = getattr(store, name)
        step = 1 << 24
        for i in range(0, len(array), step):
            np.asarray(array[i : i + step]).sum()


# -- the two ways ---------------------------------------------------------------------------------
@dataclass
class Scan:
    seconds: float
    state: ScanState
    digests: dict[str, str]
    n_records: dict[str, int]


def run_scan(store, models, settings, device) -> Scan:
    """``scan_vertices`` to completion; only the generator's own work is timed."""
    hashes = {m.key: hashlib.sha256() for m in models}
    n_records = dict.fromkeys(hashes, 0)
    seconds, state = 0.0, None
    scan = scan_vertices(store, models, settings, device=device)
    while True:
        start = time.perf_counter()
        step = next(scan, None)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds += time.perf_counter() - start
        if step is None:
            break
        state, records = step
        for key, found in records.items():
            n_records[key] += len(found)
            for record in found:
                hashes[key].update(json.dumps(dataclasses.asdict(record), sort_keys=True).encode())
                hashes[key].update(b"\n")
    return Scan(seconds, state, {k: h.hexdigest() for k, h in hashes.items()}, n_records)


@dataclass
class Seed:
    """The one-cluster-at-a-time way on ``keys``."""

    seconds: float
    keys: list[str]
    rows_read: int
    progress: dict[str, ClusterProgress]
    digests: dict[str, str]
    n_records: dict[str, int]


def run_seed(store, models, settings, device) -> Seed:
    out = Seed(0.0, [], 0, {}, {}, {})
    for model in models:
        one = run_scan(store, [model], settings, device)
        out.seconds += one.seconds
        out.keys.append(model.key)
        out.rows_read += one.state.tokens_scanned
        out.progress[model.key] = one.state.clusters[model.key]
        out.digests[model.key] = one.digests[model.key]
        out.n_records[model.key] = one.n_records[model.key]
    return out


def check_identical(a: Scan, b: Seed) -> None:
    """(a) and (b) give the same records and counts for every cluster (b) scanned."""
    for key in b.keys:
        if a.digests[key] != b.digests[key] or a.n_records[key] != b.n_records[key]:
            sys.exit(f"NOT identical: the records of cluster {key} differ between (a) and (b)")
        if a.state.clusters[key] != b.progress[key]:
            sys.exit(
                f"NOT identical: the counts of cluster {key} differ: (a) {a.state.clusters[key]}, "
                f"(b) {b.progress[key]}"
            )


def same_runs(first, other) -> bool:
    return first.digests == other.digests and first.n_records == other.n_records


# -- report ---------------------------------------------------------------------------------------
def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = check_device(args.device)
    n_values = parse_n_clusters(args.n_clusters)
    settings = VertexSettings(threshold=args.threshold, samples_per_vertex=args.samples_per_vertex,
                              block_tokens=args.block_tokens)  # fmt: skip
    where = machine(device)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    console.print(f"command: {command}  (cwd {Path.cwd()})")
    console.print(f"machine: {where}")

    stage1 = read_stage1_record(Path(args.stage1_dir))
    s1 = stage1_config(stage1)
    if args.split == s1.split:
        sys.exit(f"--split {args.split} is the split the AANets trained on; use a held-out split")
    sae, sae_id = load_sae_checked(args, stage1)
    rows, skipped = cluster_rows(args, n_values)
    if not rows:
        sys.exit(f"no clusters to scan (left out: {skipped})")
    start = time.perf_counter()
    models = load_models(args, rows, sae)
    load_seconds = time.perf_counter() - start
    store, build_seconds, store_how = build_store(args, sae, s1, device)
    info = store_info(store)
    warm_page_cache(store)
    peer = models[:: args.peer_every]

    ks = [m.k for m in models]
    sizes = [m.latent_indices.size for m in models]
    n_list = ", ".join(f"n={n}: {sum(r['n_clusters'] == n for r in rows)}" for n in n_values)
    console.print(
        f"SAE {sae_id} (d_sae {sae.cfg.d_sae}); clusters ({args.clusters}): {len(models)} "
        f"({n_list}), left out: {skipped}; vertices {sum(ks)} (k {min(ks)}..{max(ks)}); latents "
        f"per cluster {min(sizes)} / {int(np.median(sizes))} / {max(sizes)} (min / median / "
        f"max); models loaded in {load_seconds:.1f} s"
    )
    console.print(
        f"store: split {args.split}, {store.n_tokens:,} tokens, {store.nnz:,} codes, "
        f"{info['key']}: {store_how}"
        + ("" if build_seconds is None else f" in {build_seconds:.1f} s")
    )
    console.print(f"settings: {settings.to_dict()}")

    runs_a: list[Scan] = []
    runs_b: list[Seed] = []
    for r in range(args.repeats):
        runs_a.append(run_scan(store, models, settings, device))
        runs_b.append(run_seed(store, peer, settings, device))
        check_identical(runs_a[-1], runs_b[-1])
        console.print(f"repeat {r + 1}/{args.repeats}: (a) {runs_a[-1].seconds:.2f} s, "
                      f"(b) {runs_b[-1].seconds:.2f} s")  # fmt: skip
    if not all(same_runs(runs_a[0], x) for x in runs_a[1:]) or not all(
        same_runs(runs_b[0], x) for x in runs_b[1:]
    ):
        sys.exit("NOT identical: repeats of the same way gave different records")
    console.print(f"identical: yes ((a) and (b) give the same records and counts for all "
                  f"{len(peer)} clusters (b) scanned, in every repeat)")  # fmt: skip

    a, b = runs_a[0], runs_b[0]
    covered = a.state.tokens_scanned
    visits = sum(p.tokens_scanned for p in a.state.clusters.values())
    peer_visits = sum(b.progress[k].tokens_scanned for k in b.keys)
    scale = visits / peer_visits if len(peer) < len(models) and peer_visits else 1.0
    times_a = [x.seconds for x in runs_a]
    times_b = [x.seconds * scale for x in runs_b]
    rows_read_b = b.rows_read * scale
    records = sum(a.n_records.values())
    full = sum(p.done for p in a.state.clusters.values())
    label_b = "(b) one cluster at a time (the seed's way, LM excluded)"
    if scale != 1.0:
        label_b += f", on {len(peer)} clusters, extrapolated by visits"
    ways = [
        ("(a) one pass, all clusters (featgeo)", 1, covered, times_a),
        (label_b, len(models), rows_read_b, times_b),
    ]
    columns = [
        "way", "clusters", "vertices", "store passes", "store rows read", "cluster-token visits",
        f"seconds (best of {args.repeats})", "seconds (median)", "store tokens/s",
        "store rows read/s", "cluster-token visits/s", "speed-up",
    ]  # fmt: skip
    table_rows = []
    best_a = min(times_a)
    for name, passes, rows_read, times in ways:
        best = min(times)
        table_rows.append([
            name, f"{len(models):,}", f"{sum(ks):,}", f"{passes:,}", f"{rows_read:,.0f}",
            f"{visits:,}", f"{best:.2f}", f"{statistics.median(times):.2f}",
            f"{covered / best:,.0f}", f"{rows_read / best:,.0f}", f"{visits / best:,.0f}",
            f"**{best / best_a:.1f}x**" if times is times_b else "1.0x",
        ])  # fmt: skip
    speedup = min(times_b) / best_a
    speedup_median = statistics.median(times_b) / statistics.median(times_a)

    table = Table(title=f"vertex collection: {len(models)} clusters, {covered:,} store tokens")
    for col in columns:
        table.add_column(col, justify="left" if col == "way" else "right")
    for row in table_rows:
        table.add_row(*[c.replace("**", "") for c in row])
    console.print(table)
    console.print(
        f"speed-up (b)/(a): {speedup:.1f}x best, {speedup_median:.1f}x median; the scan of (a) "
        f"stopped: {a.state.stopped} after {covered:,} of {store.n_tokens:,} store tokens; "
        f"{full} of {len(models)} clusters filled every vertex's quota of "
        f"{settings.samples_per_vertex}; {records:,} records"
    )
    projected = None
    if build_seconds is not None:
        per_token = build_seconds / store.n_tokens
        projected = {
            "store_build_seconds": build_seconds,
            "whole_split_per_cluster": build_seconds * len(models),
            "until_quota_per_cluster": per_token * visits,
        }
        console.print(
            f"store build (LM load + forward + SAE encode, once): {build_seconds:.1f} s "
            f"({store.n_tokens / build_seconds:,.0f} tokens/s). PROJECTED, not measured: the "
            f"seed's LM passes, one per cluster: {projected['whole_split_per_cluster']:,.0f} s if "
            f"every cluster streams the whole split (build s x {len(models)} clusters), "
            f"{projected['until_quota_per_cluster']:,.0f} s if each streams only until its quota "
            f"is full (build s x {visits:,} cluster-token visits / {store.n_tokens:,} tokens); "
            "neither is in the speed-up above"
        )
    else:
        console.print(
            "store build: not timed (reused from featgeo's cache), so no projection of the "
            "seed's LM cost; it is timed when the run builds its store (a --store-tokens not "
            "built before)"
        )

    console.print("\nmarkdown:\n")
    print("| " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * (len(columns) - 1))
    for row in table_rows:
        print("| " + " | ".join(row) + " |")
    print(
        f"\nStore: {store.n_tokens:,} tokens of `{args.split}` ({store_how}"
        + ("" if build_seconds is None else f", {build_seconds:.1f} s")
        + f"); scan stopped: {a.state.stopped}; {full} of {len(models)} clusters filled their "
        f"quota; {records:,} records; identical: yes."
    )
    if projected is not None:
        print(
            f"Projected (not measured) LM cost of the seed's per-cluster passes: "
            f"{projected['whole_split_per_cluster']:,.0f} s (whole split per cluster), "
            f"{projected['until_quota_per_cluster']:,.0f} s (until each quota is full)."
        )
    print()

    if args.json:
        payload = {
            "command": command,
            "cwd": str(Path.cwd()),
            "machine": where,
            "sae": sae_id,
            "clusters": args.clusters,
            "n_clusters": n_values,
            "n_models": len(models),
            "n_peer": len(peer),
            "vertices": sum(ks),
            "left_out": skipped,
            "settings": settings.to_dict(),
            "store": {**info, "how": store_how},
            "store_tokens_covered": covered,
            "cluster_token_visits": visits,
            "records": records,
            "clusters_full": full,
            "stopped": a.state.stopped,
            "seconds_a": times_a,
            "seconds_b": times_b,
            "b_extrapolation_factor": scale,
            "rows_read_b": rows_read_b,
            "speedup_best": speedup,
            "speedup_median": speedup_median,
            "projected_seed_lm": projected,
            "identical": True,
        }
        Path(args.json).write_text(json.dumps(payload, indent=1, default=str))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--stage1-dir", required=True, help="the --save-dir of `featgeo aanet stage1`")
    add("--n-clusters", default="768", help="one or several n, comma list (default 768)")
    add("--clusters", choices=("selected", "all"), default="selected",
        help="selected: featgeo's selection (SPEC §3); all: every cluster of n at its "
        "archetypal elbow k whose Stage 1 model exists")  # fmt: skip
    add("--sigma-a", type=float, default=1.0, help="selection: as `featgeo aanet select`")
    add("--sigma-bc", type=float, default=3.0, help="selection: as `featgeo aanet select`")
    add("--max-clusters", type=int, default=0, help="at most this many clusters (0: no cap)")
    add("--split", default="vertex", help="the held-out split of the store")
    add("--store-tokens", type=int, default=0, help="vertex store size (0: the whole split)")
    add("--samples-per-vertex", type=int, default=1000)
    add("--threshold", type=float, default=0.1)
    add("--block-tokens", type=int, default=65_536, help="store rows read per block")
    add("--repeats", type=int, default=3, help="runs of each way; best and median reported")
    add("--peer-every", type=int, default=1,
        help="(b) on every N-th cluster only, seconds extrapolated (default 1: all)")  # fmt: skip
    add("--sae", default=None, help="the SAE folder (default: the one stage1.json names)")
    add("--device", default="cpu", help="cpu, cuda[:N] or auto (store build and scan)")
    add("--threads", type=int, default=None, help="torch threads (default: torch's)")
    add("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    for name in ("repeats", "peer_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.max_clusters < 0 or args.store_tokens < 0:
        parser.error("--max-clusters and --store-tokens must be >= 0")
    return args


if __name__ == "__main__":
    main()
