"""``featgeo hamming single`` and ``featgeo hamming multi`` (seed 000's
``hamming_cluster_analysis.py`` and ``multi_execution_hamming_analysis.py``, same flags)."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Table

from featgeo.progress import console, err_console

if TYPE_CHECKING:
    from featgeo.sparsity.analysis import FeatureAnalysis
    from featgeo.sparsity.executions import MatrixInfo, MultiResult, SingleResult

MATRIX_HELP = (
    "Pruned matrix: .pt (a plain tensor), .safetensors (one tensor), .npy, or its bit-packed "
    "mask .mask.safetensors (`featgeo prune --export masks`; not with --cluster-on weights)."
)
AXIS_HELP = "columns|rows: a feature is a column of the matrix, or a row."
CLUSTER_ON_HELP = "masks|weights: run k-means on the binary masks or on the weights."
MMM_FIT = 0.3  # block coherence above this: a block-skipping sparse kernel fits (SPEC §2)


@contextlib.contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """Show each warning as one line on stderr (no source line), then carry on."""

    def show(message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split())
        err_console.print(
            f"[yellow]featgeo: warning:[/yellow] {category.__name__}: {text}",
            highlight=False,
            soft_wrap=True,
        )

    with warnings.catch_warnings():  # restores the filters and showwarning afterwards
        warnings.showwarning = show
        yield


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}f}"


def _ratio(value: float | None, reason: str | None, band: str | None = None, digits: int = 4):
    """A separation ratio cell: "1.2345 (good)", or "undefined (reason)" (never a band)."""
    if value is None:
        return f"undefined ({reason})" if reason else "undefined"
    return f"{_fmt(value, digits)} ({band})" if band else _fmt(value, digits)


MATRIX = typer.Argument(..., help=MATRIX_HELP)
N_CLUSTERS = typer.Option(8, "--n-clusters", help="k-means clusters.")
AXIS = typer.Option("columns", "--axis", help=AXIS_HELP)
CLUSTER_ON = typer.Option("masks", "--cluster-on", help=CLUSTER_ON_HELP)
BLOCK_SIZE = typer.Option(8, "--block-size", help="Features per MMM block.")
RNG = typer.Option(
    "legacy",
    "--rng",
    help="legacy: draw reference features and k-means seeds as the original scripts "
    "(np.random.seed(seed); np.random.randint(0, N); k-means random_state = seed + execution); "
    "generator: numpy default_rng without replacement, k-means random_state = seed.",
)


def single(
    matrix: Path = MATRIX,
    feature_idx: int = typer.Option(
        None, "--feature-idx", help="Reference feature (default: drawn with --seed)."
    ),
    n_features: int = typer.Option(128, "--n-features", help="Nearest features to analyse."),
    n_clusters: int = N_CLUSTERS,
    seed: int = typer.Option(42, "--seed", help="Seed of the reference draw and of k-means."),
    axis: str = AXIS,
    cluster_on: str = CLUSTER_ON,
    block_size: int = BLOCK_SIZE,
    output_json: Path = typer.Option(None, "--output-json", help="Also write the results here."),
    rng: str = RNG,
) -> None:
    """One reference feature: its nearest features by Hamming, k-means, all cluster metrics."""
    from featgeo.files import check_output_file
    from featgeo.sparsity.executions import run_single, single_to_json

    check_output_file(output_json, "--output-json")
    with _warnings_as_lines():
        result = run_single(
            matrix,
            feature_idx=feature_idx,
            n_features=n_features,
            n_clusters=n_clusters,
            seed=seed,
            axis=axis,
            cluster_on=cluster_on,
            block_size=block_size,
            rng=rng,
        )
    _print_single(result)
    _write_json(output_json, single_to_json(result))


def multi(
    matrix: Path = MATRIX,
    n_executions: int = typer.Option(
        10, "--n-executions", help="Reference features drawn with --seed (see --rng)."
    ),
    n_features: int = typer.Option(128, "--n-features", help="Nearest features per execution."),
    n_clusters: int = N_CLUSTERS,
    seed: int = typer.Option(42, "--seed", help="Seed of the reference draws and of k-means."),
    axis: str = AXIS,
    cluster_on: str = CLUSTER_ON,
    block_size: int = BLOCK_SIZE,
    output_json: Path = typer.Option(None, "--output-json", help="Write all results here."),
    rng: str = RNG,
) -> None:
    """Repeat the single analysis on N random reference features; mean ± std of every metric."""
    from featgeo.files import check_output_file
    from featgeo.sparsity.executions import multi_to_json, run_multi

    check_output_file(output_json, "--output-json")
    with _warnings_as_lines():
        result = run_multi(
            matrix,
            n_executions=n_executions,
            n_features=n_features,
            n_clusters=n_clusters,
            seed=seed,
            axis=axis,
            cluster_on=cluster_on,
            block_size=block_size,
            rng=rng,
        )
    _print_multi(result)
    _write_json(output_json, multi_to_json(result))


def _write_json(path: Path | None, payload: dict) -> None:
    if path is not None:
        from featgeo.files import write_json

        write_json(path, payload)
        console.print(f"wrote {path}", highlight=False)


def _table(title: str) -> Table:
    """A table at least as wide as its title, so the title never wraps."""
    return Table(title=title, min_width=len(title) + 2)


def _print_header(info: MatrixInfo, extra: str) -> None:
    console.print(f"[bold]{escape(info.path)}[/bold]", highlight=False, markup=True)
    console.print(
        f"shape {info.shape[0]} x {info.shape[1]}, sparsity {info.sparsity:.2%}, "
        f"{info.n_features_total} features ({info.axis}) of length D={info.d}",
        highlight=False,
    )
    console.print(extra, highlight=False)


def _print_single(result: SingleResult) -> None:
    a = result.analysis
    how = f"drawn with --seed {a.seed}, --rng {result.rng}" if result.feature_drawn else "given"
    _print_header(result.matrix, f"reference feature {a.feature_idx} ({how})")
    console.print(_neighbour_table(a))
    console.print(_hamming_stats_table(a.hamming_stats))
    console.print(_centroid_table(a))
    console.print(_hamming_family_table(a))
    console.print(_mmm_table(a))
    console.print(_mmm_verdict(a.mmm_block_coherence), highlight=False)


def _neighbour_table(a: FeatureAnalysis, groups: int = 3) -> Table:
    """Every neighbour's Hamming distance, laid out in ``groups`` side-by-side column groups."""
    n = len(a.neighbour_distances)
    groups = 1 if n <= 16 else groups
    rows = -(-n // groups)
    table = _table(f"Hamming distance of the {n} nearest features to feature {a.feature_idx}")
    table.caption = "hamming: differing mask positions; norm.: hamming / D"
    for _ in range(groups):
        table.add_column("#", justify="right", style="dim")
        table.add_column("feature", justify="right")
        table.add_column("hamming", justify="right")
        table.add_column("norm.", justify="right")
    for r in range(rows):
        cells = []
        for g in range(groups):
            i = g * rows + r
            if i < n:
                dist = int(a.neighbour_distances[i])
                feat = str(int(a.analysed[i + 1]))
                cells += [str(i + 1), feat, str(dist), f"{dist / a.d:.4f}"]
            else:
                cells += ["", "", "", ""]
        table.add_row(*cells)
    return table


def _hamming_stats_table(stats: dict[str, float]) -> Table:
    table = _table("Hamming distance to the reference (neighbours)")
    table.add_column("statistic")
    table.add_column("count", justify="right")
    table.add_column("normalized (/ D)", justify="right")
    for key in ("min", "max", "mean", "std", "range"):
        count = stats[f"hamming_{key}"]
        table.add_row(f"hamming {key}", f"{count:.2f}", f"{stats[f'hamming_{key}_normalized']:.4f}")
    return table


def _centroid_table(a: FeatureAnalysis) -> Table:
    c = a.centroid
    table = _table(f"Centroid family: Euclidean, on the {a.cluster_on} ({_k_text(a)})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    ratio = _ratio(
        c.centroid_separation_ratio,
        c.centroid_separation_ratio_undefined,
        c.centroid_separation_band,
    )
    between = _ratio(c.mean_between_centroid_distance, c.mean_between_centroid_distance_undefined)
    for name, value in (
        ("mean within-cluster distance (point to centroid)", _fmt(c.mean_within_centroid_distance)),
        ("mean between-cluster distance (centroid pairs)", between),
        ("centroid separation ratio (between / within)", ratio),
        ("total inertia", _fmt(a.inertia)),
        ("cluster balance (std of sizes)", _fmt(c.cluster_balance)),
        ("cluster sizes", " ".join(str(s) for s in c.cluster_sizes)),
        ("empty clusters", str(c.n_empty_clusters)),
        ("k-means iterations", str(a.n_iter)),
    ):
        table.add_row(name, value)
    return table


def _hamming_family_table(a: FeatureAnalysis) -> Table:
    h = a.hamming
    table = _table("Hamming family: normalized Hamming over all pairs")
    table.add_column("cluster / metric")
    table.add_column("size", justify="right")
    table.add_column("within hamming", justify="right")
    for cluster, (size, within) in enumerate(
        zip(a.centroid.cluster_sizes, h.within_per_cluster, strict=True)
    ):
        table.add_row(f"cluster {cluster}", str(size), "empty" if within is None else _fmt(within))
    table.add_section()
    table.add_row("mean within hamming", "", _fmt(h.mean_within_hamming))
    between = _ratio(h.mean_between_hamming, h.mean_between_hamming_undefined)
    table.add_row("mean between hamming", "", between)
    ratio = _ratio(h.hamming_separation_ratio, h.hamming_separation_ratio_undefined)
    table.add_row("hamming separation ratio", "", ratio)
    return table


def _k_text(a: FeatureAnalysis) -> str:
    """ "k=8", or "k=2 (8 requested; 2 distinct points)" after a reduction."""
    if a.n_clusters == a.n_clusters_requested:
        return f"k={a.n_clusters}"
    return (
        f"k={a.n_clusters}; {a.n_clusters_requested} requested, {a.n_distinct_points} distinct "
        + ("point" if a.n_distinct_points == 1 else "points")
    )


def _mmm_table(a: FeatureAnalysis) -> Table:
    table = _table(f"MMM block coherence (blocks of {a.block_size} features)")
    table.add_column("order")
    table.add_column("block coherence", justify="right")
    table.add_row("sorted by cluster", _fmt(a.mmm_block_coherence))
    table.add_row("unsorted (neighbour order)", _fmt(a.mmm_block_coherence_unsorted))
    return table


def _mmm_verdict(coherence: float) -> str:
    if coherence > MMM_FIT:
        return f"MMM block coherence {coherence:.4f} > {MMM_FIT}: a block-skipping kernel fits"
    return (
        f"MMM block coherence {coherence:.4f} <= {MMM_FIT}: a block-skipping kernel "
        "would skip too little to pay off"
    )


AGGREGATE_ROWS = (
    ("hamming_min", "hamming min"),
    ("hamming_max", "hamming max"),
    ("hamming_mean", "hamming mean"),
    ("hamming_std", "hamming std"),
    ("hamming_range", "hamming range"),
    ("hamming_mean_normalized", "hamming mean (normalized)"),
    ("mean_within_centroid_distance", "mean within-cluster distance (centroid)"),
    ("mean_between_centroid_distance", "mean between-cluster distance (centroid)"),
    ("centroid_separation_ratio", "centroid separation ratio"),
    ("total_inertia", "total inertia"),
    ("cluster_balance", "cluster balance (std of sizes)"),
    ("mean_within_hamming", "mean within hamming"),
    ("mean_between_hamming", "mean between hamming"),
    ("hamming_separation_ratio", "hamming separation ratio"),
    ("mmm_block_coherence", "MMM block coherence (sorted)"),
    ("mmm_block_coherence_unsorted", "MMM block coherence (unsorted)"),
)


def _print_multi(result: MultiResult) -> None:
    from featgeo.sparsity.executions import aggregate_band, band_counts

    config = result.config
    _print_header(
        result.matrix,
        f"{config['n_executions']} executions (seed {config['seed']}, --rng {config['rng']}), "
        f"{config['n_features']} neighbours, k={config['n_clusters']} on the "
        f"{config['cluster_on']}",
    )
    runs = _table("Executions")
    columns = ("#", "feature", "k", "centroid ratio", "band", "hamming ratio", "MMM coherence")
    for column in columns:
        runs.add_column(column, justify="left" if column == "band" else "right")
    for i, a in enumerate(result.analyses):
        c, h = a.centroid, a.hamming
        runs.add_row(
            str(i),
            str(a.feature_idx),
            str(a.n_clusters)
            if a.n_clusters == a.n_clusters_requested
            else f"{a.n_clusters} (of {a.n_clusters_requested})",
            _ratio(c.centroid_separation_ratio, c.centroid_separation_ratio_undefined, None, 3),
            c.centroid_separation_band or "-",
            _ratio(h.hamming_separation_ratio, h.hamming_separation_ratio_undefined, None, 3),
            _fmt(a.mmm_block_coherence, 3),
        )
    console.print(runs)
    aggregate = result.aggregate()
    table = _table(f"Aggregate over {len(result.analyses)} executions (mean ± std)")
    table.add_column("metric")
    table.add_column("mean", justify="right")
    table.add_column("± std", justify="right")
    for key, name in AGGREGATE_ROWS:
        stats = aggregate[key]
        n_undefined = stats["n_undefined"]
        note = f" ({n_undefined} undefined left out)" if n_undefined else ""
        if stats["mean"] is None:
            reasons = "; ".join(stats.get("undefined_reasons", {}))
            table.add_row(name, f"undefined ({reasons})" if reasons else "undefined", "-")
        else:
            table.add_row(name + note, _fmt(stats["mean"]), _fmt(stats["std"]))
    bands = ", ".join(f"{band} {n}" for band, n in band_counts(result.analyses).items())
    console.print(table)
    band = aggregate_band(aggregate)
    console.print(
        f"mean centroid separation ratio: {band or 'undefined (no execution has a defined ratio)'}"
        f"; executions per band: {bands}",
        highlight=False,
    )
    mmm = aggregate["mmm_block_coherence"]["mean"]
    verdict = _mmm_verdict(mmm).replace("MMM block coherence", "mean MMM block coherence")
    console.print(verdict, highlight=False)
