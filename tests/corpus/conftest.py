"""Builders for synthetic corpus inputs (MediaWiki dumps, R lazy-load databases, .deb and
wheel files) so the fast tests never download anything."""

from __future__ import annotations

import bz2
import io
import struct
import sys
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from featgeo.corpus import austen, wikipedia


@pytest.fixture(autouse=True)
def isolated_cache(request, tmp_path_factory, monkeypatch):
    """Point the featgeo cache at a fresh folder, except for slow tests, which may reuse the
    real cache (and its downloads) on purpose."""
    if request.node.get_closest_marker("slow") is None:
        monkeypatch.setenv("FEATGEO_CACHE", str(tmp_path_factory.mktemp("featgeo-cache")))


# --- MediaWiki XML ---------------------------------------------------------------------------

PROSE = (
    "The quick brown fox jumps over the lazy dog while the narrator explains, at some length, "
    "why foxes and dogs have been used in typing exercises for more than a century. "
)


def wiki_page(
    page_id: int, title: str, wikitext: str, *, ns: int = 0, redirect: str | None = None
) -> str:
    from xml.sax.saxutils import escape

    red = f'<redirect title="{escape(redirect)}" />' if redirect else ""
    return (
        f"<page><title>{escape(title)}</title><ns>{ns}</ns><id>{page_id}</id>{red}"
        f"<revision><id>{page_id}00</id><model>wikitext</model>"
        f'<text xml:space="preserve">{escape(wikitext)}</text></revision></page>'
    )


def wiki_dump(pages: Sequence[str], *, compress: bool = True) -> bytes:
    xml = (
        '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10" '
        'xml:lang="en"><siteinfo><sitename>Wikipedia</sitename></siteinfo>'
        + "".join(pages)
        + "</mediawiki>"
    ).encode()
    return bz2.compress(xml) if compress else xml


ARTICLE_WIKITEXT = (
    "{{Infobox animal|name=Fox|weight=6 kg}}\n"
    "'''Foxes''' are [[mammal|small mammals]].<ref>{{cite book|title=Foxes}}</ref> "
    + PROSE
    * 3
    + '<ref name="a"/>\n\n'
    "[[File:Fox.jpg|thumb|A red fox [[Vulpes]] in snow]]\n"
    '{| class="wikitable"\n|-\n! Species !! Weight\n|-\n| Red fox || 6 kg\n|}\n'
    "== Behaviour ==\n" + PROSE * 2 + "<!-- editors: keep this short -->\n"
    "See the [http://example.org external site] &amp; more.\n\n"
    "== See also ==\n* [[Wolf]]\n"
    "== References ==\n{{reflist}}\n"
    "[[Category:Canids]]\n[[de:Füchse]]\n"
)
ARTICLE_TEXT = (
    "Foxes are small mammals. "
    + (PROSE * 3).strip()
    + "\n\nBehaviour\n"
    + (PROSE * 2).strip()
    + "\nSee the external site & more."
)


def standard_dump() -> bytes:
    """Two articles, a redirect, a project page, and a stub that is too short to keep."""
    return wiki_dump(
        [
            wiki_page(10, "Fox", ARTICLE_WIKITEXT),
            wiki_page(11, "Foxes", "#REDIRECT [[Fox]]", redirect="Fox"),
            wiki_page(12, "Wikipedia:About", PROSE * 10, ns=4),
            wiki_page(13, "Dog", "'''Dogs''' bark. " + PROSE * 5),
            wiki_page(14, "Stub", "A stub.{{stub}}"),
        ]
    )


# --- R lazy-load database --------------------------------------------------------------------

R_UTF8, R_ASCII = 1 << 3, 1 << 6


def r_serialize_strings(lines: Sequence[str | None], *, version: int = 3) -> bytes:
    """R's ``serialize(x, NULL, xdr=TRUE, version=3)`` of a character vector, written by hand
    from R Internals ("Serialization Formats")."""
    out = bytearray(b"X\n")
    out += struct.pack(">iii", version, 0x040201, 0x030500)  # format, writer R 4.2.1, min 3.5.0
    if version == 3:
        out += struct.pack(">i", 5) + b"UTF-8"  # native encoding
    out += struct.pack(">Ii", 16, len(lines))  # STRSXP, no attributes; length
    for line in lines:
        if line is None:
            out += struct.pack(">Ii", 9, -1)  # NA_STRING
            continue
        raw = line.encode("utf-8")
        levels = R_ASCII if line.isascii() else R_UTF8
        out += struct.pack(">Ii", 9 | (levels << 12), len(raw)) + raw
    return bytes(out)


def rdb(vectors: Sequence[Sequence[str | None]]) -> bytes:
    """An ``Rdata.rdb``: per object a 4-byte big-endian length and a zlib stream."""
    chunks = []
    for lines in vectors:
        blob = r_serialize_strings(lines)
        chunks.append(struct.pack(">I", len(blob)) + zlib.compress(blob))
    return b"".join(chunks)


PRIDE = [
    "PRIDE AND PREJUDICE",
    "",
    "By Jane Austen",
    "",
    "",
    "Chapter 1",
    "",
    "It is a truth universally acknowledged, that a single man in possession",
    "of a good fortune, must be in want of a wife.",
    "",
    "However little known the feelings or views of such a man may be.",
    "",
    "Chapter 2",
    "",
    "Mr. Bennet was among the earliest of those who waited on",
    None,
    "Mr. Bingley. Her £20,000 fortune.",
    "",
    "THE END",
    "A NOTE THAT IS NOT PART OF THE NOVEL",
]
EMMA = [
    "EMMA",
    "",
    "VOLUME I",
    "",
    "CHAPTER I",
    "",
    "Emma Woodhouse, handsome, clever, and rich,",
    "seemed to unite some of the best blessings.",
    "",
    "VOLUME II",
    "",
    "CHAPTER I",
    "",
    "Mr. Elton was gone.",
    "",
    "",
    "FINIS",
]


# --- packages --------------------------------------------------------------------------------


def tar_bytes(files: dict[str, bytes], mode: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"./{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def ar_bytes(members: dict[str, bytes]) -> bytes:
    out = bytearray(b"!<arch>\n")
    for name, data in members.items():
        header = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n"
        out += header.encode("ascii") + data + (b"\n" if len(data) % 2 else b"")
    return bytes(out)


def deb_bytes(rdb_data: bytes, *, compression: str = "xz") -> bytes:
    data_tar = tar_bytes({austen.MEMBER: rdb_data}, f"w:{compression}")
    control_tar = tar_bytes({"control": b"Package: r-cran-janeaustenr\n"}, "w:xz")
    return ar_bytes(
        {
            "debian-binary": b"2.0\n",
            "control.tar.xz": control_tar,
            f"data.tar.{compression}": data_tar,
        }
    )


def wheel_bytes(dump: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("gensim/__init__.py", "")
        zf.writestr(wikipedia.MEMBER, dump)
    return buf.getvalue()


@pytest.fixture
def fake_registry(tmp_path, monkeypatch) -> Callable[..., None]:
    """Replace both downloads with synthetic packages (wiki dump + two short novels)."""

    def install(*, novels: Sequence[Sequence[str | None]] = (PRIDE, EMMA)) -> None:
        wheel = tmp_path / "registry" / wikipedia.WHEEL_FILE
        deb = tmp_path / "registry" / "r-cran-janeaustenr_9.9-1_all.deb"
        wheel.parent.mkdir(exist_ok=True)
        wheel.write_bytes(wheel_bytes(standard_dump()))
        deb.write_bytes(deb_bytes(rdb(novels)))
        monkeypatch.setattr(wikipedia, "fetch_wheel", lambda: wheel)
        monkeypatch.setattr(austen, "fetch_deb", lambda: deb)

    return install


@pytest.fixture
def write_files(tmp_path) -> Callable[[dict[str, str | bytes]], Path]:
    """Write ``{relative path: text or bytes}`` under a fresh folder and return the folder."""

    def write(files: dict[str, str | bytes]) -> Path:
        root = tmp_path / "user"
        for rel, content in files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content, encoding="utf-8")
        return root

    return write


@pytest.fixture
def synth():
    """The builders and sample texts of this conftest (``synth.rdb(...)``, ``synth.PRIDE``);
    a fixture rather than an import so it works under any pytest import mode."""
    return _THIS


# Taken while this file is being imported: other test folders have a ``conftest`` module too,
# and sys.modules["conftest"] names whichever was imported last.
_THIS = sys.modules[__name__]
