"""Perplexity against the Hugging Face model's own loss (issue 10: an independent oracle).

``model(ids, labels=ids).loss`` is the mean next-token cross-entropy of one window over its
``seqlen - 1`` predicted positions, computed by transformers, not by featgeo. Perplexity over
several windows of equal length is exp of the token-weighted mean of those losses.
"""

from __future__ import annotations

import math

import pytest
import torch

from featgeo.corpus import load_corpus
from featgeo.models.evaluate import evaluate_perplexity
from featgeo.models.perplexity import perplexity


@pytest.fixture(scope="module")
def peaked_llama(tiny_llama):
    """The tiny Llama with its LM head scaled up: a random model predicts an almost uniform
    distribution, so every window would have nearly the same loss and exp(mean) would be close
    to mean(exp); sharper logits make the windows' losses differ by a lot."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(tiny_llama).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(25.0)
    return model


def hf_perplexity(model, windows: torch.Tensor) -> tuple[float, list[float]]:
    """exp(sum over windows of loss * predicted tokens / all predicted tokens), one window at a
    time through transformers' own loss; also returns the per-window losses."""
    losses = []
    with torch.no_grad():
        for ids in windows:
            ids = ids.unsqueeze(0)  # [1, seqlen]
            losses.append(float(model(input_ids=ids, labels=ids).loss))
    predicted = windows.shape[1] - 1  # the first token of a window is never predicted
    total_nll = sum(loss * predicted for loss in losses)
    return math.exp(total_nll / (predicted * windows.shape[0])), losses


def corpus_windows(tokenizer, text_corpus, split: str, seqlen: int, n: int) -> torch.Tensor:
    """Consecutive non-overlapping windows of the split's documents joined by a blank line."""
    text = "\n\n".join(doc.text for doc in load_corpus(text_corpus).split(split))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) >= n * seqlen
    return torch.tensor(ids[: n * seqlen], dtype=torch.long).reshape(n, seqlen)


@pytest.mark.parametrize("batch_size", [1, 2, 5], ids=lambda b: f"batch{b}")
def test_perplexity_is_exp_of_the_token_mean_of_hf_losses(
    peaked_llama, tokenizer, text_corpus, batch_size
):
    windows = corpus_windows(tokenizer, text_corpus, "calibration", seqlen=48, n=5)
    expected, losses = hf_perplexity(peaked_llama, windows)
    # The windows really differ, so exp(mean) and mean(exp) (or 2**mean) are told apart.
    assert max(losses) - min(losses) > 0.5
    assert abs(sum(math.exp(v) for v in losses) / len(losses) - expected) > 1e-3 * expected
    got = perplexity(peaked_llama, windows, batch_size=batch_size)
    assert got == pytest.approx(expected, rel=1e-5)


def test_single_window_is_exp_of_hf_loss(peaked_llama, tokenizer, text_corpus):
    windows = corpus_windows(tokenizer, text_corpus, "eval", seqlen=33, n=1)
    with torch.no_grad():
        loss = float(peaked_llama(input_ids=windows, labels=windows).loss)
    assert perplexity(peaked_llama, windows) == pytest.approx(math.exp(loss), rel=1e-5)


def test_ppl_command_path_matches_hf_loss(tiny_llama, tokenizer, text_corpus):
    """``featgeo ppl`` (``evaluate_perplexity``): the eval split cut into consecutive windows,
    each scored by the HF model's own loss."""
    from transformers import LlamaForCausalLM

    result = evaluate_perplexity(
        str(tiny_llama), str(text_corpus), split="eval", seqlen=40, max_windows=3, device="cpu"
    )
    model = LlamaForCausalLM.from_pretrained(tiny_llama).eval()
    windows = corpus_windows(tokenizer, text_corpus, "eval", seqlen=40, n=3)
    expected, _ = hf_perplexity(model, windows)
    assert (result.windows, result.tokens) == (3, 120)
    assert result.perplexity == pytest.approx(expected, rel=1e-5)
