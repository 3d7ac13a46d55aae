"""Hook points: which residual stream an SAE reads, from its hook name, in every place featgeo
runs an SAE on the model (activations, eval, store, cluster, train), with Hugging Face's
``output_hidden_states`` as the independent oracle (``hidden_states[L]`` is the input of block
L; the last entry has the final norm applied)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from featgeo.activations.collect import (
    document_chunks,
    iter_activation_batches,
    residual_activations,
)
from featgeo.activations.hooks import (
    HookNameError,
    HookPoint,
    parse_hook_name,
    resolve_hook,
    sae_hook_point,
)
from featgeo.cli import app
from featgeo.corpus import Corpus, load_corpus
from featgeo.models.components import decoder_layers
from featgeo.sae import SAEConfig, SparseAutoencoder, build_sae_store, evaluate_sae, save_sae

runner = CliRunner()
HIDDEN = 64


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATGEO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def corpus(text_corpus):
    return load_corpus(text_corpus)


def make_sae(hook: str, d_sae: int = 48, seed: int = 0) -> SparseAutoencoder:
    """A standard SAE with the same weights whatever its hook name (seeded init)."""
    cfg = SAEConfig(d_in=HIDDEN, d_sae=d_sae, architecture="standard", hook_name=hook)
    return SparseAutoencoder.from_config(cfg, seed=seed)


# -- parsing -----------------------------------------------------------------------------------
PARSED = [
    ("blocks.3.hook_resid_post", ("resid_post", 3)),
    ("blocks.3.hook_resid_pre", ("resid_pre", 3)),
    ("blocks.0.hook_resid_pre", ("resid_pre", 0)),
    ("layers.3", ("resid_post", 3)),
    ("model.layers.3", ("resid_post", 3)),
    ("transformer.h.3", ("resid_post", 3)),
    ("hook_resid_pre", ("resid_pre", None)),
    ("", (None, None)),
    ("model.norm", (None, None)),
]


@pytest.mark.parametrize("name, expected", PARSED, ids=[p[0] or "empty" for p in PARSED])
def test_parse_hook_name(name, expected):
    assert parse_hook_name(name) == expected


REFUSED = [
    ("blocks.1.hook_resid_mid", "the residual stream between attention and MLP of block 1"),
    ("blocks.1.hook_mlp_out", "the MLP output of block 1"),
    ("blocks.1.hook_attn_out", "the attention output of block 1"),
    ("blocks.1.attn.hook_z", "the attention heads' outputs before W_O of block 1"),
    ("blocks.1.ln2.hook_normalized", "another activation"),
    ("layers.1.mlp", "the MLP of block 1"),
    ("model.layers.1.self_attn", "the attention module of block 1"),
    ("hook_embed", "another activation"),
    ("ln_final.hook_normalized", "another activation"),
]


@pytest.mark.parametrize("name, what", REFUSED, ids=[r[0] for r in REFUSED])
def test_hooks_that_are_not_the_residual_stream_are_refused(name, what):
    with pytest.raises(HookNameError, match=f"SAE hook '{name}' is {what}, not the residual"):
        parse_hook_name(name)
    with pytest.raises(HookNameError, match=name):  # --layer does not make them residual
        resolve_hook(name, layer=1)


def test_resolve_hook_layer_override_and_missing_layer():
    assert resolve_hook("blocks.1.hook_resid_pre") == HookPoint("resid_pre", 1)
    assert resolve_hook("blocks.1.hook_resid_pre", layer=0) == HookPoint("resid_pre", 0)
    assert resolve_hook("layers.1", layer=0) == HookPoint("resid_post", 0)
    assert resolve_hook("model.norm", layer=1) == HookPoint("resid_post", 1)
    assert resolve_hook("hook_resid_pre", layer=1) == HookPoint("resid_pre", 1)
    assert resolve_hook("resid_pre", hook_layer=2) == HookPoint("resid_pre", 2)
    for name in ("model.norm", "", "hook_resid_post"):
        with pytest.raises(HookNameError, match="names no layer; pass --layer"):
            resolve_hook(name)
    with pytest.raises(ValueError, match="--layer -1 is out of range"):
        resolve_hook("blocks.1.hook_resid_pre", layer=-1)


def test_hook_point_blocks_and_description():
    pre0, pre1, post1 = (
        HookPoint("resid_pre", 0),
        HookPoint("resid_pre", 1),
        HookPoint("resid_post", 1),
    )
    assert (pre0.n_blocks, pre1.n_blocks, post1.n_blocks) == (0, 1, 2)
    assert pre1.describe() == "blocks.1.hook_resid_pre: input of block 1 (= output of block 0)"
    assert pre0.describe() == "blocks.0.hook_resid_pre: input of block 0 (= the embeddings)"
    assert post1.describe() == "blocks.1.hook_resid_post: output of block 1"
    with pytest.raises(ValueError, match="--hook must be one of resid_pre, resid_post"):
        HookPoint("resid_mid", 1)  # type: ignore[arg-type]


def test_sae_config_layer_comes_from_any_hook_name_form():
    assert SAEConfig(d_in=4, d_sae=8, hook_name="model.layers.5").layer == 5
    assert SAEConfig(d_in=4, d_sae=8, hook_name="layers.2").layer == 2
    assert sae_hook_point(make_sae("layers.1")) == HookPoint("resid_post", 1)


# -- activations against HF's hidden_states ----------------------------------------------------
def _blocks_run(model, fn):
    ran = []
    hooks = [
        block.register_forward_hook(lambda *_, i=i: ran.append(i))
        for i, block in enumerate(decoder_layers(model))
    ]
    try:
        out = fn()
    finally:
        for h in hooks:
            h.remove()
    return out, ran


@pytest.mark.parametrize("layer", [0, 1])
def test_resid_pre_is_the_input_of_the_block(model, layer):
    ids = torch.randint(0, model.config.vocab_size, (3, 19))
    pre, ran = _blocks_run(model, lambda: residual_activations(model, ids, layer, hook="resid_pre"))
    assert ran == list(range(layer))  # exactly L blocks ran, none after
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True, use_cache=False).hidden_states
    torch.testing.assert_close(pre, hidden[layer], atol=0, rtol=0)
    if layer == 0:  # the embeddings, before block 0
        torch.testing.assert_close(pre, model.model.embed_tokens(ids), atol=0, rtol=0)
    else:  # bit-identical to the output of the block before
        post = residual_activations(model, ids, layer - 1, hook="resid_post")
        assert torch.equal(pre, post)
        assert not torch.allclose(pre, residual_activations(model, ids, layer))


def test_resid_pre_batches_equal_resid_post_of_the_block_before(model, tokenizer, corpus):
    small = Corpus("small", {"sae_train": corpus.split("sae_train")[:3]})
    kwargs = {"context_size": 40, "batch_size": 3, "max_tokens": 500}
    pre = list(iter_activation_batches(model, tokenizer, small, "sae_train", 1, hook="resid_pre",
                                       **kwargs))  # fmt: skip
    post = list(iter_activation_batches(model, tokenizer, small, "sae_train", 0, **kwargs))
    assert torch.equal(torch.cat([b.acts for b in pre]), torch.cat([b.acts for b in post]))
    for name in ("token_ids", "doc_index", "chunk_index", "position"):
        np.testing.assert_array_equal(
            np.concatenate([getattr(b, name) for b in pre]),
            np.concatenate([getattr(b, name) for b in post]),
        )
    with pytest.raises(ValueError, match="--hook must be one of"):
        iter_activation_batches(model, tokenizer, small, "sae_train", 1, hook="mlp_out")


# -- evaluation splices where the SAE reads ----------------------------------------------------
def _eval(sae, model, tokenizer, corpus, **kwargs):
    return evaluate_sae(sae, model, tokenizer, corpus, context_size=48, max_tokens=400,
                        progress=False, **kwargs)  # fmt: skip


def _numbers(result):
    return {k: getattr(result, k) for k in ("n_tokens", "fve", "mse", "l0", "ce_clean", "ce_sae",
                                            "ce_zero", "dead_fraction")}  # fmt: skip


def test_eval_of_resid_pre_1_equals_resid_post_0(model, tokenizer, corpus):
    pre1 = _eval(make_sae("blocks.1.hook_resid_pre"), model, tokenizer, corpus)
    post0 = _eval(make_sae("blocks.0.hook_resid_post"), model, tokenizer, corpus)
    post1 = _eval(make_sae("blocks.1.hook_resid_post"), model, tokenizer, corpus)
    assert (pre1.hook, pre1.layer) == ("blocks.1.hook_resid_pre", 1)
    assert _numbers(pre1) == pytest.approx(_numbers(post0), rel=1e-6, abs=1e-7)
    assert pre1.fve != pytest.approx(post1.fve, abs=1e-3)  # post1 reads another stream
    assert pre1.ce_sae != pytest.approx(post1.ce_sae, abs=1e-4)
    # --layer replaces the number and keeps the kind: pre0 --layer 1 reads as pre1.
    moved = _eval(make_sae("blocks.0.hook_resid_pre"), model, tokenizer, corpus, layer=1)
    assert _numbers(moved) == pytest.approx(_numbers(pre1), rel=1e-6, abs=1e-7)
    assert moved.hook == "blocks.1.hook_resid_pre"


def test_eval_of_resid_pre_0_zeroes_the_embeddings(model, tokenizer, corpus):
    """ce_zero of a resid_pre-0 SAE is the loss with the embeddings of positions 1.. zeroed,
    computed here directly with ``inputs_embeds``."""
    small = Corpus("one", {"eval": corpus.split("eval")[:1]})
    result = evaluate_sae(make_sae("blocks.0.hook_resid_pre"), model, tokenizer, small,
                          context_size=24, max_tokens=60, batch_size=1, progress=False)  # fmt: skip
    total, count, left = 0.0, 0, 60
    for chunk in document_chunks(small, "eval", tokenizer, 24):
        ids = chunk.token_ids[: left + 1][None]  # [1, s]
        left -= ids.shape[1] - 1
        with torch.no_grad():
            emb = model.model.embed_tokens(ids).clone()
            emb[:, 1:] = 0
            logits = model(inputs_embeds=emb, use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits[0, 1:-1], ids[0, 2:], reduction="sum")
        total, count = total + float(loss), count + ids.shape[1] - 2
        if left == 0:
            break
    assert result.ce_zero == pytest.approx(total / count, rel=1e-5)


# -- store, cluster and the activation-cache key -----------------------------------------------
def test_store_of_resid_pre_1_holds_the_codes_of_resid_post_0(tiny_llama, text_corpus):
    kwargs = {"model": str(tiny_llama), "corpus": str(text_corpus), "context_size": 48,
              "max_tokens": 300, "device": "cpu", "progress": False}  # fmt: skip
    pre1 = build_sae_store(make_sae("blocks.1.hook_resid_pre"), **kwargs)
    post0 = build_sae_store(make_sae("blocks.0.hook_resid_post"), **kwargs)
    post1 = build_sae_store(make_sae("blocks.1.hook_resid_post"), **kwargs)
    assert pre1.header["hook"] == "resid_pre" and post0.header["hook"] == "resid_post"
    np.testing.assert_array_equal(pre1.dense_codes(), post0.dense_codes())
    assert not np.array_equal(pre1.dense_codes(), post1.dense_codes())
    # --layer overrides consistently: a pre0 SAE moved to block 1 stores pre1's codes.
    moved = build_sae_store(make_sae("blocks.0.hook_resid_pre"), layer=1, **kwargs)
    assert moved.header["layer"] == 1 and moved.header["hook"] == "resid_pre"
    np.testing.assert_array_equal(moved.dense_codes(), pre1.dense_codes())


def test_store_key_separates_hook_kinds():
    from featgeo.activations.store import store_key

    args = ("m", "e", "c", "sae_train", 1, 64, 100)
    assert store_key(*args) == store_key(*args, hook="resid_post")
    assert store_key(*args, hook="resid_pre") != store_key(*args, hook="resid_post")


# -- CLI: load shows the interpreted hook; refused hooks are one line, exit 2, nothing written --
def _write(tmp_path, name, hook):
    return save_sae(make_sae(hook), tmp_path / name)


@pytest.mark.parametrize(
    "hook, shown",
    [
        ("blocks.1.hook_resid_pre", "blocks.1.hook_resid_pre: input of block 1 (= output of block"),
        ("blocks.0.hook_resid_pre", "blocks.0.hook_resid_pre: input of block 0 (= the embeddings)"),
        ("model.layers.1", "model.layers.1 = blocks.1.hook_resid_post: output of block 1"),
        ("model.norm", "model.norm: names no layer (sae eval, store and cluster need --layer"),
    ],
)
def test_load_shows_the_interpreted_hook(hook, shown, tmp_path):
    result = runner.invoke(app, ["sae", "load", str(_write(tmp_path, "sae", hook))])
    assert result.exit_code == 0, result.output
    assert shown in " ".join(result.output.split())


def _run(command, folder, tiny_llama, text_corpus, tmp_path, *extra):
    more = (
        ["--out", str(tmp_path / "clusters"), "--n-clusters", "4"] if command == "cluster" else []
    )
    args = [] if command == "load" else [
        "--model", str(tiny_llama), "--corpus", str(text_corpus), "--context-size", "48",
        "--device", "cpu", *more,
        *(["--tokens", "200"] if command == "eval" else ["--store-tokens", "200"]),
    ]  # fmt: skip
    return runner.invoke(app, ["sae", command, str(folder), *args, *extra])


def _nothing_written(tmp_path) -> bool:
    cache = tmp_path / "cache"
    return not (tmp_path / "clusters").exists() and (
        not cache.exists() or not any(p.is_file() for p in cache.rglob("*"))
    )


@pytest.mark.parametrize("command", ["load", "eval", "store", "cluster"])
@pytest.mark.parametrize("hook", ["blocks.1.hook_resid_mid", "blocks.1.hook_mlp_out",
                                  "blocks.1.attn.hook_z"])  # fmt: skip
def test_refused_hooks_are_one_line_in_every_command(command, hook, tiny_llama, text_corpus,
                                                     tmp_path):  # fmt: skip
    folder = _write(tmp_path, "sae", hook)
    for extra in ([], ["--layer", "1"]) if command != "load" else ([],):
        result = _run(command, folder, tiny_llama, text_corpus, tmp_path, *extra)
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and f"SAE hook '{hook}' is" in lines[0], result.output
        assert _nothing_written(tmp_path)


@pytest.mark.parametrize("command", ["eval", "store", "cluster"])
def test_a_hook_without_a_layer_needs_layer(command, tiny_llama, text_corpus, tmp_path):
    folder = _write(tmp_path, "sae", "model.norm")
    result = _run(command, folder, tiny_llama, text_corpus, tmp_path)
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "SAE hook 'model.norm' names no layer; pass --layer" in result.output
    assert _nothing_written(tmp_path)
    result = _run(command, folder, tiny_llama, text_corpus, tmp_path, "--layer", "1")
    assert result.exit_code == 0, result.output


def test_eval_cli_pre1_equals_post0_and_hf_names_equal_post1(tiny_llama, text_corpus, tmp_path):
    values = {}
    for name, hook in [("pre1", "blocks.1.hook_resid_pre"), ("post0", "blocks.0.hook_resid_post"),
                       ("post1", "blocks.1.hook_resid_post"), ("hf1", "model.layers.1"),
                       ("sparsify1", "layers.1")]:  # fmt: skip
        out = tmp_path / f"{name}.json"
        result = _run("eval", _write(tmp_path, name, hook), tiny_llama, text_corpus, tmp_path,
                      "--json", str(out))  # fmt: skip
        assert result.exit_code == 0, result.output
        data = json.loads(out.read_text())
        values[name] = (data["fve"], data["ce_sae"], data["ce_zero"], data["hook"])
    assert values["pre1"][:3] == pytest.approx(values["post0"][:3], rel=1e-6)
    assert values["pre1"][3] == "blocks.1.hook_resid_pre"
    for name in ("hf1", "sparsify1"):
        assert values[name] == values["post1"]
    assert values["pre1"][0] != pytest.approx(values["post1"][0], abs=1e-3)
