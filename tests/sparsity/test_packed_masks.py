"""Bit-packed masks (``featgeo prune --export masks``): the exact file format, the writer, the
reader, and every ``featgeo hamming`` command giving the same numbers from a mask as from the
dense matrix it was packed from; damaged masks and weight-value options refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

from featgeo.cli import app
from featgeo.files import (
    PACKED_MASK_SUFFIX,
    pack_mask,
    packed_mask_metadata,
    save_packed_mask,
)
from featgeo.sparsity.executions import load_features, parse_export_path
from featgeo.sparsity.matrices import feature_masks, load_matrix, matrix_stem, sparsity
from featgeo.sparsity.scan import discover_matrices
from featgeo.sparsity.seeds import SeedsConfig

runner = CliRunner()
METADATA = {
    "format": "featgeo-packed-mask",
    "version": "1",
    "shape": "24,37",
    "bitorder": "little",
    "meaning": "bit set = weight kept (W != 0)",
}
"""The metadata of a [24, 37] mask, written out by hand: the format the prune engine codes to."""


def pruned(rows: int, cols: int, seed: int = 0, density: float = 0.5) -> torch.Tensor:
    """[rows, cols] float32 weights with ~``1 - density`` exact zeros; row 0 all kept, row 1
    all pruned (the extreme rows of a real export)."""
    rng = np.random.default_rng(seed)
    kept = rng.random((rows, cols)) < density
    kept[0], kept[1] = True, False
    values = rng.uniform(0.5, 2.0, (rows, cols)) * rng.choice([-1.0, 1.0], (rows, cols))
    return torch.from_numpy(np.where(kept, values, 0.0).astype(np.float32))


def oracle(kept: np.ndarray) -> np.ndarray:
    """The format's definition, independent of featgeo's packer."""
    return np.packbits(kept, axis=1, bitorder="little")


def tensors_and_metadata(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, handle.metadata()


# --- packing ----------------------------------------------------------------------------------

KINDS = {
    "random": lambda r, c, rng: rng.random((r, c)) < 0.5,
    "all-kept": lambda r, c, rng: np.ones((r, c), bool),
    "all-pruned": lambda r, c, rng: np.zeros((r, c), bool),
    "mixed-rows": lambda r, c, rng: np.arange(r)[:, None] % 3 == np.zeros((1, c), int),
    "sparse": lambda r, c, rng: rng.random((r, c)) < 0.05,
}
SHAPES = [(1, 1), (3, 7), (4, 8), (5, 9), (6, 13), (2, 16), (17, 64), (9, 100), (3, 1031)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_pack_equals_numpy_packbits(shape, kind):
    kept = KINDS[kind](*shape, np.random.default_rng(sum(shape)))
    expected = oracle(kept)
    for given in (torch.from_numpy(kept), kept):
        packed = pack_mask(given)
        assert packed.dtype == torch.uint8 and tuple(packed.shape) == (shape[0], -(-shape[1] // 8))
        np.testing.assert_array_equal(packed.numpy(), expected)


@pytest.mark.parametrize(
    "row,expected",
    [
        ([1, 0, 0, 0, 0, 0, 0, 0], [0x01]),
        ([0, 0, 0, 0, 0, 0, 0, 1], [0x80]),
        ([1, 1, 0, 1, 0, 0, 0, 0, 1], [0x0B, 0x01]),  # column 8 is bit 0 of byte 1
        ([0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1], [0x00, 0x06]),
        ([1] * 11, [0xFF, 0x07]),  # padding bits 3..7 of the last byte stay 0
    ],
    ids=["col0-bit0", "col7-bit7", "next-byte", "bits1-2", "padding-zero"],
)
def test_bit_order_by_hand(row, expected):
    """Column 8*b + j is bit j (value 2**j) of byte b: the format's bitorder 'little'."""
    packed = pack_mask(torch.tensor([row], dtype=torch.bool))
    assert packed.tolist() == [expected]


def test_pack_takes_strided_inputs():
    kept = torch.rand(20, 30) < 0.5
    np.testing.assert_array_equal(pack_mask(kept.T).numpy(), oracle(kept.T.numpy()))
    np.testing.assert_array_equal(pack_mask(kept.numpy()[:, ::3]).numpy(), oracle(kept[:, ::3]))


@pytest.mark.parametrize(
    "kept,error,match",
    [
        (torch.ones(3, 9), TypeError, "kept must be a bool mask, got dtype torch.float32"),
        (np.ones((3, 9)), TypeError, "numpy array of dtype float64"),
        (torch.ones(2, 3, 9, dtype=torch.bool), ValueError, r"2-D \[out, in\], got shape"),
        ([[True, False]], TypeError, "bool torch tensor or numpy array"),
    ],
    ids=["float-tensor", "float-array", "3d", "list"],
)
def test_pack_refuses_what_is_not_a_2d_bool_mask(kept, error, match):
    with pytest.raises(error, match=match):
        pack_mask(kept)


# --- the file ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(24, 37), (5, 8), (3, 1), (7, 1031)], ids=str)
def test_file_format_is_exactly_the_documented_one(tmp_path, shape):
    weights = pruned(*shape)
    path = save_packed_mask(
        tmp_path / f"wanda/layer1-mlp.down_proj{PACKED_MASK_SUFFIX}", weights != 0
    )
    tensors, metadata = tensors_and_metadata(path)
    assert list(tensors) == ["packed_mask"]
    packed = tensors["packed_mask"]
    assert packed.dtype == torch.uint8 and list(packed.shape) == [shape[0], -(-shape[1] // 8)]
    np.testing.assert_array_equal(packed.numpy(), oracle((weights != 0).numpy()))
    assert metadata == {**METADATA, "shape": f"{shape[0]},{shape[1]}"}
    assert metadata == packed_mask_metadata(*shape)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left


@pytest.mark.parametrize("shape", [(24, 37), (6, 13), (4, 8), (2, 1031)], ids=str)
def test_round_trip_gives_the_dense_matrix_masks(tmp_path, shape):
    weights = pruned(*shape, seed=shape[1])
    path = save_packed_mask(tmp_path / "m.mask.safetensors", (weights != 0).numpy())
    kept = load_matrix(path)
    assert kept.dtype == torch.bool and tuple(kept.shape) == shape
    torch.testing.assert_close(kept, weights != 0)
    assert bool(kept[0].all()) and not bool(kept[1].any())
    assert sparsity(kept) == sparsity(weights)
    for axis in ("columns", "rows"):
        np.testing.assert_array_equal(
            feature_masks(kept, axis, warn_dense=False),
            feature_masks(weights, axis, warn_dense=False),
        )


def test_reader_goes_by_metadata_not_by_name(tmp_path):
    """A packed mask named like any other safetensors matrix is still read as a mask."""
    weights = pruned(24, 37)
    path = save_packed_mask(tmp_path / "anything.safetensors", weights != 0)
    torch.testing.assert_close(load_matrix(path), weights != 0)


def test_writer_refuses_another_suffix_and_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match=r"must end with \.safetensors"):
        save_packed_mask(tmp_path / "layer1-mlp.down_proj.pt", torch.ones(2, 9, dtype=torch.bool))
    with pytest.raises(TypeError):
        save_packed_mask(tmp_path / "x.mask.safetensors", torch.ones(2, 9))
    assert list(tmp_path.iterdir()) == []


def test_export_names_of_masks():
    mask = Path("root/wanda/layer3-self_attn.q_proj.mask.safetensors")
    assert matrix_stem(mask) == "layer3-self_attn.q_proj"
    assert matrix_stem("root/wanda/layer3-self_attn.q_proj.pt") == "layer3-self_attn.q_proj"
    assert parse_export_path(mask) == ("wanda", 3, "self_attn.q_proj")


# --- damaged masks ----------------------------------------------------------------------------


def _good() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    kept = (pruned(24, 37) != 0).numpy()
    return {"packed_mask": torch.from_numpy(oracle(kept))}, dict(METADATA)


def _padding(t, m):
    t["packed_mask"][3, -1] |= 0x80  # column 39 of a 37-column matrix
    return t, m


CORRUPT = {
    "wrong-format": (lambda t, m: (t, {**m, "format": "other"}), "metadata format 'other'"),
    "no-metadata": (lambda t, m: (t, None), "metadata format None"),
    "wrong-version": (lambda t, m: (t, {**m, "version": "2"}), "format version '2'"),
    "wrong-bitorder": (lambda t, m: (t, {**m, "bitorder": "big"}), "bitorder 'big'"),
    "shape-not-out-in": (lambda t, m: (t, {**m, "shape": "24x37"}), "metadata shape '24x37'"),
    "shape-too-wide": (
        lambda t, m: (t, {**m, "shape": "24,45"}),
        r"shape [24, 5], but its metadata shape 24,45 needs [24, 6]",
    ),
    "packed-too-short": (
        lambda t, m: ({"packed_mask": t["packed_mask"][:, :4].contiguous()}, m),
        "needs [24, 5]",
    ),
    "padding-bit-set": (_padding, "padding bits set (beyond column 36) in 1 row(s), first row 3"),
    "two-tensors": (
        lambda t, m: ({**t, "extra": torch.zeros(2, dtype=torch.uint8)}, m),
        "holds 2 tensor(s) (extra, packed_mask), expected exactly one, 'packed_mask'",
    ),
    "float-dtype": (
        lambda t, m: ({"packed_mask": t["packed_mask"].float()}, m),
        "stores 'packed_mask' as F32, expected uint8",
    ),
    "renamed-tensor": (
        lambda t, m: ({"mask": t["packed_mask"]}, m),
        "holds 1 tensor(s) (mask), expected exactly one",
    ),
}


def write_corrupt(path: Path, case: str) -> Path:
    tensors, metadata = CORRUPT[case][0](*_good())
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path


def assert_one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output}"
    assert "Traceback" not in result.output, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("featgeo: error:"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_the_good_mask_of_the_corrupt_cases_loads(tmp_path):
    tensors, metadata = _good()
    save_file(tensors, str(tmp_path / "ok.mask.safetensors"), metadata=metadata)
    torch.testing.assert_close(load_matrix(tmp_path / "ok.mask.safetensors"), pruned(24, 37) != 0)


@pytest.mark.parametrize("case", CORRUPT)
def test_corrupt_mask_is_a_one_line_error_that_writes_nothing(tmp_path, case):
    path = write_corrupt(tmp_path / "in" / "wanda" / "layer1-mlp.down_proj.mask.safetensors", case)
    with pytest.raises(ValueError) as caught:
        load_matrix(path)
    assert CORRUPT[case][1] in str(caught.value) and "\n" not in str(caught.value)
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        ["hamming", "single", str(path), "--n-features", "6", "--n-clusters", "2",
         "--output-json", str(out / "single.json")],
    )  # fmt: skip
    line = assert_one_line_error(result, str(path), CORRUPT[case][1])
    assert "featgeo prune --export masks" in line  # the fix
    assert not out.exists()


@pytest.mark.parametrize("case", ["padding-bit-set", "wrong-version", "float-dtype"])
def test_corrupt_mask_in_an_export_tree(tmp_path, case):
    """scan and seeds read the damaged mask before writing anything (no partial folder)."""
    mats = tmp_path / "mats"
    write_corrupt(mats / "wanda" / "layer1-mlp.down_proj.mask.safetensors", case)
    torch.save(pruned(24, 37), mats / "wanda" / "layer0-mlp.down_proj.pt")
    commands = {
        "scan": ["--matrices-dir", str(mats), "--methods", "wanda", "--out", str(tmp_path / "o"),
                 "--device", "cpu"],
        "seeds": ["--method", "wanda", "--layer", "1", "--component", "mlp.down_proj",
                  "--seeds", "1", "--n-similar", "6", "--k-values", "2", "--matrices-dir",
                  str(mats), "--output-dir", str(tmp_path / "o")],
    }  # fmt: skip
    for command, args in commands.items():
        result = runner.invoke(app, ["hamming", command, *args])
        assert_one_line_error(result, "layer1-mlp.down_proj.mask.safetensors", CORRUPT[case][1])
        assert sorted(p.name for p in tmp_path.iterdir()) == ["mats"], command


# --- weight values refused --------------------------------------------------------------------


def test_weights_are_refused_from_a_mask_in_the_library(tmp_path):
    path = save_packed_mask(tmp_path / "layer1-mlp.down_proj.mask.safetensors", pruned(24, 37) != 0)
    with pytest.raises(ValueError, match=r"holds a bit-packed mask .* --cluster-on weights"):
        load_features(path, with_weights=True)
    assert load_features(path).weights is None  # masks alone are fine


def test_cluster_on_weights_refuses_a_mask(tmp_path):
    mats = tmp_path / "mats"
    path = save_packed_mask(
        mats / "wanda" / "layer1-mlp.down_proj.mask.safetensors", pruned(24, 37) != 0
    )
    out = tmp_path / "out"
    small = ["--n-features", "6", "--n-clusters", "2", "--cluster-on", "weights"]
    commands = [
        ["single", str(path), *small, "--output-json", str(out / "s.json")],
        ["multi", str(path), *small, "--n-executions", "2", "--output-json", str(out / "m.json")],
        ["seeds", "--method", "wanda", "--layer", "1", "--component", "mlp.down_proj",
         "--seeds", "1", "--n-similar", "6", "--k-values", "2", "--cluster-on", "weights",
         "--matrices-dir", str(mats), "--output-dir", str(out / "seeds")],
    ]  # fmt: skip
    for args in commands:
        result = runner.invoke(app, ["hamming", *args])
        line = assert_one_line_error(
            result, str(path), "holds a bit-packed mask", "`featgeo prune --export dense`"
        )
        assert "--cluster-on weights" in line
        assert not out.exists() and not list(tmp_path.glob(".out*")), args[0]


# --- discovery: masks beside or instead of the dense .pt --------------------------------------


def test_discovery_finds_masks_and_prefers_the_dense_matrix(tmp_path):
    folder = tmp_path / "wanda"
    folder.mkdir()
    both = pruned(24, 37)
    torch.save(both, folder / "layer1-mlp.down_proj.pt")
    save_packed_mask(folder / "layer1-mlp.down_proj.mask.safetensors", both != 0)
    save_packed_mask(folder / "layer0-self_attn.q_proj.mask.safetensors", pruned(20, 20) != 0)
    torch.save(pruned(20, 20), folder / "layer0-mlp.up_proj.pt")
    jobs = discover_matrices(tmp_path, ["wanda"])
    assert [(j.layer, j.component, j.path.name) for j in jobs] == [
        (0, "self_attn.q_proj", "layer0-self_attn.q_proj.mask.safetensors"),
        (0, "mlp.up_proj", "layer0-mlp.up_proj.pt"),
        (1, "mlp.down_proj", "layer1-mlp.down_proj.pt"),  # both exist: the dense one
    ]
    config = dict(method="wanda", component="mlp.down_proj", matrices_dir=str(tmp_path))
    assert SeedsConfig(**config).matrix_path.name == "layer1-mlp.down_proj.pt"
    (folder / "layer1-mlp.down_proj.pt").unlink()
    assert SeedsConfig(**config).matrix_path.name == "layer1-mlp.down_proj.mask.safetensors"


def test_error_messages_name_the_mask_format(tmp_path):
    (tmp_path / "wanda").mkdir()
    with pytest.raises(ValueError, match=r"layer\{L\}-\{component\}\.mask\.safetensors"):
        discover_matrices(tmp_path, ["wanda"])
    (tmp_path / "m.bin").write_bytes(b"\0")
    with pytest.raises(ValueError, match=r"\.npy or a bit-packed mask \.mask\.safetensors"):
        load_matrix(tmp_path / "m.bin")
    help_text = runner.invoke(app, ["hamming", "single", "--help"]).stdout
    assert ".mask.safetensors" in help_text


def test_missing_matrix_hint_lists_components_of_masks(tmp_path):
    save_packed_mask(
        tmp_path / "wanda" / "layer1-mlp.down_proj.mask.safetensors", pruned(24, 37) != 0
    )
    result = runner.invoke(
        app,
        ["hamming", "seeds", "--method", "wanda", "--layer", "1", "--component", "mlp.up_proj",
         "--seeds", "1", "--n-similar", "6", "--k-values", "2", "--matrices-dir", str(tmp_path),
         "--output-dir", str(tmp_path / "o")],
    )  # fmt: skip
    assert_one_line_error(result, "(layer 1 there has: mlp.down_proj)")


# --- every hamming command: the same numbers from masks as from dense matrices ----------------

SHAPES_BY_COMPONENT = {"mlp.down_proj": (24, 37), "self_attn.q_proj": (29, 20)}


def write_tree(root: Path, as_masks: bool) -> None:
    for m, method in enumerate(("wanda", "sparsegpt")):
        for layer in (0, 1):
            for c, (component, shape) in enumerate(SHAPES_BY_COMPONENT.items()):
                weights = pruned(*shape, seed=100 * m + 10 * layer + c)
                stem = root / "mats" / method / f"layer{layer}-{component}"
                stem.parent.mkdir(parents=True, exist_ok=True)
                if as_masks:
                    save_packed_mask(f"{stem}{PACKED_MASK_SUFFIX}", weights != 0)
                else:
                    torch.save(weights, f"{stem}.pt")


def run_every_command(root: Path, suffix: str) -> dict[str, object]:
    """Every hamming command with relative paths from ``root`` (so outputs that record a path
    compare); returns their outputs by name."""
    down = f"mats/wanda/layer1-mlp.down_proj{suffix}"
    q = f"mats/sparsegpt/layer0-self_attn.q_proj{suffix}"
    small = ["--n-features", "10", "--n-clusters", "3"]
    commands = {
        "single": ["single", down, *small, "--output-json", "single.json"],
        "single-rows": ["single", q, *small, "--axis", "rows", "--feature-idx", "4",
                        "--output-json", "single_rows.json"],
        "multi-down": ["multi", down, *small, "--n-executions", "3",
                       "--output-json", "results/down.json"],
        "multi-q": ["multi", q, *small, "--n-executions", "3", "--rng", "generator",
                    "--output-json", "results/q.json"],
        "seeds": ["seeds", "--method", "wanda", "--layer", "1", "--component", "mlp.down_proj",
                  "--seeds", "1", "--n-similar", "8", "--k-values", "2", "3",
                  "--matrices-dir", "mats", "--output-dir", "seeds_out/wanda/mlp.down_proj"],
        "scan": ["scan", "--matrices-dir", "mats", "--methods", "wanda,sparsegpt", "--out",
                 "scan", "--device", "cpu"],
        "report": ["report", "--results-dir", "results", "--out", "report", "--seeds-dir",
                   "seeds_out", "--scan-csv", "scan/scan.csv"],
    }  # fmt: skip
    outputs: dict[str, object] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("FEATGEO_CACHE", str(root / "cache"))
        for name, args in commands.items():
            result = runner.invoke(app, ["hamming", *args])
            assert result.exit_code == 0, f"{name}: {result.output}"
            outputs[f"{name} stdout"] = result.stdout.replace(suffix, "{suffix}")
    for name in ("single.json", "single_rows.json", "results/down.json", "results/q.json"):
        outputs[name] = json.loads((root / name).read_text())
    summary = root / "seeds_out/wanda/mlp.down_proj/summary/metrics_summary.json"
    outputs["seeds summary"] = json.loads(summary.read_text())
    outputs["seeds files"] = sorted(
        p.relative_to(root / "seeds_out").as_posix() for p in (root / "seeds_out").rglob("*")
    )
    outputs["scan.csv"] = (root / "scan/scan.csv").read_text()
    outputs["scan_config.json"] = json.loads((root / "scan/scan_config.json").read_text())
    outputs["report.md"] = (root / "report/report.md").read_text()
    return outputs


@pytest.fixture(scope="module")
def dense_and_masks(tmp_path_factory) -> tuple[dict, dict]:
    roots = {kind: tmp_path_factory.mktemp(kind) for kind in ("dense", "masks")}
    write_tree(roots["dense"], as_masks=False)
    write_tree(roots["masks"], as_masks=True)
    return (
        run_every_command(roots["dense"], ".pt"),
        run_every_command(roots["masks"], PACKED_MASK_SUFFIX),
    )


def _without_path(data: dict) -> dict:
    data = json.loads(json.dumps(data))
    assert data["matrix"].pop("path").endswith((".pt", PACKED_MASK_SUFFIX))
    return data


@pytest.mark.parametrize(
    "name", ["single.json", "single_rows.json", "results/down.json", "results/q.json"]
)
def test_single_and_multi_json_equal_from_masks(dense_and_masks, name):
    dense, masks = dense_and_masks
    assert _without_path(masks[name]) == _without_path(dense[name])
    assert masks[name]["matrix"]["name"] == dense[name]["matrix"]["name"]  # no ".mask"
    assert masks[name]["matrix"]["component"] in SHAPES_BY_COMPONENT


def test_seeds_summary_and_tree_equal_from_masks(dense_and_masks):
    dense, masks = dense_and_masks
    summary = _without_path(masks["seeds summary"])
    assert summary == _without_path(dense["seeds summary"])
    assert summary["matrix"]["component"] == "mlp.down_proj"
    assert masks["seeds files"] == dense["seeds files"]


def test_scan_csv_is_byte_identical_from_masks(dense_and_masks):
    dense, masks = dense_and_masks
    assert masks["scan.csv"] == dense["scan.csv"]
    assert masks["scan_config.json"] == dense["scan_config.json"]
    assert masks["scan.csv"].count("\n") == 1 + 8  # 2 methods x 2 layers x 2 components


def test_report_and_printed_tables_equal_from_masks(dense_and_masks):
    dense, masks = dense_and_masks
    assert masks["report.md"] == dense["report.md"]
    for key in (k for k in dense if k.endswith("stdout") and not k.startswith("scan")):
        assert masks[key] == dense[key], key


# --- on the GPU -------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(7, 13), (576, 1536), (4096, 11008)], ids=str)
def test_pack_on_cuda_equals_numpy(tmp_path, shape):
    kept = torch.rand(*shape, device="cuda") < 0.5
    packed = pack_mask(kept)
    assert packed.device.type == "cuda" and packed.dtype == torch.uint8
    np.testing.assert_array_equal(packed.cpu().numpy(), oracle(kept.cpu().numpy()))
    path = save_packed_mask(tmp_path / "m.mask.safetensors", kept)
    torch.testing.assert_close(load_matrix(path), kept.cpu())


@pytest.mark.parametrize("cut", [0, 20, -10], ids=["empty", "header-cut", "data-cut"])
def test_unreadable_mask_file_points_to_the_mask_export(tmp_path, cut):
    path = save_packed_mask(tmp_path / "layer0-mlp.up_proj.mask.safetensors", torch.ones(8, 16) > 0)
    data = path.read_bytes()
    path.write_bytes(data[:cut] if cut else b"")
    result = runner.invoke(app, ["hamming", "single", str(path)])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "featgeo prune --export masks" in lines[0] and "save_file" not in lines[0], lines[0]
