"""Stage 1 and Stage 3 on a two-node Ray cluster on 127.0.0.1 (``ray_cluster``): the files are
byte-identical to the local executor's, also when a worker process is killed mid-run (Ray runs
its unit again) and when the driver is killed and the run resumed. Stage 3 (MODE 1: refits, then
vertex samples) reads the module's local Stage 1 run; one worker is killed during its refits
and one during its scan."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from featgeo.archetypes.vertices import VertexSettings
from featgeo.cli import app
from featgeo.files import read_json

runner = CliRunner()
pytestmark = pytest.mark.ray


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def env(stage_env):
    return stage_env


@pytest.fixture(autouse=True)
def _cache(env, monkeypatch):
    monkeypatch.setenv("FEATGEO_CACHE", str(env["root"] / "cache"))


def stage1_args(env, save_dir, *extra):
    return [
        "aanet", "stage1", "--sae", str(env["sae"]), "--n-clusters", "4,6", "--save-dir",
        str(save_dir), "--k-min", "2", "--k-max", "4", "--max-steps", "60",
        "--early-stop-patience", "30", "--loss-smoothing-window", "8",
        "--model", str(env["model"]), "--corpus", str(env["corpus"]), "--context-size", "64",
        "--store-tokens", "2000", "--device", "cpu", "--models-per-unit", "3", *extra,
    ]  # fmt: skip


def stage1_files(save_dir) -> dict[str, bytes]:
    """Every file of the run but its record (timings) and plots (matplotlib stamps nothing, but
    the CSV, curves and models are what a unit's results decide)."""
    out = {}
    for path in sorted(save_dir.rglob("*")):
        rel = path.relative_to(save_dir).as_posix()
        if path.is_file() and not rel.endswith("stage1.json") and "latent_clusters" not in rel:
            out[rel] = path.read_bytes()
    return out


@pytest.fixture(scope="module")
def local_stage1(env):
    out = env["root"] / "local"
    result = runner.invoke(app, stage1_args(env, out, "--workers", "1"))
    assert result.exit_code == 0, result.output
    return out


def test_stage1_on_ray_is_byte_identical(env, local_stage1, ray_cluster):
    out = env["root"] / "ray"
    args = stage1_args(env, out, "--executor", "ray", "--ray-address", ray_cluster.address)
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    local, remote = stage1_files(local_stage1), stage1_files(out)
    assert sorted(local) == sorted(remote)
    assert [name for name in local if local[name] != remote[name]] == []
    assert any(name.endswith(".csv") for name in local)
    info = (out / "stage1.json").read_text()
    assert '"executor": "ray"' in info and '"nodes": 2' in info


def test_stage1_survives_a_killed_worker(env, local_stage1, ray_cluster):
    """A worker process dies in the middle of a unit: Ray runs the unit again elsewhere and the
    files are still those of the local run."""
    out = env["root"] / "ray-killed"
    args = stage1_args(env, out, "--executor", "ray", "--ray-address", ray_cluster.address)
    with ray_cluster.killing_a_worker(after=0.3) as killed:  # inside its unit
        result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert killed, "no worker process was found to kill"
    assert stage1_files(out) == stage1_files(local_stage1)


def test_stage1_resumes_after_the_driver_is_killed(env, local_stage1, ray_cluster):
    """The driver dies (SIGKILL) after some units are written; the same command finishes the
    run without retraining them, and the files are still those of the local run."""
    out = env["root"] / "ray-driver-killed"
    args = stage1_args(env, out, "--executor", "ray", "--ray-address", ray_cluster.address)
    driver = subprocess.Popen([sys.executable, "-m", "featgeo", *args], env=dict(os.environ),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    units = out / ".clusters_6.partial" / ".units"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and driver.poll() is None:
        if len(list(units.glob("unit_*.json"))) >= 2:
            driver.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    driver.wait(timeout=60)
    assert driver.returncode == -signal.SIGKILL, driver.stderr.read().decode()[-2000:]
    written = sorted(p.name for p in units.glob("unit_*.json"))
    assert written and not (out / "clusters_6").exists()

    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert stage1_files(out) == stage1_files(local_stage1)
    record = json.loads((out / "stage1.json").read_text())
    assert record["status"] == "complete"


# -- Stage 3 --------------------------------------------------------------------------------------
THRESHOLD = 1.2  # random tiny AANets put most tokens near the simplex centre (0.71-0.87 away)
QUOTA = 12
"""With the threshold, every cluster fills its quota a few blocks into the store: the scan stops
with blocks still in flight, which it cancels."""
STORE_TOKENS = 2500
CONTEXT = 64
BLOCK_TOKENS = 64
"""The scan's blocks (two chunks each): many Ray tasks on the tiny vertex store, which the
default block size would read as one."""
SELECT = ["--n-clusters-list", "4,6", "--no-require-monotonic", "--min-pct-decrease", "0",
          "--max-k-differential", "10", "--sigma-a", "0", "--sigma-bc", "0", "--manual", "6:1",
          "--refit-k", "recon"]  # fmt: skip
VERTEX = ["--store-tokens", str(STORE_TOKENS), "--samples-per-vertex", str(QUOTA),
          "--vertex-threshold", str(THRESHOLD)]  # fmt: skip


@dataclasses.dataclass(frozen=True)
class SmallBlocks(VertexSettings):
    block_tokens: int = BLOCK_TOKENS


def small_blocks(mp: pytest.MonkeyPatch) -> None:
    """The CLI has no block size option; it imports VertexSettings when the command runs. Stage
    3's module is imported first, so that it keeps the real class (its type checks) for the
    rest of the session."""
    from featgeo.archetypes import stage3, vertices

    assert stage3.VertexSettings is VertexSettings
    mp.setattr(vertices, "VertexSettings", SmallBlocks)


@pytest.fixture
def _small_blocks(monkeypatch):
    small_blocks(monkeypatch)


def invoke_ok(args):
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def stage1(local_stage1) -> Path:
    return local_stage1


def stage3_args(stage1, save_dir, *extra) -> list[str]:
    # two units of 3 models each at most, so that both nodes refit
    return ["aanet", "stage3", "--csv-dir", str(stage1), "--save-dir", str(save_dir), *SELECT,
            *VERTEX, "--device", "cpu", "--models-per-unit", "3", *extra]  # fmt: skip


def stage3_files(save_dir: Path) -> dict[str, bytes]:
    """Every file of the run but its record (timings, the executor)."""
    return {
        path.relative_to(save_dir).as_posix(): path.read_bytes()
        for path in sorted(save_dir.rglob("*"))
        if path.is_file() and path.name != "stage3.json"
    }


@pytest.fixture(scope="module")
def local_stage3(env, stage1):
    with pytest.MonkeyPatch.context() as mp:  # set up before the function-scoped _small_blocks
        small_blocks(mp)
        out = env["root"] / "local-stage3"
        invoke_ok(stage3_args(stage1, out, "--workers", "1"))
    return out


def assert_same_run(out: Path, local: Path) -> None:
    mine, theirs = stage3_files(out), stage3_files(local)
    assert sorted(mine) == sorted(theirs)
    assert [name for name in theirs if mine[name] != theirs[name]] == []
    assert any(name.endswith("_vertex_samples.jsonl") and data for name, data in mine.items())
    info, local_info = read_json(out / "stage3.json"), read_json(local / "stage3.json")
    assert info["status"] == "complete" and info["settings"]["mode"] == "retrain"
    assert info["vertex_scan"] == local_info["vertex_scan"]
    scan = info["vertex_scan"]
    assert scan["stopped"] == "quota" and scan["tokens_scanned"] < STORE_TOKENS
    assert scan["chunks_scanned"] >= 3 * BLOCK_TOKENS // CONTEXT  # several blocks, so tasks
    assert info["executor"]["executor"] == "ray" and info["executor"]["nodes"] == 2
    assert local_info["executor"] == {"executor": "local"}


def test_stage3_on_ray_is_byte_identical(stage1, local_stage3, ray_cluster, tmp_path,
                                         _small_blocks):  # fmt: skip
    out = tmp_path / "ray"
    invoke_ok(stage3_args(stage1, out, "--executor", "ray", "--ray-address", ray_cluster.address))
    assert_same_run(out, local_stage3)


def test_stage3_survives_killed_workers(stage1, local_stage3, ray_cluster, tmp_path,
                                        monkeypatch, _small_blocks):  # fmt: skip
    """A worker dies in a refit unit, another in the scan: Ray runs their units again and the
    files are still those of the local run."""
    from featgeo.archetypes import stage3 as module

    scanning = threading.Event()
    real_scan = module.scan_vertices

    def scan(*args, **kwargs):
        scanning.set()
        yield from real_scan(*args, **kwargs)

    monkeypatch.setattr(module, "scan_vertices", scan)
    killed: dict[str, int] = {}

    def kill(phase: str, wait: float) -> None:
        while phase not in killed and time.monotonic() < deadline:
            if phase == "scan" and not scanning.is_set():
                time.sleep(0.01)
                continue
            pids = ray_cluster.task_pids()
            if pids:
                time.sleep(wait)  # inside its unit
                try:
                    os.kill(pids[0], signal.SIGKILL)
                    killed[phase] = pids[0]
                except ProcessLookupError:
                    continue
            time.sleep(0.005)

    def killer() -> None:
        kill("refit", 0.3)
        kill("scan", 0.0)  # a block's task lasts milliseconds

    deadline = time.monotonic() + 120
    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    out = tmp_path / "ray-killed"
    invoke_ok(stage3_args(stage1, out, "--executor", "ray", "--ray-address", ray_cluster.address))
    deadline = 0  # the run is over: stop looking
    thread.join(timeout=5)
    assert "refit" in killed, "no worker process was found to kill during the refits"
    assert_same_run(out, local_stage3)
