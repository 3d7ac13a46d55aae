"""Figures of the sparsity-pattern analyses (seed 000): every function builds and *returns* a
matplotlib ``Figure`` (no pyplot state, no file writing; save with
:func:`featgeo.reports.figures.save_figure`).

Per (seed, k): spy plot of the analysed masks sorted by cluster, cluster statistics, a t-SNE
embedding and the distance heatmap. Summaries: separation ratios and within/between distances
against k (mean ± std across seeds), and the per-matrix bars of the comparative report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from featgeo.sparsity.metrics import SEPARATION_BANDS, cluster_order

EXACT_TSNE_MAX_POINTS = 1000
"""Up to this many points t-SNE uses exact gradients (O(n^2) per step), beyond it Barnes-Hut."""

MAX_ANNOTATED_CLUSTERS = 16
"""Cells of the k x k heatmap carry their value up to this k (beyond it they are unreadable)."""


def cluster_colors(k: int) -> np.ndarray:
    """[k, 4] RGBA colours, one per cluster (tab10 / tab20, then evenly spaced hues)."""
    from matplotlib import colormaps

    if k <= 10:
        return colormaps["tab10"](np.arange(k))
    if k <= 20:
        return colormaps["tab20"](np.arange(k))
    return colormaps["hsv"](np.linspace(0, 1, k, endpoint=False))


def _check_labels(labels: np.ndarray, n: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
    if n and labels.min() < 0:
        raise ValueError("labels must be >= 0")
    return labels.astype(np.int64)


def _boundaries(sorted_labels: np.ndarray) -> np.ndarray:
    """Row positions (between rows) where the cluster label changes."""
    return np.flatnonzero(np.diff(sorted_labels)) + 0.5


def spy_plot(
    masks: np.ndarray,
    labels: np.ndarray,
    *,
    feature_ids: Sequence[int] | None = None,
    title: str | None = None,
) -> Figure:
    """Sparsity patterns of the analysed features, grouped by cluster.

    masks: [n, D] bool, the analysed features (reference first); labels: [n] cluster ids.
    Rows are features sorted by cluster (stable), columns the D positions; black = non-zero.
    Red lines separate clusters, the left strip gives each row's cluster colour and the
    reference feature is marked with a triangle.
    """
    masks = np.asarray(masks, dtype=bool)
    n, d = masks.shape
    labels = _check_labels(labels, n)
    k = int(labels.max()) + 1
    order = cluster_order(labels)
    sorted_labels = labels[order]

    fig = Figure(figsize=(10, 6), layout="constrained")
    strip_ax, ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 40]}, sharey=True)
    strip_ax.imshow(
        sorted_labels[:, None],
        cmap=ListedColormap(cluster_colors(k)),
        vmin=-0.5,
        vmax=k - 0.5,
        aspect="auto",
        interpolation="nearest",
    )
    strip_ax.set_xticks([])
    strip_ax.set_ylabel("analysed features (sorted by cluster)")
    ax.imshow(masks[order], cmap="Greys", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    for y in _boundaries(sorted_labels):
        ax.axhline(y, color="tab:red", linewidth=0.8)
        strip_ax.axhline(y, color="white", linewidth=0.8)
    ref_row = int(np.flatnonzero(order == 0)[0])  # the reference is analysed feature 0
    ref_name = f"reference {feature_ids[0]}" if feature_ids is not None else "reference"
    ax.plot(
        [-0.5], [ref_row], marker=">", color="tab:blue", markersize=8, clip_on=False, label=ref_name
    )
    ax.legend(loc="upper right", fontsize=8, framealpha=0.9)
    ax.set_xlabel(f"position (D = {d}); black = non-zero weight")
    ax.set_title(title or f"{n} features, {k} clusters")
    return fig


def cluster_statistics_plot(
    labels: np.ndarray,
    within_per_cluster: Sequence[float],
    *,
    mean_between: float | None = None,
    summary: Mapping[str, float] | None = None,
    title: str | None = None,
) -> Figure:
    """Cluster sizes and per-cluster cohesion.

    labels: [n] cluster ids; within_per_cluster: [k] mean normalized Hamming over the pairs
    inside each cluster (0 for a singleton, None for an empty cluster; lower = tighter).
    ``mean_between`` draws the mean between-cluster distance for reference; ``summary`` is
    printed as a small text box (None values print as "undefined").
    """
    within = _floats(within_per_cluster)
    k = within.size
    labels = _check_labels(labels, np.asarray(labels).size)
    sizes = np.bincount(labels, minlength=k)
    colors = cluster_colors(k)
    clusters = np.arange(k)

    fig = Figure(figsize=(11, 4.5), layout="constrained")
    size_ax, cohesion_ax = fig.subplots(1, 2)
    size_ax.bar(clusters, sizes, color=colors)
    size_ax.set_xlabel("cluster")
    size_ax.set_ylabel("features")
    size_ax.set_title("cluster sizes")
    size_ax.axhline(sizes.mean(), color="grey", linestyle="--", linewidth=0.8, label="mean")
    size_ax.legend(fontsize=8)

    cohesion_ax.bar(clusters, within, color=colors)
    if mean_between is not None and np.isfinite(mean_between):
        cohesion_ax.axhline(
            mean_between, color="tab:red", linestyle="--", linewidth=1, label="mean between"
        )
        cohesion_ax.legend(fontsize=8)
    cohesion_ax.set_xlabel("cluster")
    cohesion_ax.set_ylabel("mean normalized Hamming within")
    cohesion_ax.set_title("cohesion (lower = tighter)")
    for ax in (size_ax, cohesion_ax):
        ax.set_xticks(clusters if k <= 20 else clusters[:: max(1, k // 10)])
    if summary:
        text = "\n".join(f"{key}: {_fmt(value)}" for key, value in summary.items())
        cohesion_ax.text(
            0.02,
            0.98,
            text,
            transform=cohesion_ax.transAxes,
            va="top",
            fontsize=8,
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.85},
        )
    if title:
        fig.suptitle(title)
    return fig


def tsne_embedding(masks: np.ndarray, *, random_state: int = 0) -> np.ndarray:
    """2-D t-SNE of binary masks under normalized Hamming distance: [n, D] -> [n, 2].

    Perplexity is min(30, n - 1) (t-SNE needs perplexity < n); fewer than 3 points are placed
    on a line instead (t-SNE is undefined there).
    """
    from sklearn.manifold import TSNE

    masks = np.asarray(masks, dtype=bool)
    n = masks.shape[0]
    if n < 3:
        return np.column_stack([np.arange(n, dtype=np.float64), np.zeros(n)])
    from featgeo.sparsity.hamming import pairwise_hamming

    distances = pairwise_hamming(masks).astype(np.float64) / masks.shape[1]
    tsne = TSNE(
        n_components=2,
        perplexity=float(min(30, n - 1)),
        metric="precomputed",
        init="random",  # PCA initialisation is not defined for precomputed distances
        # Exact gradients for the few hundred points analysed here: cheaper than Barnes-Hut's
        # threaded tree code (which stalls on busy CPUs) and free of its approximation.
        method="exact" if n <= EXACT_TSNE_MAX_POINTS else "barnes_hut",
        random_state=random_state,
    )
    return tsne.fit_transform(distances)


def tsne_plot(
    masks: np.ndarray,
    labels: np.ndarray,
    *,
    random_state: int = 0,
    embedding: np.ndarray | None = None,
    title: str | None = None,
) -> Figure:
    """t-SNE embedding of the analysed masks ([n, D] bool, reference first) coloured by
    cluster; the reference feature is drawn as a star. ``embedding`` ([n, 2]) skips t-SNE."""
    masks = np.asarray(masks, dtype=bool)
    n = masks.shape[0]
    labels = _check_labels(labels, n)
    if embedding is None:
        embedding = tsne_embedding(masks, random_state=random_state)
    k = int(labels.max()) + 1
    colors = cluster_colors(k)

    fig = Figure(figsize=(7, 6), layout="constrained")
    ax = fig.subplots()
    for c in range(k):
        points = embedding[labels == c]
        ax.scatter(points[:, 0], points[:, 1], s=22, color=colors[c], label=f"cluster {c}")
    ax.scatter(
        embedding[0, 0],
        embedding[0, 1],
        s=220,
        marker="*",
        color=colors[labels[0]],
        edgecolors="black",
        linewidths=1,
        label="reference",
        zorder=3,
    )
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    if k <= 16:
        ax.legend(fontsize=7, loc="best", markerscale=0.8)
    ax.set_title(title or f"t-SNE of {n} masks (normalized Hamming), {k} clusters")
    return fig


def distance_heatmap(
    distances: np.ndarray,
    labels: np.ndarray,
    between_matrix: Sequence[Sequence[float]],
    *,
    title: str | None = None,
) -> Figure:
    """Left: pairwise normalized Hamming distances ([n, n]) of the analysed features sorted by
    cluster, with cluster boundaries. Right: the k x k within/between matrix (diagonal: mean
    within-cluster distance, off-diagonal: mean over all cross pairs)."""
    distances = np.asarray(distances, dtype=np.float64)
    n = distances.shape[0]
    labels = _check_labels(labels, n)
    between = np.array([_floats(row) for row in between_matrix]).reshape(
        len(between_matrix), len(between_matrix)
    )  # [k, k], nan for empty clusters
    k = between.shape[0]
    order = cluster_order(labels)

    fig = Figure(figsize=(13, 5.5), layout="constrained")
    pair_ax, block_ax = fig.subplots(1, 2)
    shown = distances[np.ix_(order, order)].copy()
    np.fill_diagonal(shown, np.nan)  # the zero diagonal would flatten the colour scale
    image = pair_ax.imshow(shown, cmap="viridis", interpolation="nearest")
    for pos in _boundaries(labels[order]):
        pair_ax.axhline(pos, color="white", linewidth=0.6)
        pair_ax.axvline(pos, color="white", linewidth=0.6)
    pair_ax.set_title("pairwise normalized Hamming (sorted by cluster)")
    pair_ax.set_xlabel("feature")
    pair_ax.set_ylabel("feature")
    fig.colorbar(image, ax=pair_ax, shrink=0.85)

    # A singleton cluster has no within distance (reported as 0): leave its cell blank so that
    # it does not stretch the colour scale.
    singleton = np.bincount(labels, minlength=k)[:k] < 2
    shown = between.copy()
    shown[singleton, singleton] = np.nan
    image = block_ax.imshow(shown, cmap="magma", interpolation="nearest")
    if k <= MAX_ANNOTATED_CLUSTERS:
        low, high = np.nanmin(shown), np.nanmax(shown)
        threshold = (low + high) / 2 if np.isfinite(low) else 0.0
        for i in range(k):
            for j in range(k):
                single = i == j and singleton[i]
                empty = not np.isfinite(between[i, j]) and not single
                block_ax.text(
                    j,
                    i,
                    "n=1" if single else "empty" if empty else f"{between[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7 if k > 8 else 9,
                    color="black" if single or empty or between[i, j] > threshold else "white",
                )
    block_ax.set_title("within (diagonal) / between clusters")
    block_ax.set_xlabel("cluster")
    block_ax.set_ylabel("cluster")
    ticks = np.arange(k) if k <= 20 else np.arange(0, k, max(1, k // 10))
    block_ax.set_xticks(ticks)
    block_ax.set_yticks(ticks)
    fig.colorbar(image, ax=block_ax, shrink=0.85)
    if title:
        fig.suptitle(title)
    return fig


def _floats(values: Sequence[float | None]) -> np.ndarray:
    """[n] float64 with None (an undefined value) as nan."""
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _finite(values: Sequence[float | None]) -> np.ndarray:
    array = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    return array[np.isfinite(array)]


def mean_std(values: Sequence[float | None]) -> tuple[float, float]:
    """Mean and population std of the finite values (nan, nan when there are none)."""
    finite = _finite(values)
    if not finite.size:
        return float("nan"), float("nan")
    return float(finite.mean()), float(finite.std())


def _trend(
    ax,
    per_k: Mapping[int, Sequence[Mapping[str, float]]],
    metric: str,
    label: str,
    color: str,
) -> None:
    """Mean ± std of ``metric`` across seeds at each k, with the individual seeds faint."""
    ks = sorted(per_k)
    stats = np.array([mean_std([m.get(metric) for m in per_k[k]]) for k in ks])
    for k in ks:
        seeds = _finite([m.get(metric) for m in per_k[k]])
        ax.scatter(np.full(seeds.size, k), seeds, color=color, alpha=0.3, s=12)
    ax.errorbar(ks, stats[:, 0], yerr=stats[:, 1], color=color, marker="o", capsize=4, label=label)
    ax.set_xticks(ks)
    ax.set_xlabel("k (clusters)")


def summary_separation_ratios(
    per_k: Mapping[int, Sequence[Mapping[str, float]]], *, title: str | None = None
) -> Figure:
    """Separation ratios against k, mean ± std across seeds, for both metric families.

    per_k: {k: [metrics of each seed]} with ``centroid_separation_ratio`` and
    ``hamming_separation_ratio`` (as in ``FeatureAnalysis.metrics()``).
    """
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    centroid_ax, hamming_ax = fig.subplots(1, 2)
    _trend(centroid_ax, per_k, "centroid_separation_ratio", "centroid", "tab:blue")
    for threshold, band in SEPARATION_BANDS:
        centroid_ax.axhline(threshold, color="grey", linestyle=":", linewidth=0.8)
        centroid_ax.text(
            1.0,
            threshold,
            f" {band}",
            transform=centroid_ax.get_yaxis_transform(),
            va="center",
            fontsize=7,
            color="grey",
        )
    centroid_ax.set_ylabel("between / within (Euclidean, centroids)")
    centroid_ax.set_title("centroid separation ratio")
    _trend(hamming_ax, per_k, "hamming_separation_ratio", "Hamming", "tab:orange")
    hamming_ax.axhline(1.0, color="grey", linestyle=":", linewidth=0.8)
    hamming_ax.set_ylabel("mean between / mean within (normalized Hamming)")
    hamming_ax.set_title("Hamming separation ratio")
    fig.suptitle(title or "separation ratios across seeds (mean ± std)")
    return fig


def summary_distances(
    per_k: Mapping[int, Sequence[Mapping[str, float]]], *, title: str | None = None
) -> Figure:
    """Within- and between-cluster distances against k (mean ± std across seeds): normalized
    Hamming on the left, Euclidean to/between centroids on the right."""
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    hamming_ax, centroid_ax = fig.subplots(1, 2)
    _trend(hamming_ax, per_k, "mean_within_hamming", "within", "tab:green")
    _trend(hamming_ax, per_k, "mean_between_hamming", "between", "tab:red")
    hamming_ax.set_ylabel("normalized Hamming")
    hamming_ax.set_title("Hamming family")
    hamming_ax.legend(fontsize=8)
    _trend(centroid_ax, per_k, "mean_within_centroid_distance", "within", "tab:green")
    _trend(centroid_ax, per_k, "mean_between_centroid_distance", "between", "tab:red")
    centroid_ax.set_ylabel("Euclidean distance")
    centroid_ax.set_title("centroid family")
    centroid_ax.legend(fontsize=8)
    fig.suptitle(title or "within / between cluster distances across seeds (mean ± std)")
    return fig


def _bars(
    ax,
    names: Sequence[str],
    series: Sequence[tuple[str, Sequence[tuple[float, float]], str]],
) -> None:
    """Grouped bars with error bars: series = [(label, [(mean, std) per name], colour)]."""
    x = np.arange(len(names))
    width = 0.8 / max(1, len(series))
    for i, (label, values, color) in enumerate(series):
        means = _floats([v[0] for v in values])
        stds = np.nan_to_num(_floats([v[1] for v in values]), nan=0.0, posinf=0.0, neginf=0.0)
        offset = (i - (len(series) - 1) / 2) * width
        undefined = ~np.isfinite(means)  # an undefined mean gets no bar, only a mark
        heights = np.where(undefined, 0.0, means)
        ax.bar(
            x + offset,
            heights,
            width,
            yerr=np.where(undefined, 0.0, stds),
            capsize=3,
            color=color,
            label=label,
        )
        for pos in (x + offset)[undefined]:
            ax.text(pos, 0, "undefined", rotation=90, ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)


def separation_ratio_bars(
    names: Sequence[str],
    centroid: Sequence[tuple[float, float]],
    hamming: Sequence[tuple[float, float]],
    *,
    title: str | None = None,
) -> Figure:
    """One group of bars per matrix: centroid and Hamming separation ratios (mean ± std)."""
    fig = Figure(figsize=(max(7, 0.9 * len(names) + 3), 5), layout="constrained")
    ax = fig.subplots()
    _bars(
        ax,
        names,
        [("centroid", centroid, "tab:blue"), ("Hamming", hamming, "tab:orange")],
    )
    ax.axhline(1.0, color="grey", linestyle=":", linewidth=0.8)
    ax.set_ylabel("separation ratio (between / within)")
    ax.legend(fontsize=8)
    ax.set_title(title or "separation ratios per matrix (mean ± std over executions)")
    return fig


def block_coherence_bars(
    names: Sequence[str],
    coherence: Sequence[tuple[float, float]],
    *,
    threshold: float = 0.3,
    title: str | None = None,
) -> Figure:
    """MMM block coherence per matrix (mean ± std) against the viability ``threshold``."""
    fig = Figure(figsize=(max(7, 0.9 * len(names) + 3), 4.5), layout="constrained")
    ax = fig.subplots()
    _bars(ax, names, [("MMM block coherence", coherence, "tab:purple")])
    ax.axhline(threshold, color="tab:red", linestyle="--", linewidth=1, label="viable above")
    ax.set_ylabel("fraction of all-zero positions per block")
    ax.legend(fontsize=8)
    ax.set_title(title or "MMM block coherence per matrix (block skipping viable above 0.3)")
    return fig


def _fmt(value) -> str:
    if value is None:
        return "undefined"
    if isinstance(value, float):
        return f"{value:.3f}" if np.isfinite(value) else str(value)
    return str(value)
