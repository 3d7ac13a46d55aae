"""`featgeo sae train | load | eval | store | cluster` on a tiny random Llama: outputs, reuse,
resume, and every bad input as one line with exit code 2 and nothing half-written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from featgeo.cli import app
from featgeo.files import read_json
from featgeo.sae import SAEConfig, SparseAutoencoder, load_sae, save_sae

runner = CliRunner()
HIDDEN = 64  # the tiny Llama's hidden size


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATGEO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def train_args(tiny_llama, text_corpus, out, **overrides):
    args = {
        "--model": str(tiny_llama),
        "--corpus": str(text_corpus),
        "--layer": "1",
        "--d-sae": "128",
        "--k": "8",
        "--tokens": "6144",
        "--batch-size": "256",
        "--activation-tokens": "4096",
        "--context-size": "64",
        "--device": "cpu",
        "--out": str(out),
    }
    args.update(overrides)
    return ["sae", "train", *[x for kv in args.items() for x in kv]]


@pytest.fixture(scope="module")
def trained(tiny_llama, text_corpus, tmp_path_factory):
    """One SAE trained through the CLI (module-wide cache so the activations are collected once)."""
    root = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEATGEO_CACHE", str(root / "cache"))
        result = runner.invoke(app, train_args(tiny_llama, text_corpus, root / "sae"))
    assert result.exit_code == 0, result.output
    return root / "sae", result.output


def one_line_error(result, message: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output
    assert "Traceback" not in result.output


def test_train_writes_a_saelens_folder(trained, tiny_llama):
    folder, output = trained
    assert "SAE saved to" in output and "6,144 tokens" in output
    cfg = read_json(folder / "cfg.json")
    assert cfg["architecture"] == "topk" and cfg["k"] == 8
    assert (cfg["d_in"], cfg["d_sae"], cfg["dtype"]) == (HIDDEN, 128, "float32")
    assert cfg["metadata"]["model_name"] == str(tiny_llama)
    assert cfg["metadata"]["hook_name"] == "blocks.1.hook_resid_post"
    weights = load_file(folder / "sae_weights.safetensors")
    assert {k: tuple(v.shape) for k, v in weights.items()} == {
        "W_enc": (HIDDEN, 128),
        "W_dec": (128, HIDDEN),
        "b_enc": (128,),
        "b_dec": (HIDDEN,),
    }
    torch.testing.assert_close(weights["W_dec"].norm(dim=1), torch.ones(128))
    summary = read_json(folder / "training.json")
    assert summary["tokens_seen"] == 6144 and summary["n_activation_tokens"] == 4096
    assert summary["epochs"] == pytest.approx(1.5)
    assert summary["final"]["l0"] == 8.0
    assert not (folder.parent / ".sae.checkpoint").exists()


def test_train_reuses_then_refuses_other_settings(trained, tiny_llama, text_corpus, tmp_path):
    folder, _ = trained
    before = (folder / "sae_weights.safetensors").read_bytes()
    cache = folder.parent / "cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEATGEO_CACHE", str(cache))
        again = runner.invoke(app, train_args(tiny_llama, text_corpus, folder))
        assert again.exit_code == 0 and "reused" in again.output, again.output
        other = runner.invoke(app, train_args(tiny_llama, text_corpus, folder, **{"--seed": "1"}))
    one_line_error(other, "pass --force")
    assert (folder / "sae_weights.safetensors").read_bytes() == before


def test_train_is_deterministic_and_resumes(tiny_llama, text_corpus, tmp_path, monkeypatch):
    """Ctrl-C during training, then the same command: the result equals an uninterrupted run."""
    from featgeo.sae import training

    full = runner.invoke(app, train_args(tiny_llama, text_corpus, tmp_path / "full"))
    assert full.exit_code == 0, full.output
    args = train_args(tiny_llama, text_corpus, tmp_path / "cut", **{"--tokens": "51200"})
    step = training.SAETrainer._step
    calls = {"n": 0}

    def interrupt_at_150(self, x):
        calls["n"] += 1
        if calls["n"] == 150:  # after the checkpoint at step 100
            raise KeyboardInterrupt
        return step(self, x)

    monkeypatch.setattr(training.SAETrainer, "_step", interrupt_at_150)
    cut = runner.invoke(app, args)
    assert cut.exit_code == 130 and "run the same command again" in cut.output
    assert not (tmp_path / "cut").exists()
    assert read_json(tmp_path / ".cut.checkpoint" / "trainer_state.json")["n_steps"] == 100
    monkeypatch.setattr(training.SAETrainer, "_step", step)
    other = [*args, "--seed", "1"]
    one_line_error(runner.invoke(app, other), "interrupted run with other settings (seed)")
    resumed = runner.invoke(app, args)
    assert resumed.exit_code == 0, resumed.output
    straight = runner.invoke(app, [*args[:-1], str(tmp_path / "straight")])
    assert straight.exit_code == 0, straight.output
    a, b = load_sae(tmp_path / "cut"), load_sae(tmp_path / "straight")
    for name, param in a.named_parameters():
        torch.testing.assert_close(param, getattr(b, name), rtol=0, atol=1e-6)
    assert read_json(tmp_path / "cut" / "training.json")["tokens_seen"] == 51200
    # Same seed, same command: the first run is reproduced exactly.
    again = runner.invoke(app, train_args(tiny_llama, text_corpus, tmp_path / "again"))
    assert again.exit_code == 0
    assert (tmp_path / "again" / "sae_weights.safetensors").read_bytes() == (
        tmp_path / "full" / "sae_weights.safetensors"
    ).read_bytes()


@pytest.mark.parametrize(
    "arch,expected,extra", [("relu", "standard", set()), ("jumprelu", "jumprelu", {"threshold"})]
)
def test_train_other_architectures(arch, expected, extra, tiny_llama, text_corpus, tmp_path):
    out = tmp_path / arch
    result = runner.invoke(app, train_args(tiny_llama, text_corpus, out, **{"--arch": arch}))
    assert result.exit_code == 0, result.output
    cfg = read_json(out / "cfg.json")
    assert cfg["architecture"] == expected and "k" not in cfg
    weights = load_file(out / "sae_weights.safetensors")
    assert set(weights) == {"W_enc", "W_dec", "b_enc", "b_dec", *extra}
    if arch == "jumprelu":
        assert bool((weights["threshold"] >= 0).all())


def test_load_describes(trained):
    folder, _ = trained
    result = runner.invoke(app, ["sae", "load", str(folder)])
    assert result.exit_code == 0, result.output
    assert "topk (k=8)" in result.output and "64 x 128" in result.output


def test_eval_reports_and_writes_json(trained, text_corpus, tmp_path):
    folder, _ = trained
    out = tmp_path / "eval.json"
    args = ["sae", "eval", str(folder), "--corpus", str(text_corpus), "--tokens", "500"]
    result = runner.invoke(app, [*args, "--context-size", "64", "--device", "cpu", "--json", out])
    assert result.exit_code == 0, result.output
    assert "CE loss recovered" in result.output and "split 'eval'" in result.output
    numbers = read_json(out)
    assert numbers["n_tokens"] == 500 and numbers["l0"] == pytest.approx(8.0)
    assert 0 < numbers["fve"] <= 1 and 0 <= numbers["dead_fraction"] <= 1


def test_store_and_cluster(trained, text_corpus, tmp_path):
    folder, _ = trained
    common = ["--corpus", str(text_corpus), "--context-size", "64", "--device", "cpu"]
    stored = runner.invoke(app, ["sae", "store", str(folder), "--store-tokens", "2000", *common])
    assert stored.exit_code == 0, stored.output
    assert "2,000 tokens, 16,000 codes (L0 8.0)" in stored.output
    out = tmp_path / "clusters"
    args = ["sae", "cluster", str(folder), "--n-clusters", "8,16", "--out", str(out)]
    result = runner.invoke(app, [*args, "--store-tokens", "2000", *common])
    assert result.exit_code == 0, result.output
    for n in (8, 16):
        assignments = np.loadtxt(
            out / f"clusters_{n}" / "cluster_assignments.csv", delimiter=",", skiprows=1
        )
        info = read_json(out / f"clusters_{n}" / "clustering.json")
        assert info["n_live"] + info["n_dead"] == 128 and info["store_tokens"] == 2000
        labels = assignments[:, 1].astype(int)
        assert (labels >= 0).sum() == info["n_live"]
        assert set(labels[labels >= 0]) == set(range(n))
        header = (out / f"clusters_{n}" / "cluster_metrics.csv").read_text().splitlines()[0]
        assert header == (
            "n_clusters_total,cluster_id,n_latents,latent_indices,decoder_dir_rank,"
            "cluster_recon_error,activation_pca_rank"
        )


# -- bad input -------------------------------------------------------------------------------
def write_sae(folder, d_in=HIDDEN, d_sae=32, dead=0, hook="blocks.1.hook_resid_post"):
    """A standard SAE; its first ``dead`` latents can never fire (b_enc = -1e4)."""
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, architecture="standard", hook_name=hook)
    sae = SparseAutoencoder.from_config(cfg, seed=0)
    with torch.no_grad():
        sae.b_enc[:dead] = -1e4
    return save_sae(sae, folder)


def test_n_clusters_larger_than_live_latents(text_corpus, tiny_llama, tmp_path):
    folder = write_sae(tmp_path / "sae", dead=12)
    out = tmp_path / "clusters"
    common = ["--model", str(tiny_llama), "--corpus", str(text_corpus), "--context-size", "64"]
    result = runner.invoke(
        app,
        ["sae", "cluster", str(folder), "--n-clusters", "8,24", "--out", str(out), *common,
         "--store-tokens", "1000", "--device", "cpu"],
    )  # fmt: skip
    one_line_error(result, "--n-clusters 24 is larger than the 20 live latents")
    assert not out.exists()


def corrupt(case, tmp_path):
    folder = write_sae(tmp_path / case)
    if case == "no-cfg":
        (folder / "cfg.json").unlink()
    elif case == "shape":
        cfg = json.loads((folder / "cfg.json").read_text())
        cfg["d_sae"] = 48
        (folder / "cfg.json").write_text(json.dumps(cfg))
    elif case == "weights-shape":
        weights = load_file(folder / "sae_weights.safetensors")
        weights["W_dec"] = weights["W_dec"][:, :10].contiguous()
        save_file(weights, folder / "sae_weights.safetensors")
    elif case == "d_in":
        folder = write_sae(tmp_path / "wide", d_in=32)
    return folder


SAE_CASES = [
    ("no-cfg", "no cfg.json"),
    ("shape", "W_enc"),
    ("weights-shape", "W_dec"),
    ("d_in", "does not match the model's hidden size 64"),
]


def nothing_built(tmp_path) -> bool:
    stores = tmp_path / "cache" / "activation_stores"
    return not stores.exists() or not any(stores.iterdir())


@pytest.mark.parametrize("case,message", SAE_CASES, ids=[c[0] for c in SAE_CASES])
@pytest.mark.parametrize("command", ["eval", "store", "cluster"])
def test_bad_sae_folders(case, message, command, tiny_llama, text_corpus, tmp_path):
    folder = corrupt(case, tmp_path)
    out = tmp_path / "out"
    extra = ["--out", str(out), "--n-clusters", "4"] if command == "cluster" else []
    result = runner.invoke(
        app,
        ["sae", command, str(folder), "--model", str(tiny_llama), "--corpus", str(text_corpus),
         "--context-size", "64", "--device", "cpu", *extra],
    )  # fmt: skip
    one_line_error(result, message)
    assert not out.exists() and nothing_built(tmp_path)


CLUSTER_CASES = [
    (["--n-clusters", "64"], "--n-clusters 64 is larger than the SAE's 32 latents"),
    (["--n-clusters", "8,x"], "--n-clusters must be a comma list of ints"),
    (["--n-clusters", "1"], "--n-clusters needs distinct ints >= 2"),
    (["--n-clusters", "8,8"], "--n-clusters needs distinct ints >= 2"),
    (["--method", "dbscan"], "dbscan"),
    (["--n-clusters", "4", "--split", "nope"], "nope"),
]


@pytest.mark.parametrize("extra,message", CLUSTER_CASES, ids=[c[1][:24] for c in CLUSTER_CASES])
def test_cluster_bad_options(extra, message, tiny_llama, text_corpus, tmp_path):
    folder = write_sae(tmp_path / "sae")
    out = tmp_path / "clusters"
    result = runner.invoke(
        app,
        ["sae", "cluster", str(folder), "--out", str(out), "--model", str(tiny_llama),
         "--corpus", str(text_corpus), "--device", "cpu", *extra],
    )  # fmt: skip
    one_line_error(result, message)
    assert not out.exists() and nothing_built(tmp_path)


def test_cluster_sae_refuses_a_store_of_another_sae(tiny_llama, text_corpus, tmp_path):
    from featgeo.sae import build_sae_store, cluster_sae

    small = load_sae(write_sae(tmp_path / "a"))
    other = load_sae(write_sae(tmp_path / "b", d_sae=48))
    store = build_sae_store(
        small, model=str(tiny_llama), corpus=str(text_corpus), context_size=64,
        max_tokens=300, device="cpu", progress=False,
    )  # fmt: skip
    with pytest.raises(ValueError, match="the store holds codes of 32 latents but the SAE has 48"):
        cluster_sae(other, store, [4], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_load_without_cfg(tmp_path):
    folder = corrupt("no-cfg", tmp_path)
    one_line_error(runner.invoke(app, ["sae", "load", str(folder)]), "no cfg.json")


TRAIN_CASES = [
    ({"--layer": "2"}, "--layer 2 is out of range; this model has layers 0-1"),
    ({"--layer": "-1"}, "--layer -1 is out of range"),
    ({"--k": "200"}, "--k 200 is larger than --d-sae 128"),
    ({"--arch": "gated"}, "--arch must be topk, relu or jumprelu"),
    ({"--tokens": "0"}, "--tokens must be >= 1, got 0"),
    ({"--split": "nope"}, "nope"),
    ({"--model": "missing/dir/model"}, "does not exist"),
]


@pytest.mark.parametrize("overrides,message", TRAIN_CASES, ids=[str(c[0]) for c in TRAIN_CASES])
def test_train_bad_input(overrides, message, tiny_llama, text_corpus, tmp_path):
    out = tmp_path / "saes" / "bad"
    result = runner.invoke(app, train_args(tiny_llama, text_corpus, out, **overrides))
    one_line_error(result, message)
    assert not out.exists() and not (tmp_path / "saes" / ".bad.checkpoint").exists()
    assert not (tmp_path / "cache" / "activations").exists() or not any(
        (tmp_path / "cache" / "activations").iterdir()
    )


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--tokens", "0"], "--tokens must be a positive int, got 0"),
        (["--batch-size", "0"], "--batch-size must be a positive int"),
        (["--context-size", "4096"], "max_position_embeddings 512"),
        (["--dense-threshold", "1.5"], "--dense-threshold must be a fraction"),
        (["--split", "nope"], "nope"),
        (["--json", "{tmp}/out.json", "--layer", "3"], "--layer 3 is out of range"),
    ],
)
def test_eval_bad_options(extra, message, tiny_llama, text_corpus, tmp_path):
    folder = write_sae(tmp_path / "sae")
    extra = [e.format(tmp=tmp_path) for e in extra]
    args = ["sae", "eval", str(folder), "--model", str(tiny_llama), "--corpus", str(text_corpus)]
    one_line_error(runner.invoke(app, [*args, "--device", "cpu", *extra]), message)
    assert not (tmp_path / "out.json").exists()


def test_eval_layer_out_of_range(tiny_llama, text_corpus, tmp_path):
    folder = write_sae(tmp_path / "sae", hook="blocks.7.hook_resid_post")
    args = ["sae", "eval", str(folder), "--model", str(tiny_llama), "--corpus", str(text_corpus)]
    one_line_error(runner.invoke(app, args), "--layer 7 is out of range")
    no_layer = write_sae(tmp_path / "nolayer", hook="")
    args[2] = str(no_layer)
    one_line_error(runner.invoke(app, args), "pass --layer")
