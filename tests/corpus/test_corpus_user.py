"""User corpora from .txt / .jsonl / .parquet files and folders, and their bad inputs."""

from __future__ import annotations

import json

import pytest

from featgeo.corpus import SPLITS, load_corpus, load_user_documents, user_corpus
from featgeo.errors import InputError


def test_txt_file_is_one_document(write_files):
    root = write_files({"notes.txt": "\ufeffFirst line.\n\nSecond paragraph.\n"})
    (doc,) = load_user_documents(root / "notes.txt")
    assert (doc.id, doc.title, doc.source) == ("notes.txt", "notes", "user")
    assert doc.text == "First line.\n\nSecond paragraph."  # BOM and outer whitespace gone


def test_jsonl_rows_with_optional_id_and_title(write_files):
    rows = [
        {"text": "alpha"},
        {"text": "beta", "id": "b", "title": "Beta"},
        {"text": "   "},  # no text: skipped
        {"text": "gamma \u2028 with a line separator", "extra": 1},
    ]
    body = "\n".join(json.dumps(r, ensure_ascii=False) for r in rows[:2])
    body += "\n\n" + "\n".join(json.dumps(r, ensure_ascii=False) for r in rows[2:]) + "\n"
    root = write_files({"d.jsonl": body})
    docs = load_user_documents(root / "d.jsonl")
    assert [(d.id, d.title) for d in docs] == [
        ("d.jsonl:1", "d.jsonl:1"),
        ("b", "Beta"),
        ("d.jsonl:5", "d.jsonl:5"),
    ]
    assert docs[2].text == "gamma \u2028 with a line separator"


def test_parquet_rows(tmp_path):
    import pandas as pd

    path = tmp_path / "t.parquet"
    pd.DataFrame({"text": ["one", None, "three"], "title": ["One", "Two", None]}).to_parquet(path)
    docs = load_user_documents(path)
    assert [(d.id, d.title, d.text) for d in docs] == [
        ("t.parquet:1", "One", "one"),
        ("t.parquet:3", "t.parquet:3", "three"),
    ]


def test_folder_is_read_recursively_in_sorted_order(write_files, caplog):
    root = write_files(
        {
            "b.txt": "bee",
            "a/z.jsonl": '{"text": "zed"}\n',
            "a/y.txt": "why",
            "README.md": "not corpus text",
        }
    )
    docs = load_user_documents(root)
    assert [d.id for d in docs] == ["a/y.txt", "a/z.jsonl:1", "b.txt"]
    assert "skipping 1 file(s)" in caplog.text and "README.md" in caplog.text


def test_several_paths_in_order(write_files):
    root = write_files({"x.txt": "x", "y.txt": "y"})
    docs = load_user_documents([root / "y.txt", root / "x.txt"])
    assert [d.id for d in docs] == ["y.txt", "x.txt"]


def test_user_corpus_uses_the_split_rule(write_files):
    root = write_files({f"{i}.txt": f"text {i}" for i in range(50)})
    corpus = user_corpus(root)
    from featgeo.corpus import split_of

    for split in SPLITS:
        assert all(split_of(d.id) == split for d in corpus.split(split, allow_empty=True))
    assert len(corpus) == 50


BAD_INPUTS = [
    ("missing.txt", None, FileNotFoundError, r"corpus path '.*missing.txt' does not exist"),
    ("notes.md", "text", ValueError, r"unsupported extension '\.md'; supported: \.txt, \.jsonl"),
    ("blob.txt", b"\x89PNG\r\n\x1a\n\x00\x00", ValueError, r"blob.txt' is not UTF-8 text \(it "),
    ("latin.txt", "café".encode("latin-1"), ValueError, r"not UTF-8 text \(invalid byte 0xe9"),
    ("rows.jsonl", '{"text": "ok"}\n{"body": "x"}\n', ValueError, r"line 2 has no 'text' field"),
    ("rows.jsonl", '{"text": "ok"}\n{oops\n', ValueError, r"line 2 is not valid JSON"),
    ("rows.jsonl", '{"text": 5}\n', ValueError, r"'text' must be a string, got int"),
    ("empty.txt", "  \n\n", InputError, r"has no documents with text"),
    ("dupes.jsonl", '{"text":"a","id":"x"}\n{"text":"b","id":"x"}\n', ValueError, "occurs twice"),
    ("fake.parquet", "not parquet", ValueError, r"is not a readable parquet file"),
]


@pytest.mark.parametrize(
    ("name", "content", "error", "match"),
    BAD_INPUTS,
    ids=[
        "missing",
        "extension",
        "binary",
        "invalid-utf8",
        "jsonl-no-text",
        "jsonl-bad-json",
        "jsonl-text-type",
        "empty",
        "duplicate-ids",
        "bad-parquet",
    ],
)
def test_bad_user_inputs(tmp_path, name, content, error, match):
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    elif isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(error, match=match):
        load_corpus(path)


def test_parquet_without_text_column(tmp_path):
    import pandas as pd

    path = tmp_path / "t.parquet"
    pd.DataFrame({"body": ["x"]}).to_parquet(path)
    with pytest.raises(ValueError, match=r"has no 'text' column; columns are \['body'\]"):
        load_corpus(path)


def test_folder_without_corpus_files_is_empty(write_files):
    root = write_files({"notes.md": "# hello"})
    with pytest.raises(InputError, match=r"holds no .txt/.jsonl/.parquet files .*notes.md"):
        load_corpus(root)


def test_empty_requested_split(write_files):
    corpus = load_corpus(write_files({"only.txt": "a single document"}))
    present = [s for s in SPLITS if corpus.split(s, allow_empty=True)]
    missing = next(s for s in SPLITS if s not in present)
    with pytest.raises(InputError, match=f"split '{missing}' .* is empty.*Give the corpus more"):
        corpus.split(missing)  # no option named: the caller may have none to offer
    with pytest.raises(InputError, match="Use --split all, or give the corpus more"):
        corpus.split(missing, option="--split")
    assert [d.id for d in corpus.split("all")] == ["only.txt"]
