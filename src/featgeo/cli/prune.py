"""``featgeo prune`` and ``featgeo ppl``."""

from __future__ import annotations

import typer
from rich.table import Table

from featgeo.progress import console

METHOD_HELP = "Pruning method(s), comma separated: magnitude, wanda, sparsegpt."
ORDER_HELP = (
    "Inside a decoder layer: sequential (each linear fitted on the outputs of the pruned ones "
    "before it; default) or reference (all fitted on the dense layer, as locuslab/wanda)."
)
TIES_HELP = (
    "exact (exactly k weights per group; default) or reference (every score <= the (k+1)-th "
    "smallest, as the reference code; changes magnitude and SparseGPT)."
)
REASONS = {
    "dead_inputs": "weights of inputs that never fired on the calibration data were zeroed",
    "dense_zeros": "the dense matrices already had zeros",
    "reference_ties": "--ties reference prunes one more weight plus the ties at the threshold",
    "other": "weights that reached exactly 0 otherwise",
}


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
    order: str = typer.Option(None, help=ORDER_HELP),
    ties: str = typer.Option(None, help=TIES_HELP),
    reference_compat: bool = typer.Option(
        False, help="Shortcut for --order reference --ties reference (the reference code)."
    ),
    layers: str = typer.Option(None, help="Layers to prune, e.g. 0-29 or 0,3,5-7 (default: all)."),
    components: str = typer.Option(
        None, help="Comma list of components, as `featgeo model info` lists them (default: all)."
    ),
    out: str = typer.Option("clustering_characterization", help="Export root folder."),
    corpus: str = typer.Option("embedded", help="embedded or a corpus path."),
    eval_windows: int = typer.Option(
        32, help="Evaluation windows for perplexity (0: whole split)."
    ),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    dtype: str = typer.Option(
        "auto", help="auto (checkpoint dtype on CUDA, float32 on CPU), float32, bfloat16, float16."
    ),
    offload: str = typer.Option(
        "auto", help="layer (one decoder layer on the device at a time), none, or auto."
    ),
    calib_batch_size: int = typer.Option(
        None, help="Calibration windows per micro-batch (default: 16384 tokens' worth)."
    ),
    export: str = typer.Option(
        "dense", help="dense (matrices in the model dtype), masks (bit-packed), or none."
    ),
    save_model: bool = typer.Option(False, help="Also save each pruned model as an HF folder."),
    force: bool = typer.Option(False, help="Redo methods that already have a finished run."),
) -> None:
    """Prune a model layer by layer and export every pruned matrix."""
    from featgeo.pruning.config import PruneConfig
    from featgeo.pruning.run import run_prune

    order, ties = _resolve_reference_compat(order, ties, reference_compat)
    config = PruneConfig(
        model=model,
        methods=method,
        sparsity=sparsity,
        nm=nm,
        order=order,
        ties=ties,
        calib_samples=calib_samples,
        seqlen=seqlen,
        seed=seed,
        layers=layers,
        components=components,
        out=out,
        corpus=corpus,
        eval_windows=eval_windows or None,
        device=device,
        dtype=dtype,
        offload=offload,
        calib_batch_size=calib_batch_size,
        export=export,
        save_model=save_model,
        force=force,
    )
    results = run_prune(config)
    table = Table(
        title=f"pruning {config.model} to {config.target_sparsity:.0%}"
        f"{' ' + config.nm if config.nm else ''} (perplexity on the "
        f"{config.eval_split} split; order {config.order}, ties {config.ties})"
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
    for r in results:
        note = above_target_note(r.method, r.above_target, config.target_sparsity)
        if note:
            console.print(note, soft_wrap=True)  # one line, however narrow the terminal


def _resolve_reference_compat(
    order: str | None, ties: str | None, reference_compat: bool
) -> tuple[str, str]:
    if not reference_compat:
        return order or "sequential", ties or "exact"
    for name, value in (("--order", order), ("--ties", ties)):
        if value not in (None, "reference"):
            raise ValueError(
                f"--reference-compat sets {name} reference, but {name} {value} was given; "
                f"drop one of them"
            )
    return "reference", "reference"


def above_target_note(method: str, above: dict, target: float) -> str | None:
    """One line saying how many matrices exceed the target sparsity and why; None if none."""
    if not above or not above.get("matrices"):
        return None
    reasons = "; ".join(f"{REASONS[r]} ({r}: {n})" for r, n in above["reasons"].items())
    return (
        f"{method}: {above['matrices']} of {above['of']} matrices above the {target:.0%} "
        f"target (up to {above['max_sparsity']:.2%}): {reasons}"
    )


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
