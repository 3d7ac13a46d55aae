"""Rich progress bars on stderr, shared by every long-running stage."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console()  # results (tables) go to stdout
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
