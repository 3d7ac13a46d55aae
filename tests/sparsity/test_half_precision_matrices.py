"""Pruned matrices saved in bfloat16 / float16 (how large models export them) load as they are
and give the same masks, neighbours, clusters and metrics as their float32 copy, in the library
and through ``featgeo hamming single`` / ``multi``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from featgeo.cli import app
from featgeo.sparsity.matrices import feature_masks, load_matrix

runner = CliRunner()


def pruned_half(d: int = 40, n: int = 48, seed: int = 0) -> torch.Tensor:
    """[d, n] float32 matrix at ~50% sparsity whose values are exact in bfloat16 *and* float16
    (multiples of 1/8 in [0.5, 4]), so every half copy holds exactly the same numbers."""
    rng = np.random.default_rng(seed)
    values = rng.integers(4, 32, size=(d, n)) / 8.0
    values[rng.random((d, n)) < 0.5] = 0.0
    values[:, :8] = values[:, :1]  # a planted cluster of equal masks
    return torch.from_numpy(values.astype(np.float32))


def save(matrix: torch.Tensor, path, dtype: torch.dtype):
    half = matrix.to(dtype)
    if path.suffix == ".pt":
        torch.save(half, path)
    elif path.suffix == ".safetensors":
        save_file({"weight": half.contiguous()}, str(path))
    else:  # .npy: numpy holds float16, not bfloat16
        np.save(path, half.numpy())
    return path


HALF_FILES = [
    pytest.param("m.pt", torch.bfloat16, id="bf16-pt"),
    pytest.param("m.safetensors", torch.bfloat16, id="bf16-safetensors"),
    pytest.param("m.pt", torch.float16, id="fp16-pt"),
    pytest.param("m.safetensors", torch.float16, id="fp16-safetensors"),
    pytest.param("m.npy", torch.float16, id="fp16-npy"),
]


@pytest.mark.parametrize("name, dtype", HALF_FILES)
def test_half_matrix_loads_with_its_dtype_and_masks(name, dtype, tmp_path):
    matrix = pruned_half()
    loaded = load_matrix(save(matrix, tmp_path / name, dtype))
    assert loaded.dtype == dtype and loaded.shape == matrix.shape
    torch.testing.assert_close(loaded.float(), matrix, atol=0, rtol=0)
    for axis in ("columns", "rows"):
        np.testing.assert_array_equal(feature_masks(loaded, axis), feature_masks(matrix, axis))


def _single(path, out, *extra):
    result = runner.invoke(
        app,
        ["hamming", "single", str(path), "--n-features", "12", "--n-clusters", "3",
         "--seed", "3", "--output-json", str(out), *extra],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())["analysis"]


@pytest.mark.parametrize("cluster_on", ["masks", "weights"])
@pytest.mark.parametrize("name, dtype", HALF_FILES)
def test_hamming_single_on_a_half_matrix_equals_its_float32_copy(name, dtype, cluster_on, tmp_path):
    matrix = pruned_half()
    reference = tmp_path / "f32.pt"
    torch.save(matrix, reference)
    half = save(matrix, tmp_path / name, dtype)
    ours = _single(half, tmp_path / "half.json", "--cluster-on", cluster_on)
    theirs = _single(reference, tmp_path / "f32.json", "--cluster-on", cluster_on)
    assert ours == theirs  # same features, labels, metrics: the values are exact in both


def test_hamming_multi_on_a_bf16_matrix_equals_its_float32_copy(tmp_path):
    matrix = pruned_half()
    outputs = {}
    for tag, dtype in (("bf16", torch.bfloat16), ("f32", torch.float32)):
        path = tmp_path / f"{tag}.pt"
        torch.save(matrix.to(dtype), path)
        out = tmp_path / f"{tag}.json"
        result = runner.invoke(
            app,
            ["hamming", "multi", str(path), "--n-features", "10", "--n-clusters", "2",
             "--n-executions", "3", "--output-json", str(out)],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        data = json.loads(out.read_text())
        outputs[tag] = {k: v for k, v in data.items() if k not in ("matrix", "config")}
    assert outputs["bf16"] == outputs["f32"]
