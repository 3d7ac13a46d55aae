"""``featgeo sae cluster``: latent clusters of an SAE's decoder directions with their per-cluster
metrics (SPEC §3), read from the SAE's activation store.

The store (:mod:`featgeo.activations.store`, built by ``featgeo sae store``) is keyed by the
model, the SAE weights, the corpus, the split, the layer, the context size and the token budget,
so every later stage (clustering, AANets, vertex collection) reads codes from disk instead of
re-running the model. Clustering
uses the *live* latents only (those that fired at least once in the store).

Output of ``cluster_sae`` for every n in ``n_clusters``, in ``{out}/clusters_{n}/`` (each folder
written whole or not at all)::

    cluster_assignments.csv   latent_id, cluster_id (-1 = dead latent)
    cluster_metrics.csv       n_clusters_total, cluster_id, n_latents, latent_indices,
                              decoder_dir_rank, cluster_recon_error, activation_pca_rank
    clustering.json           method, parameters, SAE, store, live/dead counts, timings,
                              n_clusters_requested and n_clusters (the clusters that exist)

The folder is named after the *requested* n. When the live latents hold fewer distinct decoder
directions than n (duplicate latents), the method runs with that many clusters instead, a warning
is logged, and ``clustering.json`` records ``n_clusters_requested`` (n), ``n_clusters`` (what
exists), ``n_distinct_directions`` and ``n_clusters_reduced``; ``n_clusters_total`` in the CSV is
the number of clusters that exist (one CSV row each), never the request.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featgeo.activations.store import ActivationStore
from featgeo.files import check_output_dir, staging_dir, write_csv, write_json
from featgeo.latents.methods import CLUSTER_METHODS, get_cluster_method, make_clusterer
from featgeo.latents.metrics import activation_pca_rank, cluster_table
from featgeo.sparsity.metrics import ClusterCountWarning

if TYPE_CHECKING:
    from featgeo.sae.architectures import SparseAutoencoder

log = logging.getLogger(__name__)

ASSIGNMENT_COLUMNS = ["latent_id", "cluster_id"]
METRIC_COLUMNS = [
    "n_clusters_total",
    "cluster_id",
    "n_latents",
    "latent_indices",
    "decoder_dir_rank",
    "cluster_recon_error",
    "activation_pca_rank",
]


def live_latents(store: ActivationStore, block: int = 1 << 24) -> np.ndarray:
    """Boolean [d_sae]: latents that fired on at least one token of the store."""
    counts = np.zeros(store.d_sae, dtype=np.int64)
    for start in range(0, store.nnz, block):
        part = np.asarray(store.latents[start : start + block])
        counts += np.bincount(part, minlength=store.d_sae)
    return counts > 0


def check_live_n_clusters(store: ActivationStore, n_clusters: list[int]) -> np.ndarray:
    """:func:`live_latents` of ``store``; a ``ValueError`` naming the fix when an n of
    ``n_clusters`` is larger than the number of live latents."""
    live = live_latents(store)
    n_live = int(live.sum())
    too_many = [n for n in n_clusters if n > n_live]
    if too_many:
        raise ValueError(
            f"--n-clusters {max(too_many)} is larger than the {n_live} live latents of this SAE "
            f"(latents that fired on the {store.n_tokens} stored tokens); use at most {n_live}"
        )
    return live


def activation_pca_ranks(store: ActivationStore, labels: np.ndarray) -> dict[int, int]:
    """``activation_pca_rank`` of every cluster, from one grouped pass over the store."""
    labels = np.asarray(labels)
    latents = np.asarray(store.latents)
    entry_cluster = labels[latents]  # [nnz]
    entry_row = np.repeat(np.arange(store.n_tokens), np.diff(store.indptr))  # [nnz]
    order = np.argsort(entry_cluster, kind="stable")
    sorted_clusters = entry_cluster[order]
    column = np.zeros(labels.size, dtype=np.int64)
    ranks = {}
    for cid in np.unique(labels[labels >= 0]):
        members = np.flatnonzero(labels == cid)
        column[members] = np.arange(members.size)
        lo, hi = np.searchsorted(sorted_clusters, [cid, cid + 1])
        entries = order[lo:hi]
        rows, inverse = np.unique(entry_row[entries], return_inverse=True)
        acts = np.zeros((rows.size, members.size), dtype=np.float32)
        acts[inverse, column[latents[entries]]] = store.values[entries]
        ranks[int(cid)] = activation_pca_rank(acts) if members.size > 1 else 1
    return ranks


def parse_n_clusters(value: str | list[int]) -> list[int]:
    """``"128,256"`` -> [128, 256] (each >= 2, no repeats)."""
    if isinstance(value, str):
        try:
            values = [int(v) for v in value.replace(" ", "").split(",") if v]
        except ValueError:
            raise ValueError(
                f"--n-clusters must be a comma list of ints like 128,256, got '{value}'"
            ) from None
    else:
        values = [int(v) for v in value]
    if not values or any(v < 2 for v in values) or len(set(values)) != len(values):
        raise ValueError(f"--n-clusters needs distinct ints >= 2 (e.g. 128,256), got {value!r}")
    return values


@dataclass
class ClusteringResult:
    """One n_clusters value of :func:`cluster_sae`."""

    n_clusters: int
    """Clusters that exist (``n_clusters_requested`` unless there were fewer distinct
    directions)."""
    folder: Path
    labels: np.ndarray
    """[d_sae] cluster per latent, -1 for dead latents."""
    metrics: list[dict[str, Any]]
    n_live: int
    seconds: float
    n_clusters_requested: int = 0
    """The n asked for (the folder is ``clusters_{n_clusters_requested}``)."""
    n_distinct: int = 0
    """Distinct live decoder directions, as the method counts them."""


def cluster_sae(
    sae: SparseAutoencoder,
    store: ActivationStore,
    n_clusters: list[int],
    out: str | Path,
    *,
    method: str = "kmeans",
    seed: int = 0,
    sae_path: str = "",
    **params: Any,
) -> list[ClusteringResult]:
    """Cluster the live latents of ``sae`` for every n in ``n_clusters`` and write the results.

    n larger than the number of live latents is an error; n larger than the number of distinct
    live decoder directions is reduced to it, logged and recorded (see the module docstring).
    """
    get_cluster_method(method)
    n_clusters = parse_n_clusters(n_clusters)
    check_cluster_out(out, n_clusters)
    if store.d_sae != sae.cfg.d_sae:
        raise ValueError(
            f"the store holds codes of {store.d_sae} latents but the SAE has {sae.cfg.d_sae}; "
            "build the store with this SAE"
        )
    live = check_live_n_clusters(store, n_clusters)
    n_live = int(live.sum())
    w_dec = sae.W_dec.detach().cpu().double().numpy()  # [d_sae, d_in]
    results = []
    for n in n_clusters:
        start = time.perf_counter()
        est = make_clusterer(method, n_clusters=n, random_state=seed, **params)
        with warnings.catch_warnings():  # reported below, in the CLI's terms
            warnings.simplefilter("ignore", ClusterCountWarning)
            est.fit(w_dec, live=live)
        labels, n_found = est.labels_, est.n_clusters_
        if n_found < n:
            log.warning(
                "--n-clusters %d: the %d live latents hold only %d %s, so %s found %d clusters; "
                "%s/clusters_%d records n_clusters_requested=%d, n_clusters=%d",
                n, n_live, est.n_distinct_,
                "distinct decoder directions" if method != "k-subspaces"
                else "directions after merging near-duplicates",
                method, n_found, out, n, n, n_found,
            )  # fmt: skip
        table = cluster_table(labels, w_dec)
        pca = activation_pca_ranks(store, labels)
        metrics = [
            {
                "n_clusters_total": n_found,
                **row,
                "latent_indices": " ".join(map(str, row["latent_indices"])),
                "activation_pca_rank": pca[row["cluster_id"]],
            }
            for row in table
        ]
        seconds = time.perf_counter() - start
        folder = Path(out) / f"clusters_{n}"
        info = {
            "method": method,
            "n_clusters_requested": n,
            "n_clusters": n_found,
            "n_clusters_reduced": n_found < n,
            "n_distinct_directions": est.n_distinct_,
            "params": {"random_state": seed, **params},
            "sae": sae_path,
            "store": str(store.folder),
            "store_tokens": store.n_tokens,
            "n_latents": sae.cfg.d_sae,
            "n_live": n_live,
            "n_dead": sae.cfg.d_sae - n_live,
            "seconds": seconds,
        }
        _write_clustering(folder, labels, metrics, info)
        results.append(
            ClusteringResult(n_found, folder, labels, metrics, n_live, seconds, n, est.n_distinct_)
        )
    return results


def check_cluster_out(out: str | os.PathLike, n_clusters: list[int]) -> None:
    """Refuse, before any work, an ``--out`` that is (or lies under) a file, or whose
    ``clusters_{n}`` folders hold someone else's files (each is replaced as a whole)."""
    out = Path(out)
    for n in n_clusters:
        check_output_dir(
            out / f"clusters_{n}", "--out", signature=("clustering.json",),
            contents=("cluster_assignments.csv", "cluster_metrics.csv", "clustering.json"),
        )  # fmt: skip


def _write_clustering(folder: Path, labels, metrics, info) -> None:
    assignments = [{"latent_id": i, "cluster_id": int(c)} for i, c in enumerate(labels)]
    with staging_dir(folder) as tmp:
        write_csv(tmp / "cluster_assignments.csv", assignments, ASSIGNMENT_COLUMNS)
        write_csv(tmp / "cluster_metrics.csv", metrics, METRIC_COLUMNS)
        write_json(tmp / "clustering.json", info)


__all__ = [
    "check_cluster_out",
    "ASSIGNMENT_COLUMNS",
    "CLUSTER_METHODS",
    "METRIC_COLUMNS",
    "ClusteringResult",
    "activation_pca_ranks",
    "check_live_n_clusters",
    "cluster_sae",
    "live_latents",
    "parse_n_clusters",
]
