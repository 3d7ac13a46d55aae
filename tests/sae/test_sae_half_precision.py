"""Half precision everywhere: bfloat16 / float16 SAEs (cfg dtype ``bfloat16``,
``torch.bfloat16``, ``float16``, and cfg ``float32`` holding half tensors) through load, eval,
store and cluster (library and CLI), and models saved in bfloat16 / float16 through ``sae eval``,
``sae train``, ``prune`` and ``ppl``.

The reference for a half SAE is the float32 SAE holding the same, rounded, weights: featgeo
computes in float32, so every number must equal the reference's (codes and cluster labels
exactly). Fingerprints hash the stored bytes through torch (numpy has no bfloat16).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from featgeo.cli import app
from featgeo.corpus import load_corpus
from featgeo.sae import (
    SAEConfig,
    SparseAutoencoder,
    build_sae_store,
    cluster_sae,
    evaluate_sae,
    load_sae,
    save_sae,
)
from featgeo.sae.saelens_format import sae_fingerprint, tensor_bytes

runner = CliRunner()
HIDDEN, D_SAE = 64, 48
HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATGEO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def float32_sae() -> SparseAutoencoder:
    """A TopK SAE with random (seeded) weights and biases, in float32."""
    cfg = SAEConfig(d_in=HIDDEN, d_sae=D_SAE, architecture="topk", k=6, hook_name=HOOK)
    sae = SparseAutoencoder.from_config(cfg, seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        sae.W_enc.add_(0.3 * torch.randn(sae.W_enc.shape, generator=gen))
        sae.b_enc.copy_(0.1 * torch.randn(D_SAE, generator=gen))
        sae.b_dec.copy_(0.1 * torch.randn(HIDDEN, generator=gen))
    return sae


VARIANTS = {
    # name: (cfg dtype written to cfg.json, tensor dtype in the file, dtype after loading)
    "bf16": ("bfloat16", torch.bfloat16, torch.bfloat16),
    "torch.bf16": ("torch.bfloat16", torch.bfloat16, torch.bfloat16),
    "cfg-f32-tensors-bf16": ("float32", torch.bfloat16, torch.float32),
    "fp16": ("float16", torch.float16, torch.float16),
}


def write_half_sae(folder, variant: str):
    """Write the SAE of ``variant`` with featgeo's SAE class and writer, then cast; returns
    (folder, float32 reference SAE holding the same rounded weights)."""
    cfg_dtype, tensor_dtype, _ = VARIANTS[variant]
    sae = float32_sae()
    stored = cfg_dtype.removeprefix("torch.")
    half = SparseAutoencoder(replace(sae.cfg, dtype=stored))
    half.load_state_dict(sae.state_dict())  # cast to the stored dtype
    save_sae(half, folder)
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["dtype"] = cfg_dtype
    (folder / "cfg.json").write_text(json.dumps(cfg))
    weights = {
        k: v.to(tensor_dtype).contiguous()
        for k, v in load_file(folder / "sae_weights.safetensors").items()
    }
    save_file(weights, str(folder / "sae_weights.safetensors"))
    reference = SparseAutoencoder(sae.cfg)
    reference.load_state_dict({k: v.float() for k, v in weights.items()})
    return folder, reference


@pytest.fixture(params=list(VARIANTS))
def half(request, tmp_path):
    folder, reference = write_half_sae(tmp_path / request.param, request.param)
    return request.param, folder, reference


def test_tensor_bytes_never_go_through_numpy_for_half_types():
    x = torch.randn(3, 5)
    assert tensor_bytes(x) == x.numpy().tobytes()  # float32 fingerprints are unchanged
    b = x.to(torch.bfloat16)
    assert tensor_bytes(b) == b.view(torch.int16).numpy().tobytes()
    assert tensor_bytes(b.T) == b.T.contiguous().view(torch.int16).numpy().tobytes()
    assert tensor_bytes(b) != tensor_bytes(x.to(torch.float16))


def test_load_keeps_the_stored_dtype_and_values(half):
    variant, folder, reference = half
    sae = load_sae(folder)
    expected = VARIANTS[variant][2]
    assert all(p.dtype == expected for p in sae.parameters())
    assert sae.cfg.dtype == ("float32" if expected == torch.float32 else str(expected)[6:])
    for (name, ours), theirs in zip(sae.named_parameters(), reference.parameters(), strict=True):
        assert torch.equal(ours.float(), theirs), name
    fingerprint = sae_fingerprint(sae)
    assert fingerprint == sae_fingerprint(load_sae(folder))  # stable
    # cfg float32 + half tensors loads as float32: the very SAE the reference is.
    same = expected == torch.float32
    assert (fingerprint == sae_fingerprint(reference)) is same


def test_eval_store_cluster_equal_the_float32_reference(half, tiny_llama, text_corpus, tmp_path):
    variant, folder, reference = half
    sae = load_sae(folder)
    stored_dtype = sae.W_enc.dtype
    from featgeo.models import load_model, load_tokenizer

    model, tokenizer = load_model(tiny_llama), load_tokenizer(tiny_llama)
    corpus = load_corpus(text_corpus)
    ours, theirs = (
        evaluate_sae(s, model, tokenizer, corpus, context_size=48, max_tokens=300, progress=False)
        for s in (sae, reference)
    )
    for field in ("n_tokens", "fve", "mse", "l0", "ce_clean", "ce_sae", "ce_zero", "dead_fraction"):
        assert getattr(ours, field) == pytest.approx(getattr(theirs, field), rel=1e-6), field
    assert sae.W_enc.dtype == stored_dtype  # evaluation computed on a float32 copy

    kwargs = {"model": str(tiny_llama), "corpus": str(text_corpus), "context_size": 48,
              "max_tokens": 300, "device": "cpu", "progress": False}  # fmt: skip
    store, ref_store = build_sae_store(sae, **kwargs), build_sae_store(reference, **kwargs)
    assert sae.W_enc.dtype == stored_dtype
    assert store.values.dtype == np.float32 and store.nnz > 0
    np.testing.assert_array_equal(store.dense_codes(), ref_store.dense_codes())

    clusters = cluster_sae(sae, store, [4], tmp_path / "ours", seed=0)[0]
    ref_clusters = cluster_sae(reference, ref_store, [4], tmp_path / "ref", seed=0)[0]
    np.testing.assert_array_equal(clusters.labels, ref_clusters.labels)
    assert clusters.metrics == ref_clusters.metrics


def _cli(*args):
    return runner.invoke(app, ["sae", *[str(a) for a in args]])


def test_every_sae_command_takes_half_saes(half, tiny_llama, text_corpus, tmp_path):
    variant, folder, reference = half
    ref_folder = save_sae(reference, tmp_path / "reference")
    common = [
        "--model",
        tiny_llama,
        "--corpus",
        text_corpus,
        "--context-size",
        48,
        "--device",
        "cpu",
    ]
    result = _cli("load", folder)
    assert result.exit_code == 0 and VARIANTS[variant][0].removeprefix("torch.") in result.output
    evals = {}
    for tag, path in (("ours", folder), ("ref", ref_folder)):
        out = tmp_path / f"{tag}.json"
        result = _cli("eval", path, *common, "--tokens", 256, "--json", out)
        assert result.exit_code == 0, result.output
        evals[tag] = {
            k: v for k, v in json.loads(out.read_text()).items() if k not in ("sae", "seconds")
        }
    numeric = {k for k, v in evals["ref"].items() if isinstance(v, float)}
    assert {k: evals["ours"][k] for k in numeric} == pytest.approx(
        {k: evals["ref"][k] for k in numeric}, rel=1e-6
    )
    assert evals["ours"]["hook"] == evals["ref"]["hook"] == HOOK
    result = _cli("store", folder, *common, "--store-tokens", 256)
    assert result.exit_code == 0 and "activation store" in result.output, result.output
    result = _cli("cluster", folder, *common, "--store-tokens", 256, "--n-clusters", "4,6",
                  "--out", tmp_path / "clusters")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (tmp_path / "clusters" / "clusters_6" / "cluster_metrics.csv").is_file()


# -- models saved in half precision ------------------------------------------------------------
@pytest.fixture(scope="module")
def half_models(tiny_llama, tmp_path_factory):
    """The tiny Llama saved in bfloat16 and float16, and for each a float32 folder holding the
    same rounded weights (the reference)."""
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("half_models")
    folders = {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
        for tag, saved in ((name, dtype), (f"{name}-as-f32", torch.float32)):
            folder = root / tag
            model.to(dtype).to(saved).save_pretrained(folder)
            for tok in tiny_llama.glob("*token*"):
                shutil.copy(tok, folder / tok.name)
            folders[tag] = folder
        assert json.loads((folders[name] / "config.json").read_text())["dtype"] == str(dtype)[6:]
    return folders


@pytest.mark.parametrize("name", ["bf16", "fp16"])
def test_sae_eval_and_train_on_a_half_model(name, half_models, text_corpus, tmp_path):
    sae_folder = save_sae(float32_sae(), tmp_path / "sae")
    numbers = {}
    for tag in (name, f"{name}-as-f32"):
        out = tmp_path / f"{tag}.json"
        result = _cli(
            "eval",
            sae_folder,
            "--model",
            half_models[tag],
            "--corpus",
            text_corpus,
            "--context-size",
            48,
            "--tokens",
            256,
            "--device",
            "cpu",
            "--json",
            out,
        )
        assert result.exit_code == 0, result.output
        numbers[tag] = {
            k: v for k, v in json.loads(out.read_text()).items() if k not in ("model", "seconds")
        }
    assert numbers[name] == numbers[f"{name}-as-f32"]  # loaded in float32: the same model

    result = _cli(
        "train",
        "--model",
        half_models[name],
        "--corpus",
        text_corpus,
        "--layer",
        0,
        "--d-sae",
        64,
        "--k",
        4,
        "--tokens",
        1024,
        "--batch-size",
        256,
        "--context-size",
        48,
        "--device",
        "cpu",
        "--out",
        tmp_path / "trained",
    )
    assert result.exit_code == 0, result.output
    trained = load_sae(tmp_path / "trained")
    assert trained.W_dec.dtype == torch.float32 and torch.isfinite(trained.W_dec).all()


def test_prune_and_ppl_on_a_bf16_model(half_models, text_corpus, tmp_path):
    exports = {}
    for tag in ("bf16", "bf16-as-f32"):
        out = tmp_path / tag
        result = runner.invoke(
            app,
            ["prune", "--model", str(half_models[tag]), "--corpus", str(text_corpus),
             "--method", "magnitude,wanda", "--calib-samples", "2", "--seqlen", "32",
             "--eval-windows", "2", "--device", "cpu", "--out", str(out)],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        exports[tag] = {
            p.relative_to(out): torch.load(p, weights_only=True) for p in sorted(out.rglob("*.pt"))
        }
        ppl = runner.invoke(app, ["ppl", "--model", str(half_models[tag]), "--corpus",
                                  str(text_corpus), "--seqlen", "32", "--eval-windows", "2",
                                  "--device", "cpu"])  # fmt: skip
        assert ppl.exit_code == 0, ppl.output
        # "perplexity 123.456  (2 windows x 32 tokens ..., 0.2 s)": the number, not the time
        exports[tag]["ppl"] = ppl.output.split("(")[0].strip()
    ours, theirs = exports["bf16"], exports["bf16-as-f32"]
    assert ours.keys() == theirs.keys() and len(ours) > 2
    for key in ours:
        if key == "ppl":
            assert ours[key].startswith("perplexity ") and ours[key] == theirs[key]
        else:
            assert ours[key].dtype == torch.float32 and torch.equal(ours[key], theirs[key]), key


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_trainer_on_half_activations_equals_float32_of_the_same_values(dtype):
    from featgeo.sae import SAETrainer, TrainConfig

    x = torch.randn(1024, 32, generator=torch.Generator().manual_seed(0)).to(dtype)
    config = TrainConfig(d_sae=64, total_tokens=1024, k=4, batch_size=256, progress=False)
    half = SAETrainer(config).fit([x])
    full = SAETrainer(config).fit([x.float()])
    assert half.sae_.W_dec.dtype == torch.float32
    for name, param in half.sae_.named_parameters():
        assert torch.equal(param, getattr(full.sae_, name)), name
