"""Degenerate clusterings (issue 9, case 06) and the original scripts' seeding (issue 9 §1).

Inputs are built here with a known number of distinct masks; expected values are computed by
hand. Every JSON file the commands write is parsed strictly (no NaN / Infinity).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from featgeo.cli import app
from featgeo.files import write_json
from featgeo.sparsity.executions import multi_to_json, run_multi, run_single, single_to_json
from featgeo.sparsity.metrics import (
    UNDEFINED_ZERO_WITHIN,
    UNDEFINED_ZERO_WITHIN_HAMMING,
    ClusterCountWarning,
    centroid_metrics,
    hamming_metrics,
)

runner = CliRunner()

# Three hand-made masks of D = 16: |p0 - p1| = 2 positions, |p0 - p2| = 12, |p1 - p2| = 14.
P0 = [1] * 4 + [0] * 12
P1 = [1] * 6 + [0] * 10
P2 = [0] * 8 + [1] * 8
D = 16


def strict_loads(text: str):
    """RFC 8259 JSON: NaN / Infinity / -Infinity are errors, not numbers."""

    def refuse(constant: str):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def strict_load(path: Path):
    return strict_loads(Path(path).read_text(encoding="utf-8"))


def three_mask_matrix(n: int = 30) -> torch.Tensor:
    """[D, n]: column j has mask P{j % 3} (non-zero values 1..), so 3 distinct masks."""
    patterns = np.array([P0, P1, P2], dtype=np.float32)  # [3, D]
    masks = patterns[np.arange(n) % 3].T  # [D, n]
    return torch.from_numpy(masks * np.arange(1, D * n + 1, dtype=np.float32).reshape(D, n))


def save(matrix: torch.Tensor, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(matrix, path)
    return path


# -- metrics over the clusters that exist ------------------------------------------------------
def test_centroid_metrics_ignore_an_empty_cluster():
    points = np.array([[0.0, 0.0], [2.0, 0.0], [10.0, 0.0], [10.0, 4.0]])
    labels = np.array([0, 0, 2, 2])  # cluster 1 owns no point; its centre is far away
    centroids = np.array([[1.0, 0.0], [50.0, 50.0], [10.0, 2.0]])
    m = centroid_metrics(points, labels, centroids)
    assert m.mean_within_centroid_distance == pytest.approx(1.5)
    # only the pair (0, 2) of existing clusters: the empty centre must not enter the mean
    assert m.mean_between_centroid_distance == pytest.approx(math.hypot(9, 2))
    assert m.centroid_separation_ratio == pytest.approx(math.hypot(9, 2) / 1.5)
    assert m.centroid_separation_band == "excellent"
    assert (m.n_clusters_effective, m.n_empty_clusters) == (2, 1)
    assert m.cluster_sizes == [2, 0, 2] and m.cluster_balance == 0.0  # std of [2, 2]


def test_hamming_metrics_ignore_an_empty_cluster():
    normalized = np.array(
        [[0, 0.2, 0.4, 0.9], [0.2, 0, 0.6, 0.9], [0.4, 0.6, 0, 0.8], [0.9, 0.9, 0.8, 0]]
    )
    hm = hamming_metrics(normalized, np.array([0, 0, 0, 2]), k=3)
    assert hm.within_per_cluster == pytest.approx([0.4, None, 0.0])
    assert hm.mean_within_hamming == pytest.approx(0.2)  # (0.4 + 0) / 2, not / 3
    assert hm.mean_between_hamming == pytest.approx((0.9 + 0.9 + 0.8) / 3)
    assert hm.hamming_separation_ratio == pytest.approx((2.6 / 3) / 0.2)
    assert hm.between_matrix[1] == [None, None, None]


def test_one_cluster_has_no_between_distance():
    points = np.zeros((5, 3))
    m = centroid_metrics(points, np.zeros(5, int), np.zeros((1, 3)))
    assert m.mean_between_centroid_distance is None and m.centroid_separation_ratio is None
    assert "only 1 non-empty cluster" in m.centroid_separation_ratio_undefined
    assert m.centroid_separation_band is None


def test_floating_point_noise_counts_as_zero_within():
    """k-means centres of identical 0/1 masks sit ~1e-16 away: still 0, not a 1e15 ratio."""
    a, b = np.array([1.0, 0.0, 1.0]), np.array([0.0, 1.0, 0.0])
    points = np.stack([a, a, a, b, b])
    centroids = np.stack([a + 4e-16, b])
    m = centroid_metrics(points, np.array([0, 0, 0, 1, 1]), centroids)
    assert m.centroid_separation_ratio is None
    assert m.centroid_separation_ratio_undefined == UNDEFINED_ZERO_WITHIN


# -- more clusters than distinct masks: explicit reduction ------------------------------------
def test_single_reduces_k_to_the_distinct_masks(tmp_path):
    path = save(three_mask_matrix(), tmp_path / "dup3.pt")
    with pytest.warns(ClusterCountWarning, match="--n-clusters 8 is more than the 3 distinct"):
        result = run_single(path, feature_idx=0, n_features=29, n_clusters=8)
    a = result.analysis
    assert (a.n_clusters_requested, a.n_clusters, a.n_distinct_points) == (8, 3, 3)
    assert sorted(a.centroid.cluster_sizes) == [10, 10, 10] and a.centroid.n_empty_clusters == 0
    # centroids are the three masks: mean of sqrt(2), sqrt(12), sqrt(14)
    expected = (math.sqrt(2) + math.sqrt(12) + math.sqrt(14)) / 3
    assert a.centroid.mean_between_centroid_distance == pytest.approx(expected)
    assert a.hamming.mean_between_hamming == pytest.approx((2 + 12 + 14) / (3 * D))
    assert a.centroid.centroid_separation_ratio is None
    assert a.hamming.hamming_separation_ratio is None
    data = strict_loads(json.dumps(single_to_json(result), allow_nan=False))
    analysis, config = data["analysis"], data["config"]
    assert (config["n_clusters_requested"], config["n_clusters"]) == (8, 3)
    assert analysis["centroid_separation_ratio"] is None
    assert analysis["centroid_separation_ratio_undefined"] == UNDEFINED_ZERO_WITHIN
    assert analysis["centroid_separation_band"] is None
    assert analysis["hamming_separation_ratio_undefined"] == UNDEFINED_ZERO_WITHIN_HAMMING
    assert analysis["n_empty_clusters"] == 0 and analysis["n_clusters_effective"] == 3


def test_no_warning_when_k_fits(tmp_path):
    path = save(three_mask_matrix(), tmp_path / "dup3.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ClusterCountWarning)
        a = run_single(path, feature_idx=0, n_features=29, n_clusters=3).analysis
    assert a.n_clusters == a.n_clusters_requested == 3


def test_cli_single_on_duplicates_and_all_zero(tmp_path):
    dup = save(three_mask_matrix(), tmp_path / "dup3.pt")
    out = tmp_path / "dup3.json"
    result = runner.invoke(
        app,
        ["hamming", "single", str(dup), "--feature-idx", "0", "--n-features", "29",
         "--n-clusters", "8", "--output-json", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "ClusterCountWarning: --n-clusters 8 is more than the 3 distinct masks" in text
    assert "undefined (all points of every cluster coincide" in text
    assert "excellent" not in text and "inf" not in text.replace("info", "")
    assert strict_load(out)["analysis"]["n_clusters_requested"] == 8

    zero = save(torch.zeros(64, 128), tmp_path / "allzero.pt")
    out = tmp_path / "allzero.json"
    result = runner.invoke(
        app,
        ["hamming", "single", str(zero), "--n-features", "16", "--n-clusters", "4",
         "--output-json", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "k=1; 4 requested, 1 distinct point)" in text
    assert "undefined (only 1 non-empty cluster" in text and "excellent" not in text
    analysis = strict_load(out)["analysis"]
    assert analysis["n_clusters"] == 1 and analysis["mean_between_centroid_distance"] is None
    assert analysis["hamming_separation_ratio"] is None


def test_multi_and_report_on_duplicates(tmp_path):
    results = tmp_path / "results"
    dup = save(three_mask_matrix(), tmp_path / "wanda" / "layer1-mlp.down_proj.pt")
    out = results / "wanda_dup.json"
    result = runner.invoke(
        app,
        ["hamming", "multi", str(dup), "--n-executions", "3", "--n-features", "20",
         "--n-clusters", "8", "--output-json", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = strict_load(out)
    agg = data["aggregate"]["centroid_separation_ratio"]
    assert agg["mean"] is None and agg["n_undefined"] == 3
    assert agg["undefined_reasons"] == {UNDEFINED_ZERO_WITHIN: 3}
    assert data["separation_bands"]["undefined"] == 3
    assert all(e["n_clusters_requested"] == 8 and e["n_clusters"] <= 3 for e in data["executions"])
    # a healthy matrix by another method, so the report has something to compare
    rng = np.random.default_rng(0)
    healthy = torch.from_numpy((rng.random((32, 40)) < 0.5).astype(np.float32))
    ok = save(healthy, tmp_path / "sparsegpt" / "layer1-mlp.down_proj.pt")
    write_json(
        results / "sparsegpt_ok.json",
        multi_to_json(run_multi(ok, n_executions=3, n_features=20, n_clusters=4, progress=False)),
    )
    report = runner.invoke(
        app, ["hamming", "report", "--results-dir", str(results), "--out", str(tmp_path / "r")]
    )
    assert report.exit_code == 0, report.output
    md = (tmp_path / "r" / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| wanda L1"))
    assert "undefined (3 of 3 executions: all points of every cluster coincide" in row
    assert "inf" not in row and "excellent" not in row
    assert "**Undefined ratios.**" in md and "Only sparsegpt matrices" not in md
    assert "Nothing to compare: only sparsegpt matrices have a defined" in md
    assert "wanda masks cluster" not in md and "sparsegpt masks cluster" not in md


def test_seeds_on_duplicates_writes_strict_json(tmp_path):
    save(three_mask_matrix(40), tmp_path / "m" / "wanda" / "layer1-mlp.down_proj.pt")
    out = tmp_path / "seeds"
    result = runner.invoke(
        app,
        ["hamming", "seeds", "--method", "wanda", "--component", "mlp.down_proj",
         "--matrices-dir", str(tmp_path / "m"), "--seeds", "2", "--n-similar", "12",
         "--k-values", "2", "8", "--output-dir", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "--k-values 8 is more than the" in " ".join(result.output.split())
    summary = strict_load(out / "summary" / "metrics_summary.json")
    assert summary["config"]["rng"] == "legacy"
    for seed in summary["per_seed"].values():
        k8 = seed["per_k"]["8"]
        assert k8["n_clusters_requested"] == 8 and k8["n_clusters"] <= 3
        assert k8["centroid_separation_ratio"] is None
        assert k8["centroid_separation_ratio_undefined"]
    assert summary["per_k"]["8"]["centroid_separation_ratio"]["mean"] is None


def test_scan_writes_strict_json(tmp_path):
    from featgeo.sparsity.scan import run_scan

    save(three_mask_matrix(40), tmp_path / "m" / "wanda" / "layer1-mlp.down_proj.pt")
    save(torch.zeros(16, 40), tmp_path / "m" / "wanda" / "layer1-mlp.up_proj.pt")
    run_scan(tmp_path / "m", methods="wanda", out=tmp_path / "scan", order_by="kmeans")
    for path in (tmp_path / "scan").rglob("*.json"):
        strict_load(path)
    assert (tmp_path / "scan" / "scan.csv").is_file()


def test_write_json_turns_non_finite_into_null(tmp_path):
    payload = {
        "a": float("nan"),
        "b": [float("inf"), -float("inf"), 1.5],
        "c": np.float32("nan"),
        "d": np.array([1.0, np.inf]),
        "e": torch.tensor([0.5, float("nan")], dtype=torch.bfloat16),
        np.int64(3): np.int64(4),
        "f": (1, 2),
    }
    data = strict_load(write_json(tmp_path / "x.json", payload))
    assert data == {
        "a": None,
        "b": [None, None, 1.5],
        "c": None,
        "d": [1.0, None],
        "e": [0.5, None],
        "3": 4,
        "f": [1, 2],
    }


# -- the original scripts' seeding ---------------------------------------------------------------
def random_sparse(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy((rng.random((rows, cols)) < 0.5) * rng.standard_normal((rows, cols)))


@pytest.mark.parametrize("shape,expected", [((576, 1536), 1126), ((1536, 576), 102)])
def test_seed_42_draws_the_original_feature(tmp_path, shape, expected):
    """np.random.seed(42); np.random.randint(0, N): 1126 of a down_proj, 102 of an up_proj."""
    path = save(random_sparse(*shape).float(), tmp_path / "m.pt")
    result = run_single(path, seed=42, n_features=8, n_clusters=2)
    assert result.feature_drawn and result.analysis.feature_idx == expected
    assert single_to_json(result)["config"]["reference_draw"].startswith("legacy numpy")


def test_cli_single_seed_42_picks_1126(tmp_path):
    path = save(random_sparse(576, 1536).float(), tmp_path / "down.pt")
    out = tmp_path / "s.json"
    result = runner.invoke(
        app,
        ["hamming", "single", str(path), "--seed", "42", "--n-features", "8", "--n-clusters",
         "2", "--output-json", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "reference feature 1126 (drawn with --seed 42, --rng legacy)" in result.output
    config = strict_load(out)["config"]
    assert (
        config["feature_idx"] == 1126 and config["kmeans_random_state"] == "seed + execution index"
    )
    assert "cannot be reproduced" in config["between_cluster_hamming_pairs"]


def test_multi_draws_with_replacement_and_seeds_kmeans_with_seed_plus_i(tmp_path):
    from sklearn.cluster import KMeans

    matrix = random_sparse(24, 30, seed=3).float()
    path = save(matrix, tmp_path / "m.pt")
    result = run_multi(path, n_executions=4, n_features=15, n_clusters=3, seed=7, progress=False)
    state = np.random.RandomState(7)
    assert result.feature_indices == [int(state.randint(0, 30)) for _ in range(4)]
    assert result.config["kmeans_random_states"] == [7, 8, 9, 10]
    masks = (matrix != 0).numpy().T.astype(np.float64)  # [N, D]
    for i, a in enumerate(result.analyses):
        assert a.seed == 7 + i
        km = KMeans(n_clusters=3, n_init=10, random_state=7 + i, algorithm="lloyd")
        np.testing.assert_array_equal(a.labels, km.fit(masks[a.analysed]).labels_)
    # the former scheme is still reachable
    other = run_multi(
        path, n_executions=4, n_features=15, n_clusters=3, seed=7, progress=False, rng="generator"
    )
    assert [a.seed for a in other.analyses] == [7, 7, 7, 7]
    assert len(set(other.feature_indices)) == 4


def test_seeds_reference_per_seed(tmp_path):
    from featgeo.sparsity.seeds import reference_feature

    assert [reference_feature(1536, s) for s in range(3)] == [
        int(np.random.RandomState(s).randint(0, 1536)) for s in range(3)
    ]
    assert reference_feature(1536, 42) == 1126
    assert reference_feature(1536, 42, "generator") == int(np.random.default_rng(42).integers(1536))
