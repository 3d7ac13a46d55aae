"""Wikipedia: MediaWiki dump parsing and wikitext cleaning on a synthetic dump."""

from __future__ import annotations

import pytest

from featgeo.corpus import wikipedia
from featgeo.corpus.wikipedia import iter_pages, parse_dump, read_dump_from_wheel, wikitext_to_text


def test_iter_pages_reads_every_page_namespace_agnostic(synth):
    pages = list(iter_pages(synth.standard_dump()))
    assert [p.title for p in pages] == ["Fox", "Foxes", "Wikipedia:About", "Dog", "Stub"]
    assert [p.ns for p in pages] == [0, 0, 4, 0, 0]
    assert [p.redirect for p in pages] == [False, True, False, False, False]
    assert pages[0].id == "10"
    assert pages[0].wikitext == synth.ARTICLE_WIKITEXT


@pytest.mark.parametrize("compress", [True, False], ids=["bz2", "plain-xml"])
def test_iter_pages_accepts_bytes_and_paths(synth, tmp_path, compress):
    dump = synth.wiki_dump([synth.wiki_page(1, "A", "text")], compress=compress)
    path = tmp_path / "dump.xml"
    path.write_bytes(dump)
    assert [p.title for p in iter_pages(dump)] == [p.title for p in iter_pages(path)] == ["A"]


def test_parse_dump_keeps_articles_only(synth):
    docs = parse_dump(synth.standard_dump())
    # the redirect, the ns=4 project page and the too-short stub are gone
    assert [d.title for d in docs] == ["Fox", "Dog"]
    assert [d.id for d in docs] == ["wikipedia:10", "wikipedia:13"]
    assert {d.source for d in docs} == {"wikipedia"}
    assert {d.licence for d in docs} == {"CC BY-SA 3.0"}


def test_parse_dump_min_chars(synth):
    assert [d.title for d in parse_dump(synth.standard_dump(), min_chars=0)] == [
        "Fox",
        "Dog",
        "Stub",
    ]


def test_markup_is_removed_and_prose_kept(synth):
    text = wikitext_to_text(synth.ARTICLE_WIKITEXT)
    assert text == synth.ARTICLE_TEXT
    for leftover in ["{{", "}}", "[[", "]]", "<ref", "{|", "thumb", "Category", "Wolf", "<!--"]:
        assert leftover not in text


@pytest.mark.parametrize(
    ("wikitext", "expected"),
    [
        ("A [[b|link]] and [[c]].", "A link and c."),
        ("Text.<ref>{{cite web|url=x}}</ref> More.", "Text. More."),
        # an unclosed '' inside a ref makes the tokenizer give up on the ref: second pass
        ("Text.<ref>[[A|B]]'' by C. p. 1</ref> More.", "Text. More."),
        ("Elah ({{lang|arc|x}}) is a word.", "Elah is a word."),
        ("[[:Category:Foxes|all foxes]] are listed.", "all foxes are listed."),
        ("Kept&nbsp;together\n\n\n\nnext", "Kept together\n\nnext"),
        ('Before\n{| class="x"\n|-\n| cell\n|}\nAfter', "Before\n\nAfter"),
    ],
    ids=["links", "ref", "broken-ref", "empty-parens", "colon-link", "spaces", "table"],
)
def test_wikitext_to_text_cases(wikitext, expected):
    assert wikitext_to_text(wikitext) == expected


def test_tables_the_parser_left_as_text_are_dropped_by_lines():
    # mwparserfromhell leaves some malformed tables of the real dump as text (e.g. in
    # "Alabama"); MediaWiki's table grammar is line based, and so is this fallback.
    text = "Before\n{| class=x\n|-\n| a\n{|\n| nested\n|}\n| b\n|}\nAfter"
    assert wikipedia._drop_unparsed_tables(text) == "Before\nAfter"


def test_read_dump_from_wheel(synth, tmp_path):
    wheel = tmp_path / "g.whl"
    wheel.write_bytes(synth.wheel_bytes(b"BZh-dump"))
    assert read_dump_from_wheel(wheel) == b"BZh-dump"


def test_wheel_without_dump_is_a_clear_error(tmp_path):
    import zipfile

    wheel = tmp_path / "other.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("other/__init__.py", "")
    with pytest.raises(ValueError, match="has no member gensim/test/test_data"):
        read_dump_from_wheel(wheel)


def test_not_xml_is_a_clear_error():
    with pytest.raises(ValueError, match="not a readable MediaWiki XML export"):
        list(iter_pages(b"<mediawiki><page>"))


def test_load_source_records_provenance(synth, tmp_path):
    wheel = tmp_path / wikipedia.WHEEL_FILE
    wheel.write_bytes(synth.wheel_bytes(synth.standard_dump()))
    docs, info = wikipedia.load_source(wheel)
    assert len(docs) == 2
    assert (info.name, info.registry, info.package, info.version) == (
        "wiki",
        "pypi",
        "gensim",
        "4.4.0",
    )
    assert info.file == wikipedia.WHEEL_FILE
    assert len(info.sha256) == 64


def _fake_pip(returncode: int, payload: bytes | None):
    """A stand-in for ``subprocess.run(pip download ...)`` that writes ``payload`` as the wheel."""

    def run(cmd, **kwargs):
        import subprocess
        from pathlib import Path

        if payload is not None:
            dest = Path(cmd[cmd.index("-d") + 1]) / wikipedia.WHEEL_FILE
            dest.write_bytes(payload)
        return subprocess.CompletedProcess(cmd, returncode, "", "ERROR: no network")

    return run


def test_fetch_wheel_reports_pip_failure(monkeypatch):
    monkeypatch.setattr(wikipedia.subprocess, "run", _fake_pip(1, None))
    with pytest.raises(wikipedia.SourceUnavailableError, match=r"pip download gensim==4.4.0.*no"):
        wikipedia.fetch_wheel()


def test_fetch_wheel_checks_the_pinned_hash(monkeypatch):
    monkeypatch.setattr(wikipedia.subprocess, "run", _fake_pip(0, b"not the real wheel"))
    with pytest.raises(wikipedia.SourceUnavailableError, match="has sha256 .* expected 91a7fa"):
        wikipedia.fetch_wheel()


def test_fetch_wheel_downloads_once(monkeypatch):
    import hashlib

    payload = b"pretend wheel"
    monkeypatch.setattr(wikipedia, "WHEEL_SHA256", hashlib.sha256(payload).hexdigest())
    monkeypatch.setattr(wikipedia.subprocess, "run", _fake_pip(0, payload))
    first = wikipedia.fetch_wheel()
    assert first.read_bytes() == payload
    monkeypatch.setattr(wikipedia.subprocess, "run", lambda *a, **k: pytest.fail("downloaded"))
    assert wikipedia.fetch_wheel() == first
    assert not [p for p in first.parent.iterdir() if p != first]  # no temp leftovers
