"""Residual-stream activations: chunking, early stop, batched vs one-at-a-time parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from featgeo.activations.collect import (
    document_chunks,
    iter_activation_batches,
    residual_activations,
)
from featgeo.corpus import Corpus, load_corpus
from featgeo.models.components import decoder_layers


@pytest.fixture(scope="module")
def corpus(text_corpus):
    return load_corpus(text_corpus)


def test_chunks_cover_each_document_without_overlap(corpus, tokenizer):
    chunks = list(document_chunks(corpus, "sae_train", tokenizer, 64))
    docs = corpus.split("sae_train")
    for doc_index, doc in enumerate(docs):
        ids = tokenizer(doc.text, add_special_tokens=False)["input_ids"]
        mine = [c for c in chunks if c.doc_index == doc_index]
        assert [c.chunk_index for c in mine] == list(range(len(mine)))
        joined = torch.cat([c.token_ids for c in mine]).tolist()
        # Only a last window of a single token may be dropped.
        assert ids[: len(joined)] == joined and len(ids) - len(joined) in (0, 1)
        assert all(2 <= c.token_ids.numel() <= 64 for c in mine)


def test_stops_after_the_layer(model):
    """Later blocks and the LM head never run."""
    ran = []
    hooks = [
        layer.register_forward_hook(lambda *_, i=i: ran.append(i))
        for i, layer in enumerate(decoder_layers(model))
    ]
    hooks.append(model.lm_head.register_forward_hook(lambda *_: ran.append("lm_head")))
    try:
        out = residual_activations(model, torch.randint(0, 100, (2, 10)), 0)
    finally:
        for h in hooks:
            h.remove()
    assert ran == [0]
    assert out.shape == (2, 10, model.config.hidden_size)


@pytest.mark.parametrize("layer", [0, 1], ids=["first", "last"])
def test_matches_full_forward_hidden_states(model, layer):
    ids = torch.randint(0, model.config.vocab_size, (3, 17))
    ours = residual_activations(model, ids, layer)
    with torch.no_grad():
        full = model(ids, output_hidden_states=True, use_cache=False).hidden_states
    if layer == len(decoder_layers(model)) - 1:
        # transformers stores the last block's output after the final norm.
        ours = model.model.norm(ours)
    torch.testing.assert_close(ours, full[layer + 1], atol=1e-5, rtol=0)


def _one_at_a_time(model, corpus, tokenizer, layer, context_size):
    rows = []
    for chunk in document_chunks(corpus, "sae_train", tokenizer, context_size):
        acts = residual_activations(model, chunk.token_ids[None], layer)[0]  # [n, d]
        for pos in range(1, chunk.token_ids.numel()):
            rows.append((chunk.doc_index, chunk.chunk_index, pos, acts[pos]))
    return rows


def test_batched_equals_one_at_a_time_and_full_forward(model, corpus, tokenizer):
    corpus = Corpus("small", {"sae_train": corpus.split("sae_train")[:4]})  # keep it fast
    layer, context = 0, 48  # 48 leaves short last windows, so padding is exercised
    batches = list(
        iter_activation_batches(
            model, tokenizer, corpus, "sae_train", layer, context_size=context, batch_size=5
        )
    )
    acts = torch.cat([b.acts for b in batches])
    doc = np.concatenate([b.doc_index for b in batches])
    chunk = np.concatenate([b.chunk_index for b in batches])
    pos = np.concatenate([b.position for b in batches])
    tok = np.concatenate([b.token_ids for b in batches])
    ref = _one_at_a_time(model, corpus, tokenizer, layer, context)
    assert len(ref) == acts.shape[0]
    assert (pos >= 1).all() and (pos < context).all()
    assert [(d, c, p) for d, c, p, _ in ref] == list(zip(doc, chunk, pos, strict=True))
    torch.testing.assert_close(acts, torch.stack([r[3] for r in ref]), atol=1e-5, rtol=0)

    # Token ids and the full-forward hidden state at the same positions.
    chunks = {
        (c.doc_index, c.chunk_index): c
        for c in document_chunks(corpus, "sae_train", tokenizer, context)
    }
    for i in range(0, acts.shape[0], 37):
        c = chunks[(int(doc[i]), int(chunk[i]))]
        assert int(c.token_ids[pos[i]]) == int(tok[i])
        with torch.no_grad():
            hs = model(c.token_ids[None], output_hidden_states=True).hidden_states
        torch.testing.assert_close(acts[i], hs[layer + 1][0, pos[i]], atol=1e-5, rtol=0)


def test_max_tokens_cuts_exactly(model, corpus, tokenizer):
    batches = list(
        iter_activation_batches(
            model, tokenizer, corpus, "sae_train", 1, context_size=32, batch_size=4, max_tokens=200
        )
    )
    assert sum(b.n_tokens for b in batches) == 200
    assert all(b.acts.shape[0] == b.position.size == b.token_ids.size for b in batches)


@pytest.mark.parametrize("max_tokens", [None, 200])
def test_skip_batches_continues_exactly_without_running_them(
    model, corpus, tokenizer, max_tokens, monkeypatch
):
    from featgeo.activations import collect as activations

    def stream(skip):
        return list(
            iter_activation_batches(
                model, tokenizer, corpus, "sae_train", 1, context_size=32, batch_size=4,
                max_tokens=max_tokens, skip_batches=skip,
            )
        )  # fmt: skip

    whole = stream(0)
    runs = []
    run_batch = activations._run_batch
    monkeypatch.setattr(activations, "_run_batch", lambda *a: runs.append(1) or run_batch(*a))
    assert len(whole) >= 2
    for skip in sorted({1, min(3, len(whole)), len(whole) - 1, len(whole)}):
        runs.clear()
        rest = stream(skip)
        assert len(runs) == len(whole) - skip  # skipped batches never reach the model
        assert len(rest) == len(whole) - skip
        for a, b in zip(rest, whole[skip:], strict=True):
            torch.testing.assert_close(a.acts, b.acts, rtol=0, atol=0)
            np.testing.assert_array_equal(a.position, b.position)
            np.testing.assert_array_equal(a.doc_index, b.doc_index)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"layer": 2}, r"--layer 2 is out of range; this model has layers 0-1"),
        ({"layer": -1}, r"--layer -1 is out of range"),
        ({"context_size": 1}, r"--context-size must be >= 2"),
        ({"context_size": 4096}, r"max_position_embeddings"),
        ({"batch_size": 0}, r"batch_size must be >= 1"),
        ({"max_tokens": 0}, r"max_tokens must be >= 1"),
        ({"split": "nope"}, r"not a corpus split"),
    ],
    ids=["layer-high", "layer-negative", "context", "context-long", "batch", "max", "split"],
)
def test_bad_inputs(model, corpus, tokenizer, kwargs, match):
    args = {"split": "sae_train", "layer": 0, **kwargs}
    split, layer = args.pop("split"), args.pop("layer")
    with pytest.raises(ValueError, match=match):
        iter_activation_batches(model, tokenizer, corpus, split, layer, **args)
