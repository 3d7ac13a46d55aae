"""Per-split sizes, and the ``featgeo corpus`` commands through typer's CliRunner."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from featgeo.cli.corpus import app
from featgeo.corpus import SPLITS, Corpus, Document, assign_splits, corpus_info, totals
from featgeo.corpus.info import count_tokens

runner = CliRunner()


class WhitespaceTokenizer:
    """Stands in for a transformers tokenizer: one token per whitespace-separated word."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, texts, *, add_special_tokens=True, **kwargs):
        assert add_special_tokens is False
        self.calls.append(len(texts))
        return {"input_ids": [text.split() for text in texts]}


def toy_corpus(n: int = 40) -> Corpus:
    docs = [Document(f"d{i}", "user", f"D{i}", "unknown", "word " * (i + 1)) for i in range(n)]
    return Corpus("toy", assign_splits(docs))


def test_corpus_info_counts_documents_characters_tokens():
    corpus = toy_corpus()
    rows = corpus_info(corpus, WhitespaceTokenizer(), batch_size=3)
    assert [r.split for r in rows] == list(SPLITS)
    for row in rows:
        docs = corpus.split(row.split, allow_empty=True)
        assert row.documents == len(docs)
        assert row.characters == sum(len(d.text) for d in docs)
        assert row.tokens == sum(len(d.text.split()) for d in docs)
    total = totals(rows)
    assert (total.split, total.documents, total.tokens) == ("total", 40, sum(range(1, 41)))


def test_corpus_info_without_tokenizer_and_empty_splits():
    corpus = Corpus("tiny", {"eval": [Document("a", "user", "A", "unknown", "abc")]})
    rows = corpus_info(corpus)
    assert [(r.split, r.documents, r.characters, r.tokens) for r in rows] == [
        ("calibration", 0, 0, None),
        ("sae_train", 0, 0, None),
        ("eval", 1, 3, None),
        ("vertex", 0, 0, None),
    ]
    assert totals(rows).tokens is None


def test_count_tokens_batches():
    tok = WhitespaceTokenizer()
    assert count_tokens(["a b", "c", "d e f", "g", "h"], tok, batch_size=2) == 8
    assert tok.calls == [2, 2, 1]


def test_corpus_info_rejects_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size=0 must be a positive integer"):
        corpus_info(toy_corpus(), WhitespaceTokenizer(), batch_size=0)


def test_cli_build_from_files_then_info(write_files, tmp_path):
    root = write_files({f"{i}.txt": f"document {i}" for i in range(20)})
    out = tmp_path / "built"
    result = runner.invoke(app, ["build", "--from", str(root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "total" in result.output and "20" in result.output
    assert (out / "manifest.json").is_file()
    result = runner.invoke(app, ["info", "--corpus", str(out), "--model", "none"])
    assert result.exit_code == 0, result.output
    assert "sae_train" in result.output and "tokens" not in result.output


def built_sources(out) -> tuple[list[str], set[str], str]:
    """(source names in the manifest, document sources, fingerprint) of a built corpus, read
    from its files."""
    import json

    manifest = json.loads((out / "manifest.json").read_text())
    docs = [
        json.loads(line)
        for path in sorted(out.glob("*.jsonl"))
        for line in path.read_text(encoding="utf-8").splitlines()
        if line
    ]
    assert docs, f"no documents under {out}"
    return (
        [e["name"] for e in manifest["sources"]],
        {d["source"] for d in docs},
        manifest["fingerprint"],
    )


def test_cli_build_sources_choose_what_is_built(fake_registry, tmp_path):
    fake_registry()
    only_austen, both = tmp_path / "austen", tmp_path / "both"
    result = runner.invoke(app, ["build", "--sources", "austen", "--out", str(only_austen)])
    assert result.exit_code == 0, result.output
    assert "corpus embedded" in result.output
    names, doc_sources, _ = built_sources(only_austen)
    assert names == ["austen"] and doc_sources == {"austen"}
    result = runner.invoke(app, ["build", "--out", str(both)])  # default: wiki,austen
    assert result.exit_code == 0, result.output
    names, doc_sources, _ = built_sources(both)
    assert names == ["wiki", "austen"] and doc_sources == {"wikipedia", "austen"}


def test_cli_build_force_rebuilds_and_its_absence_reuses(fake_registry, synth, tmp_path):
    out = tmp_path / "emb"
    fake_registry()  # Pride and Prejudice + Emma
    first = runner.invoke(app, ["build", "--sources", "austen", "--out", str(out)])
    assert first.exit_code == 0, first.output
    *_, before = built_sources(out)
    fake_registry(novels=(synth.EMMA,))  # the registry now serves another package
    again = runner.invoke(app, ["build", "--sources", "austen", "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert built_sources(out)[2] == before  # already built from austen: kept as is
    forced = runner.invoke(app, ["build", "--sources", "austen", "--out", str(out), "--force"])
    assert forced.exit_code == 0, forced.output
    *_, after = built_sources(out)
    assert after != before
    text = "".join(p.read_text(encoding="utf-8") for p in out.glob("*.jsonl"))
    assert "Emma Woodhouse" in text and "truth universally acknowledged" not in text


@pytest.mark.parametrize("option", [["--sources", "wiki"], ["--force"]], ids=lambda o: o[0])
def test_cli_info_refuses_build_options(tmp_path, option):
    """``info`` only reads a corpus: the build options are refused, not silently ignored."""
    result = runner.invoke(app, ["info", "--corpus", str(tmp_path), "--model", "none", *option])
    assert result.exit_code == 2
    assert "No such option" in result.output and option[0] in result.output


def test_cli_info_with_model_counts_tokens(write_files, tiny_llama):
    from featgeo.models import load_tokenizer

    root = write_files({f"{i}.txt": "two words" for i in range(10)})
    result = runner.invoke(app, ["info", "--corpus", str(root), "--model", str(tiny_llama)])
    assert result.exit_code == 0, result.output
    per_doc = len(load_tokenizer(tiny_llama)("two words", add_special_tokens=False)["input_ids"])
    assert "tokens" in result.output and f" {10 * per_doc} " in result.output


def test_cli_from_without_out_is_a_value_error(write_files):
    root = write_files({"a.txt": "a"})
    result = runner.invoke(app, ["build", "--from", str(root)])
    # importing featgeo.cli.corpus runs featgeo/cli/__init__.py, which wraps every command so
    # that a ValueError becomes one line and exit code 2
    assert result.exit_code == 2
    assert "--from needs --out" in result.output


def test_main_cli_turns_bad_corpus_into_one_line_and_exit_2(tmp_path):
    from featgeo.cli import app as main_app  # an import error here is a failure, not a skip

    result = runner.invoke(main_app, ["corpus", "info", "--corpus", str(tmp_path / "nope.txt")])
    assert result.exit_code == 2
    assert "does not exist" in result.output
