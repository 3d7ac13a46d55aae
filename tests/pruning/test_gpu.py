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


def _cuda_config(model, corpus, out, **overrides) -> PruneConfig:
    settings = dict(
        model=str(model), corpus=str(corpus), out=str(out), calib_samples=6, seqlen=32,
        eval_windows=4, device="cuda",
    )  # fmt: skip
    settings.update(overrides)
    return PruneConfig(**settings)


def test_cuda_streamed_micro_batched_equals_cuda_in_memory(
    tiny_llama_builder, text_corpus, tmp_path
):
    """On CUDA too, one streamed layer at a time in micro-batches gives the in-memory masks;
    the summary records the peak device memory."""
    import json

    from featgeo.models import load_model

    folder = tiny_llama_builder(tmp_path / "m", corpus_dir=text_corpus, layers=3, seed=5)
    load_model(folder).save_pretrained(folder, max_shard_size="100KB")
    runs = {}
    for name, options in {
        "memory": dict(offload="none", calib_batch_size=6),
        "streamed": dict(offload="layer", calib_batch_size=2),
    }.items():
        cfg = _cuda_config(folder, text_corpus, tmp_path / name, methods=["wanda"], **options)
        runs[name] = run_prune(cfg)[0].out_dir
    for path in sorted(runs["memory"].glob("*.pt")):
        a = torch.load(path, weights_only=True)
        b = torch.load(runs["streamed"] / path.name, weights_only=True)
        assert torch.equal(a == 0, b == 0), path.name
    summary = json.loads((runs["streamed"] / "prune_summary.json").read_text())
    assert summary["memory"]["peak_device_bytes"] > 0


def test_cuda_auto_dtype_is_the_checkpoint_dtype(tiny_llama_builder, text_corpus, tmp_path):
    """A bfloat16 checkpoint on CUDA is pruned in bfloat16 (exports too); masks are exports'
    zeros at the target sparsity."""
    import json

    from featgeo.models import load_model

    folder = tiny_llama_builder(tmp_path / "m", corpus_dir=text_corpus, seed=6)
    load_model(folder, dtype=torch.bfloat16).save_pretrained(folder)
    cfg = _cuda_config(folder, text_corpus, tmp_path / "o", methods=["wanda", "sparsegpt"])
    for result in run_prune(cfg):
        summary = json.loads((result.out_dir / "prune_summary.json").read_text())
        assert summary["dtype"] == "bfloat16"
        weight = torch.load(next(result.out_dir.glob("*.pt")), weights_only=True)
        assert weight.dtype == torch.bfloat16
        assert result.sparsity == pytest.approx(0.5, abs=2e-3)
