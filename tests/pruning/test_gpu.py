"""The pruning kernels on CUDA agree with the CPU (run where a GPU is present)."""

import pytest
import torch

from featgeo.pruning import get_pruner
from featgeo.pruning.config import PruneConfig
from featgeo.pruning.run import run_prune

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("nm", [None, (2, 4)], ids=["unstructured", "2:4"])
def test_cuda_pruners_match_cpu(method, nm):
    x = torch.randn(2048, 256, dtype=torch.float64).float() * torch.rand(256) * 3
    w = torch.randn(384, 256)
    cpu = get_pruner(method)(0.5, nm).fit(x).prune(w)
    gpu = get_pruner(method)(0.5, nm).fit(x.cuda()).prune(w.cuda()).cpu()
    assert gpu.device.type == "cpu"
    # Masks can differ only where float rounding reorders near-equal scores.
    agree = ((cpu == 0) == (gpu == 0)).float().mean().item()
    assert agree > 0.995
    assert (gpu == 0).float().mean().item() == pytest.approx(0.5, abs=1e-3)


def test_prune_run_on_cuda(tiny_llama, text_corpus, tmp_path):
    config = PruneConfig(
        model=str(tiny_llama),
        corpus=str(text_corpus),
        out=str(tmp_path),
        methods=["wanda", "sparsegpt"],
        calib_samples=8,
        seqlen=64,
        eval_windows=4,
        device="cuda",
    )
    for result in run_prune(config):
        assert result.sparsity == pytest.approx(0.5, abs=1e-3)
        assert result.pruned_ppl < 10 * result.dense_ppl
