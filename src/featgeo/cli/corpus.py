"""``featgeo corpus ...``: build the embedded corpus, or a corpus from your files; show sizes."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from featgeo.progress import console

app = typer.Typer(
    help="Build and inspect text corpora (embedded: Wikipedia + Jane Austen; or your files).",
    no_args_is_help=True,
)


@app.command("build")
def build(
    sources: str = typer.Option(
        "wiki,austen", help="Embedded sources, comma-separated: wiki, austen."
    ),
    out: Path | None = typer.Option(
        None, help="Output folder (default: the featgeo cache, corpus/v1)."
    ),
    force: bool = typer.Option(False, "--force", help="Rebuild even if already built."),
    from_: list[Path] | None = typer.Option(
        None,
        "--from",
        help="Build from your .txt/.jsonl/.parquet files or folders instead (needs --out).",
    ),
) -> None:
    """Build a corpus folder with calibration / sae_train / eval / vertex splits."""
    from featgeo.corpus import build_corpus, build_from_files, corpus_info, read_corpus_dir

    if from_:
        if out is None:
            raise ValueError("--from needs --out DIR: the folder to write the corpus into")
        path = build_from_files(from_, out)
    else:
        path = build_corpus(sources, out, force=force)
    corpus = read_corpus_dir(path)
    console.print(
        f"corpus [bold]{escape(corpus.name)}[/bold] at {escape(str(path))}",
        highlight=False,
        markup=True,
    )
    console.print(_table(corpus_info(corpus), title=f"fingerprint {corpus.fingerprint[:16]}"))


@app.command("info")
def info(
    corpus: str = typer.Option(
        "embedded", help="embedded, a built corpus folder, or .txt/.jsonl/.parquet files."
    ),
    model: str = typer.Option(
        "embedded", help="Count tokens with this model's tokenizer ('none' to skip)."
    ),
) -> None:
    """Documents, characters and tokens per split."""
    from featgeo.corpus import corpus_info, load_corpus

    loaded = load_corpus(corpus)
    tokenizer = None
    if model.lower() != "none":
        from featgeo.models import load_tokenizer

        tokenizer = load_tokenizer(model)
    title = f"corpus {loaded.name} (fingerprint {loaded.fingerprint[:16]})"
    console.print(_table(corpus_info(loaded, tokenizer), title=title))


def _table(rows, *, title: str) -> Table:
    from featgeo.corpus import totals

    with_tokens = all(row.tokens is not None for row in rows)
    table = Table(title=title)
    table.add_column("split")
    table.add_column("documents", justify="right")
    table.add_column("characters", justify="right")
    if with_tokens:
        table.add_column("tokens", justify="right")
    total = totals(rows)
    for i, row in enumerate([*rows, total]):
        cells = [row.split, f"{row.documents:,}", f"{row.characters:,}"]
        if with_tokens:
            cells.append(f"{row.tokens:,}")
        table.add_row(*cells, end_section=i == len(rows) - 1)
    return table
