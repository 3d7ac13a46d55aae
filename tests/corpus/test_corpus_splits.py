"""The split rule, documents, and the Corpus container."""

from __future__ import annotations

import hashlib
import json

import pytest

from featgeo.corpus import SPLIT_FRACTIONS, SPLITS, Corpus, Document, assign_splits, split_of
from featgeo.corpus.documents import SPLIT_SALT, content_fingerprint
from featgeo.errors import InputError


def make_doc(i: int | str, **overrides) -> Document:
    fields = {
        "id": f"doc:{i}",
        "source": "user",
        "title": f"Doc {i}",
        "licence": "unknown",
        "text": f"text of {i}",
    }
    return Document(**{**fields, **overrides})


def test_split_of_is_the_documented_hash_rule():
    for doc_id in ["austen:emma:001", "wikipedia:12", "x"]:
        digest = hashlib.sha256(f"{SPLIT_SALT}:{doc_id}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2**64
        edges = [0.1, 0.7, 0.8, 1.0]
        expected = SPLITS[next(i for i, edge in enumerate(edges) if u < edge)]
        assert split_of(doc_id) == expected


def test_split_fractions_cover_the_unit_interval():
    assert list(SPLIT_FRACTIONS) == list(SPLITS)
    assert sum(SPLIT_FRACTIONS.values()) == pytest.approx(1.0)


def test_assignment_is_deterministic_disjoint_and_complete():
    docs = [make_doc(i) for i in range(2000)]
    first, second = assign_splits(docs), assign_splits(list(reversed(docs)))
    ids = {name: [d.id for d in first[name]] for name in SPLITS}
    assert {name: sorted(v) for name, v in ids.items()} == {
        name: sorted(d.id for d in second[name]) for name in SPLITS
    }
    flat = [i for name in SPLITS for i in ids[name]]
    assert sorted(flat) == sorted(d.id for d in docs)  # complete, and no id twice
    for name in SPLITS:  # fractions hold to within a few standard deviations
        assert len(ids[name]) / len(docs) == pytest.approx(SPLIT_FRACTIONS[name], abs=0.035)


def test_assignment_keeps_input_order():
    docs = [make_doc(i) for i in range(100)]
    for members in assign_splits(docs).values():
        positions = [docs.index(d) for d in members]
        assert positions == sorted(positions)


def test_a_document_keeps_its_split_when_others_change():
    docs = [make_doc(i) for i in range(200)]
    before = {d.id: split_of(d.id) for d in docs}
    after = assign_splits(docs[50:] + [make_doc(f"new{i}") for i in range(30)])
    for name, members in after.items():
        assert all(before.get(d.id, name) == name for d in members)


def test_duplicate_ids_are_rejected():
    with pytest.raises(ValueError, match="document id 'doc:1' occurs twice"):
        assign_splits([make_doc(1), make_doc(1, text="other")])


def test_json_line_round_trip():
    doc = make_doc(1, text="line\nbreak \u2028 and “quotes” £")
    line = doc.to_json_line()
    assert "\n" not in line
    assert Document.from_json(json.loads(line), where="x") == doc


@pytest.mark.parametrize(
    ("row", "match"),
    [([1, 2], "expected a JSON object"), ({"id": "a", "text": "t"}, r"missing string field")],
    ids=["not-object", "missing-fields"],
)
def test_from_json_errors(row, match):
    with pytest.raises(ValueError, match=match):
        Document.from_json(row, where="eval.jsonl line 3")


def test_corpus_split_access_and_all():
    splits = assign_splits([make_doc(i) for i in range(100)])
    corpus = Corpus("toy", splits)
    assert corpus.splits == SPLITS
    assert len(corpus) == 100
    assert corpus.split("all") == [d for name in SPLITS for d in splits[name]]
    assert corpus.split("eval") == splits["eval"]


def documented_fingerprint(splits: dict[str, list[Document]]) -> str:
    """The documented rule, written out: sha256 over, for each split in the order calibration,
    sae_train, eval, vertex, the line "split NAME" and then each document as one compact JSON
    object (keys id, source, title, licence, text; UTF-8, not ASCII-escaped) and a newline."""
    h = hashlib.sha256()
    for name in ("calibration", "sae_train", "eval", "vertex"):
        h.update(f"split {name}\n".encode())
        for doc in splits.get(name, []):
            row = {"id": doc.id, "source": doc.source, "title": doc.title,
                   "licence": doc.licence, "text": doc.text}  # fmt: skip
            h.update(json.dumps(row, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
            h.update(b"\n")
    return h.hexdigest()


def test_corpus_fingerprint_is_content_based():
    docs = [make_doc(i, text=f"text of {i}: café “quoted” £{i}\nline two") for i in range(20)]
    by_hash = {name: [] for name in SPLITS}
    for doc in docs:  # the split rule, by hand (as in test_split_of_is_the_documented_hash_rule)
        u = int.from_bytes(hashlib.sha256(f"{SPLIT_SALT}:{doc.id}".encode()).digest()[:8], "big")
        edges = [0.1, 0.7, 0.8, 1.0]
        by_hash[SPLITS[next(i for i, e in enumerate(edges) if u / 2**64 < e)]].append(doc)
    assert sum(1 for v in by_hash.values() if v) >= 3  # several splits, so their order counts
    expected = documented_fingerprint(by_hash)
    a = Corpus("a", assign_splits(docs))
    b = Corpus("b", assign_splits(docs))
    c = Corpus("c", assign_splits([*docs[:-1], make_doc(19, text="changed")]))
    assert a.fingerprint == b.fingerprint == expected
    assert content_fingerprint(by_hash) == expected
    assert c.fingerprint != a.fingerprint


def test_empty_split_is_an_input_error_that_suggests_only_real_options():
    corpus = Corpus("tiny", {"sae_train": [make_doc(1)]})
    assert corpus.split("eval", allow_empty=True) == []
    with pytest.raises(InputError, match=r"split 'eval' of corpus 'tiny' is empty.*--split all"):
        corpus.split("eval", option="--split")
    # without the option that chose the split (prune has none), no option is suggested
    with pytest.raises(InputError, match=r"is empty .*\. Give the corpus more documents\.$"):
        corpus.split("eval")


@pytest.mark.parametrize("bad", ["train", "test", ""])
def test_unknown_split_names_list_the_valid_ones(bad):
    corpus = Corpus("toy", {"eval": [make_doc(1)]})
    with pytest.raises(ValueError, match=r"is not a corpus split; use one of \['calibration'"):
        corpus.split(bad)


def test_corpus_rejects_unknown_split_keys():
    with pytest.raises(ValueError, match=r"unknown split name\(s\) \['train'\]"):
        Corpus("toy", {"train": []})
