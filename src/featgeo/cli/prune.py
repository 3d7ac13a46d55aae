"""``featgeo prune`` and ``featgeo ppl``."""

from __future__ import annotations

import typer
from rich.table import Table

from featgeo.progress import console

METHOD_HELP = "Pruning method(s), comma separated: magnitude, wanda, sparsegpt."


def prune(
    model: str = typer.Option("embedded", help="embedded, a local model folder, or a hub id."),
    method: str = typer.Option(..., "--method", help=METHOD_HELP),
    sparsity: float = typer.Option(
        None, help="Fraction pruned per matrix, in [0, 1) (default 0.5)."
    ),
    nm: str = typer.Option(
        None, "--nm", help="Semi-structured N:M, e.g. 2:4 or 4:8 (N pruned of every M)."
    ),
    calib_samples: int = typer.Option(32, help="Calibration windows."),
    seqlen: int = typer.Option(512, help="Tokens per calibration / evaluation window."),
    seed: int = typer.Option(0, help="Seed of the calibration window offsets."),
    layers: str = typer.Option(None, help="Layers to prune, e.g. 0-29 or 0,3,5-7 (default: all)."),
    components: str = typer.Option(None, help="Comma list of components (default: all seven)."),
    out: str = typer.Option("clustering_characterization", help="Export root folder."),
    corpus: str = typer.Option("embedded", help="embedded or a corpus path."),
    eval_windows: int = typer.Option(
        32, help="Evaluation windows for perplexity (0: whole split)."
    ),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    save_model: bool = typer.Option(False, help="Also save each pruned model as an HF folder."),
    force: bool = typer.Option(False, help="Redo methods that already have a finished run."),
) -> None:
    """Prune a model layer by layer and export every pruned matrix."""
    from featgeo.pruning.config import PruneConfig
    from featgeo.pruning.run import run_prune

    config = PruneConfig(
        model=model,
        methods=method,
        sparsity=sparsity,
        nm=nm,
        calib_samples=calib_samples,
        seqlen=seqlen,
        seed=seed,
        layers=layers,
        components=components,
        out=out,
        corpus=corpus,
        eval_windows=eval_windows or None,
        device=device,
        save_model=save_model,
        force=force,
    )
    results = run_prune(config)
    table = Table(
        title=f"pruning {config.model} to {config.target_sparsity:.0%}"
        f"{' ' + config.nm if config.nm else ''} (perplexity on the "
        f"{config.eval_split} split)"
    )
    for column in ("model", "sparsity", "perplexity", "prune s", "eval s", "output"):
        table.add_column(column, justify="left" if column in ("model", "output") else "right")
    table.add_row("dense", "0.00%", f"{results[0].dense_ppl:.2f}", "", "", "")
    for r in results:
        table.add_row(
            r.method,
            f"{r.sparsity:.2%}",
            f"{r.pruned_ppl:.2f}",
            f"{r.seconds.get('prune', 0):.1f}",
            f"{r.seconds.get('eval_pruned', 0):.1f}",
            f"{r.out_dir}{' (reused)' if r.reused else ''}",
        )
    console.print(table)


def ppl(
    model: str = typer.Option("embedded", help="embedded, a local model folder, or a hub id."),
    corpus: str = typer.Option("embedded", help="embedded or a corpus path."),
    split: str = typer.Option("eval", help="Corpus split to score."),
    seqlen: int = typer.Option(512, help="Tokens per window."),
    eval_windows: int = typer.Option(32, help="At most this many windows (0: whole split)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
) -> None:
    """Perplexity with the same windowing as pruning's evaluation."""
    from featgeo.models.evaluate import evaluate_perplexity

    result = evaluate_perplexity(
        model=model,
        corpus=corpus,
        split=split,
        seqlen=seqlen,
        max_windows=eval_windows or None,
        device=device,
    )
    console.print(
        f"perplexity {result.perplexity:.3f}  ({result.windows} windows x {seqlen} "
        f"tokens of split '{split}', {result.seconds:.1f} s)"
    )
