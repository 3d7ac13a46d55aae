"""User corpora read from local files: ``.txt``, ``.jsonl``, ``.parquet`` or folders of them.

One ``.txt`` file is one document; a ``.jsonl`` file holds one document per line (field
``text`` required, ``id`` and ``title`` optional); a ``.parquet`` file one per row (column
``text``). Folders are read recursively in sorted order. Ids are the path relative to the
folder given (the file name for a file given directly), plus ``:line`` / ``:row``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from featgeo.corpus.documents import Corpus, Document, assign_splits
from featgeo.errors import InputError

log = logging.getLogger(__name__)

SUPPORTED_SUFFIXES = (".txt", ".jsonl", ".parquet")
SOURCE = "user"
LICENCE = "unknown"

PathLike = str | os.PathLike


def load_user_documents(paths: PathLike | Sequence[PathLike]) -> list[Document]:
    """Documents from one or more files or folders, in the order given (folders sorted).

    Raises
    ------
    FileNotFoundError
        A path does not exist.
    ValueError
        A file has an unsupported extension, is not UTF-8 text, or a row has no ``text``.
    InputError
        No document with text was found.
    """
    roots = [Path(paths)] if isinstance(paths, (str, os.PathLike)) else [Path(p) for p in paths]
    if not roots:
        raise InputError("no corpus paths given; pass .txt/.jsonl/.parquet files or folders")
    docs: list[Document] = []
    for root in roots:
        for path, rel in _files(root):
            docs.extend(_read_file(path, rel))
    if not docs:
        shown = ", ".join(str(r) for r in roots)
        raise InputError(
            f"corpus {shown} has no documents with text; give non-empty "
            f"{'/'.join(SUPPORTED_SUFFIXES)} files (jsonl rows and parquet rows need 'text')"
        )
    return docs


def user_corpus(paths: PathLike | Sequence[PathLike], *, name: str | None = None) -> Corpus:
    """A :class:`Corpus` of user files, split by the same hash rule as the embedded corpus."""
    docs = load_user_documents(paths)
    if name is None:
        name = str(paths) if isinstance(paths, (str, os.PathLike)) else ", ".join(map(str, paths))
    root = Path(paths) if isinstance(paths, (str, os.PathLike)) else None
    return Corpus(name, assign_splits(docs), path=root)


def _files(root: Path) -> Iterator[tuple[Path, str]]:
    """(file, id prefix) pairs under ``root``; unsupported files inside folders are skipped."""
    if not root.exists():
        raise FileNotFoundError(
            f"corpus path {str(root)!r} does not exist; pass a .txt/.jsonl/.parquet file, "
            "a folder of them, or 'embedded'"
        )
    if root.is_file():
        _check_suffix(root)
        yield root, root.name
        return
    files = sorted(p for p in root.rglob("*") if p.is_file())
    skipped = [p for p in files if p.suffix.lower() not in SUPPORTED_SUFFIXES]
    if skipped and len(skipped) == len(files):  # nothing to read: one error, no warning first
        raise InputError(
            f"corpus folder {str(root)!r} holds no {'/'.join(SUPPORTED_SUFFIXES)} files (only "
            f"{len(skipped)} other file(s), e.g. {skipped[0].relative_to(root).as_posix()}); "
            "give a folder of text files or a built corpus folder"
        )
    if skipped:
        log.warning(
            "skipping %d file(s) in %s that are not %s (e.g. %s)",
            len(skipped),
            root,
            "/".join(SUPPORTED_SUFFIXES),
            skipped[0].relative_to(root).as_posix(),
        )
    for path in files:
        if path.suffix.lower() in SUPPORTED_SUFFIXES:
            yield path, path.relative_to(root).as_posix()


def _check_suffix(path: Path) -> None:
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise ValueError(
            f"corpus file {str(path)!r} has unsupported extension {path.suffix!r}; "
            f"supported: {', '.join(SUPPORTED_SUFFIXES)} (or a folder of such files)"
        )


def _read_file(path: Path, rel: str) -> list[Document]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _read_parquet(path, rel)
    text = _read_utf8(path)
    if suffix == ".jsonl":
        return _read_jsonl(text, path, rel)
    if not text.strip():
        return []
    return [Document(rel, SOURCE, path.stem, LICENCE, text.strip())]


def _read_utf8(path: Path) -> str:
    data = path.read_bytes()
    hint = "featgeo reads .txt/.jsonl as UTF-8; convert it (e.g. `iconv -t UTF-8`)"
    nul = data.find(b"\x00")
    if nul >= 0:
        raise ValueError(
            f"corpus file {str(path)!r} is not UTF-8 text (it contains NUL bytes at offset "
            f"{nul}, so it looks binary); {hint} or remove it from the corpus"
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"corpus file {str(path)!r} is not UTF-8 text (invalid byte {data[exc.start]:#04x} "
            f"at offset {exc.start}); {hint}"
        ) from None


def _read_jsonl(text: str, path: Path, rel: str) -> list[Document]:
    docs = []
    # split on "\n" only: str.splitlines() would also cut at U+2028 inside a JSON string
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{str(path)!r} line {lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"corpus file {where} is not valid JSON: {exc.msg}") from None
        if not isinstance(row, dict) or "text" not in row:
            raise ValueError(
                f"corpus file {where} has no 'text' field; each line must be a JSON object "
                'like {"text": "...", "id": "optional", "title": "optional"}'
            )
        if not isinstance(row["text"], str):
            raise ValueError(
                f"corpus file {where}: 'text' must be a string, got {type(row['text']).__name__}"
            )
        if not row["text"].strip():
            continue
        doc_id = str(row["id"]) if row.get("id") is not None else f"{rel}:{lineno}"
        title = str(row.get("title") or doc_id)
        docs.append(Document(doc_id, SOURCE, title, LICENCE, row["text"].strip()))
    return docs


def _read_parquet(path: Path, rel: str) -> list[Document]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - pyarrow is a dependency
        raise ImportError("reading .parquet corpora needs pyarrow: pip install pyarrow") from exc
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises its own hierarchy (ArrowInvalid, OSError)
        raise ValueError(
            f"corpus file {str(path)!r} is not a readable parquet file: {exc}"
        ) from None
    if "text" not in table.column_names:
        raise ValueError(
            f"corpus file {str(path)!r} has no 'text' column; columns are {table.column_names}"
        )
    texts = table.column("text").to_pylist()
    ids = table.column("id").to_pylist() if "id" in table.column_names else [None] * len(texts)
    titles = table.column("title").to_pylist() if "title" in table.column_names else ids
    docs = []
    for row, (text, doc_id, title) in enumerate(zip(texts, ids, titles, strict=True), start=1):
        if text is None:
            continue
        if not isinstance(text, str):
            raise ValueError(
                f"corpus file {str(path)!r}: column 'text' must hold strings, "
                f"got {type(text).__name__} in row {row}"
            )
        if not text.strip():
            continue
        doc_id = str(doc_id) if doc_id is not None else f"{rel}:{row}"
        docs.append(Document(doc_id, SOURCE, str(title or doc_id), LICENCE, text.strip()))
    return docs
