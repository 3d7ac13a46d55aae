"""Build a featgeo corpus folder: one JSONL file per split plus ``manifest.json``.

Layout of a built corpus (``format_version`` 1)::

    {out}/calibration.jsonl   one JSON document per line: id, source, title, licence, text
    {out}/sae_train.jsonl
    {out}/eval.jsonl
    {out}/vertex.jsonl
    {out}/manifest.json       versions, sources (package, version, sha256), split sizes,
                              content fingerprint

The folder is built next to its final place and renamed into it, so an interrupted build never
leaves half a corpus. Nothing time- or machine-dependent is written: building twice gives
byte-identical files.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from featgeo.cache import cache_dir
from featgeo.corpus import austen, wikipedia
from featgeo.corpus.documents import (
    SPLIT_FRACTIONS,
    SPLIT_SALT,
    SPLITS,
    Document,
    SourceUnavailableError,
    assign_splits,
    content_fingerprint,
)
from featgeo.errors import InputError
from featgeo.files import check_output_dir, read_json, staging_dir, write_json, write_text

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Layout of the folder; bump when readers of older folders would misread a new one."""
CORPUS_VERSION = "v1"
"""Content version of the embedded corpus (sources, cleaning, split rule)."""
EMBEDDED = "embedded"

SOURCES = {"wiki": wikipedia, "austen": austen}
"""Embedded sources by command-line name; each module has ``load_source() -> (docs, info)``."""
DEFAULT_SOURCES = ("wiki", "austen")


def default_corpus_dir() -> Path:
    """Where the embedded corpus lives: ``cache_dir()/corpus/v1``."""
    return cache_dir() / "corpus" / CORPUS_VERSION


def parse_sources(sources: str | Sequence[str]) -> tuple[str, ...]:
    """Validate source names (a list or a comma-separated string) into canonical order."""
    names = sources.split(",") if isinstance(sources, str) else list(sources)
    names = [name.strip() for name in names if name.strip()]
    unknown = [name for name in names if name not in SOURCES]
    if unknown or not names:
        raise ValueError(
            f"sources={sources!r} is not valid; choose one or more of {list(SOURCES)}, "
            "e.g. --sources wiki,austen"
        )
    return tuple(name for name in SOURCES if name in names)


def build_corpus(
    sources: str | Sequence[str] = DEFAULT_SOURCES,
    out: str | os.PathLike | None = None,
    *,
    force: bool = False,
) -> Path:
    """Build the embedded corpus from registry packages and return its folder.

    Parameters
    ----------
    sources : names or comma-separated string
        Any of ``wiki`` (Wikipedia articles from the gensim wheel) and ``austen`` (Jane
        Austen's novels from a Debian package). A source that cannot be fetched here is
        skipped with a ``UserWarning``.
    out : path, optional
        Target folder; default :func:`default_corpus_dir`.
    force : bool
        Rebuild even if ``out`` already holds a corpus built from the same sources.
    """
    names = parse_sources(sources)
    out = Path(out) if out is not None else default_corpus_dir()
    _check_out(out)
    if not force and _is_built(out, names):
        log.info("corpus already built at %s (pass force=True / --force to rebuild)", out)
        return out
    start = time.perf_counter()
    docs, source_entries = _collect(names)
    write_corpus(out, docs, name=EMBEDDED, sources=source_entries)
    log.info("built corpus with %d documents in %.1f s", len(docs), time.perf_counter() - start)
    return out


def build_from_files(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    name: str | None = None,
) -> Path:
    """Turn a user's ``.txt``/``.jsonl``/``.parquet`` files or folders into a featgeo corpus
    folder at ``out``, split by the same hash rule as the embedded corpus."""
    from featgeo.corpus.user import load_user_documents

    inputs = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    _check_out(Path(out))
    docs = load_user_documents(inputs)
    entry = {
        "name": "user",
        "registry": "local",
        "inputs": [str(p) for p in inputs],
        **_size(docs),
    }
    out = Path(out)
    write_corpus(out, docs, name=name or out.name, sources=[entry])
    return out


def _check_out(out: Path) -> None:
    """``out`` becomes a corpus folder: refuse a file, or a folder of other files."""
    check_output_dir(
        out, "--out", signature=("manifest.json",), contents=("manifest.json", "*.jsonl")
    )


def write_corpus(
    out: Path, documents: Sequence[Document], *, name: str, sources: list[dict[str, Any]]
) -> Path:
    """Assign splits and write the corpus folder atomically (staging folder + rename)."""
    splits = assign_splits(documents)
    manifest = {
        "format_version": FORMAT_VERSION,
        "corpus_version": CORPUS_VERSION,
        "name": name,
        "featgeo_version": _featgeo_version(),
        "sources": sources,
        "split_rule": {
            "hash": "sha256",
            "salt": SPLIT_SALT,
            "fractions": SPLIT_FRACTIONS,
        },
        "splits": {split: _size(splits[split]) for split in SPLITS},
        "fingerprint": content_fingerprint(splits),
    }
    with staging_dir(out) as tmp:
        for split in SPLITS:
            lines = "".join(doc.to_json_line() + "\n" for doc in splits[split])
            write_text(tmp / f"{split}.jsonl", lines)
        write_json(tmp / "manifest.json", manifest)
    return out


def _collect(names: Sequence[str]) -> tuple[list[Document], list[dict[str, Any]]]:
    """Documents and manifest entries of every source that can be fetched here."""
    docs: list[Document] = []
    entries: list[dict[str, Any]] = []
    failures: list[str] = []
    for name in names:
        log.info("reading source %r", name)
        try:
            source_docs, info = SOURCES[name].load_source()
        except SourceUnavailableError as exc:
            failures.append(f"{name}: {exc}")
            warnings.warn(f"corpus source {name!r} skipped: {exc}", UserWarning, stacklevel=3)
            continue
        docs.extend(source_docs)
        entries.append({**info.to_json(), **_size(source_docs)})
    if not docs:
        raise InputError(
            f"no corpus source could be read ({'; '.join(failures) or 'no documents'}); "
            "build from your own files with `featgeo corpus build --from PATH --out DIR`"
        )
    return docs, entries


def _is_built(out: Path, names: Sequence[str]) -> bool:
    """True if ``out`` holds a readable manifest of this format built from ``names``."""
    try:
        manifest = read_json(out / "manifest.json")
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        return False
    built = [entry.get("name") for entry in manifest.get("sources", [])]
    return built == list(names) and manifest.get("corpus_version") == CORPUS_VERSION


def _size(docs: Sequence[Document]) -> dict[str, int]:
    return {"documents": len(docs), "characters": sum(len(doc.text) for doc in docs)}


def _featgeo_version() -> str:
    from featgeo import __version__

    return __version__
