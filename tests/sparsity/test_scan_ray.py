"""`featgeo hamming scan --executor ray` on a two-node Ray cluster on 127.0.0.1 (``ray_cluster``):
every file is byte-identical to the local scan's, also when a worker process is killed in the
middle of a matrix (Ray measures it again)."""

from __future__ import annotations

import pytest
from test_scan import make_exports
from typer.testing import CliRunner

from featgeo.cli import app

runner = CliRunner()
pytestmark = pytest.mark.ray


def files(folder) -> dict[str, bytes]:
    """The scan's files, its --out (which differs between the runs compared) blanked."""
    out = str(folder).encode()
    return {p.name: p.read_bytes().replace(out, b"OUT") for p in sorted(folder.iterdir())
            if p.is_file()}  # fmt: skip


def scan_args(exports, out, *extra):
    return ["hamming", "scan", "--matrices-dir", str(exports), "--out", str(out),
            "--device", "cpu", "--order-by", "greedy", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    return make_exports(tmp_path_factory.mktemp("ray-scan") / "clustering_characterization")


def test_scan_on_ray_is_byte_identical(exports, tmp_path, ray_cluster):
    local, remote = tmp_path / "local", tmp_path / "ray"
    assert runner.invoke(app, scan_args(exports, local)).exit_code == 0
    result = runner.invoke(
        app, scan_args(exports, remote, "--executor", "ray", "--ray-address", ray_cluster.address)
    )
    assert result.exit_code == 0, result.output
    assert "8 matrices measured" in result.output
    expected = files(local)
    assert {"scan.csv", "scan_config.json"} <= set(expected)
    assert files(remote) == expected


def test_scan_survives_a_killed_worker(tmp_path, ray_cluster):
    """Matrices big enough that a unit takes a while; one worker is killed inside one."""
    exports = make_exports(tmp_path / "big", components=("mlp.big",), layers=(0, 1, 2))
    big = {"mlp.big": (512, 1536)}
    for path in sorted(exports.rglob("*.pt")):  # re-plant at the big shape
        import torch
        from test_scan import planted_matrix

        torch.save(planted_matrix(*big["mlp.big"], seed=len(str(path))), path)
    local, remote = tmp_path / "local", tmp_path / "ray"
    assert runner.invoke(app, scan_args(exports, local)).exit_code == 0
    args = scan_args(exports, remote, "--executor", "ray", "--ray-address", ray_cluster.address)
    with ray_cluster.killing_a_worker() as killed:
        result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert killed, "no worker process was found to kill"
    assert files(remote) == files(local)


def test_progress_counts_units_and_busy_workers(exports, tmp_path, ray_cluster, monkeypatch):
    """The driver feeds the usual rich bar: matrices done out of the total, workers busy."""
    from featgeo import progress
    from featgeo.sparsity import scan as scan_module

    seen = []

    class Recording(type(progress.progress_bar())):
        def update(self, task_id, **fields):
            super().update(task_id, **fields)
            task = self._tasks[task_id]
            seen.append((task.completed, task.total, task.fields.get("status")))

    monkeypatch.setattr(scan_module, "progress_bar", lambda **kw: Recording(
        *progress.progress_bar().columns, console=progress.err_console))  # fmt: skip
    result = runner.invoke(
        app, scan_args(exports, tmp_path / "s", "--executor", "ray", "--ray-address",
                       ray_cluster.address),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert seen[-1][:2] == (8, 8)
    busy = {status for _, _, status in seen if status and status.endswith("workers busy")}
    assert "2 workers busy" in busy  # two nodes of one CPU each
