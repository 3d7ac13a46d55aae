"""Comparative report: one row per matrix, insights computed from the numbers, a
self-contained HTML page, extra sections, and clear errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from featgeo.cli import app
from featgeo.reports.comparative import (
    KEY_METRICS,
    ReportSection,
    build_report,
    insights,
    load_results,
)

# (method, component): centroid separation ratio, Hamming separation ratio, MMM coherence
PLANTED = {
    ("wanda", "mlp.down_proj"): (0.9, 1.20, 0.35),
    ("wanda", "self_attn.q_proj"): (0.6, 1.10, 0.10),
    ("sparsegpt", "mlp.down_proj"): (0.7, 1.15, 0.12),
    ("sparsegpt", "self_attn.q_proj"): (0.4, 1.05, 0.08),
}


def multi_json(method: str, component: str, layer: int = 1, **means: float) -> dict:
    """A ``featgeo hamming multi`` result (the schema of ``multi_to_json``) with chosen means."""
    values = {metric: 0.5 for metric in KEY_METRICS} | means
    aggregate = {
        metric: {"mean": value, "std": 0.01, "n_infinite": 0} for metric, value in values.items()
    }
    aggregate["total_inertia"] = {"mean": 10.0, "std": 1.0, "n_infinite": 0}
    shape = [576, 1536] if component == "mlp.down_proj" else [576, 576]
    return {
        "featgeo_version": "0.1.0",
        "matrix": {
            "path": f"clustering_characterization/{method}/layer{layer}-{component}.pt",
            "name": f"layer{layer}-{component}",
            "shape": shape,
            "sparsity": 0.5,
            "axis": "columns",
            "n_features_total": shape[1],
            "d": shape[0],
            "method": method,
            "layer": layer,
            "component": component,
        },
        "config": {
            "n_executions": 3,
            "n_features": 128,
            "n_clusters": 8,
            "seed": 42,
            "block_size": 8,
        },
        "aggregate": aggregate,
        "separation_bands": {"excellent": 0, "good": 0, "moderate": 3, "poor": 0},
        "executions": [{"execution": i} for i in range(3)],
    }


@pytest.fixture
def results_dir(tmp_path) -> Path:
    folder = tmp_path / "analysis_results"
    folder.mkdir()
    for (method, component), (centroid, hamming, coherence) in PLANTED.items():
        data = multi_json(
            method,
            component,
            centroid_separation_ratio=centroid,
            hamming_separation_ratio=hamming,
            mmm_block_coherence=coherence,
        )
        short = component.split(".")[1]
        (folder / f"{method}_{short}.json").write_text(json.dumps(data))
    (folder / "notes.json").write_text(json.dumps({"something": "else"}))  # skipped
    return folder


def test_rows_and_insights(results_dir):
    rows = load_results(results_dir)
    assert [r.label for r in rows] == [
        "sparsegpt L1 mlp.down_proj",
        "sparsegpt L1 self_attn.q_proj",
        "wanda L1 mlp.down_proj",
        "wanda L1 self_attn.q_proj",
    ]
    projection, method, mmm = insights(rows)
    # MLP: (0.9 + 0.7) / 2 = 0.8; attention: (0.6 + 0.4) / 2 = 0.5
    assert (
        "MLP (gate/up/down) projections cluster better than attention (q/k/v/o): mean centroid "
        "separation ratio 0.800 vs 0.500 (over 2 and 2 matrices); the Hamming separation ratio "
        "agrees (1.175 vs 1.075)" in projection
    )
    assert "mlp.down_proj clusters best and self_attn.q_proj worst" in projection
    # wanda: (0.9 + 0.6) / 2 = 0.75; sparsegpt: (0.7 + 0.4) / 2 = 0.55
    assert (
        "wanda masks cluster better than sparsegpt: mean centroid separation ratio 0.750 vs "
        "0.550" in method
    )
    assert "On the 2 layer/component pair(s) pruned by both, wanda has the higher" in method
    assert "viable for 1 of 4 matrices (block coherence > 0.3): wanda L1 mlp.down_proj 0.350" in mmm


def test_report_files(results_dir, tmp_path):
    section = ReportSection("Scan", "scan **markdown** body", "<p>scan html body</p>")
    result = build_report(results_dir, tmp_path / "report", [section], dpi=30)
    md = result.markdown_path.read_text()
    page = result.html_path.read_text()
    table_rows = [line for line in md.splitlines() if re.match(r"\| (wanda|sparsegpt) ", line)]
    assert len(table_rows) == 4
    assert "0.900 ± 0.010" in md  # wanda down_proj centroid separation ratio
    assert "| 576 x 1536 |" in md and "50.00%" in md
    for metric in KEY_METRICS:
        assert metric in md and metric in page
    assert "wanda masks cluster better than sparsegpt" in md
    assert "## Scan" in md and "scan **markdown** body" in md
    assert "<p>scan html body</p>" in page
    assert "<strong>Pruning methods.</strong>" in page
    # self-contained: inline figures, inline CSS, nothing fetched from elsewhere
    assert page.count("data:image/png;base64,") >= 2
    assert "<style>" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page)
    assert not re.search(r"<link\b|<script\b", page)
    for figure in result.figures:
        assert (result.out_dir / figure).is_file() and f"]({figure})" in md
    assert sorted(p.name for p in result.out_dir.iterdir()) == [
        "figures",
        "report.html",
        "report.md",
    ]


def test_rebuild_replaces_the_report(results_dir, tmp_path):
    out = tmp_path / "report"
    build_report(results_dir, out, dpi=30)
    (results_dir / "wanda_q_proj.json").unlink()
    result = build_report(results_dir, out, dpi=30)
    assert len(result.rows) == 3
    assert "wanda L1 self_attn.q_proj" not in result.markdown_path.read_text()


def test_one_method_and_one_family(tmp_path):
    folder = tmp_path / "r"
    folder.mkdir()
    for component, ratio in (("mlp.up_proj", 0.4), ("mlp.down_proj", 0.6)):
        data = multi_json(
            "wanda", component, centroid_separation_ratio=ratio, mmm_block_coherence=0.1
        )
        (folder / f"{component}.json").write_text(json.dumps(data))
    projection, method, mmm = insights(load_results(folder))
    assert "Only MLP (gate/up/down) projections were analysed" in projection
    assert "mlp.down_proj 0.600 (1), mlp.up_proj 0.400 (1)" in projection
    assert "Only wanda matrices were analysed" in method
    assert "not viable for any of the 2 matrices" in mmm


def test_with_real_multi_and_seeds_results(tmp_path):
    """Parity with the real writers: `featgeo hamming multi` JSON and a seeds tree."""
    from featgeo.sparsity.executions import multi_to_json, run_multi
    from featgeo.sparsity.seeds import run_seeds

    rng = np.random.default_rng(0)
    matrix = torch.from_numpy(
        (rng.standard_normal((24, 20)) * (rng.random((24, 20)) < 0.5)).astype(np.float32)
    )
    path = tmp_path / "cc" / "wanda" / "layer1-mlp.down_proj.pt"
    path.parent.mkdir(parents=True)
    torch.save(matrix, path)
    results = tmp_path / "analysis_results"
    results.mkdir()
    multi = run_multi(path, n_executions=2, n_features=6, n_clusters=2, progress=False)
    (results / "wanda_down.json").write_text(json.dumps(multi_to_json(multi)))
    seeds_root = tmp_path / "multi_seed_clustering"
    run_seeds(
        tmp_path / "cc",
        method="wanda",
        component="mlp.down_proj",
        seeds=2,
        n_similar=5,
        k_values=(2, 3),
        output_dir=seeds_root / "wanda" / "mlp.down_proj",
        dpi=30,
        progress=False,
    )
    result = build_report(results, tmp_path / "report", seeds_dir=seeds_root, dpi=30)
    md = result.markdown_path.read_text()
    assert [r.label for r in result.rows] == ["wanda L1 mlp.down_proj"]
    assert "## Multi-seed clustering" in md
    assert "### wanda layer 1 mlp.down_proj: 2 seeds, 5 similar features" in md
    assert len(result.figures) == 4  # two bar charts + two seed summaries
    assert result.html_path.read_text().count("data:image/png;base64,") == 4


def test_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no `featgeo hamming multi` JSON results"):
        build_report(empty, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="--results-dir .* does not exist"):
        build_report(tmp_path / "missing", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(TypeError, match="ReportSection"):
        build_report(empty, tmp_path / "out", [("title", "md")])


def test_refuses_to_replace_a_foreign_folder(results_dir, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("keep")
    with pytest.raises(FileExistsError, match="did not write there \\(thesis.tex\\)"):
        build_report(results_dir, out)
    assert (out / "thesis.tex").read_text() == "keep"
    # a report folder the user added a file to is not replaced either (the file would go)
    (out / "thesis.tex").unlink()
    build_report(results_dir, out)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="earlier featgeo output but also holds .*notes"):
        build_report(results_dir, out)
    assert (out / "notes.txt").read_text() == "mine" and (out / "report.md").is_file()


def test_cli_report_with_scan_section(results_dir, tmp_path, monkeypatch):
    import featgeo.sparsity.scan as scan

    csv = tmp_path / "scan.csv"
    csv.write_text("method,component\n")
    seen = []

    def fake_section(path, *, relative_to=None):
        seen.append((Path(path), Path(relative_to)))
        return ReportSection("Whole-model scan", "scan md", "<p>scan</p>")

    monkeypatch.setattr(scan, "scan_section", fake_section)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "rep"
    args = ["hamming", "report", "--results-dir", str(results_dir), "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--scan-csv", str(csv)])
    assert result.exit_code == 0, result.output
    assert seen == [(csv, out)]
    assert "## Whole-model scan" in (out / "report.md").read_text()
    assert "wanda masks cluster better than sparsegpt" in result.output

    missing = CliRunner().invoke(app, [*args, "--scan-csv", str(tmp_path / "nope.csv")])
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_cli_report_empty_results_is_one_line(tmp_path):
    (tmp_path / "r").mkdir()
    args = ["hamming", "report", "--results-dir", str(tmp_path / "r"), "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert result.output.startswith("featgeo: error:") and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()
