"""Components are discovered from each decoder layer's own linear layers: Llama keeps its seven
names and order, Phi-3 its fused projections, GPT-NeoX its own names; GPT-2's Conv1D blocks
are refused in one line before anything is written."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from featgeo.cli import app
from featgeo.models import (
    LLAMA_COMPONENTS,
    decoder_layers,
    load_model,
    model_components,
    model_info,
    parse_components,
)
from featgeo.pruning import run as prune_run
from featgeo.pruning.config import PruneConfig

runner = CliRunner()

PHI3 = ["self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"]
NEOX = ["attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"]


@pytest.mark.parametrize(
    "arch,path",
    [("llama", "model.layers"), ("phi3", "model.layers"), ("gpt_neox", "gpt_neox.layers"),
     ("gpt2", "transformer.h")],
)  # fmt: skip
def test_decoder_layers_found_for_each_layout(tiny_layouts, arch, path):
    model = load_model(tiny_layouts[arch])
    assert decoder_layers(model) is model.get_submodule(path)
    assert len(decoder_layers(model)) == 2


@pytest.mark.parametrize(
    "arch,expected",
    [("llama", list(LLAMA_COMPONENTS)), ("phi3", PHI3), ("gpt_neox", NEOX)],
)
def test_components_are_discovered_in_call_order(tiny_layouts, arch, expected):
    # Phi-3 registers o_proj before qkv_proj; the list follows the forward pass instead.
    assert model_components(load_model(tiny_layouts[arch])) == expected


def test_phi3_components_have_fused_shapes(tiny_layouts):
    info = model_info(load_model(tiny_layouts["phi3"]))
    # hidden 64, 4 heads of 16, 2 KV heads: q 64 + k 32 + v 32 rows; gate and up 128 rows each
    assert info.components == {
        "self_attn.qkv_proj": (128, 64),
        "self_attn.o_proj": (64, 64),
        "mlp.gate_up_proj": (256, 64),
        "mlp.down_proj": (64, 128),
    }
    assert info.prune_refusal is None and info.other_projections == {}
    assert (info.intermediate_size, info.n_heads, info.n_kv_heads) == (128, 4, 2)


def test_gpt2_is_described_but_not_prunable(tiny_layouts):
    model = load_model(tiny_layouts["gpt2"])
    with pytest.raises(ValueError, match="Conv1D.*featgeo prunes nn.Linear"):
        model_components(model)
    info = model_info(model)
    assert info.components == {}
    assert info.other_projections["attn.c_attn"] == (192, 64)  # stored [in, out] = [64, 192]
    assert info.other_projections["mlp.c_proj"] == (64, 256)
    assert info.intermediate_size is None  # GPT2Config.n_inner is None
    assert "Conv1D" in info.prune_refusal


@pytest.mark.parametrize("arch", ["llama", "phi3", "gpt_neox", "gpt2"])
def test_model_info_cli_lists_discovered_components(tiny_layouts, arch):
    result = runner.invoke(app, ["model", "info", "--model", str(tiny_layouts[arch])])
    assert result.exit_code == 0, result.output
    names = {
        "llama": LLAMA_COMPONENTS,
        "phi3": PHI3,
        "gpt_neox": NEOX,
        "gpt2": ["attn.c_attn", "mlp.c_fc"],
    }[arch]
    for name in names:
        assert name in result.output
    assert ("not prunable" in result.output) == (arch == "gpt2")


def test_parse_components_validates_against_the_models_own_names():
    assert parse_components("mlp.down_proj,self_attn.qkv_proj", PHI3) == [
        "self_attn.qkv_proj",
        "mlp.down_proj",
    ]
    assert parse_components(None, PHI3) == PHI3
    with pytest.raises(ValueError, match="'self_attn.q_proj'.*self_attn.qkv_proj, "):
        parse_components("self_attn.q_proj", PHI3)


def _prune_args(model, corpus, out, *extra):
    return [
        "prune", "--model", str(model), "--corpus", str(corpus), "--method", "wanda",
        "--calib-samples", "2", "--seqlen", "16", "--eval-windows", "1", "--device", "cpu",
        "--out", str(out), *extra,
    ]  # fmt: skip


def _wanda_mask(weight: torch.Tensor, x: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Written out from SPEC §1: score |W| * ||x_j||, each row drops its k lowest scores."""
    norms = x.reshape(-1, x.shape[-1]).pow(2).mean(dim=0).sqrt()  # [in]
    score = weight.abs() * norms  # [out, in]
    k = int(weight.shape[1] * sparsity)
    pruned = torch.zeros_like(weight, dtype=torch.bool)
    pruned.scatter_(1, score.argsort(dim=1, stable=True)[:, :k], True)
    return pruned


def test_phi3_prunes_its_fused_components(tiny_layouts, text_corpus, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, _prune_args(tiny_layouts["phi3"], text_corpus, out))
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "wanda" / "prune_summary.json").read_text())
    assert summary["settings"]["components"] == PHI3
    dense = load_model(tiny_layouts["phi3"])
    shapes = model_info(dense).components
    for layer in range(2):
        for name in PHI3:
            exported = torch.load(out / "wanda" / f"layer{layer}-{name}.pt", weights_only=True)
            assert tuple(exported.shape) == shapes[name]
            assert (exported == 0).sum(dim=1).eq(exported.shape[1] // 2).all()
    # qkv_proj of layer 0 reads the normed embeddings, untouched by pruning: the exported
    # matrix must be Wanda computed by hand on the dense model's input to it.
    config = PruneConfig(
        model=str(tiny_layouts["phi3"]), corpus=str(text_corpus), calib_samples=2, seqlen=16,
        eval_windows=1, device="cpu", out=str(tmp_path / "unused"),
    )  # fmt: skip
    calib = prune_run.prepare(config).calib_ids
    qkv = decoder_layers(dense)[0].self_attn.qkv_proj
    seen = []
    handle = qkv.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with torch.no_grad():
        dense(input_ids=calib, use_cache=False)
    handle.remove()
    expected = qkv.weight.masked_fill(_wanda_mask(qkv.weight, seen[0], 0.5), 0.0)
    exported = torch.load(out / "wanda" / "layer0-self_attn.qkv_proj.pt", weights_only=True)
    torch.testing.assert_close(exported, expected, rtol=0, atol=0)


def test_gpt_neox_prunes_with_its_own_names(tiny_layouts, text_corpus, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, _prune_args(tiny_layouts["gpt_neox"], text_corpus, out))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "wanda").glob("layer1-*.pt")) == sorted(
        f"layer1-{name}.pt" for name in NEOX
    )


def _assert_refused(result, out, message):
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("featgeo: error:"), result.output
    assert message in lines[0], lines[0]
    assert not out.exists(), sorted(out.rglob("*"))


@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_gpt2_prune_is_refused_before_anything_is_written(
    tiny_layouts, text_corpus, tmp_path, method
):
    out = tmp_path / "out"
    args = _prune_args(tiny_layouts["gpt2"], text_corpus, out)
    args[args.index("wanda")] = method
    _assert_refused(runner.invoke(app, args), out, "cannot be pruned by featgeo")


def test_llama_component_names_are_refused_on_phi3(tiny_layouts, text_corpus, tmp_path):
    out = tmp_path / "out"
    args = _prune_args(tiny_layouts["phi3"], text_corpus, out, "--components", "mlp.up_proj")
    _assert_refused(runner.invoke(app, args), out, "this model's components are self_attn.qkv_proj")


def test_nm_that_does_not_divide_a_discovered_component_is_refused(
    tiny_layouts, layout_builder, text_corpus, tmp_path
):
    # down_proj reads 96 inputs; M=64 divides the 64 inputs of every other component
    model = layout_builder(tmp_path / "phi3_96", "phi3", tiny_layouts["llama"], inter=96)
    out = tmp_path / "out"
    args = _prune_args(model, text_corpus, out, "--nm", "2:64")
    _assert_refused(runner.invoke(app, args), out, "impossible for mlp.down_proj: in_features=96")
