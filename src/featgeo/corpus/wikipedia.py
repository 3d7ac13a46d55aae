"""English Wikipedia articles from the MediaWiki dump that ships inside the gensim wheel.

The wheel of ``gensim==4.4.0`` on PyPI carries a shortened enwiki dump (~107 real articles,
SPEC section 0). We download the wheel with pip (never install or import gensim), read the dump
with zipfile + bz2, and turn wikitext into plain prose with ``mwparserfromhell``.
"""

from __future__ import annotations

import bz2
import contextlib
import io
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, NamedTuple

from featgeo.corpus.documents import (
    Document,
    SourceInfo,
    SourceUnavailableError,
    downloads_dir,
    sha256_file,
)
from featgeo.files import atomic_path

log = logging.getLogger(__name__)

PACKAGE = "gensim"
VERSION = "4.4.0"
MEMBER = (
    "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
)
LICENCE = "CC BY-SA 3.0"
SOURCE = "wikipedia"
MIN_CHARS = 500
"""Articles shorter than this after stripping markup (stubs, disambiguation pages) are dropped."""

# We only need a data file from the wheel, so we always fetch the same wheel, whatever this
# machine's platform: the download (and the sha256 in the manifest) is identical everywhere.
WHEEL_TAGS = ("--platform", "manylinux_2_28_x86_64", "--python-version", "3.11")
WHEEL_TAGS += ("--implementation", "cp", "--abi", "cp311")
WHEEL_FILE = "gensim-4.4.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl"
WHEEL_SHA256 = "91a7fa5e814e7b1bad4b2dffa8d62c1e55410d5cbdf930714c1997ffb4404db8"

# Markup that carries no prose: references, tables, galleries, formulas. mwparserfromhell
# 0.7 renders <ref> contents as visible text, so we remove these nodes before strip_code().
DROP_TAGS = frozenset(
    {"ref", "references", "table", "gallery", "math", "chem", "ce", "timeline", "imagemap"}
    | {"score", "graph", "templatedata", "syntaxhighlight", "source", "code", "hiero"}
)
DROP_LINK_NAMESPACES = frozenset({"file", "image", "media", "category"})
DROP_SECTIONS = frozenset(
    {"references", "external links", "see also", "further reading", "notes", "bibliography"}
    | {"sources", "footnotes", "citations", "notes and references", "works cited"}
)
EMPTY_PARENS = re.compile(r" \(\s*[,;]?\s*\)")  # plain text, not markup: see _normalise_whitespace
MAX_PASSES = 3
"""The tokenizer gives up on a construct with broken markup inside (an unclosed ``''`` in a
<ref>) and leaves it as text; stripping once removes the breakage, so a re-parse catches it."""


class Page(NamedTuple):
    """One ``<page>`` of a MediaWiki dump."""

    id: str
    title: str
    ns: int
    redirect: bool
    wikitext: str


def fetch_wheel() -> Path:
    """The gensim wheel in the download cache, fetched with pip on first use."""
    final = downloads_dir() / WHEEL_FILE
    if final.is_file() and sha256_file(final) == WHEEL_SHA256:
        return final
    log.info("downloading %s==%s from PyPI (once, about 28 MB)", PACKAGE, VERSION)
    with tempfile.TemporaryDirectory(prefix="pip-", dir=_mkdir(final.parent)) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        cmd += [*WHEEL_TAGS, "--disable-pip-version-check", f"{PACKAGE}=={VERSION}", "-d", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        except OSError as exc:
            raise SourceUnavailableError(f"could not run pip: {exc}") from exc
        got = Path(tmp) / WHEEL_FILE
        if proc.returncode != 0 or not got.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise SourceUnavailableError(
                f"`pip download {PACKAGE}=={VERSION}` failed (exit {proc.returncode}): "
                f"{' | '.join(tail)}; check that PyPI is reachable"
            )
        digest = sha256_file(got)
        if digest != WHEEL_SHA256:
            raise SourceUnavailableError(
                f"{WHEEL_FILE} has sha256 {digest}, expected {WHEEL_SHA256}; the index "
                "served a different file than PyPI's"
            )
        with atomic_path(final) as staged:
            shutil.move(got, staged)
    return final


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def read_dump_from_wheel(wheel: str | os.PathLike) -> bytes:
    """The bz2-compressed dump stored in the wheel (a zip file)."""
    with zipfile.ZipFile(wheel) as zf:
        try:
            return zf.read(MEMBER)
        except KeyError:
            raise ValueError(
                f"wheel {Path(wheel).name} has no member {MEMBER}; expected the "
                f"{PACKAGE}=={VERSION} wheel from PyPI"
            ) from None


def iter_pages(dump: bytes | str | os.PathLike) -> Iterator[Page]:
    """Pages of a MediaWiki XML dump given as bytes or a path, bz2-compressed or plain.

    Namespace-agnostic: tags are matched on their local name, so any export schema version works.
    """
    with contextlib.ExitStack() as stack:
        raw: IO[bytes]
        if isinstance(dump, bytes):
            raw = io.BytesIO(dump)
        else:
            raw = stack.enter_context(open(dump, "rb"))
        is_bz2 = raw.read(3) == b"BZh"  # the bz2 magic number
        raw.seek(0)
        fh = stack.enter_context(bz2.BZ2File(raw)) if is_bz2 else raw
        try:
            for _, elem in ET.iterparse(fh, events=("end",)):
                if _local(elem.tag) == "page":
                    yield _page_from_element(elem)
                    elem.clear()  # keep memory flat on large dumps
        except (ET.ParseError, OSError, EOFError) as exc:
            raise ValueError(
                f"the Wikipedia dump is not a readable MediaWiki XML export: {exc}"
            ) from exc


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _page_from_element(page: ET.Element) -> Page:
    children = {_local(child.tag): child for child in page}
    revision = children.get("revision")
    text_elem = None
    if revision is not None:
        text_elem = next((c for c in revision if _local(c.tag) == "text"), None)
    ns_text = children["ns"].text if "ns" in children else "0"
    return Page(
        id=(children["id"].text or "").strip() if "id" in children else "",
        title=(children["title"].text or "").strip() if "title" in children else "",
        ns=int(ns_text or 0),
        redirect="redirect" in children,
        wikitext=(text_elem.text or "") if text_elem is not None else "",
    )


def wikitext_to_text(wikitext: str) -> str:
    """Plain prose from wikitext: templates, refs, tables, files, categories and the
    reference/link sections removed with the parser; headings kept as their own lines."""
    import mwparserfromhell

    text = wikitext
    for _ in range(MAX_PASSES):
        code = mwparserfromhell.parse(text)
        _prune(code, top=True)
        stripped = code.strip_code(normalize=True, collapse=True)
        if stripped == text:
            break
        text = stripped
    return _normalise_whitespace(_drop_unparsed_tables(text))


def _prune(code, *, top: bool = False) -> None:  # code: mwparserfromhell Wikicode
    """Remove non-prose nodes in place, recursing into the children that stay visible."""
    from mwparserfromhell.nodes import Comment, ExternalLink, Heading, Tag, Template, Wikilink

    kept = []
    skip_level: int | None = None  # inside a dropped section until a heading this high
    for node in code.nodes:
        if isinstance(node, Heading):
            if skip_level is not None and node.level <= skip_level:
                skip_level = None
            title = node.title.strip_code().strip().lower()
            if top and skip_level is None and title in DROP_SECTIONS:
                skip_level = node.level
        if skip_level is not None or isinstance(node, (Template, Comment)):
            continue
        if isinstance(node, Tag) and str(node.tag).strip().lower() in DROP_TAGS:
            continue
        if isinstance(node, Wikilink) and _is_hidden_link(node):
            continue
        if isinstance(node, Tag):
            children = [node.contents]
        elif isinstance(node, Wikilink):
            children = [node.text]
        elif isinstance(node, (Heading, ExternalLink)):
            children = [node.title]
        else:
            children = []
        for child in children:
            if child is not None:
                _prune(child)
        kept.append(node)
    code.nodes = kept


def _is_hidden_link(link) -> bool:
    """File/category links and bare interlanguage links (``[[de:Foo]]``) render no prose."""
    title = link.title.strip_code().strip()
    if title.startswith(":"):  # [[:Category:X]] is an ordinary visible link
        return False
    prefix, colon, _ = title.partition(":")
    if not colon:
        return False
    prefix = prefix.strip()
    if prefix.lower() in DROP_LINK_NAMESPACES:
        return True
    is_language_code = 2 <= len(prefix) <= 12 and all(c.islower() or c == "-" for c in prefix)
    return link.text is None and is_language_code


def _drop_unparsed_tables(text: str) -> str:
    """Drop ``{| ... |}`` blocks the parser left as text (malformed attributes make it give up).

    MediaWiki's own table grammar is line-based (``{|`` opens, ``|}`` closes, at line start),
    so we follow it line by line, counting nesting.
    """
    out, depth = [], 0
    for line in text.split("\n"):
        head = line.lstrip()
        if head.startswith("{|"):
            depth += 1
        elif depth and head.startswith("|}"):
            depth -= 1
        elif not depth:
            out.append(line)
    return "\n".join(out)


def _normalise_whitespace(text: str) -> str:
    """Single spaces, paragraphs split by one blank line, and no "Elah ()" husks: the empty
    parentheses left where a pronunciation or language template was removed."""
    lines = [" ".join(line.replace("\xa0", " ").split()) for line in text.split("\n")]
    lines = [EMPTY_PARENS.sub("", line) for line in lines]
    paragraphs, current = [], []
    for line in lines:
        if line:
            current.append(line)
        elif current:
            paragraphs.append("\n".join(current))
            current = []
    if current:
        paragraphs.append("\n".join(current))
    return "\n\n".join(paragraphs)


def parse_dump(dump: bytes | str | os.PathLike, *, min_chars: int = MIN_CHARS) -> list[Document]:
    """Articles (namespace 0, not redirects) of a dump as documents, in dump order.

    Parameters
    ----------
    dump : bytes or path
        The MediaWiki XML export, bz2-compressed or plain.
    min_chars : int
        Articles with less plain text than this are dropped.
    """
    docs = []
    for page in iter_pages(dump):
        if page.ns != 0 or page.redirect:
            continue
        text = wikitext_to_text(page.wikitext)
        if len(text) < min_chars:
            log.debug("dropping %r: %d characters of text", page.title, len(text))
            continue
        doc_id = f"{SOURCE}:{page.id or page.title}"
        docs.append(Document(doc_id, SOURCE, page.title, LICENCE, text))
    return docs


def load_source(wheel: str | os.PathLike | None = None) -> tuple[list[Document], SourceInfo]:
    """Wikipedia documents and their provenance; fetches the wheel unless one is given."""
    wheel = Path(wheel) if wheel is not None else fetch_wheel()
    start = time.perf_counter()
    docs = parse_dump(read_dump_from_wheel(wheel))
    log.info("wikipedia: %d articles in %.1f s", len(docs), time.perf_counter() - start)
    info = SourceInfo(
        name="wiki",
        registry="pypi",
        package=PACKAGE,
        version=VERSION,
        file=wheel.name,
        sha256=sha256_file(wheel),
        member=MEMBER,
        licence=LICENCE,
    )
    return docs, info
