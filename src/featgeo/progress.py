"""Rich progress bars on stderr, shared by every long-running stage."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# Results (tables) go to stdout; piped into a file they keep a readable width instead of 80.
console = Console(width=None if sys.stdout.isatty() else 120, markup=False)
"""Results on stdout; text, not markup (paths and corpus text may hold square brackets)."""
err_console = Console(stderr=True)  # progress, logs and errors go to stderr


def progress_bar(*, transient: bool = False) -> Progress:
    """A progress display; use as a context manager and add one task per stage."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=transient,
    )


def workers_busy(n: int) -> str:
    """A bar's status while units run on a pool or a Ray cluster: ``"2 workers busy"``."""
    return f"{n} worker busy" if n == 1 else f"{n} workers busy"
