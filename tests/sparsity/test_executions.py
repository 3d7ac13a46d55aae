"""Library tests of the single / multi-execution analyses on small hand-built matrices."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from featgeo.files import write_json
from featgeo.sparsity import DenseMatrixWarning
from featgeo.sparsity.executions import (
    aggregate_metrics,
    draw_references,
    multi_to_json,
    parse_export_path,
    run_multi,
    run_single,
    single_to_json,
)
from featgeo.sparsity.metrics import UNDEFINED_ZERO_WITHIN
from featgeo.sparsity.references import BETWEEN_PAIRS_NOTE


def planted_matrix(
    d: int = 64, n: int = 40, groups: tuple[range, ...] = (), seed: int = 0, density: float = 0.5
) -> torch.Tensor:
    """[d, n] pruned-looking matrix; the columns of each group share one random mask."""
    rng = np.random.default_rng(seed)
    masks = rng.random((d, n)) < density  # [d, n]
    for group in groups:
        masks[:, list(group)] = (rng.random(d) < density)[:, None]
    values = rng.choice([-1.0, 1.0], size=(d, n)) * rng.uniform(0.5, 2.0, size=(d, n))
    return torch.from_numpy(np.where(masks, values, 0.0).astype(np.float32))


def save(matrix: torch.Tensor, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npy":
        np.save(path, matrix.numpy())
    elif path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({"weight": matrix.contiguous()}, path)
    else:
        torch.save(matrix, path)
    return path


def toy_matrix() -> torch.Tensor:
    """D=4, six feature columns: reference r, then A B A B at Hamming 1 from r, then r's twin.

    r = 1100, A = 1110, B = 1101. With ties to the lower index the neighbours of feature 0
    are [5, 1, 2, 3, 4] (distances 0, 1, 1, 1, 1), so the analysed order is r r A B A B.
    """
    cols = {"r": [1, 1, 0, 0], "A": [1, 1, 1, 0], "B": [1, 1, 0, 1]}
    masks = np.array([cols[c] for c in "rABABr"], dtype=np.float32).T  # [D=4, N=6]
    return torch.from_numpy(masks * np.arange(1, 25, dtype=np.float32).reshape(4, 6))


def test_toy_metrics_by_hand(tmp_path):
    path = save(toy_matrix(), tmp_path / "toy.pt")
    a = run_single(path, feature_idx=0, n_features=5, n_clusters=3, block_size=2).analysis
    assert a.analysed.tolist() == [0, 5, 1, 2, 3, 4]
    assert a.neighbour_distances.tolist() == [0, 1, 1, 1, 1]
    # three distinct masks, three clusters: every point sits on its centroid
    assert a.centroid.mean_within_centroid_distance == 0
    assert a.centroid.centroid_separation_ratio is None  # between / 0: undefined, no band
    assert a.centroid.centroid_separation_band is None
    assert a.centroid.centroid_separation_ratio_undefined == UNDEFINED_ZERO_WITHIN
    assert a.centroid.cluster_sizes == [2, 2, 2] and a.centroid.cluster_balance == 0
    # centroids r, A, B: |r-A| = |r-B| = 1, |A-B| = sqrt(2)
    assert a.centroid.mean_between_centroid_distance == pytest.approx((2 + math.sqrt(2)) / 3)
    assert a.hamming.within_per_cluster == [0, 0, 0] and a.hamming.mean_within_hamming == 0
    # normalized Hamming r-A = r-B = 1/4, A-B = 2/4
    assert a.hamming.mean_between_hamming == pytest.approx(1 / 3)
    assert a.hamming.hamming_separation_ratio is None
    assert a.hamming_stats["hamming_mean"] == pytest.approx(0.8)
    assert a.hamming_stats["hamming_std"] == pytest.approx(0.4)
    assert a.hamming_stats["hamming_range_normalized"] == pytest.approx(0.25)
    # unsorted blocks: {r, r} zero at 2 of 4 positions, {A, B} and {A, B} never all zero
    assert a.mmm_block_coherence_unsorted == pytest.approx((0.5 + 0 + 0) / 3)
    # sorted by cluster, each block is one cluster: {r, r} 2/4, {A, A} 1/4, {B, B} 1/4
    assert a.mmm_block_coherence == pytest.approx((0.5 + 0.25 + 0.25) / 3)


def test_two_planted_clusters_have_zero_within(tmp_path):
    matrix = planted_matrix(groups=(range(0, 20), range(20, 40)))
    path = save(matrix, tmp_path / "two.pt")
    result = run_multi(path, n_executions=3, n_features=39, n_clusters=2, progress=False)
    for a in result.analyses:
        assert sorted(a.centroid.cluster_sizes) == [20, 20]
        assert a.centroid.mean_within_centroid_distance == 0
        assert a.hamming.mean_within_hamming == 0
        assert a.centroid.centroid_separation_band is None
    agg = result.aggregate()
    assert agg["centroid_separation_ratio"] == {
        "mean": None,
        "std": None,
        "n_undefined": 3,
        "undefined_reasons": {UNDEFINED_ZERO_WITHIN: 3},
    }
    assert agg["mean_within_hamming"] == {"mean": 0.0, "std": 0.0, "n_undefined": 0}
    out = write_json(tmp_path / "two.json", multi_to_json(result))
    loaded = json.loads(out.read_text())
    assert loaded["aggregate"]["hamming_separation_ratio"]["n_undefined"] == 3
    assert loaded["separation_bands"] == {
        "excellent": 0,
        "good": 0,
        "moderate": 0,
        "poor": 0,
        "undefined": 3,
    }


def brute_force_neighbours(masks: np.ndarray, index: int, n: int) -> list[int]:
    """masks: [N, D]; the n nearest other features by (distance, index), the slow way."""
    dist = [(int((masks[j] != masks[index]).sum()), j) for j in range(len(masks)) if j != index]
    return [j for _, j in sorted(dist)[:n]]


@pytest.mark.parametrize("feature_idx", [0, 7, 39])
def test_neighbours_exact_with_index_ties(tmp_path, feature_idx):
    # three mask patterns repeated at scattered indices: many exact ties at every distance
    groups = (range(0, 40, 3), range(1, 40, 3), range(2, 40, 5))
    matrix = planted_matrix(groups=groups, seed=3)
    path = save(matrix, tmp_path / "ties.pt")
    a = run_single(path, feature_idx=feature_idx, n_features=20, n_clusters=4).analysis
    masks = (matrix != 0).numpy().T
    assert a.analysed[1:].tolist() == brute_force_neighbours(masks, feature_idx, 20)
    assert len(set(a.neighbour_distances.tolist())) < 20  # ties really happened


def test_reference_drawn_with_seed(tmp_path):
    path = save(planted_matrix(), tmp_path / "m.pt")
    result = run_single(path, n_features=8, n_clusters=2, seed=5)
    assert result.feature_drawn
    # legacy numpy, as the original script: np.random.seed(5); np.random.randint(0, 40)
    assert result.analysis.feature_idx == int(np.random.RandomState(5).randint(0, 40))
    generator = run_single(path, n_features=8, n_clusters=2, seed=5, rng="generator")
    assert generator.analysis.feature_idx == int(np.random.default_rng(5).integers(40))


def test_multi_same_seed_byte_identical_json(tmp_path):
    path = save(planted_matrix(groups=(range(0, 10),)), tmp_path / "m.pt")
    kwargs = dict(n_executions=4, n_features=12, n_clusters=3, progress=False)
    first = write_json(tmp_path / "a.json", multi_to_json(run_multi(path, seed=7, **kwargs)))
    second = write_json(tmp_path / "b.json", multi_to_json(run_multi(path, seed=7, **kwargs)))
    assert first.read_bytes() == second.read_bytes()
    other = run_multi(path, seed=8, **kwargs)
    assert json.loads(first.read_text())["config"]["seed"] == 7
    refs = [e["feature_idx"] for e in json.loads(first.read_text())["executions"]]
    # What the original script does: np.random.seed(seed), then randint(0, N) per execution.
    state = np.random.RandomState(7)
    assert refs == [int(state.randint(0, 40)) for _ in range(4)]
    assert other.feature_indices != refs


def test_draw_references_follow_the_documented_streams():
    # legacy: the original scripts' global-state calls, one randint per execution
    np.random.seed(42)
    legacy = [int(np.random.randint(0, 1536)) for _ in range(6)]
    assert draw_references(1536, 6, 42) == legacy
    assert legacy[0] == 1126  # the example in featgeo.sparsity.references
    # generator: default_rng(seed) without replacement
    expected = np.random.default_rng(3).choice(50, size=5, replace=False).tolist()
    assert draw_references(50, 5, 3, rng="generator") == expected
    assert len(set(expected)) == 5


def test_multi_json_layout(tmp_path):
    path = save(planted_matrix(), tmp_path / "wanda" / "layer3-mlp.down_proj.pt")
    result = run_multi(path, n_executions=2, n_features=6, n_clusters=2, progress=False)
    data = multi_to_json(result)
    assert list(data) == [
        "featgeo_version",
        "matrix",
        "config",
        "aggregate",
        "separation_bands",
        "executions",
    ]
    matrix = data["matrix"]
    assert (matrix["method"], matrix["layer"], matrix["component"]) == ("wanda", 3, "mlp.down_proj")
    assert matrix["name"] == "layer3-mlp.down_proj" and matrix["shape"] == [64, 40]
    assert data["config"] == {
        "n_executions": 2,
        "n_features": 6,
        "n_clusters": 2,
        "seed": 42,
        "axis": "columns",
        "cluster_on": "masks",
        "block_size": 8,
        "rng": "legacy",
        "reference_draw": "legacy numpy: np.random.seed(seed); np.random.randint(0, N) per "
        "execution (with replacement)",
        "kmeans_random_state": "seed + execution index",
        "between_cluster_hamming_pairs": BETWEEN_PAIRS_NOTE,
        "kmeans_random_states": [42, 43],
    }
    assert list(data["aggregate"]) == sorted(data["aggregate"])
    assert (
        "feature_idx" not in data["aggregate"] and "centroid_separation_ratio" in data["aggregate"]
    )
    execution = data["executions"][1]
    assert execution["execution"] == 1 and len(execution["neighbours"]) == 6
    assert {"feature", "hamming", "hamming_normalized"} == set(execution["neighbours"][0])
    single = single_to_json(run_single(path, feature_idx=3, n_features=6, n_clusters=2))
    assert single["config"]["feature_idx"] == 3 and not single["config"]["feature_drawn"]


@pytest.mark.parametrize(
    "path,expected",
    [
        ("out/sparsegpt/layer12-self_attn.q_proj.pt", ("sparsegpt", 12, "self_attn.q_proj")),
        ("m/layer0-mlp.up_proj.safetensors", ("m", 0, "mlp.up_proj")),
        ("somewhere/weights.pt", (None, None, None)),
    ],
)
def test_parse_export_path(path, expected):
    assert parse_export_path(path) == expected


def test_aggregate_mean_std():
    rows = [{"a": 1.0, "seed": 3, "band": "x"}, {"a": 3.0, "seed": 3, "band": "y"}]
    assert aggregate_metrics(rows) == {"a": {"mean": 2.0, "std": 1.0, "n_undefined": 0}}


@pytest.mark.parametrize("suffix", [".pt", ".npy", ".safetensors"])
def test_file_formats_agree(tmp_path, suffix):
    matrix = planted_matrix(groups=(range(5, 15),))
    a = run_single(
        save(matrix, tmp_path / f"m{suffix}"), feature_idx=5, n_features=10, n_clusters=2
    ).analysis
    b = run_single(
        save(matrix, tmp_path / "ref.pt"), feature_idx=5, n_features=10, n_clusters=2
    ).analysis
    assert a.metrics() == b.metrics()


def test_cluster_on_weights(tmp_path):
    matrix = planted_matrix(groups=(range(0, 20), range(20, 40)))
    matrix[:, 20:] = matrix[:, 20:21]  # group B: identical weights, not only identical masks
    matrix[:, :20] = matrix[:, :1]
    path = save(matrix, tmp_path / "w.pt")
    result = run_single(path, feature_idx=0, n_features=39, n_clusters=2, cluster_on="weights")
    a = result.analysis
    assert a.cluster_on == "weights" and sorted(a.centroid.cluster_sizes) == [20, 20]
    assert a.centroid.mean_within_centroid_distance == 0
    masks_run = run_single(path, feature_idx=0, n_features=39, n_clusters=2).analysis
    assert (
        a.centroid.mean_between_centroid_distance
        != masks_run.centroid.mean_between_centroid_distance
    )


def test_axis_rows_is_the_transpose(tmp_path):
    matrix = planted_matrix(groups=(range(3, 12),))
    cols = run_single(
        save(matrix, tmp_path / "m.pt"), feature_idx=4, n_features=10, n_clusters=3, seed=1
    )
    rows = run_single(
        save(matrix.T.contiguous(), tmp_path / "t.pt"),
        feature_idx=4,
        n_features=10,
        n_clusters=3,
        seed=1,
        axis="rows",
    )
    assert rows.matrix.n_features_total == 40 and rows.matrix.d == 64
    assert rows.matrix.shape == (40, 64) and rows.matrix.axis == "rows"
    assert rows.analysis.metrics() == cols.analysis.metrics()
    assert rows.analysis.analysed.tolist() == cols.analysis.analysed.tolist()


def test_dense_matrix_warns_and_runs(tmp_path):
    path = save(torch.rand(16, 12) + 0.5, tmp_path / "dense.pt")
    with pytest.warns(DenseMatrixWarning, match="dense"):
        result = run_single(path, feature_idx=0, n_features=5, n_clusters=1)
    assert result.analysis.neighbour_distances.tolist() == [0] * 5


BAD = [
    ("missing", {}, FileNotFoundError, "does not exist"),
    ("dict", {}, ValueError, "holds a dict, not a tensor"),
    ("exploit", {}, ValueError, "refused by weights_only loading"),
    ("3d", {}, ValueError, "must be a 2-D matrix, got shape \\(2, 3, 4\\)"),
    ("nan", {}, ValueError, "contains NaN or inf"),
    ("ok", {"n_features": 40}, ValueError, "--n-features 40 is impossible.*39 others"),
    ("ok", {"feature_idx": 40}, ValueError, "--feature-idx 40 is out of range"),
    ("ok", {"feature_idx": -1}, ValueError, "--feature-idx -1 is out of range"),
    ("ok", {"n_features": 5, "n_clusters": 7}, ValueError, "--n-clusters 7 is larger than the 6"),
    ("ok", {"axis": "diagonal"}, ValueError, "--axis must be 'columns' or 'rows'"),
    ("ok", {"cluster_on": "both"}, ValueError, "--cluster-on must be 'masks' or 'weights'"),
    ("ok", {"block_size": 0}, ValueError, "--block-size must be >= 1"),
]


@pytest.mark.parametrize("name,kwargs,error,match", BAD, ids=[f"{b[0]}-{b[3][:24]}" for b in BAD])
def test_bad_inputs(tmp_path, bad_matrix_files, name, kwargs, error, match):
    paths = {**bad_matrix_files, "ok": save(planted_matrix(), tmp_path / "ok.pt")}
    with pytest.raises(error, match=match):
        run_single(paths[name], **{"feature_idx": 0, "n_features": 8, **kwargs})
    multi_kwargs = {k: v for k, v in kwargs.items() if k != "feature_idx"}
    if multi_kwargs or "feature_idx" not in kwargs:
        with pytest.raises(error, match=match):
            run_multi(paths[name], progress=False, **{"n_features": 8, **multi_kwargs})
    assert not (tmp_path / "MARKER").exists()


def test_too_many_executions(tmp_path):
    path = save(planted_matrix(), tmp_path / "m.pt")
    # --rng generator draws without replacement; legacy (the original's) with replacement
    with pytest.raises(ValueError, match="--n-executions 41 is larger than the 40 features"):
        run_multi(path, n_executions=41, n_features=8, progress=False, rng="generator")
    with pytest.raises(ValueError, match="--rng must be one of legacy, generator, got 'x'"):
        run_multi(path, n_executions=2, n_features=8, progress=False, rng="x")
    with pytest.raises(ValueError, match="--n-executions must be >= 1"):
        run_multi(path, n_executions=0, n_features=8, progress=False)
