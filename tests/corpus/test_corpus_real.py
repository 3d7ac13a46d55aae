"""The real embedded corpus, built from the registry packages (PyPI gensim wheel, Debian
r-cran-janeaustenr). Slow: the first run downloads about 30 MB into the featgeo cache."""

from __future__ import annotations

import collections

import pytest

from featgeo.corpus import SPLITS, build_corpus, load_corpus, read_corpus_dir
from featgeo.corpus.documents import downloads_dir, sha256_file

pytestmark = pytest.mark.slow

NOVELS = {  # chapters per novel in this edition (Emma and Persuasion restart per volume)
    "emma": 55,
    "mansfield-park": 48,
    "northanger-abbey": 31,
    "persuasion": 24,
    "pride-and-prejudice": 61,
    "sense-and-sensibility": 50,
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The embedded corpus built by this code into a fresh folder (a corpus already in the
    cache may come from older code); the downloads themselves are reused from the cache."""
    return load_corpus(build_corpus(out=tmp_path_factory.mktemp("real") / "corpus"))


def by_source(corpus, source):
    return [d for d in corpus.split("all") if d.source == source]


def test_wikipedia_articles(corpus):
    wiki = by_source(corpus, "wikipedia")
    assert len(wiki) >= 90
    titles = {d.title for d in wiki}
    assert {"Anarchism", "Aristotle", "Alabama"} <= titles
    for doc in wiki:
        assert len(doc.text) >= 500
        for markup in ("{{", "}}", "[[", "]]", "<ref", "</ref", "{|", "|}", "&nbsp;"):
            assert markup not in doc.text, (doc.title, markup)
        assert doc.licence == "CC BY-SA 3.0"
    anarchism = next(d for d in wiki if d.title == "Anarchism")
    assert anarchism.text.startswith("Anarchism is a political philosophy")


def test_austen_novels_and_chapters(corpus):
    jane = by_source(corpus, "austen")
    chapters = collections.Counter(d.id.split(":")[1] for d in jane)
    assert dict(chapters) == NOVELS
    first = next(d for d in jane if d.id == "austen:pride-and-prejudice:001")
    assert first.title == "Pride and Prejudice, Chapter 1"
    assert first.text.startswith("It is a truth universally acknowledged, that a single man")
    assert "in want of a wife." in first.text
    emma = {d.id: d.title for d in jane if d.id.startswith("austen:emma:")}
    assert emma["austen:emma:019"] == "Emma, Volume II, Chapter I"
    last = {d.id: d for d in jane}["austen:sense-and-sensibility:050"]
    assert last.text.endswith("producing coolness between their husbands.")
    assert all("THE END" not in d.text and "FINIS" not in d.text for d in jane)


def test_splits_are_disjoint_and_match_the_manifest(corpus):
    manifest = corpus.manifest
    seen: set[str] = set()
    for split in SPLITS:
        ids = {d.id for d in corpus.split(split)}
        assert not ids & seen
        seen |= ids
        assert manifest["splits"][split]["documents"] == len(ids)
    assert len(seen) == len(corpus)
    assert corpus.fingerprint == manifest["fingerprint"]
    assert [s["name"] for s in manifest["sources"]] == ["wiki", "austen"]


def test_downloads_are_cached_with_recorded_hashes(corpus):
    for source in corpus.manifest["sources"]:
        path = downloads_dir() / source["file"]
        assert path.is_file()
        assert sha256_file(path) == source["sha256"]


def test_rebuild_is_byte_identical(corpus, tmp_path):
    out = build_corpus(out=tmp_path / "again")
    for name in [*(f"{split}.jsonl" for split in SPLITS), "manifest.json"]:
        assert (out / name).read_bytes() == (corpus.path / name).read_bytes(), name
    assert read_corpus_dir(out).fingerprint == corpus.fingerprint


def test_load_embedded_uses_the_default_location():
    embedded = load_corpus("embedded")  # builds into the featgeo cache if not there yet
    assert embedded.name == "embedded"
    assert [s["name"] for s in embedded.manifest["sources"]] == ["wiki", "austen"]
