"""``featgeo hamming seeds`` and ``featgeo hamming report`` (seed 000's
``multi_seed_clustering_analysis.py`` and ``generate_comparative_report.py``, same flags).

``--k-values`` takes the seed's space-separated form (``--k-values 4 8 16``), a comma list
(``--k-values 4,8,16``) or repeats (``--k-values 4 --k-values 8``).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import typer
from rich.table import Table

from featgeo.progress import console

log = logging.getLogger(__name__)

DEFAULT_SEEDS_DIR = "results/metrics/multi_seed_clustering"
DEFAULT_SCAN_CSV = "results/scan/scan.csv"
K_VALUES_HELP = (
    "k-means cluster counts: --k-values 4 8 16, --k-values 4,8,16 or --k-values 4 --k-values 8 "
    "\\[default: 4 8 16]."
)


def parse_k_values(values: list[str] | None, rest: list[str] | None = None) -> list[int] | None:
    """Flatten ``--k-values`` occurrences (each may hold commas or spaces) plus the bare numbers
    that followed the option (the seed's ``--k-values 4 8 16``) into ints; None when absent."""
    rest = list(rest or [])
    if not values:
        if rest:
            raise ValueError(
                f"unexpected argument(s) {' '.join(rest)}; `featgeo hamming seeds` takes no "
                "positional arguments (numbers after --k-values belong to it)"
            )
        return None
    out = []
    for token in [*values, *rest]:
        for part in filter(None, re.split(r"[,\s]+", token.strip())):
            try:
                out.append(int(part))
            except ValueError:
                raise ValueError(
                    f"--k-values must be integers, got '{part}'; e.g. --k-values 4 8 16"
                ) from None
    return out


def seeds(
    method: str = typer.Option(..., "--method", help="Pruning method folder, e.g. wanda."),
    layer: int = typer.Option(1, "--layer", help="Layer number to analyse."),
    component: str = typer.Option(
        ..., "--component", help="Component, e.g. mlp.down_proj or self_attn.q_proj."
    ),
    n_seeds: int = typer.Option(10, "--seeds", help="Number of random seeds (0 .. seeds-1)."),
    n_similar: int = typer.Option(128, "--n-similar", help="Similar features to analyse."),
    k_values: list[str] = typer.Option(None, "--k-values", help=K_VALUES_HELP),
    matrices_dir: str = typer.Option(
        "clustering_characterization",
        "--matrices-dir",
        help="Export root of `featgeo prune`: {dir}/{method}/layer{L}-{component}.pt or "
        "(bit-packed masks) .mask.safetensors; the .pt when both exist.",
    ),
    output_dir: str = typer.Option(
        None,
        "--output-dir",
        help="Custom output folder \\[default: results/metrics/multi_seed_clustering/"
        "{method}/{component}].",
    ),
    axis: str = typer.Option("columns", "--axis", help="Features are the columns or the rows."),
    cluster_on: str = typer.Option(
        "masks", "--cluster-on", help="Run k-means on the binary masks or on the weights."
    ),
    block_size: int = typer.Option(8, "--block-size", help="Features per MMM block."),
    rng: str = typer.Option(
        "legacy",
        "--rng",
        help="legacy: reference feature of seed s as the original script "
        "(np.random.seed(s); np.random.randint(0, N)); generator: default_rng(s).integers(N).",
    ),
    k_values_rest: list[str] = typer.Argument(None, hidden=True, metavar="K"),
) -> None:
    """Multi-seed clustering: per seed a random reference feature, its nearest features,
    k-means for every k, four figures per (seed, k) and a summary across seeds."""
    from featgeo.cli.hamming_analyses import _warnings_as_lines
    from featgeo.sparsity.seeds import run_seeds

    parsed = parse_k_values(k_values, k_values_rest)
    with _warnings_as_lines():
        result = run_seeds(
            matrices_dir,
            method=method,
            layer=layer,
            component=component,
            seeds=n_seeds,
            n_similar=n_similar,
            k_values=parsed if parsed is not None else (4, 8, 16),
            output_dir=output_dir,
            axis=axis,
            cluster_on=cluster_on,
            block_size=block_size,
            rng=rng,
        )
    _print_seeds(result)


def _print_seeds(result) -> None:
    from featgeo.sparsity.metrics import separation_band

    config = result.config
    table = Table(
        title=f"{config.method} layer {config.layer} {config.component}: {config.seeds} seeds, "
        f"{config.n_similar} similar features (mean ± std across seeds)"
    )
    columns = {
        "centroid_separation_ratio": "centroid sep.",
        "hamming_separation_ratio": "Hamming sep.",
        "mean_within_hamming": "within /D",
        "mean_between_hamming": "between /D",
        "mmm_block_coherence": "MMM coherence",
    }
    table.add_column("k", justify="right")
    for label in columns.values():
        table.add_column(label, justify="right")
    table.add_column("band")
    undefined = {}
    for k, aggregate in result.summary["per_k"].items():
        cells = []
        for m in columns:
            entry = aggregate[m]
            cell = f"{_num(entry['mean'])} ± {_num(entry['std'])}"
            if entry["mean"] is None:
                cell = "undefined"
            elif entry["n_undefined"]:
                cell += f" ({entry['n_undefined']} undefined)"
            cells.append(cell)
            for reason in entry.get("undefined_reasons", {}):
                undefined.setdefault(reason, set()).add(columns[m])
        band = separation_band(aggregate["centroid_separation_ratio"]["mean"])
        table.add_row(k, *cells, band or "undefined")
    console.print(table)
    for reason, names in undefined.items():
        console.print(f"undefined {', '.join(sorted(names))}: {reason}", highlight=False)
    reused = f" ({len(result.reused)} (seed, k) reused from an interrupted run)"
    console.print(
        f"wrote {len(result.files)} files to {result.output_dir}{reused if result.reused else ''}",
        highlight=False,
    )


def _num(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def report(
    results_dir: str = typer.Option(
        "analysis_results", "--results-dir", help="Folder of `featgeo hamming multi` JSONs."
    ),
    out: str = typer.Option("report", "--out", help="Output folder (report.md, report.html)."),
    seeds_dir: str = typer.Option(
        None,
        "--seeds-dir",
        help="Folder searched for `featgeo hamming seeds` summaries "
        f"\\[default: {DEFAULT_SEEDS_DIR} when it exists].",
    ),
    scan_csv: str = typer.Option(
        None,
        "--scan-csv",
        help=f"scan.csv of `featgeo hamming scan` to add \\[default: {DEFAULT_SCAN_CSV} when it "
        "exists].",
    ),
) -> None:
    """Comparative report across matrices: table, insights, figures (Markdown + HTML)."""
    from featgeo.reports.comparative import build_report, find_seed_summaries

    if seeds_dir is None and Path(DEFAULT_SEEDS_DIR).is_dir():
        seeds_dir = DEFAULT_SEEDS_DIR if find_seed_summaries(DEFAULT_SEEDS_DIR) else None
    sections = []
    if scan_csv is None and Path(DEFAULT_SCAN_CSV).is_file():
        scan_csv = DEFAULT_SCAN_CSV
    if scan_csv is not None:
        sections.append(_scan_section(scan_csv, out))
    result = build_report(results_dir, out, sections, seeds_dir=seeds_dir)
    for sentence in result.insights:
        console.print("- " + sentence.replace("**", ""), highlight=False, soft_wrap=True)
    console.print(
        f"wrote {result.markdown_path} and {result.html_path} ({len(result.rows)} matrices)",
        highlight=False,
    )


def _scan_section(scan_csv: str, out: str):
    """The whole-model scan's report section (a failing import is a bug, not a reason to leave
    the section out)."""
    if not Path(scan_csv).is_file():
        raise FileNotFoundError(
            f"--scan-csv '{scan_csv}' does not exist; run `featgeo hamming scan` first"
        )
    from featgeo.sparsity.scan import scan_section

    return scan_section(scan_csv, relative_to=out)
