"""Austen: the R serialization reader, the .rdb chunk reader, .deb unpacking, chapters."""

from __future__ import annotations

import struct
import zlib

import pytest

from featgeo.corpus import austen
from featgeo.corpus.austen import (
    extract_member,
    parse_novel,
    parse_rdb,
    read_ar_members,
    read_rdb,
    unserialize_character_vector,
)


@pytest.mark.parametrize("version", [2, 3])
def test_unserialize_round_trip(synth, version):
    lines = ["PRIDE AND PREJUDICE", "", None, "Her £20,000 fortune", "naïve — “quoted”"]
    blob = synth.r_serialize_strings(lines, version=version)
    assert unserialize_character_vector(blob) == lines


def test_unserialize_empty_vector(synth):
    assert unserialize_character_vector(synth.r_serialize_strings([])) == []


def _header() -> bytes:
    return b"X\n" + struct.pack(">iii", 3, 0x040201, 0x030500) + struct.pack(">i", 5) + b"UTF-8"


@pytest.mark.parametrize(
    ("blob", "match"),
    [
        (b"A\n" + b"\0" * 20, "not an R XDR serialization"),
        (b"X\n" + struct.pack(">iii", 4, 0, 0), "format version 4 is not supported"),
        (_header() + struct.pack(">Ii", 13, 1) + b"\0\0\0\1", "expected a plain character"),
        (_header() + struct.pack(">Ii", 16 | (1 << 9), 0), "no attributes"),
        (_header() + struct.pack(">Ii", 16, 2) + struct.pack(">Ii", 9, -1), "truncated"),
        (_header() + struct.pack(">IiIi", 16, 1, 10, 0), "expected a CHARSXP"),
        (_header() + struct.pack(">IiIi", 16, 1, 9 | (2 << 12), 1) + b"x", "raw bytes"),
        (_header() + struct.pack(">IiIi", 16, 1, 9 | (64 << 12), 1) + b"\xff", "decode as ascii"),
        (_header() + struct.pack(">IiIi", 16, 0, 0, 0), "unexpected bytes after"),
    ],
    ids=[
        "ascii-format",
        "version",
        "integer-vector",
        "attributes",
        "truncated",
        "not-charsxp",
        "bytes-encoding",
        "bad-ascii",
        "trailing",
    ],
)
def test_unserialize_rejects_everything_else(blob, match):
    with pytest.raises(ValueError, match=match):
        unserialize_character_vector(blob)


def test_read_rdb_finds_every_chunk(synth):
    vectors = [["a", "b"], ["c"], [None, "é"]]
    assert read_rdb(synth.rdb(vectors)) == vectors


@pytest.mark.parametrize(
    ("mangle", "match"),
    [
        (lambda d: d[:-3], "stream truncated|not a zlib stream"),
        (lambda d: d + b"\0\0", "stray bytes"),
        (lambda d: struct.pack(">I", 999) + d[4:], "header says 999"),
        (lambda d: d[:4] + b"garbage" + d[4:], "not a zlib stream"),
    ],
    ids=["truncated", "stray", "wrong-length", "not-zlib"],
)
def test_read_rdb_rejects_corrupt_files(synth, mangle, match):
    with pytest.raises(ValueError, match=match):
        read_rdb(mangle(synth.rdb([["a", "b"]])))


def test_parse_novel_chapters_paragraphs_and_end(synth):
    novel = parse_novel(synth.PRIDE)
    assert novel.title == "Pride and Prejudice"
    assert novel.slug == "pride-and-prejudice"
    assert [c.heading for c in novel.chapters] == ["Chapter 1", "Chapter 2"]
    assert novel.chapters[0].paragraphs == (
        "It is a truth universally acknowledged, that a single man in possession "
        "of a good fortune, must be in want of a wife.",
        "However little known the feelings or views of such a man may be.",
    )
    # an NA line counts as blank; "THE END" and what follows are dropped
    assert novel.chapters[1].paragraphs == (
        "Mr. Bennet was among the earliest of those who waited on",
        "Mr. Bingley. Her £20,000 fortune.",
    )


def test_parse_novel_volumes_restart_chapter_numbers(synth):
    novel = parse_novel(synth.EMMA)
    assert [(c.volume, c.heading) for c in novel.chapters] == [
        ("Volume I", "Chapter I"),
        ("Volume II", "Chapter I"),
    ]
    assert novel.chapters[1].paragraphs == ("Mr. Elton was gone.",)


def test_novel_documents_ids_and_titles(synth):
    docs = austen.novel_documents(parse_novel(synth.EMMA))
    assert [d.id for d in docs] == ["austen:emma:001", "austen:emma:002"]
    assert [d.title for d in docs] == ["Emma, Volume I, Chapter I", "Emma, Volume II, Chapter I"]
    assert docs[0].text == (
        "Emma Woodhouse, handsome, clever, and rich, seemed to unite some of the best blessings."
    )
    assert {(d.source, d.licence) for d in docs} == {("austen", "public domain")}


@pytest.mark.parametrize(
    ("lines", "match"),
    [([], "every line is blank"), (["TITLE", "", "no chapters here"], "no chapter headings")],
    ids=["blank", "no-chapters"],
)
def test_parse_novel_errors(lines, match):
    with pytest.raises(ValueError, match=match):
        parse_novel(lines)


@pytest.mark.parametrize("compression", ["xz", "gz", "bz2"])
def test_extract_member_from_deb(synth, tmp_path, compression):
    data = synth.rdb([synth.PRIDE])
    deb = tmp_path / "pkg_1.0-1_all.deb"
    deb.write_bytes(synth.deb_bytes(data, compression=compression))
    assert extract_member(deb) == data
    assert austen.deb_version(deb) == "1.0-1"


def test_ar_members_are_padded_to_even_offsets(synth):
    members = {"odd": b"abc", "even": b"defg", "last": b"h"}
    assert read_ar_members(synth.ar_bytes(members)) == members


def test_not_a_deb(tmp_path):
    with pytest.raises(ValueError, match="ar magic"):
        read_ar_members(b"PK\x03\x04 a zip file")
    deb = tmp_path / "x.deb"
    deb.write_bytes(b"!<arch>\n")
    with pytest.raises(ValueError, match="no data.tar"):
        extract_member(deb)


def test_load_source_from_deb(synth, tmp_path):
    deb = tmp_path / "r-cran-janeaustenr_1.0.0-1_all.deb"
    deb.write_bytes(synth.deb_bytes(synth.rdb([synth.PRIDE, synth.EMMA])))
    docs, info = austen.load_source(deb)
    assert [d.id for d in docs] == [
        "austen:pride-and-prejudice:001",
        "austen:pride-and-prejudice:002",
        "austen:emma:001",
        "austen:emma:002",
    ]
    assert (info.name, info.registry, info.version) == ("austen", "debian", "1.0.0-1")
    assert [n.title for n in parse_rdb(extract_member(deb))] == ["Pride and Prejudice", "Emma"]


def test_fetch_deb_without_apt_get(monkeypatch):
    monkeypatch.setattr(austen.shutil, "which", lambda name: None)
    with pytest.raises(austen.SourceUnavailableError, match="apt-get is not available"):
        austen.fetch_deb()


def test_fetch_deb_reuses_the_download_cache(tmp_path, monkeypatch):
    from featgeo.corpus.documents import downloads_dir

    cached = downloads_dir() / "r-cran-janeaustenr_1.0.0-1_all.deb"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"!<arch>\n")
    monkeypatch.setattr(austen.shutil, "which", lambda name: pytest.fail("must not download"))
    assert austen.fetch_deb() == cached


def test_zlib_stream_boundaries_found_without_lengths(synth):
    # two streams back to back: the reader must split them by unused_data, not by sizes
    blob = synth.r_serialize_strings(["x"] * 50)
    data = (struct.pack(">I", len(blob)) + zlib.compress(blob, 9)) * 2
    assert read_rdb(data) == [["x"] * 50] * 2


def test_zstd_data_falls_back_to_dpkg_deb(synth, tmp_path, monkeypatch):
    # data.tar.zst needs Python >= 3.14's tarfile; older ones hand over to dpkg-deb
    data = synth.rdb([synth.EMMA])
    deb = tmp_path / "pkg_1_all.deb"
    deb.write_bytes(
        synth.ar_bytes({"debian-binary": b"2.0\n", "data.tar.zst": b"\x28\xb5\x2f\xfd"})
    )
    plain_tar = synth.tar_bytes({austen.MEMBER: data}, "w")
    monkeypatch.setattr(austen, "_dpkg_fsys_tarfile", lambda path: plain_tar)
    assert extract_member(deb) == data
