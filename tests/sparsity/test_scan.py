"""The whole-model scan on a synthetic export tree with planted block structure."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from featgeo.files import partial_dir
from featgeo.sparsity import scan as scan_module
from featgeo.sparsity.blocks import ORDERINGS, greedy_union_order
from featgeo.sparsity.metrics import block_coherence
from featgeo.sparsity.scan import (
    COLUMNS,
    HEATMAP_METRICS,
    ScanConfig,
    read_scan_csv,
    run_scan,
    summarize,
)

METHODS = ("wanda", "sparsegpt")
LAYERS = (0, 1)
COMPONENTS = ("mlp.down_proj", "self_attn.q_proj")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REAL_SCAN_MATRIX = scan_module.scan_matrix


def planted_matrix(d: int, n: int, seed: int, *, group: int = 8, flips: int = 2) -> torch.Tensor:
    """[d, n] weights whose columns come in shuffled groups of ``group`` that share a ~50% zero
    pattern up to ``flips`` flipped positions each."""
    rng = np.random.default_rng(seed)
    masks = []
    for _ in range(-(-n // group)):
        base = rng.random(d) < 0.5
        for _ in range(group):
            mask = base.copy()
            mask[rng.choice(d, flips, replace=False)] ^= True
            masks.append(mask)
    masks = np.array(masks[:n])[rng.permutation(n)]  # [n, d], original order scrambled
    weights = rng.standard_normal((d, n)).astype(np.float32) * masks.T
    return torch.from_numpy(weights)


def make_exports(root: Path, **overrides) -> Path:
    """clustering_characterization/{method}/layer{L}-{component}.pt (+ a summary file)."""
    shapes = {"mlp.down_proj": (48, 96), "self_attn.q_proj": (64, 64)}
    for m, method in enumerate(overrides.get("methods", METHODS)):
        folder = root / method
        folder.mkdir(parents=True)
        (folder / "prune_summary.json").write_text("{}")
        for layer in overrides.get("layers", LAYERS):
            for c, component in enumerate(overrides.get("components", COMPONENTS)):
                d, n = shapes.get(component, (40, 24))
                matrix = planted_matrix(d, n, seed=100 * m + 10 * layer + c)
                torch.save(matrix, folder / f"layer{layer}-{component}.pt")
    return root


@pytest.fixture
def exports(tmp_path) -> Path:
    return make_exports(tmp_path / "clustering_characterization")


def scan(exports: Path, out: Path, **kwargs):
    return run_scan(matrices_dir=exports, out=out, **kwargs)


def test_one_row_per_matrix_with_the_specified_columns(exports, tmp_path):
    result = scan(exports, tmp_path / "scan")
    with open(result.csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        raw = list(reader)
    assert tuple(reader.fieldnames) == COLUMNS
    keys = [(r["method"], int(r["layer"]), r["component"]) for r in raw]
    expected = [
        (m, layer, c)
        for m in METHODS
        for layer in LAYERS
        for c in ("self_attn.q_proj", "mlp.down_proj")  # decoder order
    ]
    assert keys == expected
    down = next(r for r in result.rows if r["component"] == "mlp.down_proj")
    assert (down["rows"], down["cols"], down["n_features"], down["d"]) == (48, 96, 96, 48)
    for row in result.rows:
        assert 0.4 < row["sparsity"] < 0.6
        assert 0 <= row["nn_hamming_min"] <= row["nn_hamming_median"] <= row["nn_hamming_max"]
        assert row["nn_hamming_min"] <= row["nn_hamming_mean"] <= row["nn_hamming_max"]
        gain = row["coherence_clustered"] - row["coherence_original"]
        assert row["coherence_gain"] == pytest.approx(gain)
    assert result.computed == 8 and result.resumed == 0
    assert not partial_dir(result.out_dir).exists()


def test_rows_axis_swaps_features(exports, tmp_path):
    result = scan(exports, tmp_path / "scan", axis="rows", methods=["wanda"])
    down = next(r for r in result.rows if r["component"] == "mlp.down_proj")
    assert (down["n_features"], down["d"]) == (48, 96)


def test_clustered_beats_random_on_planted_blocks(exports, tmp_path):
    result = scan(exports, tmp_path / "scan")
    for row in result.rows:
        assert row["coherence_clustered"] >= row["coherence_random"]
        # Groups of 8 sharing a 50% zero pattern with 2 flips each: ~0.5 - 16/d when found.
        assert row["coherence_clustered"] > 0.2
        assert row["coherence_random"] < 0.05
        assert row["nn_hamming_max"] <= 4 / row["d"]  # every feature has a group mate


@pytest.mark.parametrize("order_by", list(ORDERINGS))
@pytest.mark.parametrize("block_size", [1, 3, 8, 10])
def test_orderings_are_permutations_that_find_planted_blocks(order_by, block_size):
    masks = planted_matrix(64, 45, seed=7).numpy().T != 0  # [45, 64]
    order = ORDERINGS[order_by](masks, block_size, 0)
    np.testing.assert_array_equal(np.sort(order), np.arange(45))
    if block_size == 8:
        random = block_coherence(masks, np.random.default_rng(0).permutation(45), 8)
        assert block_coherence(masks, order, 8) > random + 0.15


def test_greedy_union_by_hand():
    # Features 1 and 3 are the sparsest (one non-zero each): the lower index, 1, starts the
    # first block. Against its union {pos 0}, feature 3 adds no new non-zero position, feature
    # 0 adds one, feature 2 three, so 3 joins. The second block is 0 (sparser) then 2.
    masks = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [0, 1, 1, 1], [1, 0, 0, 0]], dtype=bool)
    np.testing.assert_array_equal(greedy_union_order(masks, 2), [1, 3, 0, 2])
    assert block_coherence(masks, [1, 3, 0, 2], 2) == pytest.approx((3 / 4 + 0 / 4) / 2)


def test_heatmaps_are_png_files(exports, tmp_path):
    result = scan(exports, tmp_path / "scan")
    expected = {f"heatmap_{m}_{metric}.png" for m in METHODS for metric in HEATMAP_METRICS}
    assert {p.name for p in result.heatmaps} == expected
    for path in result.heatmaps:
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000


def test_config_json(exports, tmp_path):
    result = scan(exports, tmp_path / "scan", block_size=4, seed=3)
    saved = json.loads(result.config_path.read_text())
    assert saved["config"]["block_size"] == 4 and saved["config"]["seed"] == 3
    assert saved["config"]["methods"] == list(METHODS)
    assert saved["n_matrices"] == 8 and saved["columns"] == list(COLUMNS)


def test_deterministic(exports, tmp_path):
    first = scan(exports, tmp_path / "a")
    second = scan(exports, tmp_path / "b")
    assert first.csv_path.read_bytes() == second.csv_path.read_bytes()
    other_seed = scan(exports, tmp_path / "c", seed=1)
    assert other_seed.csv_path.read_bytes() != first.csv_path.read_bytes()


def test_random_order_does_not_depend_on_the_methods_scanned(exports, tmp_path):
    both = scan(exports, tmp_path / "both")
    one = scan(exports, tmp_path / "one", methods=["sparsegpt"])
    assert one.rows == [r for r in both.rows if r["method"] == "sparsegpt"]


class Interrupted(Exception):
    """Stands for Ctrl-C (a real KeyboardInterrupt would stop pytest itself)."""


def interrupt_after(monkeypatch, n_ok: int) -> list:
    """Make scan_matrix fail after ``n_ok`` matrices; returns the list of measured keys."""
    real = REAL_SCAN_MATRIX
    calls = []

    def flaky(job, config, device):
        if len(calls) >= n_ok:
            raise Interrupted
        calls.append(job.key)
        return real(job, config, device)

    monkeypatch.setattr(scan_module, "scan_matrix", flaky)
    return calls


def count_calls(monkeypatch) -> list:
    real = REAL_SCAN_MATRIX
    calls = []

    def counting(job, config, device):
        calls.append(job.key)
        return real(job, config, device)

    monkeypatch.setattr(scan_module, "scan_matrix", counting)
    return calls


def test_resume_does_not_recompute_or_duplicate(exports, tmp_path, monkeypatch):
    fresh = scan(exports, tmp_path / "fresh")
    out = tmp_path / "scan"
    first = interrupt_after(monkeypatch, 3)
    with pytest.raises(Interrupted):
        scan(exports, out)
    assert not out.exists()
    partial_rows = read_scan_csv(partial_dir(out) / "scan.csv")
    assert len(partial_rows) == 3

    second = count_calls(monkeypatch)
    result = scan(exports, out)
    assert len(second) == 5 and not set(first) & set(second)
    assert (result.computed, result.resumed) == (5, 3)
    assert out.joinpath("scan.csv").read_bytes() == fresh.csv_path.read_bytes()
    assert not partial_dir(out).exists()


def test_resume_ignores_a_truncated_last_line(exports, tmp_path, monkeypatch):
    out = tmp_path / "scan"
    interrupt_after(monkeypatch, 2)
    with pytest.raises(Interrupted):
        scan(exports, out)
    partial_csv = partial_dir(out) / "scan.csv"
    text = partial_csv.read_text()
    partial_csv.write_text(text + text.splitlines()[-1][:20])  # a torn third row
    calls = count_calls(monkeypatch)
    result = scan(exports, out)
    assert (result.computed, result.resumed, len(calls)) == (6, 2, 6)
    assert len(read_scan_csv(result.csv_path)) == 8


def test_partial_run_with_other_settings_is_not_resumed(exports, tmp_path, monkeypatch):
    out = tmp_path / "scan"
    interrupt_after(monkeypatch, 3)
    with pytest.raises(Interrupted):
        scan(exports, out, block_size=4)
    calls = count_calls(monkeypatch)
    result = scan(exports, out, block_size=8)
    assert (result.computed, result.resumed, len(calls)) == (8, 0, 8)


def test_rerun_replaces_a_finished_scan(exports, tmp_path):
    out = tmp_path / "scan"
    scan(exports, out, methods=["wanda", "sparsegpt"])
    result = scan(exports, out, methods=["wanda"])
    assert {r["method"] for r in read_scan_csv(result.csv_path)} == {"wanda"}
    assert not (out / "heatmap_sparsegpt_coherence_clustered.png").exists()


def test_summarize_by_hand():
    rows = [
        dict(method="w", component="mlp.down_proj", coherence_original=0.1,
             coherence_random=0.0, coherence_clustered=0.3, nn_hamming_mean=0.2),
        dict(method="w", component="mlp.down_proj", coherence_original=0.3,
             coherence_random=0.2, coherence_clustered=0.5, nn_hamming_mean=0.4),
        dict(method="w", component="self_attn.q_proj", coherence_original=0.0,
             coherence_random=0.0, coherence_clustered=0.1, nn_hamming_mean=0.1),
    ]  # fmt: skip
    summary = summarize(rows)
    assert [s["component"] for s in summary] == ["self_attn.q_proj", "mlp.down_proj"]
    down = summary[1]
    assert down["layers"] == 2
    assert down["coherence_original"] == pytest.approx(0.2)
    assert down["coherence_clustered"] == pytest.approx(0.4)
    assert down["nn_hamming_mean"] == pytest.approx(0.3)


def bad_inputs(tmp_path: Path) -> dict[str, Path]:
    empty = tmp_path / "empty"
    (empty / "wanda").mkdir(parents=True)
    (empty / "wanda" / "notes.txt").write_text("x")
    (empty / "sparsegpt").mkdir()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    return {"empty": empty, "file": a_file, "missing": tmp_path / "nowhere"}


BAD = [
    (dict(matrices_dir="{missing}"), FileNotFoundError, "does not exist"),
    (dict(matrices_dir="{file}"), NotADirectoryError, "is a file, not a folder"),
    (dict(matrices_dir="{empty}"), ValueError, "no matrix files found in"),
    (dict(methods=["wanda", "obs"]), ValueError, "unknown method 'obs'.*sparsegpt, wanda"),
    (dict(methods=""), ValueError, "--methods is empty"),
    (dict(methods="wanda,wanda"), ValueError, "lists a method twice"),
    (dict(block_size=0), ValueError, "--block-size must be >= 1, got 0"),
    (dict(block_size=2.5), TypeError, "--block-size must be an integer"),
    (dict(axis="diagonal"), ValueError, "--axis must be 'columns' or 'rows'"),
    (dict(order_by="spectral"), ValueError, "--order-by must be one of greedy, nearest"),
    (dict(device="tpu"), ValueError, "--device must be auto, cpu or cuda"),
]


@pytest.mark.parametrize("kwargs, error, match", BAD, ids=[m for *_, m in BAD])
def test_bad_inputs_fail_before_writing(exports, tmp_path, kwargs, error, match):
    paths = bad_inputs(tmp_path)
    kwargs = {k: v.format(**paths) if isinstance(v, str) else v for k, v in kwargs.items()}
    kwargs.setdefault("matrices_dir", exports)
    out = tmp_path / "scan"
    with pytest.raises(error, match=match):
        run_scan(out=out, **kwargs)
    assert not out.exists() and not partial_dir(out).exists()


def test_config_accepts_a_comma_string():
    assert ScanConfig(methods=" wanda, sparsegpt ").methods == ["wanda", "sparsegpt"]


def test_cli_command(exports, tmp_path):
    from featgeo.cli import _one_line_errors
    from featgeo.cli.hamming_scan import scan as scan_command

    app = typer.Typer()
    app.command()(_one_line_errors(scan_command))
    runner = CliRunner()
    out = tmp_path / "scan"
    args = ["--matrices-dir", str(exports), "--out", str(out), "--device", "cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "mlp.down_proj" in result.output and "8 matrices measured" in result.output
    assert len(read_scan_csv(out / "scan.csv")) == 8
    bad = runner.invoke(app, [*args, "--methods", "obs"])
    assert bad.exit_code == 2 and "unknown method 'obs'" in bad.output


def test_registered_as_featgeo_hamming_scan(exports, tmp_path):
    from featgeo.cli import app

    assert "hamming" in {g.name for g in app.registered_groups}
    result = CliRunner().invoke(
        app,
        ["hamming", "scan", "--matrices-dir", str(exports), "--out", str(tmp_path / "s"),
         "--methods", "wanda"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (tmp_path / "s" / "scan.csv").is_file()


def test_scan_section(exports, tmp_path):
    from featgeo.reports.comparative import ReportSection
    from featgeo.sparsity.scan import scan_section

    result = scan(exports, tmp_path / "results" / "scan")
    section = scan_section(result.csv_path, relative_to=tmp_path / "results")
    assert isinstance(section, ReportSection) and section.title
    assert "| wanda | mlp.down_proj | 2 |" in section.markdown
    assert "](scan/heatmap_wanda_coherence_clustered.png)" in section.markdown
    assert section.html.count("data:image/png;base64,") == 6
    assert "<table>" in section.html
    default = scan_section(result.csv_path)
    assert "](heatmap_sparsegpt_nn_hamming_mean.png)" in default.markdown


def test_scan_section_errors(tmp_path):
    from featgeo.sparsity.scan import scan_section

    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan_section(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="is not a scan CSV"):
        scan_section(bad)
