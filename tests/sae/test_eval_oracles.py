"""``evaluate_sae`` / ``featgeo sae eval`` against an independent recomputation (issue 10).

The oracle (:mod:`eval_oracle`) recomputes every reported number from its definition with
plain torch: the residual stream from Hugging Face's ``output_hidden_states``, the SAE as
explicit matrix formulas, the three cross-entropies with the HF model's own ``labels=`` loss
and a forward hook written here, each window run alone and unpadded. The model is the tiny
random Llama with its LM head fitted (logistic regression on the final hidden states) so that
its loss depends on the residual stream: clean < with SAE < zero-ablated, none of them near
log(vocab). The SAE is built so that every number is in a range where a wrong formula shows:
FVE and CE recovered well inside (0, 1), the token mean a visible part of the activations'
second moment, the dense fraction strictly between 0 and 1 and away from 1/2, some dead latents.
"""

from __future__ import annotations

import pytest
import torch
from eval_oracle import recompute
from typer.testing import CliRunner

from featgeo.cli import app
from featgeo.corpus import load_corpus
from featgeo.files import read_json
from featgeo.models import load_model
from featgeo.sae import SAEConfig, SparseAutoencoder, save_sae
from featgeo.sae.evaluate import evaluate_sae

LAYER, CONTEXT, TOKENS, BATCH = 0, 48, 1200, 8
"""1200 tokens of 48-token windows cross from the first eval document into the second (its
last window is shorter, so a batch is padded) and end on a cut window."""
D_MODEL = 64
NUMBERS = ("fve", "mse", "l0", "dead_fraction", "dense_fraction",
           "ce_clean", "ce_sae", "ce_zero", "ce_recovered")  # fmt: skip


@pytest.fixture(scope="module")
def corpus(text_corpus):
    return load_corpus(text_corpus)


@pytest.fixture(scope="module")
def fitted(tiny_llama, tokenizer, corpus):
    """(model, acts): the tiny Llama with its LM head fitted by 60 Adam steps of softmax
    regression of the next token on the final hidden states of 6 sae_train documents, and the
    output of block LAYER on those documents ([n, 64], position 0 of each window dropped)."""
    model = load_model(tiny_llama)  # our own copy: its LM head is rewritten
    finals, targets, acts = [], [], []
    with torch.no_grad():
        for doc in corpus.split("sae_train")[:6]:
            ids = torch.tensor(tokenizer(doc.text, add_special_tokens=False)["input_ids"])
            for window in ids.split(256):
                out = model(input_ids=window[None], output_hidden_states=True)
                finals.append(out.hidden_states[-1][0, :-1])  # final norm applied
                targets.append(window[1:])
                acts.append(out.hidden_states[LAYER + 1][0, 1:])
    h, y = torch.cat(finals), torch.cat(targets)
    weight = torch.zeros_like(model.lm_head.weight, requires_grad=True)  # [V, 64]
    opt = torch.optim.Adam([weight], lr=0.1, weight_decay=1e-3)
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(h @ weight.T, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        model.lm_head.weight.copy_(weight)
    return model, torch.cat(acts)


def pca_sae(acts: torch.Tensor, architecture: str, k: int | None = None) -> SparseAutoencoder:
    """128 latents: the +- principal directions of ``acts`` as decoder rows, W_enc = W_dec^T,
    b_dec = their mean. With zero biases the ReLU SAE would reconstruct exactly; instead each
    latent's threshold is c standard deviations of its direction, c spread over [0, 3.5] (so
    latents fire on ~50% down to ~1% of tokens), and 4 latents get c = 1000 (dead)."""
    mean = acts.mean(0)
    _, _, vh = torch.linalg.svd(acts - mean, full_matrices=False)  # [64, 64]
    std = ((acts - mean) @ vh.T).std(0)  # [64]
    gen = torch.Generator().manual_seed(0)
    c = torch.linspace(0, 3.5, 2 * D_MODEL)[torch.randperm(2 * D_MODEL, generator=gen)]
    c[:4] = 1000.0
    cut = torch.cat([std, std]) * c  # [128]
    cfg = SAEConfig(d_in=D_MODEL, d_sae=2 * D_MODEL, architecture=architecture, k=k,
                    hook_name=f"blocks.{LAYER}.hook_resid_post")  # fmt: skip
    sae = SparseAutoencoder(cfg)
    with torch.no_grad():
        sae.W_dec.copy_(torch.cat([vh, -vh]))
        sae.W_enc.copy_(sae.W_dec.T)
        sae.b_dec.copy_(mean)
        if architecture == "jumprelu":
            sae.threshold.copy_(cut)
        else:
            sae.b_enc.copy_(-cut)
    return sae


SAES = {"standard": None, "topk": 24, "jumprelu": None}


def check_against_oracle(numbers: dict, oracle) -> None:
    assert numbers["n_tokens"] == oracle.n_tokens == TOKENS
    for name in ("fve", "mse", "ce_clean", "ce_sae", "ce_zero"):
        assert numbers[name] == pytest.approx(getattr(oracle, name), rel=1e-5, abs=0), name
    # a ratio of differences of CE losses: float32 noise in each is amplified a little
    assert numbers["ce_recovered"] == pytest.approx(oracle.ce_recovered, rel=1e-4, abs=0)
    for name in ("l0", "dead_fraction", "dense_fraction"):  # counts: exact
        assert numbers[name] == pytest.approx(getattr(oracle, name), rel=0, abs=1e-12), name


@pytest.mark.parametrize("architecture", list(SAES))
def test_evaluation_equals_the_recomputation(fitted, tokenizer, corpus, architecture):
    model, acts = fitted
    sae = pca_sae(acts, architecture, SAES[architecture])
    oracle = recompute(sae, model, tokenizer, corpus.split("eval"), LAYER,
                       context_size=CONTEXT, max_tokens=TOKENS)  # fmt: skip
    # The fixture is in a range where each wrong formula gives another number:
    assert 0.2 < oracle.fve < 0.9 and oracle.mean_share > 0.01  # FVE without the mean differs
    assert oracle.ce_clean + 0.5 < oracle.ce_sae < oracle.ce_zero - 0.5  # recovered in (0, 1)
    assert 0.1 < oracle.ce_recovered < 0.9 and oracle.ce_clean > 1.0  # (zero - sae) / zero differs
    assert 0.15 < oracle.dense_fraction < 0.45  # inverting the dense fraction changes it
    assert 0 < oracle.dead_fraction < 0.2 and oracle.l0 > 1
    result = evaluate_sae(sae, model, tokenizer, corpus, context_size=CONTEXT,
                          max_tokens=TOKENS, batch_size=BATCH, progress=False)  # fmt: skip
    assert (result.layer, result.hook, result.split) == (LAYER, "blocks.0.hook_resid_post", "eval")
    check_against_oracle({n: getattr(result, n) for n in ("n_tokens", *NUMBERS)}, oracle)


def test_cli_json_equals_the_recomputation(fitted, tokenizer, corpus, text_corpus, tmp_path,
                                           monkeypatch):  # fmt: skip
    """``featgeo sae eval --json`` on the fitted model saved as an HF folder."""
    monkeypatch.setenv("FEATGEO_CACHE", str(tmp_path / "cache"))
    model, acts = fitted
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    sae = pca_sae(acts, "topk", 24)
    save_sae(sae, tmp_path / "sae")
    out = tmp_path / "eval.json"
    args = ["sae", "eval", str(tmp_path / "sae"), "--model", str(tmp_path / "model"),
            "--corpus", str(text_corpus), "--tokens", str(TOKENS), "--context-size", str(CONTEXT),
            "--batch-size", "5", "--device", "cpu", "--json", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    oracle = recompute(sae, model, tokenizer, corpus.split("eval"), LAYER,
                       context_size=CONTEXT, max_tokens=TOKENS)  # fmt: skip
    check_against_oracle(read_json(out), oracle)
