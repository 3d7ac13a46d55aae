"""Tests written for the mutants of `make mutate MODULES=models.perplexity` (docs/testing.md).

The CPU tests in test_perplexity.py kill every mutant of the formula. Two survivors drop the
move of each batch to the model's device (``batch.to(None)``, ``device = None``): on a CPU
model that move is a no-op, so only a model on CUDA can tell. This test runs where a GPU is
(the ``gpu`` marker; skipped without CUDA) and compares with Hugging Face's own loss there.
"""

from __future__ import annotations

import math

import pytest
import torch

from featgeo.models.perplexity import perplexity

pytestmark = pytest.mark.gpu


def test_perplexity_of_a_cuda_model_on_cpu_windows(tiny_llama):
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(tiny_llama).eval().to("cuda")
    windows = torch.randint(
        0, model.config.vocab_size, (3, 32), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        losses = [
            float(model(input_ids=w[None].cuda(), labels=w[None].cuda()).loss) for w in windows
        ]
    expected = math.exp(sum(losses) / len(losses))  # equal-length windows: a plain mean
    assert perplexity(model, windows, batch_size=2) == pytest.approx(expected, rel=1e-4)
