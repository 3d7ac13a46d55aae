"""``featgeo sae train`` works in proportion to the request: it collects the tokens training
uses (``--tokens``, or ``--activation-tokens``), not the whole split; a bigger cached collection
of the same stream is reused as a prefix, a smaller one never stands in for a bigger request;
``--hook resid_pre`` collects (and caches, under its own key) the input of the block."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from featgeo.activations.cache import ActivationCache
from featgeo.activations.collect import document_chunks, iter_activation_batches
from featgeo.cache import cache_dir
from featgeo.cli import app
from featgeo.corpus import load_corpus
from featgeo.files import read_json
from featgeo.sae import TrainConfig, load_sae, train_sae

runner = CliRunner()


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATGEO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def caches() -> dict[str, ActivationCache]:
    root = cache_dir() / "activations"
    found = sorted(root.iterdir()) if root.is_dir() else []
    return {p.name: ActivationCache.open(p) for p in found if not p.name.startswith(".")}


def train(tiny_llama, text_corpus, out, tokens, **kwargs):
    config = TrainConfig(d_sae=64, total_tokens=tokens, k=4, batch_size=250, progress=False)
    kwargs = {"layer": 1, "context_size": 48, **kwargs}
    return train_sae(out, config, model=str(tiny_llama), corpus=str(text_corpus), device="cpu",
                     progress=False, **kwargs)  # fmt: skip


def split_tokens(tokenizer, text_corpus) -> int:
    chunks = document_chunks(load_corpus(text_corpus), "sae_train", tokenizer, 48)
    return sum(c.token_ids.numel() - 1 for c in chunks)


def test_collects_the_budget_not_the_split(tiny_llama, text_corpus, tokenizer, tmp_path):
    assert split_tokens(tokenizer, text_corpus) > 10 * 1500  # the split is far bigger
    first = train(tiny_llama, text_corpus, tmp_path / "a", 1500)
    (only,) = caches().values()
    assert only.n_tokens == 1500 and only.acts.shape == (1500, 64)
    assert only.header["max_tokens"] == 1500 and only.header["hook"] == "resid_post"
    assert first.summary["n_activation_tokens"] == 1500
    assert first.summary["epochs"] == pytest.approx(1.0)

    # A smaller request reuses the bigger collection's first rows: no new collection.
    smaller = train(tiny_llama, text_corpus, tmp_path / "b", 1000)
    assert len(caches()) == 1 and smaller.summary["n_activation_tokens"] == 1000
    assert smaller.summary["activation_cache"] == str(only.folder)

    # A bigger request is never served by the smaller collection.
    bigger = train(tiny_llama, text_corpus, tmp_path / "c", 2500)
    assert bigger.summary["n_activation_tokens"] == 2500
    sizes = sorted(c.n_tokens for c in caches().values())
    assert sizes == [1500, 2500]
    new = next(c for c in caches().values() if c.n_tokens == 2500)
    np.testing.assert_array_equal(new.acts[:1500], only.acts)  # a prefix: deterministic stream

    # --activation-tokens says otherwise: collect (here: reuse) that many.
    explicit = train(tiny_llama, text_corpus, tmp_path / "d", 1000, activation_tokens=2000)
    assert explicit.summary["n_activation_tokens"] == 2000 and len(caches()) == 2
    assert explicit.summary["epochs"] == pytest.approx(0.5)


def test_prefix_reuse_trains_the_same_sae_as_a_fresh_collection(
    tiny_llama, text_corpus, tmp_path, monkeypatch
):
    train(tiny_llama, text_corpus, tmp_path / "big", 1500)
    reused = train(tiny_llama, text_corpus, tmp_path / "reused", 1000)
    monkeypatch.setenv("FEATGEO_CACHE", str(tmp_path / "fresh_cache"))
    fresh = train(tiny_llama, text_corpus, tmp_path / "fresh", 1000)
    assert len(caches()) == 1 and next(iter(caches().values())).n_tokens == 1000
    for name, param in reused.sae.named_parameters():
        assert torch.equal(param, getattr(fresh.sae, name)), name


def test_resid_pre_training_reads_the_input_of_the_block(
    tiny_llama, text_corpus, model, tokenizer, tmp_path
):
    post = train(tiny_llama, text_corpus, tmp_path / "post1", 600)
    pre = train(tiny_llama, text_corpus, tmp_path / "pre1", 600, hook="resid_pre")
    assert read_json(tmp_path / "pre1" / "cfg.json")["metadata"]["hook_name"] == (
        "blocks.1.hook_resid_pre"
    )
    assert load_sae(tmp_path / "pre1").cfg.hook_name == "blocks.1.hook_resid_pre"
    assert pre.summary["activation_cache"] != post.summary["activation_cache"]  # own key
    cache = ActivationCache.open(pre.summary["activation_cache"])
    assert cache.header["hook"] == "resid_pre" and cache.header["layer"] == 1
    expected = torch.cat(
        [
            b.acts
            for b in iter_activation_batches(
                model, tokenizer, load_corpus(text_corpus), "sae_train", 0,
                context_size=48, max_tokens=600,
            )
        ]
    )  # fmt: skip
    np.testing.assert_array_equal(np.asarray(cache.acts), expected.numpy())  # = resid_post 0


def test_cli_train_hook_option(tiny_llama, text_corpus, tmp_path):
    args = ["sae", "train", "--model", str(tiny_llama), "--corpus", str(text_corpus),
            "--layer", "0", "--d-sae", "64", "--k", "4", "--tokens", "500", "--batch-size", "250",
            "--context-size", "48", "--device", "cpu"]  # fmt: skip
    result = runner.invoke(app, [*args, "--hook", "resid_pre", "--out", str(tmp_path / "pre0")])
    assert result.exit_code == 0, result.output
    assert "1.00 epochs of 500" in result.output
    cfg = read_json(tmp_path / "pre0" / "cfg.json")
    assert cfg["metadata"]["hook_name"] == "blocks.0.hook_resid_pre"
    result = runner.invoke(app, [*args, "--hook", "resid_mid", "--out", str(tmp_path / "bad")])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "--hook must be one of resid_pre, resid_post, got 'resid_mid'" in result.output
    assert not (tmp_path / "bad").exists()


def test_folders_trained_before_the_budget_and_hook_were_recorded_stay_reusable(
    tiny_llama, text_corpus, tmp_path
):
    """Older training.json files have no ``hook`` and ``max_tokens: null`` (the whole split):
    the same collection as today's budget when the split fitted in it."""
    first = train(tiny_llama, text_corpus, tmp_path / "sae", 800)
    summary_file = tmp_path / "sae" / "training.json"
    old = read_json(summary_file)
    acts = old["settings"]["activations"]
    del acts["hook"]
    acts["max_tokens"] = None
    for n_rows, reusable in ((800, True), (700, True), (900, False)):
        summary_file.write_text(json.dumps({**old, "n_activation_tokens": n_rows}))
        if reusable:
            assert train(tiny_llama, text_corpus, tmp_path / "sae", 800).reused
        else:  # the old split was bigger than today's budget: another SAE
            with pytest.raises(FileExistsError, match="not trained with these settings"):
                train(tiny_llama, text_corpus, tmp_path / "sae", 800)
    assert first.summary["settings"]["activations"]["hook"] == "resid_post"
