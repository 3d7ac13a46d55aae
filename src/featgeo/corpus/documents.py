"""Documents, the fixed split rule, and the in-memory :class:`Corpus`.

Every featgeo corpus (the embedded one and any user corpus) is split by the same rule: a
document goes to a split decided only by a hash of its id. The splits are therefore disjoint,
stable when documents are added or removed, and identical on every machine.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import Any

from featgeo.cache import cache_dir
from featgeo.errors import InputError

SPLITS: tuple[str, ...] = ("calibration", "sae_train", "eval", "vertex")
"""The four disjoint splits: pruning calibration, SAE training, held-out evaluation, vertex
sample collection (SPEC section 0)."""

SPLIT_FRACTIONS: dict[str, float] = {
    "calibration": 0.10,
    "sae_train": 0.60,
    "eval": 0.10,
    "vertex": 0.20,
}
"""Expected share of documents per split; the hash rule below realises these in expectation."""

SPLIT_SALT = "featgeo-split-v1"
"""Mixed into the hash so the split rule is independent of any other use of sha256(id)."""

ALL = "all"
"""Pseudo-split name: every document, splits concatenated in :data:`SPLITS` order."""


@dataclass(frozen=True)
class Document:
    """One document of a corpus."""

    id: str
    """Unique within the corpus, e.g. ``austen:pride-and-prejudice:012``; decides the split."""
    source: str
    """Where it comes from: ``wikipedia``, ``austen`` or ``user``."""
    title: str
    """Human-readable title (article title, novel + chapter, file name)."""
    licence: str
    """Licence of the text, e.g. ``CC BY-SA 3.0`` or ``public domain``."""
    text: str
    """Plain text; paragraphs separated by a blank line."""

    def to_json_line(self) -> str:
        """The canonical one-line JSON form used both in the split files and the fingerprint."""
        return json.dumps(asdict(self), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, row: Any, *, where: str) -> Document:
        """Build a document from a parsed JSON row; ``where`` (file:line) goes into errors."""
        names = [f.name for f in fields(cls)]
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected a JSON object with keys {names}, got {row!r:.80}")
        missing = [n for n in names if not isinstance(row.get(n), str)]
        if missing:
            raise ValueError(
                f"{where}: document is missing string field(s) {missing}; featgeo corpus "
                "files need id, source, title, licence and text. Rebuild the corpus with "
                "`featgeo corpus build --force`."
            )
        return cls(**{n: row[n] for n in names})


@dataclass(frozen=True)
class SourceInfo:
    """Provenance of one embedded source, recorded in the corpus manifest."""

    name: str
    """Source key used on the command line: ``wiki`` or ``austen``."""
    registry: str
    """Where the package comes from: ``pypi`` or ``debian``."""
    package: str
    """Registry package name, e.g. ``gensim``."""
    version: str
    """Package version the text was read from."""
    file: str
    """File name of the downloaded package."""
    sha256: str
    """sha256 hex of the downloaded package file."""
    member: str
    """Path of the text inside the package."""
    licence: str
    """Licence of the text."""

    def to_json(self) -> dict[str, str]:
        return asdict(self)


class SourceUnavailableError(RuntimeError):
    """A source package could not be fetched here (no registry, no apt-get); the build skips it."""


def downloads_dir() -> Path:
    """Where fetched registry packages are kept so that each is downloaded once."""
    return cache_dir() / "downloads"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def split_of(doc_id: str) -> str:
    """The split a document id belongs to: sha256(salt + id) read as a uniform number in [0, 1)."""
    digest = hashlib.sha256(f"{SPLIT_SALT}:{doc_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    edge = 0.0
    for name in SPLITS:
        edge += SPLIT_FRACTIONS[name]
        if u < edge:
            return name
    return SPLITS[-1]  # only reachable through float rounding of the cumulative sum


def assign_splits(documents: Iterable[Document]) -> dict[str, list[Document]]:
    """Group documents by :func:`split_of`, keeping their order; ids must be unique."""
    splits: dict[str, list[Document]] = {name: [] for name in SPLITS}
    seen: set[str] = set()
    for doc in documents:
        if doc.id in seen:
            raise ValueError(
                f"document id {doc.id!r} occurs twice; ids must be unique within a corpus "
                "(give each row its own 'id' or leave 'id' out to use file:line ids)"
            )
        seen.add(doc.id)
        splits[split_of(doc.id)].append(doc)
    return splits


def content_fingerprint(splits: Mapping[str, Sequence[Document]]) -> str:
    """sha256 hex over the canonical JSON lines of every split, in :data:`SPLITS` order."""
    h = hashlib.sha256()
    for name in SPLITS:
        h.update(f"split {name}\n".encode())
        for doc in splits.get(name, ()):
            h.update(doc.to_json_line().encode())
            h.update(b"\n")
    return h.hexdigest()


class Corpus:
    """A named set of documents divided into the featgeo splits.

    Parameters
    ----------
    name : str
        Shown in logs and tables (``embedded``, a folder name, a user path).
    splits : mapping of split name to documents
        Keys must be among :data:`SPLITS`; missing splits are empty.
    manifest : dict or None
        The ``manifest.json`` of a built corpus; ``None`` for a user corpus read from files.
    path : Path or None
        Folder or file the corpus was read from.
    """

    def __init__(
        self,
        name: str,
        splits: Mapping[str, Sequence[Document]],
        *,
        manifest: dict[str, Any] | None = None,
        path: Path | None = None,
    ) -> None:
        unknown = sorted(set(splits) - set(SPLITS))
        if unknown:
            raise ValueError(f"unknown split name(s) {unknown}; valid splits are {list(SPLITS)}")
        self.name = name
        self.manifest = manifest
        self.path = path
        self._splits = {name: list(splits.get(name, ())) for name in SPLITS}

    @property
    def splits(self) -> tuple[str, ...]:
        """The split names, in canonical order (some may be empty for small user corpora)."""
        return SPLITS

    @cached_property
    def fingerprint(self) -> str:
        """sha256 hex of the content; equal for equal documents in equal splits."""
        return content_fingerprint(self._splits)

    def split(
        self, name: str, *, allow_empty: bool = False, option: str | None = None
    ) -> list[Document]:
        """Documents of split ``name`` (or ``"all"``); an empty split is an error unless allowed.

        ``option`` is the command-line option that chose ``name`` (``--split``), if any: only
        then does the error suggest choosing another split with it.
        """
        if name == ALL:
            docs = [doc for split in SPLITS for doc in self._splits[split]]
        elif name in self._splits:
            docs = list(self._splits[name])
        else:
            raise ValueError(f"split={name!r} is not a corpus split; use one of {[*SPLITS, ALL]}")
        if not docs and not allow_empty:
            total = sum(len(d) for d in self._splits.values())
            raise InputError(
                f"split {name!r} of corpus {self.name!r} is empty ({total} documents in all; "
                f"each goes to {name!r} with probability {SPLIT_FRACTIONS.get(name, 1.0):.0%}). "
                + (f"Use {option} all, or give" if option else "Give")
                + " the corpus more documents."
            )
        return docs

    def __len__(self) -> int:
        return sum(len(docs) for docs in self._splits.values())

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self._splits.items())
        return f"Corpus(name={self.name!r}, {sizes})"
