"""The embedded SmolLM2-135M model (SPEC §0). Slow: loads the real 135M-parameter model."""

import pytest
import torch

from featgeo.models import load_model, load_tokenizer, model_info

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm():
    return load_model("embedded"), load_tokenizer("embedded")


def test_architecture_matches_spec(smollm):
    info = model_info(smollm[0])
    assert info.architecture == "LlamaForCausalLM"
    assert (info.n_layers, info.hidden_size, info.intermediate_size) == (30, 576, 1536)
    assert (info.n_heads, info.n_kv_heads) == (9, 3)
    assert info.tied_embeddings
    assert round(info.n_parameters / 1e6, 1) == 134.5


def test_weights_are_dequantized_q4_with_ties(smollm):
    weight = smollm[0].model.layers[1].mlp.down_proj.weight
    block = weight[0, :32]  # one Q4_1 block: at most 16 distinct values
    assert weight.dtype == torch.float32
    assert block.unique().numel() <= 16


@pytest.mark.parametrize(
    "prompt,expected",
    [
        ("The capital of France is", "Paris"),
        ("The largest planet in the solar system is", "Jupiter"),
    ],
)
def test_greedy_generation_is_fluent_and_factual(smollm, prompt, expected):
    model, tok = smollm
    ids = tok(prompt, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    text = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert expected in text, text
