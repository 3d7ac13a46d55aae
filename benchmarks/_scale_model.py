"""Randomly initialised LLaMA-shaped models for benchmarks/prune_scale.py, and their sizes.

The real LLaMA-7B weights cannot be downloaded here, and pruning cost does not depend on the
weights' values, so the benchmark prunes a model of exactly the same shapes with random weights
(perplexities are meaningless). The vocabulary is the embedded SmolLM2 tokenizer's (49,152
tokens), so featgeo's calibration windows from the embedded corpus are valid token ids; this
makes the embedding and lm_head 49,152 rows instead of LLaMA's 32,000.

The model is built in bfloat16 from the start (on the GPU when there is one), never in float32
on the host, and saved with ``save_pretrained`` as bfloat16 safetensors (2 GB shards, as real
7B checkpoints are sharded) with the tokenizer, into a cache folder that later runs reuse.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

BUILD_INFO = "featgeo_scale_build.json"  # written last: its presence marks a finished build
BUILDER_VERSION = 1


@dataclass(frozen=True)
class Shape:
    """The LlamaConfig fields that set the cost of pruning."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-5


SHAPES: dict[str, Shape] = {
    # LLaMA-1/2 7B (LLaMA-2's 4096 positions so that seqlen 2048 and more fit)
    "7b": Shape(4096, 11008, 32, 32, 32, 4096),
    # TinyLlama-1.1B
    "1b": Shape(2048, 5632, 22, 32, 4, 2048),
    # a few MB, for a smoke run (head_dim 16; in_features divisible by 4 for 2:4)
    "tiny": Shape(64, 172, 2, 4, 2, 2048),
}


def default_cache() -> Path:
    from featgeo.cache import cache_dir

    return cache_dir() / "prune_scale"


def model_dir(shape: str, seed: int, cache: Path) -> Path:
    return Path(cache) / f"llama-{shape}-random-seed{seed}-bf16"


def llama_config(shape: str, tokenizer):
    """A ``LlamaConfig`` of ``SHAPES[shape]`` whose vocabulary is ``tokenizer``'s."""
    from transformers import LlamaConfig

    s = SHAPES[shape]
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=s.hidden_size,
        intermediate_size=s.intermediate_size,
        num_hidden_layers=s.num_hidden_layers,
        num_attention_heads=s.num_attention_heads,
        num_key_value_heads=s.num_key_value_heads,
        max_position_embeddings=s.max_position_embeddings,
        rms_norm_eps=s.rms_norm_eps,
        tie_word_embeddings=False,  # as LLaMA and TinyLlama
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        dtype="bfloat16",
    )


def ensure_model(shape: str, seed: int = 0, cache: Path | None = None) -> Path:
    """The folder of the ``shape`` model built with ``seed``; built once, then reused."""
    from featgeo.models.loading import load_tokenizer

    if shape not in SHAPES:
        raise ValueError(f"--shape must be one of {', '.join(SHAPES)}, got '{shape}'")
    folder = model_dir(shape, seed, cache or default_cache())
    info = {
        "builder_version": BUILDER_VERSION,
        "shape": shape,
        "seed": seed,
        **asdict(SHAPES[shape]),
    }
    if (folder / BUILD_INFO).is_file():
        if json.loads((folder / BUILD_INFO).read_text()) == info:
            return folder
        shutil.rmtree(folder)  # an older build of another recipe
    tokenizer = load_tokenizer("embedded")
    config = llama_config(shape, tokenizer)
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    _build_and_save(config, seed, staging)
    tokenizer.save_pretrained(staging)
    (staging / BUILD_INFO).write_text(json.dumps(info, indent=2))
    staging.rename(folder)
    return folder


def _build_and_save(config, seed: int, out: Path) -> None:
    """Initialise in bfloat16 on the GPU when there is one (else the CPU) and save."""
    from transformers import LlamaForCausalLM

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)  # seeds the CUDA generators too
    # _from_config sets bfloat16 as the default dtype while the modules are constructed, and
    # the device context puts every parameter straight on `device`: no float32 copy anywhere.
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
    model.eval().requires_grad_(False)
    model.save_pretrained(out, max_shard_size="2GB")
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()


@dataclass(frozen=True)
class Sizes:
    """Bytes of the parts of a model that bound the memory of layer-by-layer pruning."""

    layer_params: int
    """Parameters of one decoder layer."""
    embedding_params: int
    """vocab x hidden (the input embedding; lm_head has as many)."""
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    max_in_features: int
    """The widest linear input (SparseGPT's largest Hessian is this squared)."""


def model_sizes(folder: Path) -> Sizes:
    """Read ``config.json`` of a LLaMA-shaped model folder."""
    cfg = json.loads((Path(folder) / "config.json").read_text())
    h, i = cfg["hidden_size"], cfg["intermediate_size"]
    head_dim = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * head_dim
    attn = h * h * 2 + h * kv * 2  # q, o: h x h; k, v: h x kv
    mlp = 3 * h * i  # gate, up: i x h; down: h x i
    return Sizes(
        attn + mlp + 2 * h, cfg["vocab_size"] * h, h, i, cfg["num_attention_heads"], max(h, i)
    )


def host_bound(
    sizes: Sizes,
    windows: int,
    seqlen: int,
    batch: int,
    method: str,
    evaluate: bool = True,
    bytes_per: int = 4,
) -> dict[str, int]:
    """The analytical host-memory bound of layer-offloaded pruning in float32 on the CPU.

    One decoder layer's parameters + the calibration hidden states entering and leaving it
    (windows x seqlen x hidden, each) + the embedding; then, as the working set of one
    micro-batch inside the layer, the MLP activations (gate, up, their product: 3 x batch x
    seqlen x intermediate) and the attention scores (batch x heads x seqlen^2), and for
    SparseGPT the Hessian, its inverse and the Cholesky factor of the widest input (3 x in^2);
    with ``evaluate`` (featgeo's perplexity in the same process) lm_head and the logits of one
    window (seqlen x vocab). Returns the terms and their ``total`` in bytes.
    """
    vocab = sizes.embedding_params // sizes.hidden_size
    terms = {
        "one_layer": sizes.layer_params * bytes_per,
        "hidden_in_out": 2 * windows * seqlen * sizes.hidden_size * bytes_per,
        "embedding": sizes.embedding_params * bytes_per,
        "micro_batch": batch
        * seqlen
        * (3 * sizes.intermediate_size + sizes.num_attention_heads * seqlen)
        * bytes_per,
        "method_state": 3 * sizes.max_in_features**2 * bytes_per if method == "sparsegpt" else 0,
        "eval_head": (sizes.embedding_params + seqlen * vocab) * bytes_per if evaluate else 0,
    }
    terms["total"] = sum(terms.values())
    return terms
