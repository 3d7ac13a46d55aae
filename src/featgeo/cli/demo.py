"""``featgeo demo``: both pipelines end to end (the chain is :mod:`featgeo.demo`)."""

from __future__ import annotations

from pathlib import Path

import typer

DEFAULT_OUT = {False: "demo_out", True: "demo_quick"}


def demo(
    quick: bool = typer.Option(
        False, "--quick", help="Every stage on small settings: under 3 minutes on 2 CPU cores."
    ),
    out: Path = typer.Option(
        None, "--out", help="Output folder (default: demo_out, or demo_quick with --quick)."
    ),
    until: str = typer.Option(
        None, "--until", help="Stop after this step: a command, e.g. 'hamming report'."
    ),
    skip: str = typer.Option(
        None, "--skip", help="Comma list of steps to leave out (--dry-run lists them)."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the steps' commands and run nothing."
    ),
) -> None:
    """Prune and compare sparsity patterns, then train an SAE, cluster its latents and run the
    three AANet stages, then build the review site: one `featgeo` command per step (reused on
    a rerun where the command reuses finished work)."""
    from featgeo.cli import _print_error
    from featgeo.demo import DemoStepFailed, print_summary, run_demo

    folder = Path(out) if out is not None else Path(DEFAULT_OUT[quick])
    try:
        results = run_demo(folder, quick=quick, until=until, skip=skip, dry_run=dry_run)
    except DemoStepFailed as exc:
        _print_error(str(exc))
        raise typer.Exit(exc.exit_code) from None
    print_summary(folder, results)
