"""Independent oracles for the numbers the sparsity analyses report (issue 10): one row of
``hamming scan`` recomputed by brute force, and the reported sparsity of ``hamming single`` /
``multi`` / ``scan`` on matrices with an exactly known zero fraction (30% and 70%, so that
reporting density instead of sparsity cannot pass). Nothing here calls featgeo to get an
expected value.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from featgeo.cli import app
from featgeo.sparsity.blocks import greedy_union_order

runner = CliRunner()
D, N = 40, 44  # 44 features: five blocks of 8 and a last, shorter block of 4
LEVELS = {0.3: 12, 0.7: 28}  # sparsity -> zeros per feature (of D = 40)
SCAN_CASES = [(0.3, "mlp.down_proj"), (0.7, "mlp.up_proj")]  # (sparsity, component)


def exact_sparsity_matrix(
    d: int, n: int, zeros_per_feature: int, *, group: int = 8, seed: int = 0
) -> torch.Tensor:
    """[d, n] float32 weights; every column (feature) has exactly ``zeros_per_feature`` zeros,
    so the zero fraction is exactly ``zeros_per_feature / d``.

    Consecutive columns come in groups of ``group`` built from one random zero set, each member
    swapping one zero position for a non-zero one (the count stays exact): blocks cut in the
    original order are coherent, shuffled blocks are not.
    """
    rng = np.random.default_rng(seed)
    zero = np.zeros((n, d), dtype=bool)  # [n, d], True = the weight is exactly 0
    for start in range(0, n, group):
        base = rng.choice(d, zeros_per_feature, replace=False)
        for i in range(start, min(start + group, n)):
            zero[i, base] = True
            off = rng.choice(np.flatnonzero(zero[i]))
            on = rng.choice(np.flatnonzero(~zero[i]))
            zero[i, off], zero[i, on] = False, True
    assert (zero.sum(axis=1) == zeros_per_feature).all()
    signs = rng.choice([-1.0, 1.0], size=(n, d))
    values = signs * rng.uniform(0.1, 2.0, size=(n, d))  # never 0 where a weight is kept
    return torch.from_numpy(np.where(zero, 0.0, values).T.astype(np.float32))  # [d, n]


def brute_masks(matrix: torch.Tensor) -> np.ndarray:
    """Feature masks [n, d] of a [d, n] matrix (a feature is a column), by a Python loop."""
    w = matrix.numpy()
    d, n = w.shape
    return np.array([[w[r, c] != 0 for r in range(d)] for c in range(n)], dtype=bool)


def brute_nn_hamming(masks: np.ndarray) -> np.ndarray:
    """Per feature: differing positions to the nearest *other* feature, divided by D."""
    n, d = masks.shape
    out = np.empty(n)
    for i in range(n):
        out[i] = min(int((masks[i] != masks[j]).sum()) for j in range(n) if j != i) / d
    return out


def brute_coherence(masks: np.ndarray, order) -> float:
    """Mean over consecutive blocks (last one possibly shorter) of the fraction of the D
    positions where every feature of the block is zero; blocks of 8."""
    order = list(order)
    d = masks.shape[1]
    scores = []
    for start in range(0, len(order), 8):
        block = order[start : start + 8]
        all_zero = sum(1 for p in range(d) if not any(masks[f, p] for f in block))
        scores.append(all_zero / d)
    return sum(scores) / len(scores)


def brute_greedy_order(masks: np.ndarray, block_size: int = 8) -> list[int]:
    """The documented greedy union ordering, written with Python sets: each block starts at the
    sparsest free feature (lowest index on ties), then repeatedly takes the free feature that
    adds the fewest new non-zero positions to the block's union (lowest index on ties)."""
    support = [set(np.flatnonzero(m).tolist()) for m in masks]
    free = list(range(len(support)))
    order = []
    while free:
        first = min(free, key=lambda f: (len(support[f]), f))
        free.remove(first)
        order.append(first)
        union = set(support[first])
        for _ in range(block_size - 1):
            if not free:
                break
            chosen = min(free, key=lambda f: (len(support[f] - union), f))
            free.remove(chosen)
            order.append(chosen)
            union |= support[chosen]
    return order


def documented_random_order(seed: int, method: str, layer: int, component: str, n: int):
    """The random order the scan documents in scan_config.json: one permutation from
    ``numpy.random.default_rng([seed, crc32("method/layer/component")])``."""
    key = f"{method}/{layer}/{component}".encode()
    return np.random.default_rng([seed, zlib.crc32(key)]).permutation(n)


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> Path:
    """{root}/wanda/layer3-{component}.pt: a 30% sparse down_proj and a 70% sparse up_proj."""
    root = tmp_path_factory.mktemp("oracle") / "clustering_characterization"
    (root / "wanda").mkdir(parents=True)
    for level, component in SCAN_CASES:
        zeros = LEVELS[level]
        matrix = exact_sparsity_matrix(D, N, zeros, seed=int(level * 10))
        assert int((matrix == 0).sum()) == zeros * N  # exactly level * D * N zeros
        torch.save(matrix, root / "wanda" / f"layer3-{component}.pt")
    return root


@pytest.fixture(scope="module")
def scan_rows(exports, tmp_path_factory) -> dict[str, dict]:
    """``featgeo hamming scan`` through the CLI; the CSV read with the csv module."""
    import csv

    out = tmp_path_factory.mktemp("scan") / "scan"
    args = ["hamming", "scan", "--matrices-dir", str(exports), "--methods", "wanda",
            "--out", str(out), "--device", "cpu", "--seed", "5"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    with open(out / "scan.csv", newline="") as fh:
        return {row["component"]: row for row in csv.DictReader(fh)}


# --- one scan row, by brute force -----------------------------------------------------------


@pytest.mark.parametrize("level, component", SCAN_CASES, ids=["30%", "70%"])
def test_scan_row_equals_brute_force(exports, scan_rows, level, component):
    matrix = torch.load(exports / "wanda" / f"layer3-{component}.pt", weights_only=True)
    row = scan_rows[component]
    masks = brute_masks(matrix)  # [N, D]
    nn = brute_nn_hamming(masks)
    original = brute_coherence(masks, range(N))
    random = brute_coherence(masks, documented_random_order(5, "wanda", 3, component, N))
    clustered = brute_coherence(masks, brute_greedy_order(masks))
    # The fixture tells the orders apart: its original order is block-structured.
    assert original > random + 0.1

    assert (int(row["rows"]), int(row["cols"]), int(row["n_features"]), int(row["d"])) == (
        D, N, N, D,
    )  # fmt: skip
    assert float(row["sparsity"]) == pytest.approx(level, abs=1e-12)
    assert float(row["nn_hamming_min"]) == pytest.approx(nn.min(), abs=1e-12)
    assert float(row["nn_hamming_mean"]) == pytest.approx(nn.mean(), abs=1e-12)
    assert float(row["nn_hamming_median"]) == pytest.approx(np.median(nn), abs=1e-12)
    assert float(row["nn_hamming_max"]) == pytest.approx(nn.max(), abs=1e-12)
    assert float(row["coherence_original"]) == pytest.approx(original, abs=1e-12)
    assert float(row["coherence_random"]) == pytest.approx(random, abs=1e-12)
    assert float(row["coherence_clustered"]) == pytest.approx(clustered, abs=1e-12)
    assert float(row["coherence_gain"]) == pytest.approx(clustered - original, abs=1e-12)


def test_brute_force_helpers_by_hand():
    """The oracles themselves, on a 4 x 3 matrix worked out by hand."""
    w = torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 3.0], [4.0, 5.0, 0.0], [0.0, 0.0, 0.0]])
    masks = brute_masks(w)  # features are columns: {0, 2}, {2}, {0, 1}
    assert masks.tolist() == [[True, False, True, False], [False, False, True, False],
                              [True, True, False, False]]  # fmt: skip
    # Hamming: d(0,1) = 1, d(0,2) = 2, d(1,2) = 3; nearest: 1, 1, 2; over D = 4.
    np.testing.assert_allclose(brute_nn_hamming(masks), [0.25, 0.25, 0.5])
    # One block of 3: only position 3 is zero in every feature.
    assert brute_coherence(masks, [0, 1, 2]) == 0.25
    # Feature 1 is the sparsest; against {2}, feature 0 adds 1 position, feature 2 adds 2.
    assert brute_greedy_order(masks, 2) == [1, 0, 2]


# --- reported sparsity at 30% and 70% -------------------------------------------------------


@pytest.mark.parametrize("level, component", SCAN_CASES, ids=["30%", "70%"])
def test_single_and_multi_report_the_zero_fraction(exports, tmp_path, level, component):
    path = exports / "wanda" / f"layer3-{component}.pt"
    out = tmp_path / "single.json"
    result = runner.invoke(
        app,
        ["hamming", "single", str(path), "--feature-idx", "0", "--n-features", "10",
         "--n-clusters", "2", "--output-json", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"sparsity {level:.2%}" in result.output  # "sparsity 30.00%"
    data = json.loads(out.read_text())
    assert data["matrix"]["sparsity"] == pytest.approx(level, abs=1e-12)
    # The neighbours of feature 0, by brute force: distance, then index.
    masks = brute_masks(torch.load(path, weights_only=True))
    dist = [(int((masks[0] != masks[j]).sum()), j) for j in range(1, N)]
    expected = sorted(dist)[:10]
    got = [(nb["hamming"], nb["feature"]) for nb in data["analysis"]["neighbours"]]
    assert got == expected
    assert [nb["hamming_normalized"] for nb in data["analysis"]["neighbours"]] == [
        pytest.approx(h / D, abs=1e-12) for h, _ in expected
    ]

    multi = tmp_path / "multi.json"
    result = runner.invoke(
        app,
        ["hamming", "multi", str(path), "--n-executions", "2", "--n-features", "6",
         "--n-clusters", "2", "--output-json", str(multi)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(multi.read_text())["matrix"]["sparsity"] == pytest.approx(level, abs=1e-12)


@pytest.mark.parametrize("block_size", [2, 3, 4])
def test_greedy_union_order_follows_its_rule(block_size):
    # Density varies per row, so the union (not the last row alone) decides what is added.
    rng = np.random.default_rng(0)
    masks = rng.random((23, 70)) < rng.uniform(0.1, 0.6, size=(23, 1))
    assert greedy_union_order(masks, block_size).tolist() == brute_greedy_order(masks, block_size)
