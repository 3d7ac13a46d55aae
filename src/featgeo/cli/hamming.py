"""``featgeo hamming ...``: the sparsity-pattern analyses of seed 000 plus the whole-model scan."""

from __future__ import annotations

import typer

from featgeo.cli.hamming_analyses import multi, single
from featgeo.cli.hamming_scan import scan
from featgeo.cli.hamming_seeds import report, seeds

app = typer.Typer(help="Sparsity-pattern analyses of pruned matrices.", no_args_is_help=True)
app.command("single")(single)
app.command("multi")(multi)
app.command("seeds")(seeds)
app.command("report")(report)
app.command("scan")(scan)
