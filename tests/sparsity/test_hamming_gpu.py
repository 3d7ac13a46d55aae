"""The CUDA matmul path of the Hamming engine gives exactly the CPU (faiss popcount) integers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from featgeo.sparsity.hamming import nearest_neighbour_distances, pairwise_hamming
from featgeo.sparsity.matrices import feature_masks

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("axis", ["columns", "rows"])
@pytest.mark.parametrize("shape", [(64, 40), (37, 53), (577, 1031), (4096, 700)], ids=str)
def test_cuda_pairwise_equals_cpu(shape, axis):
    gen = torch.Generator().manual_seed(0)
    weights = torch.randn(*shape, generator=gen)
    weights[torch.rand(*shape, generator=gen) < 0.5] = 0
    masks = feature_masks(weights, axis=axis, warn_dense=False)
    cpu = pairwise_hamming(masks)
    cuda = pairwise_hamming(masks, device="cuda")
    assert cuda.dtype == cpu.dtype == np.int32
    np.testing.assert_array_equal(cuda, cpu)


def test_cuda_cross_and_extreme_masks():
    rng = np.random.default_rng(1)
    a = rng.random((50, 333)) < 0.5
    b = np.concatenate([np.zeros((1, 333), bool), np.ones((1, 333), bool), a[:5]])
    np.testing.assert_array_equal(pairwise_hamming(a, b, device="cuda"), pairwise_hamming(a, b))


def test_cuda_nearest_neighbour_distances_equal_cpu():
    rng = np.random.default_rng(2)
    masks = rng.random((1500, 576)) < 0.5
    masks[10] = masks[3]  # a duplicate: distance 0
    cpu = nearest_neighbour_distances(masks, block=512)
    np.testing.assert_array_equal(nearest_neighbour_distances(masks, device="cuda"), cpu)


def test_scan_on_cuda_equals_cpu(tmp_path):
    from test_scan import make_exports

    from featgeo.sparsity.scan import run_scan

    exports = make_exports(tmp_path / "clustering_characterization")
    cpu = run_scan(matrices_dir=exports, out=tmp_path / "cpu", device="cpu")
    cuda = run_scan(matrices_dir=exports, out=tmp_path / "cuda", device="cuda")
    assert cuda.csv_path.read_bytes() == cpu.csv_path.read_bytes()
