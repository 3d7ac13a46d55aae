"""Truthful summaries (issue 9): a matrix that ends above the target sparsity is reported, per
matrix and in the CLI table, with the reason."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaForCausalLM
from typer.testing import CliRunner

from featgeo.cli import app
from featgeo.models import COMPONENTS
from featgeo.pruning.config import PruneConfig
from featgeo.pruning.run import run_prune

runner = CliRunner()
DEAD = 43  # of 64 hidden channels: 2/3 of the q/k/v inputs never fire
DENSE_ZERO_ROWS = 52  # of 64 o_proj rows of layer 0 already 0 in the dense model


@pytest.fixture(scope="module")
def degenerate_llama(tmp_path_factory, text_corpus, tiny_llama_builder):
    """Both layers' input RMSNorm gains are 0 on the first 43 channels, so q/k/v see those
    inputs as 0 on every token; layer 0's o_proj has 52 of its 64 rows set to 0."""
    folder = tiny_llama_builder(tmp_path_factory.mktemp("degenerate"), corpus_dir=text_corpus)
    model = LlamaForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.input_layernorm.weight[:DEAD] = 0
        model.model.layers[0].self_attn.o_proj.weight[:DENSE_ZERO_ROWS] = 0
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def summaries(degenerate_llama, text_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    config = PruneConfig(
        model=str(degenerate_llama),
        corpus=str(text_corpus),
        out=str(out),
        methods=["sparsegpt", "wanda", "magnitude"],
        calib_samples=4,
        seqlen=32,
        eval_windows=1,
        device="cpu",
    )
    results = run_prune(config)
    return {r.method: json.loads((r.out_dir / "prune_summary.json").read_text()) for r in results}


def matrix(summary, layer, component):
    return next(
        m for m in summary["matrices"] if m["layer"] == layer and m["component"] == component
    )


@pytest.mark.parametrize("layer", [0, 1])
@pytest.mark.parametrize("component", ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"])
def test_sparsegpt_dead_inputs_are_reported(summaries, layer, component):
    entry = matrix(summaries["sparsegpt"], layer, component)
    assert entry["dead_inputs"] == DEAD
    assert entry["sparsity"] == pytest.approx(DEAD / 64)  # 67.2% for a 50% target
    assert entry["reasons_above_target"] == ["dead_inputs"]


def test_sparsegpt_summary_counts_matrices_above_target(summaries):
    above = summaries["sparsegpt"]["above_target"]
    assert above["of"] == 2 * len(COMPONENTS)
    # q/k/v of both layers for dead inputs, layer 0's o_proj for its dense zeros
    assert above["matrices"] == 7
    assert above["reasons"] == {"dead_inputs": 6, "dense_zeros": 1}
    assert above["max_sparsity"] == pytest.approx(max(DEAD, DENSE_ZERO_ROWS) / 64)
    assert summaries["sparsegpt"]["achieved_sparsity"] > summaries["sparsegpt"]["target_sparsity"]


def test_wanda_stays_at_target_with_dead_inputs(summaries):
    """Wanda prunes exactly int(in * s) per row, dead inputs first: they are recorded but push
    nothing above the target."""
    entry = matrix(summaries["wanda"], 0, "self_attn.q_proj")
    assert entry["dead_inputs"] == DEAD and entry["sparsity"] == pytest.approx(0.5)
    assert entry["reasons_above_target"] == []


@pytest.mark.parametrize("method", ["wanda", "magnitude"])
def test_dense_zeros_are_reported(summaries, method):
    entry = matrix(summaries[method], 0, "self_attn.o_proj")
    assert entry["dense_zeros"] == DENSE_ZERO_ROWS * 64
    assert entry["reasons_above_target"] == ["dense_zeros"]
    above = summaries[method]["above_target"]
    assert above["matrices"] == 1 and above["reasons"] == {"dense_zeros": 1}


def test_magnitude_reads_no_inputs(summaries):
    assert all(m["dead_inputs"] is None for m in summaries["magnitude"]["matrices"])


def test_cli_table_says_why_sparsity_exceeds_target(degenerate_llama, text_corpus, tmp_path):
    args = ["prune", "--model", str(degenerate_llama), "--corpus", str(text_corpus)]
    args += ["--method", "sparsegpt", "--calib-samples", "4", "--seqlen", "32"]
    args += ["--eval-windows", "1", "--device", "cpu", "--out", str(tmp_path)]
    result = runner.invoke(app, args, terminal_width=400)
    assert result.exit_code == 0, result.output
    note = next(line for line in result.output.splitlines() if line.startswith("sparsegpt:"))
    assert "7 of 14 matrices above the 50% target (up to 81.25%)" in note
    assert "never fired" in note and "dead_inputs: 6" in note and "dense_zeros: 1" in note
