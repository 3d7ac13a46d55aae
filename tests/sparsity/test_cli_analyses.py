"""``featgeo hamming single`` / ``multi`` through typer's CliRunner: tables, JSON, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from featgeo.cli import app

runner = CliRunner()


def invoke(command: str, *args):
    return runner.invoke(app, ["hamming", command, *[str(a) for a in args]])


def pruned(d: int = 48, n: int = 32, seed: int = 0) -> torch.Tensor:
    """[d, n] matrix at ~50% sparsity; columns 0-9 share one mask (a planted cluster)."""
    rng = np.random.default_rng(seed)
    masks = rng.random((d, n)) < 0.5
    masks[:, :10] = masks[:, :1]
    values = rng.uniform(0.5, 2.0, size=(d, n)).astype(np.float32)
    return torch.from_numpy(np.where(masks, values, 0.0).astype(np.float32))


@pytest.fixture
def matrix_path(tmp_path) -> Path:
    path = tmp_path / "wanda" / "layer1-mlp.down_proj.pt"
    path.parent.mkdir()
    torch.save(pruned(), path)
    return path


SINGLE_NAMES = [
    "nearest features",
    "norm.",
    "hamming min",
    "hamming range",
    "mean within-cluster distance",
    "mean between-cluster distance",
    "centroid separation ratio",
    "total inertia",
    "cluster balance",
    "cluster sizes",
    "mean within hamming",
    "mean between hamming",
    "hamming separation ratio",
    "MMM block coherence",
    "sorted by cluster",
    "block-skipping kernel",
]


def test_single_prints_every_metric_and_writes_json(matrix_path, tmp_path):
    out = tmp_path / "res" / "single.json"
    result = invoke(
        "single", matrix_path, "--feature-idx", 3, "--n-features", 16, "--n-clusters", 3,
        "--output-json", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for name in SINGLE_NAMES:
        assert name in result.stdout, name
    assert any(band in result.stdout for band in ("excellent", "good", "moderate", "poor"))
    data = json.loads(out.read_text())
    assert data["config"]["feature_idx"] == 3 and data["matrix"]["method"] == "wanda"
    assert len(data["analysis"]["neighbours"]) == 16


def test_single_rows_and_weights(matrix_path):
    result = invoke(
        "single", matrix_path, "--axis", "rows", "--cluster-on", "weights",
        "--n-features", 12, "--n-clusters", 2, "--block-size", 4,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "48 features (rows) of length D=32" in result.stdout
    assert "drawn with --seed" in result.stdout and "on the weights" in result.stdout


AGGREGATE_NAMES = [
    "Aggregate over 3 executions (mean ± std)",
    "centroid separation ratio",
    "hamming separation ratio",
    "mean within hamming",
    "MMM block coherence (sorted)",
    "total inertia",
    "executions per band",
]


def test_multi_prints_aggregate_and_json_is_reproducible(matrix_path, tmp_path):
    args = ["multi", matrix_path, "--n-executions", 3, "--n-features", 12, "--n-clusters", 3]
    first = invoke(*args, "--output-json", tmp_path / "a.json")
    assert first.exit_code == 0, first.output
    for name in AGGREGATE_NAMES:
        assert name in first.stdout, name
    second = invoke(*args, "--output-json", tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    other = invoke(*args, "--seed", 0, "--output-json", tmp_path / "c.json")
    assert second.exit_code == other.exit_code == 0
    refs = [
        [e["feature_idx"] for e in json.loads((tmp_path / name).read_text())["executions"]]
        for name in ("a.json", "c.json")
    ]
    assert refs[0] != refs[1]


def test_dense_matrix_warns_on_one_line_and_runs(tmp_path):
    path = tmp_path / "dense.npy"
    np.save(path, np.random.default_rng(0).uniform(0.5, 1.0, size=(16, 12)))
    result = invoke("single", path, "--feature-idx", 0, "--n-features", 5, "--n-clusters", 1)
    assert result.exit_code == 0, result.output
    warning_lines = [line for line in result.stderr.splitlines() if "DenseMatrixWarning" in line]
    assert len(warning_lines) == 1 and "is dense" in warning_lines[0]
    assert "warnings.warn" not in result.stderr and "Traceback" not in result.output
    assert "centroid separation ratio" in result.stdout


@pytest.fixture
def bad(bad_matrix_files, matrix_path) -> dict[str, Path]:
    return {**bad_matrix_files, "ok": matrix_path}


CLI_BAD = [
    ("single", "missing", [], "does not exist"),
    ("multi", "missing", [], "does not exist"),
    ("single", "dict", [], "holds a dict, not a tensor"),
    ("single", "exploit", [], "refused by weights_only loading"),
    ("multi", "exploit", [], "refused by weights_only loading"),
    ("single", "3d", [], "must be a 2-D matrix"),
    ("single", "nan", [], "contains NaN or inf"),
    ("single", "ok", ["--n-features", "32"], "--n-features 32 is impossible"),
    ("multi", "ok", ["--n-features", "40"], "--n-features 40 is impossible"),
    ("single", "ok", ["--feature-idx", "32"], "--feature-idx 32 is out of range"),
    ("single", "ok", ["--n-clusters", "20"], "--n-clusters 20 is larger than the 17"),
    ("multi", "ok", ["--n-clusters", "20"], "--n-clusters 20 is larger than the 17"),
    (
        "multi",
        "ok",
        ["--n-executions", "33", "--rng", "generator"],
        "--n-executions 33 is larger than the 32",
    ),
    ("single", "ok", ["--rng", "mt"], "--rng must be one of legacy, generator, got 'mt'"),
    ("single", "ok", ["--axis", "diagonal"], "--axis must be 'columns' or 'rows'"),
    ("multi", "ok", ["--cluster-on", "both"], "--cluster-on must be 'masks' or 'weights'"),
]


@pytest.mark.parametrize(
    "command,name,extra,message", CLI_BAD, ids=[f"{c[0]}-{c[1]}-{c[3][:20]}" for c in CLI_BAD]
)
def test_bad_input_one_line_exit_2(bad, tmp_path, command, name, extra, message):
    out = tmp_path / "out.json"
    result = invoke(command, bad[name], "--n-features", 16, *extra, "--output-json", out)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output
    assert lines[0].startswith("featgeo: error:")
    assert "Traceback" not in result.output
    assert not out.exists() and not list(tmp_path.glob(".out.json*"))
    assert not (tmp_path / "MARKER").exists()
