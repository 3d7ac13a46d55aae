"""`--executor` / `--ray-address` on every command that has them: a bad executor, Ray missing, no
cluster at the address, or something other than Ray there is one line on stderr, exit code 2,
and nothing written. These need no Ray cluster (the identical-results tests that start one are
tests/archetypes/test_ray.py, test_stage3_ray.py and tests/sparsity/test_scan_ray.py)."""

from __future__ import annotations

import http.server
import socket
import sys
import threading

import pytest
import torch
from typer.testing import CliRunner

from featgeo.cli import app
from featgeo.executors import ExecutorSpec, RayPool, check_executor, connect

runner = CliRunner()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def http_port():
    """A web server on loopback: something answers, but not Ray."""
    class Quiet(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):  # the test reads the command's stderr only
            pass

    # every interface: Ray reaches 127.0.0.1 through this machine's own address
    server = http.server.HTTPServer(("", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def no_ray(monkeypatch):
    """Ray as if not installed: ``import ray`` fails and ``find_spec`` finds nothing."""
    monkeypatch.setitem(sys.modules, "ray", None)


@pytest.fixture
def no_recorded_cluster(monkeypatch, tmp_path):
    """``--ray-address auto`` on a machine where no cluster was started."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "ray-tmp"))


# -- the library ---------------------------------------------------------------------------------


def test_local_is_the_default_and_needs_no_ray(no_ray):
    assert check_executor() == ExecutorSpec("local", None)
    with connect(check_executor("local")) as pool:
        assert pool is None


@pytest.mark.parametrize("address", ["auto", "127.0.0.1:6379", "head.example:10001", "[::1]:6379"])
def test_good_addresses(address):
    pytest.importorskip("ray")
    assert check_executor("ray", address) == ExecutorSpec("ray", address)
    assert check_executor("ray", None).ray_address == "auto"


BAD = [
    (("nosuch", None), "--executor must be one of local, ray, got 'nosuch'"),
    (("Ray", None), "--executor must be one of local, ray"),
    (("local", "127.0.0.1:6379"), "--ray-address is read only with --executor ray"),
    (("ray", "127.0.0.1"), "--ray-address must be 'auto' or HOST:PORT"),
    (("ray", "127.0.0.1:0"), "--ray-address must be 'auto' or HOST:PORT"),
    (("ray", "127.0.0.1:70000"), "--ray-address must be 'auto' or HOST:PORT"),
    (("ray", "head:port"), "--ray-address must be 'auto' or HOST:PORT"),
    (("ray", ""), "--ray-address must be 'auto' or HOST:PORT"),
    (("ray", "ray://head:10001"), "--ray-address must be 'auto' or HOST:PORT"),
    (("ray", "::1"), "--ray-address must be 'auto' or HOST:PORT"),
    (("ray", "127.0.0.1:6379:1"), "--ray-address must be 'auto' or HOST:PORT"),
    (("ray", "127.0.0.1:\u00b2"), "--ray-address must be 'auto' or HOST:PORT"),
    ((ExecutorSpec("nosuch"), None), "--executor must be one of local, ray"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[m for _, m in BAD])
def test_bad_options(args, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        check_executor(*args)


def test_ray_missing_names_the_extra(no_ray):
    with pytest.raises(ValueError, match=r"needs Ray.*pip install 'featgeo\[ray\]'"):
        check_executor("ray", "127.0.0.1:6379")


def test_nothing_listening(http_port):
    pytest.importorskip("ray")
    port = free_port()
    message = f"--ray-address 127.0.0.1:{port}: no Ray cluster answers at .*:{port}"
    with pytest.raises(ValueError, match=message):
        with connect(check_executor("ray", f"127.0.0.1:{port}")):
            pass


def test_not_a_ray_cluster(http_port):
    pytest.importorskip("ray")
    with pytest.raises(ValueError, match="but it is not a Ray cluster's head"):
        with connect(check_executor("ray", f"127.0.0.1:{http_port}")):
            pass


def test_auto_without_a_cluster(no_recorded_cluster):
    pytest.importorskip("ray")
    with pytest.raises(ValueError, match="--ray-address auto found no running Ray cluster"):
        with connect(check_executor("ray", "auto")):
            pass


# -- every command -------------------------------------------------------------------------------


def commands(tmp_path) -> dict[str, tuple[list[str], object]]:
    """Each command with valid-looking base arguments, and the folder it would write."""
    out = tmp_path / "out"
    matrices = tmp_path / "matrices" / "wanda"
    matrices.mkdir(parents=True)
    torch.save(torch.eye(8), matrices / "layer0-mlp.down_proj.pt")
    return {
        "aanet stage1": (["aanet", "stage1", "--sae", str(tmp_path), "--save-dir", str(out)], out),
        "aanet stage3": (["aanet", "stage3", "--csv-dir", str(tmp_path), "--save-dir", str(out)],
                         out),  # fmt: skip
        "hamming scan": (["hamming", "scan", "--matrices-dir", str(matrices.parent), "--methods",
                          "wanda", "--out", str(out)], out),  # fmt: skip
    }


CASES = {
    "nosuch": (["--executor", "nosuch"], "--executor must be one of local, ray, got 'nosuch'"),
    "no-ray": (["--executor", "ray", "--ray-address", "127.0.0.1:6379"], "needs Ray"),
    "unreachable": (["--executor", "ray", "--ray-address", "127.0.0.1:{free}"],
                    "--ray-address 127.0.0.1:{free}: no Ray cluster answers at"),  # fmt: skip
    "not-ray": (["--executor", "ray", "--ray-address", "127.0.0.1:{http}"],
                "but it is not a Ray cluster's head"),  # fmt: skip
    "auto-none": (["--executor", "ray"], "--ray-address auto found no running Ray cluster"),
    "address-without-ray": (["--ray-address", "127.0.0.1:6379"],
                            "--ray-address is read only with --executor ray"),  # fmt: skip
}


# "not-ray" on one command only: each waits for Ray's client to give up on the server (~13 s)
PAIRS = [(command, case) for command in ("aanet stage1", "aanet stage3", "hamming scan")
         for case in sorted(CASES) if case != "not-ray" or command == "hamming scan"]  # fmt: skip


@pytest.mark.parametrize("command, case", PAIRS)
def test_every_command_fails_cleanly(command, case, tmp_path, http_port, monkeypatch,
                                     no_recorded_cluster):  # fmt: skip
    if case == "no-ray":
        monkeypatch.setitem(sys.modules, "ray", None)
    elif case != "nosuch" and case != "address-without-ray":
        pytest.importorskip("ray")
    base, out = commands(tmp_path)[command]
    extra, message = CASES[case]
    values = {"free": free_port(), "http": http_port}
    extra = [e.format(**values) for e in extra]
    before = sorted(p.name for p in tmp_path.iterdir())
    result = runner.invoke(app, [*base, *extra])
    assert result.exit_code == 2, result.output
    assert message.format(**values) in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_workers_is_for_the_local_executor(tmp_path):
    pytest.importorskip("ray")
    base, out = commands(tmp_path)["aanet stage1"]
    result = runner.invoke(app, [*base, "--executor", "ray", "--ray-address", "127.0.0.1:6379",
                                 "--workers", "2"])  # fmt: skip
    assert result.exit_code == 2
    assert "--workers 2 applies to --executor local" in result.output
    assert not out.exists()


class Cluster(RayPool):
    """A RayPool whose cluster resources are given (what ``ray.cluster_resources()`` reports)."""

    def __init__(self, **resources):
        super().__init__("10.0.0.1:6379")
        self._resources = resources

    def resources(self):
        return dict(self._resources)


def test_units_go_where_the_cluster_has_room():
    import torch

    gpus, cpus = Cluster(CPU=64.0, GPU=8.0), Cluster(CPU=3.0)
    assert gpus.unit_device("auto") == torch.device("cuda")  # the driver needs no GPU
    assert cpus.unit_device("auto") == torch.device("cpu")
    assert gpus.unit_device("cpu") == torch.device("cpu")
    assert gpus.slots(num_cpus=1, num_gpus=1) == 8  # eight CUDA units at once
    assert gpus.slots(num_cpus=1) == 64
    assert cpus.slots(num_cpus=2) == 1 and Cluster().slots() == 1
    with pytest.raises(ValueError, match="the Ray cluster at 10.0.0.1:6379 has no GPU"):
        cpus.unit_device("cuda")
    with pytest.raises(ValueError, match="--device must be auto, cpu or cuda, got 'tpu'"):
        cpus.unit_device("tpu")


def test_the_address_in_ray_address_is_checked_under_its_own_name(monkeypatch):
    pytest.importorskip("ray")
    monkeypatch.setenv("RAY_ADDRESS", "garbage")
    with pytest.raises(ValueError, match=r"--ray-address auto \(from RAY_ADDRESS\) must be"):
        with connect(check_executor("ray", "auto")):
            pass


def test_a_broken_ray_install_is_one_error(monkeypatch, tmp_path):
    """Ray found but failing to import (a half-installed package) is an input error too."""
    fake = tmp_path / "site" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('libray.so: cannot open shared object')")
    monkeypatch.delitem(sys.modules, "ray", raising=False)
    monkeypatch.syspath_prepend(str(fake.parent))
    spec = check_executor("ray", "127.0.0.1:6379")
    with pytest.raises(ValueError, match="Ray is installed but does not import .*libray.so"):
        with connect(spec):
            pass


def test_a_cluster_without_cpus_or_a_numbered_gpu_is_refused():
    with pytest.raises(ValueError, match="has no CPU for featgeo's units"):
        Cluster(GPU=8.0).unit_device("auto")
    with pytest.raises(ValueError, match="--device cuda:3: on Ray each unit gets a GPU of its own"):
        Cluster(CPU=8.0, GPU=8.0).unit_device("cuda:3")


def test_units_that_cannot_finish_are_one_line_with_exit_code_1():
    """A Ray worker that keeps dying is not bad input (exit 1, not 2), but still one line."""
    import typer

    from featgeo.cli import _one_line_errors
    from featgeo.errors import ExecutionError

    def job() -> None:
        raise ExecutionError("unit 2 could not finish on the Ray cluster; run it again")

    one = typer.Typer()
    one.command()(_one_line_errors(job))
    result = CliRunner().invoke(one, [])
    assert result.exit_code == 1
    assert result.output.strip() == (
        "featgeo: error: unit 2 could not finish on the Ray cluster; run it again"
    )


@pytest.mark.ray
def test_tasks_keep_their_order_and_their_errors(ray_cluster):
    """map_ordered gives results in payload order whatever order tasks finish in, ``shared``
    reaches every task, and a unit's own exception comes back as itself (not Ray's wrapper)."""
    import operator

    with connect(check_executor("ray", ray_cluster.address)) as pool:
        busy = []
        results = pool.map_ordered(operator.mul, range(10), shared=(3,), on_busy=busy.append)
        assert list(results) == [3 * i for i in range(10)]
        assert max(busy) == 2  # two one-CPU nodes: two tasks at once, never more
        with pytest.raises(ZeroDivisionError):
            list(pool.map_unordered(operator.truediv, [1.0, 2.0], shared=(0.0,)))
