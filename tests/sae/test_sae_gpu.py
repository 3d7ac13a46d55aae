"""SAE training, evaluation and the store on CUDA agree with the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from featgeo.activations.collect import iter_activation_batches
from featgeo.activations.store import build_store
from featgeo.corpus import load_corpus
from featgeo.models import load_model
from featgeo.sae import SAEConfig, SparseAutoencoder
from featgeo.sae.evaluate import evaluate_sae
from featgeo.sae.training import SAETrainer, TrainConfig

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("architecture", ["topk", "jumprelu", "standard"])
def test_cuda_training_matches_cpu(architecture):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8192, 32, generator=gen)
    kwargs = {"d_sae": 96, "total_tokens": 8192, "k": 4, "batch_size": 512, "lr": 0.003}
    kwargs["log_every"] = 1
    trainers = {}
    for device in ("cpu", "cuda"):
        cfg = TrainConfig(architecture=architecture, device=device, progress=False, **kwargs)
        trainers[device] = SAETrainer(cfg).fit(x.split(1024))
    cpu, cuda = trainers["cpu"], trainers["cuda"]
    assert cuda.sae_.W_dec.device.type == "cuda" and cuda.n_steps_ == cpu.n_steps_ == 16
    # The first step starts from identical weights; later ones drift by float error only.
    first_cpu, first_cuda = cpu.history_[0], cuda.history_[0]
    assert first_cuda["loss"] == pytest.approx(first_cpu["loss"], rel=1e-4)
    last_cpu, last_cuda = cpu.history_[-1], cuda.history_[-1]
    assert last_cuda["explained_variance"] == pytest.approx(
        last_cpu["explained_variance"], abs=0.02
    )


def test_cuda_evaluation_and_store_match_cpu(tiny_llama, text_corpus, tmp_path):
    cfg = SAEConfig(
        d_in=64, d_sae=128, architecture="topk", k=8, hook_name="blocks.1.hook_resid_post"
    )
    sae = SparseAutoencoder.from_config(cfg, seed=0)
    corpus = load_corpus(text_corpus)
    results, stores = {}, {}
    for device in ("cpu", "cuda"):
        model = load_model(tiny_llama, device=device)
        results[device] = evaluate_sae(
            sae, model, _tokenizer(tiny_llama), corpus, context_size=64, max_tokens=600,
            progress=False,
        )  # fmt: skip
        header = {"model": "m", "layer": 1, "split": "sae_train", "corpus_fingerprint": "c",
                  "encoder_fingerprint": "e", "context_size": 64}  # fmt: skip
        batches = iter_activation_batches(
            model, _tokenizer(tiny_llama), corpus, "sae_train", 1, context_size=64, max_tokens=500
        )
        with torch.no_grad():
            stores[device] = build_store(
                tmp_path / device, batches, sae.to(device).encode, header, progress=False
            )
    for field in ("fve", "l0", "ce_clean", "ce_sae", "ce_zero"):
        assert getattr(results["cuda"], field) == pytest.approx(
            getattr(results["cpu"], field), rel=1e-3, abs=1e-4
        ), field
    cpu, cuda = stores["cpu"].dense_codes(), stores["cuda"].dense_codes()
    assert cpu.shape == cuda.shape == (500, 128)
    # TopK may pick a different latent where two pre-activations tie within float error.
    same = np.isclose(cuda, cpu, atol=1e-4, rtol=1e-4).all(axis=1)
    assert same.mean() > 0.98


def _tokenizer(folder):
    from featgeo.models import load_tokenizer

    return load_tokenizer(folder)
