"""A small TopK SAE trained on the embedded SmolLM2-135M (block 6) learns something real: it
explains most of the held-out variance and recovers most of the CE loss, and its codes in the
activation store equal a direct encode."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from featgeo.corpus import load_corpus
from featgeo.models import load_model, load_tokenizer
from featgeo.sae import load_sae, train_run
from featgeo.sae.cluster_run import build_sae_store
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


def test_store_codes_equal_direct_encode(trained, tmp_path):
    sae = load_sae(trained.out)
    store = build_sae_store(
        sae, split="eval", max_tokens=1000, folder=tmp_path / "store", progress=False
    )
    from featgeo.sae.activations import iter_activation_batches

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
