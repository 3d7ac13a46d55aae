"""``featgeo hamming scan``: block coherence and nearest-neighbour Hamming distance of every
exported matrix (``featgeo.sparsity.scan.run_scan``)."""

from __future__ import annotations

import typer
from rich.table import Table

from featgeo.cli.executor_options import EXECUTOR, RAY_ADDRESS
from featgeo.progress import console


def scan(
    matrices_dir: str = typer.Option(
        "clustering_characterization",
        help="Export root of `featgeo prune`: {dir}/{method}/layer{L}-{component}.pt or "
        "(bit-packed masks) .mask.safetensors; the .pt when both exist.",
    ),
    methods: str = typer.Option("wanda,sparsegpt", help="Method folders to scan, comma separated."),
    out: str = typer.Option("results/scan", help="Output folder."),
    block_size: int = typer.Option(8, help="Features per MMM block."),
    axis: str = typer.Option("columns", help="Features are the matrix's columns or rows."),
    seed: int = typer.Option(0, help="Seed of the random order (and of k-means)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda (nearest-neighbour distances)."),
    order_by: str = typer.Option(
        "greedy",
        help="Block ordering for coherence_clustered: greedy (union-growing blocks, best "
        "coherence), nearest (Hamming-nearest blocks) or kmeans.",
    ),
    executor: str = EXECUTOR,
    ray_address: str = RAY_ADDRESS,
) -> None:
    """Scan every matrix of every method: sparsity, nearest-neighbour Hamming distance and MMM
    block coherence in the original, a random and a clustered order; CSV + heatmaps."""
    from featgeo.sparsity.scan import run_scan, summarize

    result = run_scan(
        matrices_dir=matrices_dir,
        methods=methods,
        out=out,
        block_size=block_size,
        axis=axis,
        seed=seed,
        device=device,
        order_by=order_by,
        executor=executor,
        ray_address=ray_address,
    )
    table = Table(
        title=f"hamming scan of {len(result.rows)} matrices (blocks of {block_size}, "
        f"order_by={order_by}; means over layers)"
    )
    for column in ("method", "component", "layers", "coh. original", "coh. random"):
        table.add_column(column, justify="left" if column in ("method", "component") else "right")
    for column in ("coh. clustered", "NN Hamming /D"):
        table.add_column(column, justify="right")
    for entry in summarize(result.rows):
        table.add_row(
            entry["method"],
            entry["component"],
            str(entry["layers"]),
            f"{entry['coherence_original']:.4f}",
            f"{entry['coherence_random']:.4f}",
            f"{entry['coherence_clustered']:.4f}",
            f"{entry['nn_hamming_mean']:.4f}",
        )
    console.print(table)
    resumed = f", {result.resumed} resumed" if result.resumed else ""
    console.print(
        f"{result.computed} matrices measured{resumed} in {result.seconds:.1f} s -> "
        f"{result.csv_path} ({len(result.heatmaps)} heatmaps)"
    )
