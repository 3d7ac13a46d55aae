"""A small TopK SAE trained on the embedded SmolLM2-135M (block 6) learns something real: it
explains most of the held-out variance and recovers most of the CE loss, every number of its
evaluation equals an independent recomputation (:mod:`eval_oracle`), and its codes in the
activation store equal a direct encode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from eval_oracle import recompute

from featgeo.activations.store import build_sae_store
from featgeo.corpus import load_corpus
from featgeo.models import load_model, load_tokenizer
from featgeo.sae import load_sae, train_run
from featgeo.sae.evaluate import evaluate_sae
from featgeo.sae.training import TrainConfig

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("embedded_sae")
    with pytest.MonkeyPatch.context() as mp:  # keep the activations out of the user's cache
        mp.setattr(train_run, "default_cache_dir", lambda header: root / "activations")
        config = TrainConfig(d_sae=1152, total_tokens=96_000, k=32, batch_size=1024)
        return train_run.train_sae(
            root / "sae", config, layer=6, activation_tokens=48_000, device="cpu", progress=False
        )


def test_small_sae_on_the_embedded_model(trained):
    sae = load_sae(trained.out)
    assert sae.cfg.hook_name == "blocks.6.hook_resid_post" and sae.cfg.model_name == "embedded"
    result = evaluate_sae(
        sae,
        load_model("embedded"),
        load_tokenizer("embedded"),
        load_corpus("embedded"),
        max_tokens=2048,
        progress=False,
    )
    assert result.n_tokens == 2048 and result.l0 == pytest.approx(32, abs=0.5)
    assert result.fve > 0.6
    assert result.ce_clean < result.ce_sae < result.ce_zero
    assert result.ce_recovered > 0.6
    assert result.dead_fraction < 0.5


def test_evaluation_equals_an_independent_recomputation(trained):
    """On 300 tokens (a full 256-token window and a cut one, batched and padded by featgeo, run
    alone by the oracle): HF hidden states, explicit TopK formulas, HF's own loss."""
    sae = load_sae(trained.out)
    model, tokenizer = load_model("embedded"), load_tokenizer("embedded")
    corpus = load_corpus("embedded")
    result = evaluate_sae(sae, model, tokenizer, corpus, max_tokens=300, progress=False)
    oracle = recompute(sae, model, tokenizer, corpus.split("eval"), 6, context_size=256,
                       max_tokens=300)  # fmt: skip
    assert result.n_tokens == oracle.n_tokens == 300
    assert oracle.mean_share > 0.01 and 0 < oracle.ce_recovered < 1
    for name in ("fve", "mse", "ce_clean", "ce_sae", "ce_zero"):
        assert getattr(result, name) == pytest.approx(getattr(oracle, name), rel=1e-4), name
    assert result.ce_recovered == pytest.approx(oracle.ce_recovered, rel=1e-3)
    # padded vs unpadded float32 may flip a near-tie of the top-k on a token or two
    assert result.l0 == pytest.approx(oracle.l0, abs=2 / 300)
    for name in ("dead_fraction", "dense_fraction"):
        assert getattr(result, name) == pytest.approx(getattr(oracle, name), abs=2 / 1152), name


def test_store_codes_equal_direct_encode(trained, tmp_path):
    sae = load_sae(trained.out)
    store = build_sae_store(
        sae, split="eval", max_tokens=1000, folder=tmp_path / "store", progress=False
    )
    from featgeo.activations.collect import iter_activation_batches

    batches = iter_activation_batches(
        load_model("embedded"),
        load_tokenizer("embedded"),
        load_corpus("embedded"),
        "eval",
        6,
        max_tokens=1000,
    )
    acts = torch.cat([b.acts for b in batches])
    with torch.no_grad():
        direct = sae.encode(acts).numpy()
    np.testing.assert_array_equal(store.dense_codes(), direct)
