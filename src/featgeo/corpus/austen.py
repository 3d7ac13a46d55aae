"""Jane Austen's six novels from the Debian package ``r-cran-janeaustenr``.

The package stores each novel as an R character vector (one element per printed line) inside
``data/Rdata.rdb``, R's lazy-load database: a sequence of chunks, each a 4-byte big-endian
uncompressed length followed by a zlib stream holding an R serialization (XDR, version 3).
We read exactly that with the standard library (see ``unserialize_character_vector``), and
make every chapter one document.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import struct
import subprocess
import tarfile
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from featgeo.corpus.documents import (
    Document,
    SourceInfo,
    SourceUnavailableError,
    downloads_dir,
    sha256_file,
)
from featgeo.files import atomic_path

log = logging.getLogger(__name__)

PACKAGE = "r-cran-janeaustenr"
MEMBER = "usr/lib/R/site-library/janeaustenr/data/Rdata.rdb"
LICENCE = "public domain"
SOURCE = "austen"

# R serialization constants (R Internals, "Serialization Formats"; src/main/serialize.c).
CHARSXP, STRSXP = 9, 16
IS_OBJECT_BIT, HAS_ATTR_BIT, HAS_TAG_BIT = 1 << 8, 1 << 9, 1 << 10
BYTES_MASK, LATIN1_MASK, UTF8_MASK, ASCII_MASK = 1 << 1, 1 << 2, 1 << 3, 1 << 6
ENCODING_MASKS = BYTES_MASK | LATIN1_MASK | UTF8_MASK | ASCII_MASK
NA_LENGTH = -1

CHAPTER_RE = re.compile(r"(?i)chapter\s+([ivxlc]+|\d+)\.?")
VOLUME_RE = re.compile(r"(?i)volume\s+([ivx]+|\d+)\.?")
END_RE = re.compile(r"(?i)the end|finis|a note on the text")
"""Lines that end a novel: what follows is a closing mark or the edition's editorial note."""
SMALL_WORDS = frozenset({"and", "of", "the", "a", "an", "in", "on", "to"})


@dataclass(frozen=True)
class Chapter:
    """One chapter: its heading as printed, the volume it sits in, and its paragraphs."""

    heading: str
    volume: str | None
    paragraphs: tuple[str, ...]


@dataclass(frozen=True)
class Novel:
    title: str
    chapters: tuple[Chapter, ...]

    @property
    def slug(self) -> str:
        return "-".join(re.findall(r"[a-z0-9]+", self.title.lower()))


# --- fetching and unpacking the .deb ---------------------------------------------------------


def fetch_deb() -> Path:
    """The ``.deb`` in the download cache, fetched with ``apt-get download`` on first use."""
    cached = sorted(downloads_dir().glob(f"{PACKAGE}_*.deb"))
    if cached:
        return cached[-1]
    apt = shutil.which("apt-get")
    if apt is None:
        raise SourceUnavailableError("apt-get is not available on this machine (not Debian?)")
    log.info("downloading %s with apt-get (once, about 1.6 MB)", PACKAGE)
    downloads_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="apt-", dir=downloads_dir()) as tmp:
        proc = subprocess.run(
            [apt, "download", PACKAGE], cwd=tmp, capture_output=True, text=True, check=False
        )
        debs = sorted(Path(tmp).glob(f"{PACKAGE}_*.deb"))
        if proc.returncode != 0 or not debs:
            tail = " | ".join(proc.stderr.strip().splitlines()[-2:])
            raise SourceUnavailableError(
                f"`apt-get download {PACKAGE}` failed (exit {proc.returncode}): {tail}; "
                "run `apt-get update` first, or check that a Debian mirror is reachable"
            )
        final = downloads_dir() / debs[0].name
        with atomic_path(final) as staged:
            shutil.move(debs[0], staged)
    return final


def read_ar_members(data: bytes) -> dict[str, bytes]:
    """Members of a Unix ``ar`` archive (the container format of a ``.deb``)."""
    if not data.startswith(b"!<arch>\n"):
        raise ValueError("not a Debian package: the file does not start with the ar magic")
    members, pos = {}, 8
    while pos + 60 <= len(data):
        header = data[pos : pos + 60]  # name 16, mtime 12, uid 6, gid 6, mode 8, size 10, magic 2
        if header[58:60] != b"`\n":
            raise ValueError(f"corrupt ar archive: bad member header at byte {pos}")
        name = header[:16].decode("ascii").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        members[name] = data[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size % 2)  # members are padded to an even offset
    return members


def extract_member(deb: str | os.PathLike, member: str = MEMBER) -> bytes:
    """One file from a ``.deb``'s ``data.tar.*``, read in pure Python where possible."""
    members = read_ar_members(Path(deb).read_bytes())
    data_name = next((n for n in members if n.startswith("data.tar")), None)
    if data_name is None:
        raise ValueError(f"{Path(deb).name} has no data.tar.* member: {sorted(members)}")
    try:
        tar = tarfile.open(fileobj=io.BytesIO(members[data_name]), mode="r:*")
    except (tarfile.ReadError, tarfile.CompressionError):
        # data.tar.zst needs Python >= 3.14; dpkg-deb hands us the plain tar instead.
        tar = tarfile.open(fileobj=io.BytesIO(_dpkg_fsys_tarfile(deb)), mode="r:")
    with tar:
        for info in tar:
            if info.isfile() and info.name.lstrip("./") == member:
                fh = tar.extractfile(info)
                assert fh is not None  # isfile() members always have a file object
                return fh.read()
    raise ValueError(f"{Path(deb).name} does not contain {member}")


def _dpkg_fsys_tarfile(deb: str | os.PathLike) -> bytes:
    dpkg = shutil.which("dpkg-deb")
    if dpkg is None:
        raise ValueError(
            f"cannot decompress {Path(deb).name}: its data.tar uses a compression this Python "
            "lacks and dpkg-deb is not installed"
        )
    proc = subprocess.run([dpkg, "--fsys-tarfile", str(deb)], capture_output=True, check=True)
    return proc.stdout


def deb_version(deb: str | os.PathLike) -> str:
    """Package version from the Debian file name ``name_version_arch.deb``."""
    parts = Path(deb).name.split("_")
    return parts[1] if len(parts) == 3 else "unknown"


# --- reading R's lazy-load database ----------------------------------------------------------


def read_rdb(data: bytes) -> list[list[str | None]]:
    """Every character vector stored in an ``Rdata.rdb`` file, in file order.

    Each chunk is a 4-byte big-endian uncompressed length and a zlib stream; the streams'
    ends are found with ``decompressobj().unused_data`` since no compressed length is stored.
    """
    vectors, pos = [], 0
    while pos < len(data):
        if pos + 4 > len(data):
            raise ValueError(f"truncated Rdata.rdb: {len(data) - pos} stray bytes at {pos}")
        (expected,) = struct.unpack(">I", data[pos : pos + 4])
        stream = zlib.decompressobj()
        try:
            blob = stream.decompress(data[pos + 4 :])
        except zlib.error as exc:
            raise ValueError(f"Rdata.rdb chunk at byte {pos} is not a zlib stream: {exc}") from exc
        if not stream.eof or len(blob) != expected:
            raise ValueError(
                f"Rdata.rdb chunk at byte {pos}: {len(blob)} bytes decompressed, header says "
                f"{expected}{'' if stream.eof else ' (stream truncated)'}"
            )
        vectors.append(unserialize_character_vector(blob))
        pos = len(data) - len(stream.unused_data)
    return vectors


class _Reader:
    """Big-endian cursor over an XDR byte string, with errors that say where it went wrong."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError(f"R serialization truncated at byte {self.pos} (wanted {n} more)")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def int(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def flags(self) -> int:
        return struct.unpack(">I", self.take(4))[0]


def unserialize_character_vector(blob: bytes) -> list[str | None]:
    """Decode an R XDR serialization (format version 2 or 3) of a plain character vector.

    Only what ``janeaustenr`` stores is accepted: a STRSXP without attributes whose elements
    are CHARSXPs (NA as ``None``). Anything else raises ``ValueError`` naming what was found.
    """
    r = _Reader(blob)
    if r.take(2) != b"X\n":
        raise ValueError("not an R XDR serialization: expected the 'X\\n' header")
    version, _writer, _min_reader = r.int(), r.int(), r.int()
    if version not in (2, 3):
        raise ValueError(f"R serialization format version {version} is not supported (2 or 3)")
    native = r.take(r.int()).decode("ascii") if version == 3 else "UTF-8"
    flags = r.flags()
    if flags & 0xFF != STRSXP or flags & (IS_OBJECT_BIT | HAS_ATTR_BIT | HAS_TAG_BIT):
        raise ValueError(
            f"expected a plain character vector (STRSXP, type {STRSXP}, no attributes), "
            f"got SEXP type {flags & 0xFF} with flags {flags:#x}"
        )
    length = r.int()
    if length < 0:  # -1 announces a long vector; no novel has 2**31 lines
        raise ValueError("long character vectors (> 2**31 - 1 elements) are not supported")
    out = [_read_charsxp(r, native) for _ in range(length)]
    if r.pos != len(blob):
        raise ValueError(f"{len(blob) - r.pos} unexpected bytes after the character vector")
    return out


def _read_charsxp(r: _Reader, native: str) -> str | None:
    start = r.pos
    flags = r.flags()
    levels = flags >> 12
    if flags & 0xFF != CHARSXP or levels & ~ENCODING_MASKS:
        raise ValueError(f"expected a CHARSXP at byte {start}, got flags {flags:#x}")
    n = r.int()
    if n == NA_LENGTH:
        return None
    raw = r.take(n)
    if levels & BYTES_MASK:
        raise ValueError(f"string at byte {start} is marked as raw bytes, not text")
    if levels & UTF8_MASK:
        encoding = "utf-8"
    elif levels & LATIN1_MASK:
        encoding = "latin-1"
    elif levels & ASCII_MASK:
        encoding = "ascii"
    else:
        encoding = native
    try:
        return raw.decode(encoding)
    except (UnicodeDecodeError, LookupError) as exc:
        raise ValueError(f"string at byte {start} does not decode as {encoding}: {exc}") from exc


# --- novels and chapters ---------------------------------------------------------------------


def parse_novel(lines: list[str | None]) -> Novel:
    """Split a novel's printed lines into chapters of paragraphs.

    The first non-blank line is the title. Front matter before the first chapter heading is
    dropped, ``VOLUME n`` lines are recorded on the chapters that follow, and reading stops at
    a closing mark (``THE END``, ``FINIS``) or the edition's note on the text.
    """
    clean = [(line or "").strip() for line in lines]
    title = _title_case(next((line for line in clean if line), ""))
    if not title:
        raise ValueError("novel has no text: every line is blank")
    chapters: list[Chapter] = []
    heading: str | None = None
    volume: str | None = None  # the volume we are reading now
    volume_of_heading: str | None = None  # the volume the current chapter started in
    body: list[str] = []
    for line in clean:
        if END_RE.fullmatch(line):
            break
        if VOLUME_RE.fullmatch(line):
            volume = _title_case(line, numerals=True)
        elif CHAPTER_RE.fullmatch(line):
            if heading is not None:
                chapters.append(Chapter(heading, volume_of_heading, _paragraphs(body)))
            heading, volume_of_heading, body = _title_case(line, numerals=True), volume, []
        elif heading is not None:
            body.append(line)
    if heading is not None:
        chapters.append(Chapter(heading, volume_of_heading, _paragraphs(body)))
    if not chapters:
        raise ValueError(f"novel {title!r} has no chapter headings (lines like 'CHAPTER 1')")
    return Novel(title, tuple(ch for ch in chapters if ch.paragraphs))


def _paragraphs(lines: list[str]) -> tuple[str, ...]:
    """Join wrapped lines; a blank line ends a paragraph."""
    paragraphs, current = [], []
    for line in [*lines, ""]:
        if line:
            current.append(line)
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    return tuple(paragraphs)


def _title_case(text: str, *, numerals: bool = False) -> str:
    """``PRIDE AND PREJUDICE`` -> ``Pride and Prejudice``; ``CHAPTER IV`` -> ``Chapter IV``."""
    words = []
    for i, word in enumerate(text.lower().split()):
        if numerals and i > 0 and re.fullmatch(r"[ivxlc]+", word):
            words.append(word.upper())
        elif i > 0 and word in SMALL_WORDS:
            words.append(word)
        else:
            words.append(word.capitalize())
    return " ".join(words)


def novel_documents(novel: Novel) -> list[Document]:
    """One document per chapter, ids ``austen:{slug}:{index:03d}`` (1-based, novel order)."""
    docs = []
    for index, chapter in enumerate(novel.chapters, start=1):
        where = f"{chapter.volume}, {chapter.heading}" if chapter.volume else chapter.heading
        docs.append(
            Document(
                id=f"{SOURCE}:{novel.slug}:{index:03d}",
                source=SOURCE,
                title=f"{novel.title}, {where}",
                licence=LICENCE,
                text="\n\n".join(chapter.paragraphs),
            )
        )
    return docs


def parse_rdb(data: bytes) -> list[Novel]:
    """Every novel in an ``Rdata.rdb`` file."""
    return [parse_novel(lines) for lines in read_rdb(data)]


def load_source(deb: str | os.PathLike | None = None) -> tuple[list[Document], SourceInfo]:
    """Austen chapter documents and their provenance; fetches the ``.deb`` unless one is given."""
    deb = Path(deb) if deb is not None else fetch_deb()
    start = time.perf_counter()
    novels = parse_rdb(extract_member(deb))
    docs = [doc for novel in novels for doc in novel_documents(novel)]
    log.info(
        "austen: %d novels, %d chapters in %.1f s",
        len(novels),
        len(docs),
        time.perf_counter() - start,
    )
    info = SourceInfo(
        name="austen",
        registry="debian",
        package=PACKAGE,
        version=deb_version(deb),
        file=deb.name,
        sha256=sha256_file(deb),
        member=MEMBER,
        licence=LICENCE,
    )
    return docs, info
