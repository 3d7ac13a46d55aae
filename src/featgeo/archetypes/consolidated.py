"""Stage 1's tables: the consolidated metrics CSV and the training-curve records (seed 002).

``consolidated_metrics_n{n}.csv`` has one row per (cluster, k): first exactly the seed's columns
(:data:`SEED_COLUMNS`, in the seed's order), then featgeo's (:data:`FEATGEO_COLUMNS`). The
cluster-level columns (latents, ranks, elbow metrics, the recommended k) repeat on each of a
cluster's rows, as in the seed.

Cells are written as text by :func:`csv_cell` so a file is byte-identical whenever the numbers
are: floats as Python's shortest round-trip ``repr``, ints as ints (never ``3.0``), booleans as
``True`` / ``False`` and a missing value (an untrained model's loss, an undefined elbow) as an
empty cell.

Model records (:func:`model_record`) are the JSON form of one trained (or untrained) model:
what a work unit hands back and what the CSV and ``training_curves_n{n}.jsonl`` are built from.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from featgeo.archetypes.batched import LOSS_NAMES
from featgeo.archetypes.criteria import select_k
from featgeo.archetypes.elbow import elbow_table
from featgeo.archetypes.engine import ClusterFit
from featgeo.archetypes.quality import QualityFilters

SEED_COLUMNS = [
    "n_clusters_total",
    "cluster_id",
    "n_latents",
    "latent_indices",
    "aanet_k",
    "aanet_status",
    "aanet_loss",
    "aanet_recon_loss",
    "aanet_archetypal_loss",
    "aanet_extrema_loss",
    "decoder_dir_rank",
    "activation_pca_rank",
    "cluster_recon_error",
    "aanet_recon_loss_elbow_k",
    "aanet_recon_loss_elbow_strength",
    "aanet_archetypal_loss_elbow_k",
    "aanet_archetypal_loss_elbow_strength",
    "k_differential",
    "recon_is_monotonic",
    "arch_is_monotonic",
    "recon_pct_decrease",
    "arch_pct_decrease",
    "sae_id",
    "average_l0",
]
"""The columns of seed 002's CSV reference, in its order."""
FEATGEO_COLUMNS = [
    "n_active_tokens",
    "aanet_steps",
    "aanet_stop_reason",
    "aanet_final_lr",
    "inside_fraction",
    "recommended_k",
    "recommended_k_strength",
    "recommended_k_criterion",
    "passes_quality_filters",
]
"""featgeo's own columns, after the seed's: active tokens the model trained on, steps taken,
why it stopped, its last learning rate, the share of the cluster's points inside the simplex of
its k diffusion extrema, the k recommended by featgeo's criterion (with strength and name) and
whether the cluster passes the SPEC §3 quality filters."""
COLUMNS = SEED_COLUMNS + FEATGEO_COLUMNS
MODEL_COLUMNS = ["aanet_k", "aanet_status", "aanet_loss", "aanet_recon_loss",
                 "aanet_archetypal_loss", "aanet_extrema_loss", "n_active_tokens", "aanet_steps",
                 "aanet_stop_reason", "aanet_final_lr", "inside_fraction"]  # fmt: skip
"""The columns that differ between a cluster's rows (one model per row)."""
CLUSTER_COLUMNS = [c for c in COLUMNS if c not in MODEL_COLUMNS]
"""The cluster-level columns, repeated on each of a cluster's rows."""
_LOSS_COLUMNS = dict(
    zip(
        LOSS_NAMES,
        ("aanet_loss", "aanet_recon_loss", "aanet_archetypal_loss", "aanet_extrema_loss"),
        strict=True,
    )
)


def _finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def model_record(result: ClusterFit, curve_every: int = 10) -> dict[str, Any]:
    """JSON form of one (cluster, k) model: status, final losses, stop, and its curve.

    The curve keeps every ``curve_every``-th step (1-based steps 1, 1 + curve_every, ...) and
    always the last one; NaN / inf (a diverged model) are ``None``.
    """
    record: dict[str, Any] = {
        "cluster_id": result.cluster_id,
        "k": result.k,
        "status": result.status,
        "n_active": result.n_active,
        "inside_fraction": _finite_or_none(result.inside_fraction),
        "final": {name: _finite_or_none(v) for name, v in result.final.items()},
    }
    fit = result.fit
    if fit is None:
        record.update(steps=0, stop_reason=None, final_lr=None, curve=None)
        return record
    steps = fit.steps
    keep = np.unique(np.r_[np.arange(0, steps, curve_every), steps - 1]) if steps else []
    curve = {"step": [int(i) + 1 for i in keep]}
    for j, name in enumerate(LOSS_NAMES):
        curve[name] = [_finite_or_none(v) for v in fit.curve[keep, j].tolist()]
    if fit.lr_curve is not None:
        curve["lr"] = [float(v) for v in fit.lr_curve[keep].tolist()]
    record.update(steps=steps, stop_reason=fit.stop_reason, final_lr=float(fit.lr), curve=curve)
    return record


def curve_record(n_clusters: int, record: Mapping[str, Any]) -> dict[str, Any]:
    """One line of ``training_curves_n{n}.jsonl``: the model's id, stop and logged curve."""
    return {
        "n_clusters": n_clusters,
        "cluster_id": record["cluster_id"],
        "k": record["k"],
        "status": record["status"],
        "steps": record["steps"],
        "stop_reason": record["stop_reason"],
        "final_lr": record["final_lr"],
        **(record["curve"] or {name: [] for name in ("step", *LOSS_NAMES, "lr")}),
    }


def cluster_summary(records: Sequence[Mapping[str, Any]], criterion: str) -> dict[str, Any]:
    """The cluster-level columns of one cluster from its models' records (one per k)."""
    records = sorted(records, key=lambda r: r["k"])
    ks = [r["k"] for r in records]
    losses = np.array(
        [
            [_nan(r["final"]["recon"]) for r in records],
            [_nan(r["final"]["archetypal"]) for r in records],
        ]
    )  # [2, n_k]
    ok = np.array([r["status"] == "ok" for r in records])
    losses[:, ~ok] = np.nan  # a diverged model's losses do not make a curve
    table = elbow_table(losses, ks)
    elbow_k = [None if math.isnan(v) else int(v) for v in table.k]
    diff = None if None in elbow_k else abs(elbow_k[0] - elbow_k[1])
    choice = select_k(
        losses[0], losses[1], ks, criterion, inside=[_nan(r["inside_fraction"]) for r in records]
    )
    return {
        "aanet_recon_loss_elbow_k": elbow_k[0],
        "aanet_recon_loss_elbow_strength": float(table.strength[0]),
        "aanet_archetypal_loss_elbow_k": elbow_k[1],
        "aanet_archetypal_loss_elbow_strength": float(table.strength[1]),
        "k_differential": diff,
        "recon_is_monotonic": bool(table.is_monotonic[0]),
        "arch_is_monotonic": bool(table.is_monotonic[1]),
        "recon_pct_decrease": float(table.pct_decrease[0]),
        "arch_pct_decrease": float(table.pct_decrease[1]),
        "recommended_k": choice.k,
        "recommended_k_strength": float(choice.strength),
        "recommended_k_criterion": criterion,
    }


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def consolidated_rows(
    clusters: Sequence[Mapping[str, Any]],
    records: Sequence[Mapping[str, Any]],
    *,
    sae_id: str,
    average_l0: float,
    criterion: str,
    filters: QualityFilters | None = None,
) -> list[dict[str, Any]]:
    """Rows of ``consolidated_metrics_n{n}.csv``, by cluster id then k.

    Args:
        clusters: one row of ``cluster_metrics.csv`` per cluster (``featgeo sae cluster``):
            n_clusters_total, cluster_id, n_latents, latent_indices, decoder_dir_rank,
            cluster_recon_error, activation_pca_rank.
        records: :func:`model_record` of every (cluster, k) model.
        sae_id, average_l0: the SAE's name and its mean L0 on the store (every row).
        criterion: the :mod:`featgeo.archetypes.criteria` name of ``recommended_k``.
        filters: the quality filters of ``passes_quality_filters`` (SPEC §3 defaults).

    Raises:
        ValueError: a cluster without model records, or records of an unknown cluster.
    """
    filters = filters or QualityFilters()
    by_cluster: dict[int, list[Mapping[str, Any]]] = {}
    for record in records:
        by_cluster.setdefault(int(record["cluster_id"]), []).append(record)
    known = {int(c["cluster_id"]) for c in clusters}
    if set(by_cluster) != known:
        missing, extra = sorted(known - set(by_cluster)), sorted(set(by_cluster) - known)
        raise ValueError(
            f"model records and clusters disagree (clusters without models: {missing[:5]}, "
            f"models of unknown clusters: {extra[:5]}); rerun Stage 1 with --force"
        )
    rows = []
    for cluster in sorted(clusters, key=lambda c: int(c["cluster_id"])):
        cid = int(cluster["cluster_id"])
        summary = cluster_summary(by_cluster[cid], criterion)
        base = {
            "n_clusters_total": int(cluster["n_clusters_total"]),
            "cluster_id": cid,
            "n_latents": int(cluster["n_latents"]),
            "latent_indices": str(cluster["latent_indices"]),
            "decoder_dir_rank": int(cluster["decoder_dir_rank"]),
            "activation_pca_rank": int(cluster["activation_pca_rank"]),
            "cluster_recon_error": float(cluster["cluster_recon_error"]),
            "sae_id": sae_id,
            "average_l0": float(average_l0),
            **summary,
        }
        base["passes_quality_filters"] = filters.passes(base)
        for record in sorted(by_cluster[cid], key=lambda r: r["k"]):
            row = dict(base)
            row.update(
                aanet_k=record["k"],
                aanet_status=record["status"],
                n_active_tokens=record["n_active"],
                aanet_steps=record["steps"],
                aanet_stop_reason=record["stop_reason"],
                aanet_final_lr=record["final_lr"],
                inside_fraction=record["inside_fraction"],
            )
            for name, column in _LOSS_COLUMNS.items():
                row[column] = record["final"][name] if record["status"] == "ok" else None
            rows.append(row)
    return rows


def cluster_level(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per cluster (its first (cluster, k) row) of consolidated rows."""
    seen: dict[int, Mapping[str, Any]] = {}
    for row in rows:
        seen.setdefault(int(row["cluster_id"]), row)
    return [dict(seen[c]) for c in sorted(seen)]


def csv_cell(value: Any) -> str:
    """A value as CSV text, the same for equal values (see the module docstring)."""
    if value is None:
        return ""
    if isinstance(value, bool | np.bool_):
        return "True" if value else "False"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        value = float(value)
        return repr(value) if math.isfinite(value) else ""
    return str(value)


__all__ = [
    "CLUSTER_COLUMNS",
    "COLUMNS",
    "MODEL_COLUMNS",
    "FEATGEO_COLUMNS",
    "SEED_COLUMNS",
    "cluster_level",
    "cluster_summary",
    "consolidated_rows",
    "csv_cell",
    "curve_record",
    "model_record",
]
