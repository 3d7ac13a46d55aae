"""Multi-seed clustering (seed 000, script 1): the exact output tree, valid figures, a
deterministic summary, resuming an interrupted run, and bad input that writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from featgeo.cli import app
from featgeo.cli.hamming_seeds import parse_k_values
from featgeo.files import partial_dir
from featgeo.sparsity import seeds as seeds_mod
from featgeo.sparsity.seeds import PLOT_KINDS, SUMMARY_FILES, run_seeds

D, N = 48, 40  # 40 features (columns), each 48 positions long
SMALL = {"seeds": 2, "k_values": (2, 4), "n_similar": 12, "dpi": 30, "progress": False}


def planted_matrix(d: int = D, n: int = N, groups: int = 4, flips: int = 3, seed: int = 0):
    """[d, n] weights whose column masks form ``groups`` planted groups (a random base mask per
    group, ``flips`` positions flipped per member)."""
    rng = np.random.default_rng(seed)
    bases = rng.random((groups, d)) < 0.5
    masks = np.empty((n, d), dtype=bool)
    for i in range(n):
        masks[i] = bases[i % groups]
        masks[i, rng.choice(d, flips, replace=False)] ^= True
    weights = rng.standard_normal((d, n)) + np.sign(rng.standard_normal((d, n)))
    return torch.from_numpy((weights * masks.T).astype(np.float32))


def write_matrices(root: Path, method: str = "wanda", component: str = "mlp.down_proj", **kw):
    path = root / method / f"layer1-{component}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(planted_matrix(**kw), path)
    return root


@pytest.fixture(scope="module")
def matrices(tmp_path_factory) -> Path:
    return write_matrices(tmp_path_factory.mktemp("m") / "clustering_characterization")


@pytest.fixture(scope="module")
def finished(matrices, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "wanda" / "mlp.down_proj"
    result = run_seeds(matrices, method="wanda", component="mlp.down_proj", output_dir=out, **SMALL)
    return result


def expected_tree(references: dict[int, int], k_values=(2, 4)) -> list[str]:
    files = [f"summary/{name}" for name in SUMMARY_FILES]
    for s, feat in references.items():
        for k in k_values:
            files += [f"seed_{s}/k_{k}/seed{s}_k{k}_feat{feat}_{kind}.png" for kind in PLOT_KINDS]
    return sorted(files)


def tree(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


EXPECTED_TREE = [  # seeds=2, k_values=(2, 4); references RandomState(0|1).randint(0, 40) = 0, 37
    "seed_0/k_2/seed0_k2_feat0_distance_heatmap.png",
    "seed_0/k_2/seed0_k2_feat0_spy_plot.png",
    "seed_0/k_2/seed0_k2_feat0_statistics.png",
    "seed_0/k_2/seed0_k2_feat0_tsne.png",
    "seed_0/k_4/seed0_k4_feat0_distance_heatmap.png",
    "seed_0/k_4/seed0_k4_feat0_spy_plot.png",
    "seed_0/k_4/seed0_k4_feat0_statistics.png",
    "seed_0/k_4/seed0_k4_feat0_tsne.png",
    "seed_1/k_2/seed1_k2_feat37_distance_heatmap.png",
    "seed_1/k_2/seed1_k2_feat37_spy_plot.png",
    "seed_1/k_2/seed1_k2_feat37_statistics.png",
    "seed_1/k_2/seed1_k2_feat37_tsne.png",
    "seed_1/k_4/seed1_k4_feat37_distance_heatmap.png",
    "seed_1/k_4/seed1_k4_feat37_spy_plot.png",
    "seed_1/k_4/seed1_k4_feat37_statistics.png",
    "seed_1/k_4/seed1_k4_feat37_tsne.png",
    "summary/metrics_summary.json",
    "summary/summary_distances.png",
    "summary/summary_separation_ratios.png",
]


def test_output_tree_is_seed_000s(finished):
    assert finished.feature_indices == {0: 0, 1: 37}
    assert tree(finished.output_dir) == EXPECTED_TREE == finished.files
    assert expected_tree({0: 0, 1: 37}) == EXPECTED_TREE
    assert not partial_dir(finished.output_dir).exists()
    assert sorted(finished.computed) == [(0, 2), (0, 4), (1, 2), (1, 4)]
    assert finished.reused == []


def test_every_png_is_a_real_image(finished):
    import matplotlib.image as mpimg

    pngs = sorted(finished.output_dir.rglob("*.png"))
    assert len(pngs) == 2 * 2 * 4 + 2
    for png in pngs:
        assert png.stat().st_size > 0
        image = mpimg.imread(png)
        assert image.ndim == 3 and image.shape[0] > 0 and image.shape[1] > 0, png
        assert image[..., :3].std() > 0.01, f"{png} is a single flat colour"


def test_summary_json(finished):
    summary = json.loads((finished.output_dir / "summary/metrics_summary.json").read_text())
    assert summary == finished.summary
    assert summary["config"]["k_values"] == [2, 4]
    assert summary["config"]["seeds"] == 2 and summary["config"]["n_similar"] == 12
    matrix = summary["matrix"]
    assert (matrix["method"], matrix["layer"], matrix["component"]) == (
        "wanda",
        1,
        "mlp.down_proj",
    )
    assert matrix["shape"] == [D, N] and 0.3 < matrix["sparsity"] < 0.7
    for s in ("0", "1"):
        seed = summary["per_seed"][s]
        assert seed["analysed_features"][0] == seed["feature_idx"]
        assert len(seed["analysed_features"]) == 13
        assert sorted(seed["per_k"]) == ["2", "4"]
        assert seed["per_k"]["4"]["n_clusters"] == 4
    for k in ("2", "4"):
        values = [summary["per_seed"][s]["per_k"][k]["mmm_block_coherence"] for s in ("0", "1")]
        aggregate = summary["per_k"][k]["mmm_block_coherence"]
        assert aggregate["mean"] == pytest.approx(np.mean(values))
        assert aggregate["std"] == pytest.approx(np.std(values))
        for metric in ("centroid_separation_ratio", "hamming_separation_ratio"):
            assert metric in summary["per_k"][k]


def test_planted_groups_separate(finished):
    """Four planted groups: with k=4 the Hamming separation is far above 1."""
    ratio = finished.summary["per_k"]["4"]["hamming_separation_ratio"]["mean"]
    assert ratio > 1.5


def test_summary_is_byte_identical_across_runs(matrices, finished, tmp_path):
    again = run_seeds(
        matrices, method="wanda", component="mlp.down_proj", output_dir=tmp_path / "b", **SMALL
    )
    first = (finished.output_dir / "summary/metrics_summary.json").read_bytes()
    assert (again.output_dir / "summary/metrics_summary.json").read_bytes() == first
    assert again.files == finished.files


def test_resume_recomputes_only_what_is_missing(matrices, finished, tmp_path, monkeypatch):
    from featgeo.reports import plots

    out = tmp_path / "resumed"
    real_tsne = plots.tsne_plot

    def failing_tsne(*args, title=None, **kwargs):
        if "seed 1, k=4" in title:
            raise RuntimeError("injected failure")
        return real_tsne(*args, title=title, **kwargs)

    monkeypatch.setattr(plots, "tsne_plot", failing_tsne)
    with pytest.raises(RuntimeError, match="injected"):
        run_seeds(matrices, method="wanda", component="mlp.down_proj", output_dir=out, **SMALL)
    monkeypatch.undo()
    assert not out.exists()
    stage = partial_dir(out)
    feat0 = finished.feature_indices[0]
    spy = stage / f"seed_0/k_2/seed0_k2_feat{feat0}_spy_plot.png"
    assert spy.is_file()
    spy.unlink()

    calls = []
    real_analyze = seeds_mod.analyze_feature
    monkeypatch.setattr(
        seeds_mod,
        "analyze_feature",
        lambda *a, **kw: calls.append((kw["seed"], kw["n_clusters"])) or real_analyze(*a, **kw),
    )
    result = run_seeds(matrices, method="wanda", component="mlp.down_proj", output_dir=out, **SMALL)
    assert sorted(result.computed) == sorted(calls) == [(0, 2), (1, 4)]
    assert sorted(result.reused) == [(0, 4), (1, 2)]
    assert not stage.exists()
    assert tree(out) == finished.files
    first = (finished.output_dir / "summary/metrics_summary.json").read_bytes()
    assert (out / "summary/metrics_summary.json").read_bytes() == first


def test_other_settings_discard_an_interrupted_run(matrices, tmp_path, monkeypatch):
    from featgeo.reports import plots

    out = tmp_path / "o"
    settings = {**SMALL, "seeds": 1, "k_values": (2,)}
    monkeypatch.setattr(plots, "summary_distances", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        run_seeds(matrices, method="wanda", component="mlp.down_proj", output_dir=out, **settings)
    monkeypatch.undo()
    assert partial_dir(out).is_dir()
    settings["n_similar"] = 10
    result = run_seeds(
        matrices, method="wanda", component="mlp.down_proj", output_dir=out, **settings
    )
    assert result.reused == [] and result.computed == [(0, 2)]
    assert result.summary["config"]["n_similar"] == 10
    assert not partial_dir(out).exists()


BAD = [
    (
        {"component": "mlp.up_proj"},
        FileNotFoundError,
        r"layer1-mlp\.up_proj\.pt' does not exist \(layer 1 there has: mlp\.down_proj\)",
    ),
    ({"component": "../mlp"}, ValueError, r"--component must be a module name.*got '\.\./mlp'"),
    ({"method": "obs"}, ValueError, r"'obs' is not a pruning method.*sparsegpt.*wanda"),
    ({"k_values": (2, 14)}, ValueError, r"--k-values 14 is larger than the 13 analysed"),
    ({"k_values": (1,)}, ValueError, r"--k-values 1 is too small"),
    ({"k_values": ()}, ValueError, r"--k-values is empty"),
    ({"n_similar": 40}, ValueError, r"--n-similar 40 is impossible.*39 or less"),
    ({"n_similar": 0}, ValueError, r"--n-similar must be >= 1"),
    ({"seeds": 0}, ValueError, r"--seeds must be >= 1, got 0"),
    ({"layer": 3}, FileNotFoundError, r"layer3-mlp\.down_proj\.pt"),
    ({"axis": "diagonal"}, ValueError, r"--axis must be"),
    ({"cluster_on": "pixels"}, ValueError, r"--cluster-on must be"),
]


@pytest.mark.parametrize("override,error,match", BAD, ids=[str(b[0]) for b in BAD])
def test_bad_input_writes_nothing(matrices, tmp_path, override, error, match):
    out = tmp_path / "out"
    kwargs = {"method": "wanda", "component": "mlp.down_proj", "output_dir": out, **SMALL}
    kwargs.update(override)
    with pytest.raises(error, match=match):
        run_seeds(matrices, **kwargs)
    assert not out.exists() and not partial_dir(out).exists()
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_replace_a_foreign_folder(matrices, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="already holds files that featgeo did not write"):
        run_seeds(matrices, method="wanda", component="mlp.down_proj", output_dir=out, **SMALL)
    assert (out / "notes.txt").read_text() == "keep me"


def test_cluster_on_weights_and_default_output_dir(matrices, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = {**SMALL, "seeds": 1, "k_values": (3,)}
    result = run_seeds(
        matrices, method="wanda", component="mlp.down_proj", cluster_on="weights", **settings
    )
    assert result.output_dir == Path("results/metrics/multi_seed_clustering/wanda/mlp.down_proj")
    assert (result.output_dir / "summary/metrics_summary.json").is_file()
    assert result.summary["config"]["cluster_on"] == "weights"


@pytest.mark.parametrize(
    "values,rest,expected",
    [
        (["4"], ["8", "16"], [4, 8, 16]),
        (["4,8,16"], [], [4, 8, 16]),
        (["4", "8"], [], [4, 8]),
        (["4 8"], None, [4, 8]),
        (None, None, None),
    ],
    ids=["seed-form", "commas", "repeated", "quoted-spaces", "absent"],
)
def test_parse_k_values(values, rest, expected):
    assert parse_k_values(values, rest) == expected


def test_parse_k_values_errors():
    with pytest.raises(ValueError, match="must be integers, got 'x'"):
        parse_k_values(["4,x"])
    with pytest.raises(ValueError, match="unexpected argument"):
        parse_k_values(None, ["8"])


def test_cli_seed_form(matrices, tmp_path):
    out = tmp_path / "cli"
    args = ["hamming", "seeds", "--method", "wanda", "--component", "mlp.down_proj"]
    args += ["--matrices-dir", str(matrices), "--seeds", "1", "--n-similar", "6"]
    args += ["--k-values", "2", "3", "--output-dir", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["seed_0", "summary"]
    assert sorted(p.name for p in (out / "seed_0").iterdir()) == ["k_2", "k_3"]


def test_cli_bad_input_is_one_line(matrices, tmp_path):
    out = tmp_path / "cli"
    args = ["hamming", "seeds", "--method", "wanda", "--component", "mlp.down_proj"]
    args += ["--matrices-dir", str(matrices), "--n-similar", "12", "--k-values", "4,99"]
    args += ["--output-dir", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "--k-values 99 is larger" in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_any_discovered_component_name_works(tmp_path):
    """Fused layouts export e.g. Phi-3's ``self_attn.qkv_proj``: no fixed Llama list."""
    matrices = tmp_path / "m"
    write_matrices(matrices, component="self_attn.qkv_proj")
    result = run_seeds(
        matrices, method="wanda", component="self_attn.qkv_proj", output_dir=tmp_path / "o", **SMALL
    )
    assert result.summary["config"]["component"] == "self_attn.qkv_proj"
