"""AANet tests run many tiny tensor ops: one intra-op thread avoids oversubscribing small CI
machines (the numbers do not depend on it). ``stage_env`` is the tiny model, corpus and TopK SAE
the Stage 1 and Stage 3 command tests run on."""

import pytest
import torch

DEAD_LATENTS = (0, 1)
"""Latents of ``stage_env``'s SAE that never fire (b_enc = -1e4)."""


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def stage_env(tiny_llama, text_corpus, tmp_path_factory, request):
    """A tiny random Llama, the text corpus and a TopK SAE (d_in 64, d_sae 48, k 6, block 1,
    latents ``DEAD_LATENTS`` dead), with a featgeo cache of the test module's own."""
    from featgeo.sae import SAEConfig, SparseAutoencoder, save_sae

    root = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    cfg = SAEConfig(d_in=64, d_sae=48, architecture="topk", k=6,
                    hook_name="blocks.1.hook_resid_post")  # fmt: skip
    sae = SparseAutoencoder.from_config(cfg, seed=0)
    with torch.no_grad():
        sae.b_enc[list(DEAD_LATENTS)] = -1e4
    folder = save_sae(sae, root / "sae")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEATGEO_CACHE", str(root / "cache"))
        yield {"sae": folder, "model": tiny_llama, "corpus": text_corpus, "root": root,
               "dead": DEAD_LATENTS}  # fmt: skip
