"""Building corpus folders (embedded sources faked, user files) and loading them back."""

from __future__ import annotations

import json
import warnings

import pytest

from featgeo.corpus import (
    SPLITS,
    austen,
    build_corpus,
    build_from_files,
    default_corpus_dir,
    load_corpus,
    read_corpus_dir,
    wikipedia,
)
from featgeo.errors import InputError

FILES = [*(f"{s}.jsonl" for s in SPLITS), "manifest.json"]


def read_all(folder):
    return {name: (folder / name).read_bytes() for name in FILES}


def test_build_writes_splits_and_manifest(fake_registry, tmp_path):
    fake_registry()
    out = build_corpus(out=tmp_path / "corpus")
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format_version"] == 1
    assert manifest["corpus_version"] == "v1"
    assert [s["name"] for s in manifest["sources"]] == ["wiki", "austen"]
    wiki, jane = manifest["sources"]
    assert (wiki["package"], wiki["version"], wiki["documents"]) == ("gensim", "4.4.0", 2)
    assert (jane["package"], jane["version"], jane["documents"]) == (
        "r-cran-janeaustenr",
        "9.9-1",
        4,
    )
    assert all(len(s["sha256"]) == 64 for s in manifest["sources"])
    assert sum(s["documents"] for s in manifest["splits"].values()) == 6
    corpus = read_corpus_dir(out)
    assert corpus.fingerprint == manifest["fingerprint"]
    for split in SPLITS:
        docs = corpus.split(split, allow_empty=True)
        assert manifest["splits"][split] == {
            "documents": len(docs),
            "characters": sum(len(d.text) for d in docs),
        }
        rows = [json.loads(line) for line in (out / f"{split}.jsonl").read_text().splitlines()]
        assert [r["id"] for r in rows] == [d.id for d in docs]
        assert all(list(r) == ["id", "source", "title", "licence", "text"] for r in rows)


def test_build_twice_is_byte_identical(fake_registry, tmp_path):
    fake_registry()
    first = read_all(build_corpus(out=tmp_path / "a"))
    second = read_all(build_corpus(out=tmp_path / "b", force=True))
    assert first == second


def test_build_is_idempotent_unless_forced(fake_registry, tmp_path, monkeypatch):
    fake_registry()
    out = build_corpus(out=tmp_path / "c")
    before = read_all(out)

    def boom():
        raise AssertionError("sources must not be read again")

    monkeypatch.setattr(wikipedia, "load_source", boom)
    assert build_corpus(out=out) == out
    assert build_corpus(("austen", "wiki"), out) == out  # same set, any order
    assert read_all(out) == before
    with pytest.raises(AssertionError, match="must not be read again"):
        build_corpus(out=out, force=True)
    assert read_all(out) == before  # the failed rebuild left the old corpus in place
    assert not list(tmp_path.glob(".c.*"))  # and no staging folder behind


def test_build_with_other_sources_rebuilds(fake_registry, tmp_path):
    fake_registry()
    out = build_corpus(out=tmp_path / "c")
    build_corpus("austen", out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["name"] for s in manifest["sources"]] == ["austen"]
    assert {d.source for d in read_corpus_dir(out).split("all")} == {"austen"}


def test_unavailable_source_is_skipped_with_a_warning(fake_registry, tmp_path, monkeypatch):
    fake_registry()
    monkeypatch.setattr(austen, "fetch_deb", _no_apt)
    with pytest.warns(UserWarning, match="corpus source 'austen' skipped: apt-get is not"):
        out = build_corpus(out=tmp_path / "c")
    sources = json.loads((out / "manifest.json").read_text())["sources"]
    assert [s["name"] for s in sources] == ["wiki"]


def _no_apt():
    raise austen.SourceUnavailableError("apt-get is not available on this machine")


def test_no_source_available_is_an_input_error(tmp_path, monkeypatch):
    monkeypatch.setattr(austen, "fetch_deb", _no_apt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(InputError, match="no corpus source could be read.*--from PATH"):
            build_corpus("austen", tmp_path / "c")
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("bad", ["wikipedia", "", "wiki,shakespeare", ["austen", "c4"]])
def test_unknown_sources_list_the_valid_ones(bad, tmp_path):
    with pytest.raises(ValueError, match=r"choose one or more of \['wiki', 'austen'\]"):
        build_corpus(bad, tmp_path / "c")


def test_default_location_and_load_embedded(fake_registry):
    fake_registry()
    with pytest.raises(FileNotFoundError, match="run `featgeo corpus build`"):
        load_corpus("embedded", build_if_missing=False)
    corpus = load_corpus()  # builds once into the (test-isolated) cache
    assert corpus.path == default_corpus_dir()
    assert corpus.name == "embedded"
    assert (default_corpus_dir() / "manifest.json").is_file()
    assert load_corpus("embedded", build_if_missing=False).fingerprint == corpus.fingerprint


def test_build_from_files_and_load(write_files, tmp_path):
    root = write_files({f"doc{i:02d}.txt": f"Document number {i}." for i in range(30)})
    out = build_from_files(root, tmp_path / "mine")
    corpus = load_corpus(out)
    assert corpus.name == "mine"
    assert corpus.manifest["sources"][0]["name"] == "user"
    assert sorted(d.id for d in corpus.split("all")) == [f"doc{i:02d}.txt" for i in range(30)]
    # the same rule as reading the files directly
    direct = load_corpus(root)
    assert {s: [d.id for d in direct.split(s, allow_empty=True)] for s in SPLITS} == {
        s: [d.id for d in corpus.split(s, allow_empty=True)] for s in SPLITS
    }
    assert direct.fingerprint == corpus.fingerprint
    assert direct.manifest is None


def test_loading_detects_edited_files(fake_registry, tmp_path):
    fake_registry()
    out = build_corpus(out=tmp_path / "c")
    path = out / "sae_train.jsonl"
    path.write_text(path.read_text().replace("fox", "cat"))
    with pytest.raises(ValueError, match="does not match its manifest.*--force"):
        read_corpus_dir(out)


@pytest.mark.parametrize(
    ("damage", "error", "match"),
    [
        (lambda out: (out / "eval.jsonl").unlink(), FileNotFoundError, "eval.jsonl' is missing"),
        (lambda out: (out / "manifest.json").write_text("{"), ValueError, "not valid JSON"),
        (
            lambda out: (out / "manifest.json").write_text('{"format_version": 99}'),
            ValueError,
            "format_version=99",
        ),
        (
            lambda out: (out / "vertex.jsonl").write_text("not json\n"),
            ValueError,
            "vertex.jsonl line 1 is not valid JSON",
        ),
    ],
    ids=["missing-split", "bad-manifest", "future-format", "bad-line"],
)
def test_damaged_corpus_folders(fake_registry, tmp_path, damage, error, match):
    fake_registry()
    out = build_corpus(out=tmp_path / "c")
    damage(out)
    with pytest.raises(error, match=match):
        read_corpus_dir(out)
