"""Large-model pruning on tiny models: layer streaming, micro-batched calibration, half
precision, compact exports, checkpoint spacing, and the bad inputs of these options."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from featgeo.cli import app
from featgeo.files import save_packed_mask
from featgeo.models import COMPONENTS, decoder_layers, get_component, load_model
from featgeo.models.perplexity import perplexity
from featgeo.models.streaming import SafetensorsCheckpoint, StreamedModel
from featgeo.pruning import SparseGPTPruner, WandaPruner
from featgeo.pruning import run as prune_run
from featgeo.pruning.config import PruneConfig
from featgeo.pruning.run import run_prune
from featgeo.sparsity.matrices import load_matrix

runner = CliRunner()
N_LAYERS = 3


@pytest.fixture(scope="module")
def llama3(tiny_llama_builder, text_corpus, tmp_path_factory):
    """A tiny Llama with 3 layers, its weights split over 3 safetensors shards."""
    folder = tmp_path_factory.mktemp("llama3")
    build = tiny_llama_builder(folder, corpus_dir=text_corpus, layers=N_LAYERS, seed=3)
    model = load_model(build)
    model.save_pretrained(folder, max_shard_size="100KB")
    assert (folder / "model.safetensors.index.json").is_file()
    return folder


def config(model, corpus, out, **overrides) -> PruneConfig:
    settings = dict(
        model=str(model),
        corpus=str(corpus),
        out=str(out),
        calib_samples=6,
        seqlen=32,
        eval_windows=4,
        device="cpu",
    )
    settings.update(overrides)
    return PruneConfig(**settings)


def exports(folder) -> dict[str, torch.Tensor]:
    return {p.name: torch.load(p, weights_only=True) for p in sorted(folder.glob("layer*.pt"))}


@pytest.fixture(scope="module")
def runs(llama3, text_corpus, tmp_path_factory):
    """Every method, in memory with one calibration batch (the reference path) and streamed
    layer by layer in micro-batches of 2 windows (3 micro-batches) and of 4 (a smaller last)."""
    out = {}
    methods = ["magnitude", "wanda", "sparsegpt"]
    for name, options in {
        "memory": dict(offload="none", calib_batch_size=6),
        "streamed2": dict(offload="layer", calib_batch_size=2),
        "streamed4": dict(offload="layer", calib_batch_size=4),
        "memory2": dict(offload="none", calib_batch_size=2),
    }.items():
        root = tmp_path_factory.mktemp(name)
        results = run_prune(config(llama3, text_corpus, root, methods=methods, **options))
        out[name] = {r.method: r for r in results}
    return out


@pytest.mark.parametrize("variant", ["streamed2", "streamed4", "memory2"])
@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_streamed_micro_batched_exports_equal_in_memory_ones(runs, method, variant):
    reference = exports(runs["memory"][method].out_dir)
    other = exports(runs[variant][method].out_dir)
    assert reference.keys() == other.keys() and len(reference) == N_LAYERS * len(COMPONENTS)
    for name, weight in reference.items():
        assert torch.equal(weight, other[name]), name


@pytest.mark.parametrize("variant", ["streamed2", "streamed4", "memory2"])
def test_sparsegpt_micro_batched_equals_one_batch_within_float_error(runs, variant):
    reference = exports(runs["memory"]["sparsegpt"].out_dir)
    other = exports(runs[variant]["sparsegpt"].out_dir)
    for name, weight in reference.items():
        assert torch.allclose(weight, other[name], atol=1e-5, rtol=1e-4), name
        assert (weight == 0).eq(other[name] == 0).float().mean() > 0.999, name


def test_streaming_alone_changes_nothing(runs):
    """Streaming reads the same weights and runs the same code: bit-equal, SparseGPT too."""
    for method in ("magnitude", "wanda", "sparsegpt"):
        a = exports(runs["memory2"][method].out_dir)
        b = exports(runs["streamed2"][method].out_dir)
        assert all(torch.equal(a[k], b[k]) for k in a), method
        sa = json.loads((runs["memory2"][method].out_dir / "prune_summary.json").read_text())
        sb = json.loads((runs["streamed2"][method].out_dir / "prune_summary.json").read_text())
        assert sa["perplexity"] == sb["perplexity"]
        assert (sa["offload"], sb["offload"]) == ("none", "layer")


def test_layer_by_layer_perplexities_equal_whole_model_ones(runs, llama3, text_corpus):
    """The perplexities computed from hidden states carried through the layers during pruning
    equal those of the whole HF model (dense, and with the exported weights installed)."""
    prep = prune_run.prepare(config(llama3, text_corpus, runs["memory"]["wanda"].out_dir.parent))
    for variant in ("memory", "streamed2"):
        result = runs[variant]["wanda"]
        model = load_model(llama3)
        assert result.dense_ppl == pytest.approx(perplexity(model, prep.eval_ids), rel=1e-5)
        for name, weight in exports(result.out_dir).items():
            index, component = name.removeprefix("layer").removesuffix(".pt").split("-", 1)
            get_component(decoder_layers(model)[int(index)], component).weight.copy_(weight)
        assert result.pruned_ppl == pytest.approx(perplexity(model, prep.eval_ids), rel=1e-5)
        assert result.pruned_ppl > result.dense_ppl * 0.99


def test_summary_records_dtype_offload_batch_memory_and_bytes(runs):
    summary = json.loads((runs["streamed2"]["wanda"].out_dir / "prune_summary.json").read_text())
    assert summary["dtype"] == "float32" and summary["offload"] == "layer"
    assert summary["calibration"]["batch_size"] == 2
    assert summary["settings"]["calib_batch_size"] == 2
    assert summary["memory"]["peak_device_bytes"] is None  # CPU
    assert summary["memory"]["peak_host_rss_bytes"] > 10_000_000
    files = [
        p for p in runs["streamed2"]["wanda"].out_dir.iterdir() if p.name != "prune_summary.json"
    ]
    assert summary["bytes_written"]["outputs"] == sum(p.stat().st_size for p in files)
    assert summary["bytes_written"]["checkpoints"] > 0


def test_streamed_model_holds_one_layer_at_a_time(llama3, text_corpus, tmp_path, monkeypatch):
    loaded: list[int] = []
    real_layer = StreamedModel.layer

    def layer(self, index):
        resident = [
            i for i, block in enumerate(decoder_layers(self.model))
            if next(block.parameters()).device.type != "meta"
        ]  # fmt: skip
        assert resident == [], f"layers {resident} still loaded when layer {index} is asked for"
        loaded.append(index)
        return real_layer(self, index)

    monkeypatch.setattr(StreamedModel, "layer", layer)
    run_prune(config(llama3, text_corpus, tmp_path, methods=["sparsegpt"], offload="layer"))
    assert loaded == [0, *range(N_LAYERS)]  # layer 0 for the checks, then each once


def test_bfloat16_prunes_with_float32_statistics(llama3, text_corpus, tmp_path):
    """bfloat16 weights and hidden states, exports in bfloat16, masks from float32
    statistics: Wanda's masks equal a float64 oracle on the bfloat16 layer's own inputs."""
    result = run_prune(
        config(llama3, text_corpus, tmp_path, methods=["wanda"], dtype="bfloat16",
               calib_batch_size=2)
    )[0]  # fmt: skip
    exported = exports(result.out_dir)
    assert {w.dtype for w in exported.values()} == {torch.bfloat16}
    summary = json.loads((result.out_dir / "prune_summary.json").read_text())
    assert summary["dtype"] == "bfloat16"
    # Oracle for layer 0: the bfloat16 model's q_proj input, its column norms in float64.
    model = load_model(llama3, dtype=torch.bfloat16)
    prep = prune_run.prepare(config(llama3, text_corpus, tmp_path / "x", dtype="bfloat16"))
    seen = []
    q_proj = decoder_layers(model)[0].self_attn.q_proj
    handle = q_proj.register_forward_pre_hook(lambda _m, a: seen.append(a[0]))
    with torch.no_grad():
        model(input_ids=prep.calib_ids, use_cache=False)
    handle.remove()
    x = seen[0].double().reshape(-1, seen[0].shape[-1])
    norm = x.pow(2).mean(0).sqrt()
    scores = q_proj.weight.double().abs() * norm
    k = int(scores.shape[1] * 0.5)
    expected = torch.zeros_like(scores, dtype=torch.bool)
    expected.scatter_(1, torch.sort(scores, dim=1, stable=True).indices[:, :k], True)
    assert torch.equal(exported["layer0-self_attn.q_proj.pt"] == 0, expected)


def test_statistics_of_bfloat16_inputs_accumulate_in_float32():
    """4096 tokens of 1.0 in bfloat16: summed in bfloat16 the total would stop at 256."""
    x = torch.ones(2, 2048, 4, dtype=torch.bfloat16)
    wanda = WandaPruner(0.5)
    for window in x:
        wanda.partial_fit(window)
    assert wanda.input_norm_.dtype == torch.float32
    assert torch.equal(wanda.input_norm_, torch.ones(4))
    gpt = SparseGPTPruner(0.5)
    for window in x:
        gpt.partial_fit(window)
    assert gpt.hessian_.dtype == torch.float32
    assert torch.allclose(gpt.hessian_, torch.full((4, 4), 2.0))


def test_mask_export_round_trips_to_the_dense_export(runs, llama3, text_corpus, tmp_path):
    result = run_prune(
        config(llama3, text_corpus, tmp_path, methods=["wanda"], offload="layer",
               calib_batch_size=2, export="masks")
    )[0]  # fmt: skip
    dense = exports(runs["streamed2"]["wanda"].out_dir)
    masks = sorted(result.out_dir.glob("layer*.mask.safetensors"))
    assert not list(result.out_dir.glob("*.pt")) and len(masks) == len(dense)
    for path in masks:
        kept = load_matrix(path)
        weight = dense[path.name.replace(".mask.safetensors", ".pt")]
        assert kept.dtype == torch.bool and torch.equal(kept, weight != 0), path.name
    summary = json.loads((result.out_dir / "prune_summary.json").read_text())
    assert {m["file"] for m in summary["matrices"]} == {p.name for p in masks}
    assert (
        summary["perplexity"]
        == json.loads((runs["streamed2"]["wanda"].out_dir / "prune_summary.json").read_text())[
            "perplexity"
        ]
    )


def test_export_none_writes_only_the_summary(llama3, text_corpus, tmp_path):
    result = run_prune(config(llama3, text_corpus, tmp_path, methods=["magnitude"], export="none"))[
        0
    ]
    assert [p.name for p in result.out_dir.iterdir()] == ["prune_summary.json"]
    summary = json.loads((result.out_dir / "prune_summary.json").read_text())
    assert all(m["file"] is None for m in summary["matrices"])
    assert summary["achieved_sparsity"] == pytest.approx(0.5)


def test_packed_masks_of_a_7b_model_stay_under_1_gb(tmp_path):
    """One down_proj-sized mask is 1/8 byte per weight: LLaMA-7B's 6.5e9 pruned weights
    (32 layers x 7 matrices) pack into 0.81 GB."""
    path = save_packed_mask(
        tmp_path / "m.mask.safetensors", torch.ones(64, 11008, dtype=torch.bool)
    )
    per_weight = (path.stat().st_size - 200) / (64 * 11008)
    weights_7b = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)
    assert per_weight * weights_7b < 1e9


def test_micro_batched_resume_gives_the_uninterrupted_result(
    llama3, text_corpus, tmp_path, monkeypatch
):
    options = dict(methods=["sparsegpt"], offload="layer", calib_batch_size=2)
    reference = run_prune(config(llama3, text_corpus, tmp_path / "ref", **options))[0]
    monkeypatch.setattr(prune_run, "CHECKPOINT_EVERY_S", 0.0)
    real = prune_run._prune
    calls = []

    def interrupt_on_third_layer(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(prune_run, "_prune", interrupt_on_third_layer)
    cfg = config(llama3, text_corpus, tmp_path / "out", **options)
    with pytest.raises(KeyboardInterrupt):
        run_prune(cfg)
    staging = tmp_path / "out" / ".sparsegpt.partial"
    state = json.loads((staging / "resume_state.json").read_text())
    assert state["next_layer"] == 2
    # two checkpoints of the same tensors were written, and both are counted
    assert state["checkpoint_bytes"] == 2 * (staging / "resume_hidden.pt").stat().st_size
    result = run_prune(cfg)[0]
    assert len(calls) == 4  # layers 0 and 1 once, layer 2 interrupted, then only layer 2
    a, b = exports(reference.out_dir), exports(result.out_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert result.pruned_ppl == reference.pruned_ppl and result.dense_ppl == reference.dense_ppl


@pytest.mark.parametrize(
    "elapsed,last_cost,due",
    [(16.0, 0.0, True), (14.0, 0.0, False), (30.0, 2.0, False), (41.0, 2.0, True)],
)
def test_hidden_state_checkpoints_cost_at_most_5_percent(elapsed, last_cost, due):
    assert prune_run.checkpoint_due(elapsed, last_cost) is due


def test_save_model_of_a_streamed_bfloat16_run_loads_with_transformers(
    llama3, text_corpus, tmp_path
):
    result = run_prune(
        config(llama3, text_corpus, tmp_path, methods=["wanda"], dtype="bfloat16",
               save_model=True)
    )[0]  # fmt: skip
    saved = load_model(result.out_dir / "model", dtype=torch.bfloat16)
    for name, weight in exports(result.out_dir).items():
        index, component = name.removeprefix("layer").removesuffix(".pt").split("-", 1)
        assert torch.equal(
            get_component(decoder_layers(saved)[int(index)], component).weight, weight
        )
    index = json.loads((result.out_dir / "model" / "model.safetensors.index.json").read_text())
    assert (
        SafetensorsCheckpoint.open(result.out_dir / "model", "saved").weight_map
        == index["weight_map"]
    )


# -- bad inputs: one line, exit 2, nothing written ---------------------------------------------


def _refused(args, out, message):
    result = runner.invoke(app, ["prune", *args, "--out", str(out)])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("featgeo: error:"), result.output
    assert message in lines[0], lines[0]
    assert not out.exists()


def _base(llama3, text_corpus):
    return ["--model", str(llama3), "--corpus", str(text_corpus), "--method", "wanda",
            "--calib-samples", "4", "--seqlen", "32", "--device", "cpu"]  # fmt: skip


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--dtype", "float8"], "--dtype must be one of auto, float32, bfloat16, float16"),
        (["--calib-batch-size", "0"], "--calib-batch-size must be >= 1"),
        (["--calib-batch-size", "-3"], "--calib-batch-size must be >= 1"),
        (["--offload", "disk"], "--offload must be one of auto, none, layer"),
        (["--export", "bits"], "--export must be one of dense, masks, none"),
    ],
)
def test_bad_options_are_refused(llama3, text_corpus, tmp_path, extra, message):
    _refused([*_base(llama3, text_corpus), *extra], tmp_path / "out", message)


def test_missing_shard_is_refused_before_anything_is_written(llama3, text_corpus, tmp_path):
    import shutil

    broken = tmp_path / "model"
    shutil.copytree(llama3, broken)
    shard = sorted(broken.glob("model-*.safetensors"))[1]
    shard.unlink()
    for offload in ("auto", "layer", "none"):
        _refused(
            [*_base(broken, text_corpus), "--offload", offload], tmp_path / "out",
            f"names 1 shard file missing from the folder ({shard.name})",
        )  # fmt: skip


def test_damaged_index_and_shard_are_refused(llama3, text_corpus, tmp_path):
    import shutil

    broken = tmp_path / "model"
    shutil.copytree(llama3, broken)
    (broken / "model.safetensors.index.json").write_text("[1, 2]")
    _refused(_base(broken, text_corpus), tmp_path / "out", "is not a safetensors index")
    shutil.rmtree(broken)
    shutil.copytree(llama3, broken)
    shard = sorted(broken.glob("model-*.safetensors"))[0]
    shard.write_bytes(b"\x00" * 3)
    _refused(_base(broken, text_corpus), tmp_path / "out", f"{shard.name} is not a readable")
    # cut short in its data, header intact: refused before any layer is pruned
    shutil.copy(llama3 / shard.name, shard)
    shard = sorted(broken.glob("model-*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[:-100])
    for offload in ("layer", "none"):
        _refused(
            [*_base(broken, text_corpus), "--offload", offload], tmp_path / "out",
            f"{shard.name} is not a readable",
        )  # fmt: skip


def test_offload_layer_needs_safetensors(tiny_llama_builder, text_corpus, tmp_path):
    folder = tiny_llama_builder(tmp_path / "bin", corpus_dir=text_corpus)
    model = load_model(folder)
    for path in folder.glob("*.safetensors"):
        path.unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    _refused(
        [*_base(folder, text_corpus), "--offload", "layer"], tmp_path / "out",
        "--offload layer reads the model's safetensors files",
    )  # fmt: skip


def test_auto_dtype_on_cpu_is_float32_for_a_bfloat16_checkpoint(
    tiny_llama_builder, text_corpus, tmp_path
):
    folder = tiny_llama_builder(tmp_path / "m", corpus_dir=text_corpus, seed=4)
    load_model(folder, dtype=torch.bfloat16).save_pretrained(folder)
    checkpoint = SafetensorsCheckpoint.open(folder, "m")
    assert checkpoint.dtype() == torch.bfloat16
    result = run_prune(config(folder, text_corpus, tmp_path / "o", methods=["magnitude"]))[0]
    summary = json.loads((result.out_dir / "prune_summary.json").read_text())
    assert summary["dtype"] == "float32"
    assert {w.dtype for w in exports(result.out_dir).values()} == {torch.float32}


def test_streaming_on_cpu_gives_freed_layers_back(tiny_llama_builder, text_corpus, tmp_path):
    """Loading and releasing 24 layers leaves the resident memory where one layer leaves it:
    a released layer's weights are freed (and, on glibc, trimmed back to the OS)."""
    folder = tiny_llama_builder(
        tmp_path / "m", corpus_dir=text_corpus, layers=24, hidden=256, intermediate=1024, seed=7
    )
    streamed = StreamedModel(
        folder, SafetensorsCheckpoint.open(folder, "m"), spec="m", dtype=torch.float32,
        device=torch.device("cpu"),
    )  # fmt: skip
    layer_bytes = sum(p.numel() * 4 for p in decoder_layers(streamed.model)[0].parameters())

    def rss() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * 4096

    streamed.layer(0)
    streamed.release(0)
    before = rss()
    kept = []  # small blocks that outlive each layer (as hidden states do) pin the heap
    for index in range(24):
        streamed.layer(index)
        kept.append(torch.ones(4096))
        streamed.release(index)
    assert rss() - before < 4 * layer_bytes, (rss() - before) / layer_bytes


def test_packed_masks_and_model_shards_are_byte_identical_across_writes(tmp_path):
    from featgeo.files import save_safetensors

    kept = torch.rand(64, 40, generator=torch.Generator().manual_seed(0)) > 0.5
    masks = [save_packed_mask(tmp_path / f"m{i}.mask.safetensors", kept) for i in range(6)]
    assert len({p.read_bytes() for p in masks}) == 1
    assert torch.equal(load_matrix(masks[0]), kept)
    meta = {"b": "2", "a": "1", "format": "pt", "z": "3"}
    shards = [save_safetensors(tmp_path / f"s{i}.safetensors", {"w": kept.float()}, meta)
              for i in range(6)]  # fmt: skip
    assert len({p.read_bytes() for p in shards}) == 1
