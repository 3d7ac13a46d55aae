"""The five Stage 1 analysis plots of the AANet pipeline (seed 002 "Stage 1" table, SPEC §3).

Every plot function takes one mapping per latent cluster (the cluster-level columns of
``consolidated_metrics_n{n}.csv``: ``cluster_id``, ``n_latents``, ``decoder_dir_rank``,
``activation_pca_rank``, ``aanet_recon_loss_elbow_strength``,
``aanet_archetypal_loss_elbow_strength`` and ``passes_quality``, the SPEC §3 quality filters) and
builds and *returns* a matplotlib ``Figure`` (no pyplot state, no file writing).
:func:`write_stage1_plots` writes all five under their seed 002 names with
:func:`featgeo.reports.figures.save_figure`. Values may be Python numbers or CSV cells
(``""``, ``"nan"``, ``"3"``, ``"True"``): empty or unparsable cells count as undefined (NaN).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from featgeo.archetypes.quality import cell_flag, cell_number
from featgeo.archetypes.selection import selection_thresholds
from featgeo.reports.figures import DEFAULT_DPI, save_figure

MAX_STRENGTH = 1 / math.sqrt(2)
"""Largest possible elbow strength: the distance of (0, 0) or (1, 1) to the chord x + y = 1."""

MAX_MARKER_AREA = 600.0
"""Marker area (points^2) of the most populated (geometric rank, PCA rank) cell."""

NO_PASSING = "no cluster passes the quality filters"
PASSING = "passes quality filters"


class _Columns(NamedTuple):
    """Cluster metrics as [n_rows] arrays; NaN (False for ``passing``) where undefined."""

    geometric: np.ndarray
    pca: np.ndarray
    recon: np.ndarray
    arch: np.ndarray
    passing: np.ndarray


def _columns(clusters: Sequence[Mapping[str, Any]]) -> _Columns:
    rows = list(clusters)
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise TypeError(f"clusters[{i}] must be a mapping, got {type(row).__name__}")

    def column(key: str) -> np.ndarray:
        return np.array([cell_number(row.get(key)) for row in rows], dtype=np.float64)

    return _Columns(
        geometric=column("decoder_dir_rank"),
        pca=column("activation_pca_rank"),
        recon=column("aanet_recon_loss_elbow_strength"),
        arch=column("aanet_archetypal_loss_elbow_strength"),
        passing=np.array([cell_flag(row.get("passes_quality")) for row in rows], dtype=bool),
    )


def _check_n(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer):
        raise TypeError(f"n (the n_clusters setting) must be an int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"n (the n_clusters setting) must be >= 1, got {n!r}")
    return int(n)


def _message(ax, text: str) -> None:
    """A centred note on an axes that has nothing to plot."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="grey")


def _fmt(value: float) -> str:
    return f"{value:g}" if float(value).is_integer() else f"{value:.2f}"


def pca_vs_geometric_rank(clusters: Sequence[Mapping[str, Any]], n: int) -> Figure:
    """Activation PCA rank against geometric (decoder-direction) rank, one cluster per count.

    x = ``decoder_dir_rank``, y = ``activation_pca_rank`` (both numbers of directions, SPEC §3
    "decoder_dir_rank" / "activation_pca_rank"). Ranks are small integers, so clusters sharing a
    cell are drawn as one marker whose area is proportional to their number, annotated with it.
    The dashed line is y = x (activations span as many directions as the decoder rows).
    """
    n = _check_n(n)
    cols = _columns(clusters)
    keep = np.isfinite(cols.geometric) & np.isfinite(cols.pca)
    cells = Counter(zip(cols.geometric[keep].tolist(), cols.pca[keep].tolist(), strict=True))
    fig = Figure(figsize=(6.5, 6), layout="constrained")
    ax = fig.subplots()
    if cells:
        xy = np.array(list(cells), dtype=np.float64)  # [n_cells, 2]
        counts = np.array(list(cells.values()), dtype=np.float64)
        ax.scatter(xy[:, 0], xy[:, 1], s=MAX_MARKER_AREA * counts / counts.max(), alpha=0.6)
        for (x, y), count in cells.items():
            ax.annotate(str(count), (x, y), xytext=(5, 5), textcoords="offset points", fontsize=8)
        low, high = float(xy.min()), float(xy.max())
        ax.plot([low, high], [low, high], "--", color="grey", linewidth=1, label="y = x")
        ax.legend(loc="upper left", fontsize=8)
        ax.margins(0.12)
    else:
        _message(ax, "no cluster has both ranks")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("geometric rank (decoder_dir_rank, directions)")
    ax.set_ylabel("activation PCA rank (components for 95% variance)")
    ax.set_title(
        f"PCA rank vs geometric rank, n_clusters = {n}\n"
        f"{int(keep.sum())} clusters; marker area and label = clusters per cell"
    )
    return fig


def decoder_rank_distribution(clusters: Sequence[Mapping[str, Any]], n: int) -> Figure:
    """Histogram of ``decoder_dir_rank`` (geometric rank, SPEC §3) with one bin per integer;
    the mean and median over the clusters with a defined rank are drawn and in the legend."""
    n = _check_n(n)
    ranks = _columns(clusters).geometric
    ranks = ranks[np.isfinite(ranks)]
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    if ranks.size:
        bins = np.arange(math.floor(ranks.min()), math.floor(ranks.max()) + 2) - 0.5
        ax.hist(ranks, bins=bins, color="tab:blue", edgecolor="white")
        mean, median = float(ranks.mean()), float(np.median(ranks))
        ax.axvline(mean, color="tab:red", linestyle="--", label=f"mean = {mean:.2f}")
        ax.axvline(median, color="black", linestyle=":", label=f"median = {_fmt(median)}")
        ax.legend(fontsize=8)
    else:
        _message(ax, "no cluster has a geometric rank")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("geometric rank (decoder_dir_rank, directions)")
    ax.set_ylabel("clusters")
    ax.set_title(f"geometric rank distribution, n_clusters = {n} ({ranks.size} clusters)")
    return fig


def elbow_strength_distributions(clusters: Sequence[Mapping[str, Any]], n: int) -> Figure:
    """Histograms of the finite recon (left) and archetypal (right) elbow strengths (SPEC §3
    "Elbow metrics": max distance of the normalised loss curve to its chord, dimensionless; at
    most 1/sqrt(2) for a curve between its end values, more for one rising above its first
    loss); each title counts the clusters whose curve is undefined (NaN)."""
    n = _check_n(n)
    cols = _columns(clusters)
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    panels = (("reconstruction", cols.recon, "tab:blue"), ("archetypal", cols.arch, "tab:orange"))
    for ax, (name, values, color) in zip(axes, panels, strict=True):
        finite = values[np.isfinite(values)]
        high = max(MAX_STRENGTH, float(finite.max())) if finite.size else MAX_STRENGTH
        if finite.size:
            ax.hist(finite, bins=np.linspace(0, high, 21), color=color, edgecolor="white")
        else:
            _message(ax, "no finite elbow strength")
        ax.set_xlim(0, high)
        ax.set_xlabel(f"{name} elbow strength")
        ax.set_title(
            f"{name}: {finite.size} clusters, undefined (NaN): {values.size - finite.size}"
        )
    axes[0].set_ylabel("clusters")
    fig.suptitle(f"elbow strength distributions, n_clusters = {n}")
    return fig


def _threshold_lines(ax, recon: np.ndarray, arch: np.ndarray) -> None:
    """Draw mu, mu + 1 sigma, mu + 3 sigma of each strength over the passing clusters (SPEC §3:
    A = both > mu+1s, B = recon > mu+3s, C = arch > mu+3s, D = k_differential 0, both > mu)
    and fit both axes to those points and lines. recon / arch: [n_passing], finite."""
    styles = {"mu": ":", "one_sigma": "--", "three_sigma": "-."}
    names = {"mu": "μ", "one_sigma": "μ+1σ", "three_sigma": "μ+3σ"}
    for axis, values, color in (("recon", recon, "tab:blue"), ("arch", arch, "tab:orange")):
        draw = ax.axvline if axis == "recon" else ax.axhline
        thresholds = selection_thresholds(values)
        for key, style in styles.items():
            value = thresholds[key]
            label = f"{axis} {names[key]} = {value:.3f}"
            draw(value, color=color, linestyle=style, linewidth=1, label=label)
        # fit the axis to the points and the lines, with a 5% pad (a lone line gets +-0.01)
        low = min(float(values.min()), thresholds["mu"])
        high = max(float(values.max()), thresholds["three_sigma"])
        pad = 0.05 * (high - low) or 0.01
        (ax.set_xlim if axis == "recon" else ax.set_ylim)(low - pad, high + pad)


def recon_vs_arch(clusters: Sequence[Mapping[str, Any]], n: int, *, zoomed: bool) -> Figure:
    """Archetypal (y) against reconstruction (x) elbow strength, one point per cluster.

    Unzoomed: every cluster with both strengths finite, on [0, 1/sqrt(2)] or wider to show them
    all (a curve rising above its first loss has a strength beyond 1/sqrt(2)); the
    clusters passing the SPEC §3 quality filters in colour, the others grey. Zoomed: only the
    passing clusters, axes fitted to them and to the selection thresholds of
    :func:`selection_thresholds` over them (vertical lines for recon, horizontal for arch).
    """
    n = _check_n(n)
    cols = _columns(clusters)
    finite = np.isfinite(cols.recon) & np.isfinite(cols.arch)
    passing = finite & cols.passing
    fig = Figure(figsize=(7.5, 6.5), layout="constrained")
    ax = fig.subplots()
    if zoomed:
        if passing.any():
            ax.scatter(
                cols.recon[passing], cols.arch[passing], s=22, color="tab:green", label=PASSING
            )
            _threshold_lines(ax, cols.recon[passing], cols.arch[passing])
            ax.legend(fontsize=7, loc="best")
        else:
            _message(ax, NO_PASSING if not cols.passing.any() else "no passing cluster is finite")
        shown = f"{int(passing.sum())} clusters passing the quality filters"
    else:
        rest = finite & ~cols.passing
        if finite.any():
            ax.scatter(cols.recon[rest], cols.arch[rest], s=14, color="lightgrey", label="other")
            ax.scatter(
                cols.recon[passing], cols.arch[passing], s=22, color="tab:green", label=PASSING
            )
            ax.legend(fontsize=8, loc="best")
        else:
            _message(ax, "no cluster has both elbow strengths")
        # At least [0, 1/sqrt(2)]; a curve that rises above its first loss has a larger
        # strength (SPEC §3's formula is not bounded then), and every cluster must show.
        top_x = max(MAX_STRENGTH, *cols.recon[finite]) if finite.any() else MAX_STRENGTH
        top_y = max(MAX_STRENGTH, *cols.arch[finite]) if finite.any() else MAX_STRENGTH
        ax.set_xlim(-0.02 * top_x, 1.02 * top_x)
        ax.set_ylim(-0.02 * top_y, 1.02 * top_y)
        shown = f"{int(finite.sum())} clusters ({int(passing.sum())} passing)"
    ax.set_xlabel("reconstruction elbow strength")
    ax.set_ylabel("archetypal elbow strength")
    view = "zoomed" if zoomed else "unzoomed"
    ax.set_title(f"recon vs archetypal elbow strength ({view}), n_clusters = {n}\n{shown}")
    return fig


def write_stage1_plots(
    clusters: Sequence[Mapping[str, Any]],
    n: int,
    plots_dir: str | os.PathLike,
    *,
    dpi: int = DEFAULT_DPI,
) -> list[Path]:
    """Write the five Stage 1 PNGs (seed 002 names) into ``plots_dir`` (created if needed);
    each figure is closed after writing. Returns their paths in the seed's order."""
    n = _check_n(n)
    rows = list(clusters)
    plots_dir = Path(plots_dir)
    plots_dir.mkdir(parents=True, exist_ok=True)
    figures = (
        (f"pca_vs_geometric_rank_n{n}.png", lambda: pca_vs_geometric_rank(rows, n)),
        (f"decoder_rank_dist_n{n}.png", lambda: decoder_rank_distribution(rows, n)),
        (f"elbow_strength_dists_n{n}.png", lambda: elbow_strength_distributions(rows, n)),
        (f"recon_vs_arch_unzoomed_n{n}.png", lambda: recon_vs_arch(rows, n, zoomed=False)),
        (f"recon_vs_arch_zoomed_n{n}.png", lambda: recon_vs_arch(rows, n, zoomed=True)),
    )
    return [save_figure(build(), plots_dir / name, dpi=dpi) for name, build in figures]


__all__ = [
    "decoder_rank_distribution",
    "elbow_strength_distributions",
    "pca_vs_geometric_rank",
    "recon_vs_arch",
    "selection_thresholds",
    "write_stage1_plots",
]
