"""The latent clusters Stage 1 trains on: reused from ``featgeo sae cluster`` or built.

A ``clusters_{n}`` folder (:mod:`featgeo.latents.run`) holds ``clustering.json`` (method,
parameters, the store it was made from) and ``cluster_metrics.csv`` (one row per cluster).
:func:`latent_clusters` reuses such a folder when it was made by the same method and seed from
the same activation store, builds the missing ones (only in Stage 1's own folder, never in a
user's ``--clusters-dir``) and checks every file before any training starts.
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featgeo.archetypes.data import read_clusters
from featgeo.files import read_json

CLUSTERING_FILE = "clustering.json"
METRICS_FILE = "cluster_metrics.csv"
RERUN = "rerun `featgeo sae cluster`"


@dataclass
class LatentClusters:
    """One n's clusters as Stage 1 uses them."""

    n: int
    folder: Path
    rows: list[dict[str, str]]
    """``cluster_metrics.csv`` as read (one dict of cells per cluster)."""
    info: dict[str, Any]
    """``clustering.json``."""
    built: bool
    """True when this run made them (their time counts in its timings)."""
    sha256: str
    """Hash of ``cluster_metrics.csv``: a finished Stage 1 n refuses clusters that changed."""


def check_clusters_dir(clusters_dir: Path, n_clusters: tuple[int, ...]) -> None:
    """A user's ``--clusters-dir`` must hold a complete ``clusters_{n}`` folder for every n
    (Stage 1 never writes there). Raises ``FileNotFoundError`` naming the fix."""
    if not clusters_dir.is_dir():
        raise FileNotFoundError(
            f"--clusters-dir '{clusters_dir}' is not a folder; pass the output folder of "
            "`featgeo sae cluster --out DIR`, or leave it out to cluster into the save dir"
        )
    for n in n_clusters:
        folder = clusters_dir / f"clusters_{n}"
        missing = [
            name for name in (CLUSTERING_FILE, METRICS_FILE) if not (folder / name).is_file()
        ]
        if missing:
            raise FileNotFoundError(
                f"--clusters-dir '{clusters_dir}' has no complete clusters_{n} folder (missing "
                f"{', '.join(missing)}); run `featgeo sae cluster <SAE> --n-clusters {n} --out "
                f"{clusters_dir}` first, or leave --clusters-dir out to cluster into the save dir"
            )
        read_clustering_info(folder / CLUSTERING_FILE)


def read_clustering_info(path: Path) -> dict[str, Any]:
    """``clustering.json`` as a dict with a method, a store and parameters, or a ``ValueError``
    naming the file."""
    try:
        info = read_json(path)
    except (OSError, ValueError):
        info = None
    if not (
        isinstance(info, dict)
        and isinstance(info.get("method"), str)
        and isinstance(info.get("store"), str)
        and isinstance(info.get("params"), dict)
    ):
        raise ValueError(
            f"{path} is not a clustering.json written by `featgeo sae cluster`; {RERUN}"
        )
    return info


def _differences(info: dict, method: str, seed: int, store) -> list[str]:
    out = []
    if info["method"] != method:
        out.append(f"method {info['method']} (this run: --clustering {method})")
    if info["params"].get("random_state") != seed:
        out.append(f"seed {info['params'].get('random_state')} (this run: --seed {seed})")
    if Path(info["store"]).name != Path(store.folder).name:
        out.append(
            f"another activation store ({info.get('store_tokens', '?')} tokens; this run's has "
            f"{store.n_tokens}: check --store-tokens, --split, --corpus, --context-size)"
        )
    return out


def load_clusters(folder: Path, n: int, built: bool) -> LatentClusters:
    """Read and check one ``clusters_{n}`` folder: a row per cluster, as many as it says."""
    info = read_clustering_info(folder / CLUSTERING_FILE)
    path = folder / METRICS_FILE
    try:
        raw = path.read_bytes()
    except OSError:
        raise FileNotFoundError(f"{path} cannot be read; {RERUN}") from None
    read_clusters(folder)  # column and row checks, with the line of a malformed row
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8"), newline="")))
    totals = {row.get("n_clusters_total") for row in rows}
    if len(totals) != 1 or str(len(rows)) not in totals:
        raise ValueError(
            f"{path} lists {len(rows)} clusters but its n_clusters_total says "
            f"{', '.join(sorted(map(str, totals)))}: the file is incomplete; {RERUN}"
        )
    return LatentClusters(n, folder, rows, info, built, hashlib.sha256(raw).hexdigest())


def latent_clusters(
    sae, store, sae_path: str, clusters_dir: Path, config, *, explicit: bool
) -> dict[int, LatentClusters]:
    """The clusters of every n of ``config``: reused when made by the same method and seed from
    the same store, built otherwise (only when ``clusters_dir`` is Stage 1's own)."""
    from featgeo.latents.run import cluster_sae

    seed, method = config.aanet.seed, config.clustering
    missing = []
    for n in config.n_clusters:
        path = clusters_dir / f"clusters_{n}" / CLUSTERING_FILE
        if not path.is_file():
            missing.append(n)
            continue
        diff = _differences(read_clustering_info(path), method, seed, store)
        if diff:
            fix = "pass matching options or another --clusters-dir" if explicit else (
                "pass matching options, or --force to cluster again"
            )  # fmt: skip
            raise ValueError(
                f"the clusters in {path.parent} were made with {'; '.join(diff)}; {fix}"
            )
    if missing:
        cluster_sae(sae, store, missing, clusters_dir, method=method, seed=seed, sae_path=sae_path)
    return {
        n: load_clusters(clusters_dir / f"clusters_{n}", n, built=n in missing)
        for n in config.n_clusters
    }


__all__ = [
    "CLUSTERING_FILE",
    "METRICS_FILE",
    "LatentClusters",
    "check_clusters_dir",
    "latent_clusters",
    "load_clusters",
    "read_clustering_info",
]
