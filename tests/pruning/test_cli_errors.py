"""Bad input: one line, exit code 2, nothing written under --out."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from featgeo.cli import app

runner = CliRunner()


@pytest.fixture
def bad_corpora(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("   \n")
    binary = tmp_path / "binary"
    binary.mkdir()
    (binary / "a.txt").write_bytes(b"\x00\x01\x02\xff\xfe" * 100)
    return {"empty": empty, "binary": binary}


CASES = [
    (["--sparsity", "1.0"], "--sparsity must be in [0, 1)"),
    (["--sparsity", "-0.1"], "--sparsity must be in [0, 1)"),
    (["--nm", "2-4"], "--nm must look like"),
    (["--nm", "4:2"], "0 < N < M"),
    (["--nm", "3:7"], "not divisible by M=7"),
    (["--nm", "2:4", "--sparsity", "0.3"], "contradicts"),
    (["--method", "obs"], "unknown pruning method 'obs'"),
    (["--layers", "5"], "layer 5 does not exist"),
    (["--layers", "x-y"], "--layers must look like"),
    (["--components", "mlp.foo_proj"], "unknown component 'mlp.foo_proj'"),
    (["--model", "missing/dir/model"], "does not exist"),
    (["--model", "HuggingFaceTB/SmolLM2-135M"], "no model hub is reachable"),
    (["--corpus", "{empty}"], "no documents"),
    (["--corpus", "{binary}"], "not UTF-8 text"),
    (["--calib-samples", "0"], "--calib-samples must be >= 1"),
    (["--order", "dense"], "--order must be one of sequential, reference, got 'dense'"),
    (["--ties", "k"], "--ties must be one of exact, reference, got 'k'"),
    (["--reference-compat", "--order", "sequential"], "--order sequential was given"),
    (["--reference-compat", "--ties", "exact"], "--ties exact was given"),
]


@pytest.mark.parametrize("extra,message", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_prune_bad_input(
    extra, message, tiny_llama, text_corpus, bad_corpora, tmp_path, monkeypatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    args = {
        "--model": str(tiny_llama),
        "--corpus": str(text_corpus),
        "--method": "wanda",
        "--calib-samples": "2",
        "--seqlen": "16",
        "--eval-windows": "1",
        "--device": "cpu",
        "--out": str(out),
    }
    extra = [e.format(**bad_corpora) for e in extra]
    flags = [e for e in extra if e == "--reference-compat"]  # options without a value
    extra = [e for e in extra if e not in flags]
    for key, value in zip(extra[::2], extra[1::2], strict=True):
        args[key] = value
    result = runner.invoke(app, ["prune", *[x for kv in args.items() for x in kv], *flags])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output
    assert "Traceback" not in result.output
    assert not out.exists() or not any(out.iterdir())


def test_ppl_bad_split(tiny_llama, text_corpus):
    result = runner.invoke(
        app,
        [
            "ppl",
            "--model",
            str(tiny_llama),
            "--corpus",
            str(text_corpus),
            "--split",
            "nope",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1


def test_model_info_missing_path(tmp_path):
    result = runner.invoke(app, ["model", "info", "--model", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "does not exist" in result.output
