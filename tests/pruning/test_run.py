"""``featgeo prune`` end to end on a tiny Llama: exports, sequential semantics, resume, errors."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from featgeo.cli import app
from featgeo.models import COMPONENTS, decoder_layers, get_component, load_model
from featgeo.pruning import WandaPruner
from featgeo.pruning import run as prune_run
from featgeo.pruning.config import PruneConfig
from featgeo.pruning.run import run_prune
from featgeo.pruning.sequential import capture_layer0_inputs

runner = CliRunner()


def make_config(tiny_llama, text_corpus, out, **overrides) -> PruneConfig:
    settings = dict(
        model=str(tiny_llama),
        corpus=str(text_corpus),
        out=str(out),
        calib_samples=8,
        seqlen=64,
        eval_windows=4,
        device="cpu",
    )
    settings.update(overrides)
    return PruneConfig(**settings)


@pytest.fixture(scope="module")
def wanda_run(tiny_llama, text_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("prune")
    config = make_config(tiny_llama, text_corpus, out, methods=["wanda"])
    return config, run_prune(config)[0]


def test_exports_load_with_weights_only_and_keep_shapes(wanda_run, tiny_llama):
    config, result = wanda_run
    dense = load_model(tiny_llama)
    for index, layer in enumerate(decoder_layers(dense)):
        for name in COMPONENTS:
            path = result.out_dir / f"layer{index}-{name}.pt"
            loaded = torch.load(path, weights_only=True)
            assert isinstance(loaded, torch.Tensor)
            assert loaded.shape == get_component(layer, name).weight.shape
            assert (loaded == 0).sum(dim=1).eq(int(loaded.shape[1] * 0.5)).all()


def test_summary_records_settings_sparsity_perplexity_and_times(wanda_run):
    _, result = wanda_run
    summary = json.loads((result.out_dir / "prune_summary.json").read_text())
    assert summary["method"] == "wanda"
    assert summary["achieved_sparsity"] == pytest.approx(0.5)
    assert len(summary["matrices"]) == 2 * len(COMPONENTS)
    assert all(m["sparsity"] == pytest.approx(0.5) for m in summary["matrices"])
    assert summary["perplexity"]["dense"] > 1 and summary["perplexity"]["pruned"] > 1
    assert {"prune", "eval_pruned"} <= set(summary["seconds"])
    assert not list(result.out_dir.parent.glob(".*partial"))


def test_layer1_is_pruned_on_outputs_of_pruned_layer0(wanda_run, tiny_llama):
    """SPEC §1: inputs to layer l+1 are the outputs of the already pruned layer l."""
    config, result = wanda_run
    model = load_model(tiny_llama)
    layers = decoder_layers(model)
    for name in COMPONENTS:  # install the exported layer-0 weights
        get_component(layers[0], name).weight.data.copy_(
            torch.load(result.out_dir / f"layer0-{name}.pt", weights_only=True)
        )
    prep = prune_run.prepare(config)
    inputs = capture_layer0_inputs(model, prep.calib_ids)
    captured = {}
    q_proj = layers[1].self_attn.q_proj
    handle = q_proj.register_forward_pre_hook(lambda _m, a: captured.setdefault("x", a[0]))
    with torch.no_grad():
        hidden = layers[0](inputs.hidden, **inputs.kwargs)
        layers[1](hidden, **inputs.kwargs)
    handle.remove()
    expected = WandaPruner(0.5).fit(captured["x"]).prune(q_proj.weight)
    exported = torch.load(result.out_dir / "layer1-self_attn.q_proj.pt", weights_only=True)
    assert torch.equal(exported, expected)


def test_same_seed_gives_identical_exports(tiny_llama, text_corpus, tmp_path):
    runs = []
    for name in ("a", "b"):
        config = make_config(tiny_llama, text_corpus, tmp_path / name, methods=["sparsegpt"])
        runs.append(run_prune(config)[0].out_dir)
    for path in sorted(runs[0].glob("*.pt")):
        assert torch.equal(
            torch.load(path, weights_only=True), torch.load(runs[1] / path.name, weights_only=True)
        )


def test_interrupted_run_resumes_without_redoing_layers(
    tiny_llama, text_corpus, tmp_path, monkeypatch
):
    reference = run_prune(
        make_config(tiny_llama, text_corpus, tmp_path / "ref", methods=["sparsegpt"])
    )[0]
    monkeypatch.setattr(prune_run, "CHECKPOINT_EVERY_S", 0.0)
    real_prune_layer = prune_run.prune_layer
    calls = []

    def interrupt_on_second_layer(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_prune_layer(*args, **kwargs)

    monkeypatch.setattr(prune_run, "prune_layer", interrupt_on_second_layer)
    config = make_config(tiny_llama, text_corpus, tmp_path / "out", methods=["sparsegpt"])
    with pytest.raises(KeyboardInterrupt):
        run_prune(config)
    assert not (tmp_path / "out" / "sparsegpt").exists()
    assert (tmp_path / "out" / ".sparsegpt.partial" / "resume_state.json").is_file()

    result = run_prune(config)[0]
    assert len(calls) == 3  # layer 0 once, layer 1 interrupted, then only layer 1 again
    for path in sorted(reference.out_dir.glob("*.pt")):
        assert torch.equal(
            torch.load(path, weights_only=True),
            torch.load(result.out_dir / path.name, weights_only=True),
        )
    assert not (tmp_path / "out" / ".sparsegpt.partial").exists()
    # the statistics of the layer pruned before the interruption survive in the checkpoint
    summary = json.loads((result.out_dir / "prune_summary.json").read_text())
    assert all(m["dead_inputs"] == 0 for m in summary["matrices"])
    assert all(m["dense_zeros"] == 0 for m in summary["matrices"])


def test_finished_run_is_reused(wanda_run):
    config, first = wanda_run
    again = run_prune(config)[0]
    assert again.reused and again.pruned_ppl == first.pruned_ppl


def test_only_selected_layers_and_components_are_exported(tiny_llama, text_corpus, tmp_path):
    config = make_config(
        tiny_llama,
        text_corpus,
        tmp_path,
        methods=["magnitude", "wanda"],
        layers="1",
        components="mlp.down_proj,self_attn.q_proj",
        nm="2:4",
    )
    results = run_prune(config)
    for result in results:
        assert sorted(p.name for p in result.out_dir.glob("*.pt")) == [
            "layer1-mlp.down_proj.pt",
            "layer1-self_attn.q_proj.pt",
        ]


def test_cli_prints_comparison_table(tiny_llama, text_corpus, tmp_path):
    result = runner.invoke(
        app,
        [
            "prune",
            "--model",
            str(tiny_llama),
            "--corpus",
            str(text_corpus),
            "--method",
            "magnitude,wanda",
            "--calib-samples",
            "4",
            "--seqlen",
            "32",
            "--eval-windows",
            "2",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "cli"),
        ],
    )
    assert result.exit_code == 0, result.output
    for word in ("dense", "magnitude", "wanda", "50.00%"):
        assert word in result.output


def test_save_model_writes_a_loadable_pruned_model(tiny_llama, text_corpus, tmp_path):
    config = make_config(tiny_llama, text_corpus, tmp_path, methods=["wanda"], save_model=True)
    result = run_prune(config)[0]
    reloaded = load_model(result.out_dir / "model")
    weight = decoder_layers(reloaded)[1].mlp.down_proj.weight
    assert torch.equal(
        weight, torch.load(result.out_dir / "layer1-mlp.down_proj.pt", weights_only=True)
    )


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("target", [0.3, 0.7])
def test_reported_sparsity_is_the_zero_fraction_of_the_exports(
    method, target, tiny_llama, text_corpus, tmp_path
):
    """Away from 50% sparsity and density differ: every reported number must be the fraction
    of zeros, counted here from the exported tensors, and meet the target exactly."""
    config = make_config(
        tiny_llama, text_corpus, tmp_path, methods=[method], sparsity=target, eval_windows=1
    )
    result = run_prune(config)[0]
    summary = json.loads((result.out_dir / "prune_summary.json").read_text())
    zeros = total = 0
    for entry in summary["matrices"]:
        weight = torch.load(result.out_dir / entry["file"], weights_only=True)
        counted = (weight == 0).sum().item()
        assert entry["sparsity"] == pytest.approx(counted / weight.numel(), abs=1e-12)
        # exact ties: every matrix holds floor(target * numel) zeros (per row for Wanda)
        assert counted / weight.numel() == pytest.approx(target, abs=1 / weight.shape[1])
        zeros, total = zeros + counted, total + weight.numel()
    assert summary["achieved_sparsity"] == pytest.approx(zeros / total, abs=1e-12)
    assert summary["achieved_sparsity"] == pytest.approx(target, abs=1 / 64)  # rows of 64+
    assert result.sparsity == pytest.approx(zeros / total, abs=1e-12)
