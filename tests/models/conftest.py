"""Tiny decoders laid out unlike Llama (Phi-3's fused projections, GPT-NeoX, GPT-2's Conv1D),
saved as real Hugging Face folders with the tiny Llama's tokenizer. Random weights, ~100k
parameters each."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch


def build_tiny_layout(folder: Path, arch: str, tokenizer_from: Path, **overrides) -> Path:
    """Save a randomly initialised ``arch`` (phi3, gpt_neox, gpt2) causal LM to ``folder``."""
    import transformers as T

    folder.mkdir(parents=True, exist_ok=True)
    for path in tokenizer_from.iterdir():  # the tokenizer files of the tiny Llama
        if "token" in path.name or path.name == "special_tokens_map.json":
            shutil.copy(path, folder / path.name)
    vocab = T.AutoTokenizer.from_pretrained(folder).__len__()
    settings = dict(hidden=64, inter=128, layers=2, heads=4, kv_heads=2)
    settings.update(overrides)
    hidden, inter, layers = settings["hidden"], settings["inter"], settings["layers"]
    heads, kv_heads = settings["heads"], settings["kv_heads"]
    torch.manual_seed(0)
    if arch == "phi3":
        config = T.Phi3Config(
            vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
            num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
            max_position_embeddings=512, pad_token_id=0, bos_token_id=0, eos_token_id=0,
        )  # fmt: skip
        model = T.Phi3ForCausalLM(config)
    elif arch == "gpt_neox":
        config = T.GPTNeoXConfig(
            vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
            num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=512,
            bos_token_id=0, eos_token_id=0,
        )  # fmt: skip
        model = T.GPTNeoXForCausalLM(config)
    elif arch == "gpt2":
        config = T.GPT2Config(
            vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=heads, n_positions=512,
            bos_token_id=0, eos_token_id=0,
        )  # fmt: skip
        model = T.GPT2LMHeadModel(config)
    else:
        raise ValueError(f"unknown arch {arch}")
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_layouts(tmp_path_factory, tiny_llama) -> dict[str, Path]:
    """arch -> model folder, for llama, phi3, gpt_neox and gpt2."""
    root = tmp_path_factory.mktemp("layouts")
    folders = {"llama": tiny_llama}
    for arch in ("phi3", "gpt_neox", "gpt2"):
        folders[arch] = build_tiny_layout(root / arch, arch, tiny_llama)
    return folders


@pytest.fixture(scope="session")
def layout_builder():
    """:func:`build_tiny_layout`, for tests that need a layout with other sizes."""
    return build_tiny_layout
