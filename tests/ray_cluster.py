"""A two-node Ray cluster on this machine for the distributed tests.

Each node is one ``ray start --block`` process (1 CPU) in its own session, so that ending the
cluster ends exactly the processes this module started (``os.killpg`` on their sessions), never
another Ray on the machine as ``ray stop`` would.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path


def ray_available() -> str | None:
    """None when Ray is importable and ``ray start`` exists; else why not."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return "Ray is not installed (pip install 'featgeo[ray]')"
    if not _ray_cli().exists():
        return f"no `ray` command beside {sys.executable}"
    return None


def _ray_cli() -> Path:
    return Path(sys.executable).parent / "ray"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LoopbackCluster:
    """A head node and ``workers`` more nodes on 127.0.0.1, each with ``cpus`` CPUs."""

    def __init__(self, workers: int = 1, cpus: int = 1, object_store_mb: int = 200):
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        # short: Ray's unix sockets live under it and a socket path is limited to 107 bytes
        self.temp_dir = Path(tempfile.mkdtemp(prefix="fgray"))
        self.cpus, self.object_store = cpus, object_store_mb * 1024 * 1024
        self.processes: list[subprocess.Popen] = []
        self.env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1")
        self._start(["--head", f"--port={self.port}", "--include-dashboard=false",
                     f"--temp-dir={self.temp_dir}"], "head")  # fmt: skip
        self._wait_port()
        for i in range(workers):
            self._start([f"--address={self.address}"], f"worker{i}")
        self.wait_nodes(1 + workers)

    def _start(self, args: list[str], name: str) -> None:
        log = open(self.temp_dir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(
            [str(_ray_cli()), "start", "--block", "--node-ip-address=127.0.0.1",
             f"--num-cpus={self.cpus}", "--num-gpus=0", "--disable-usage-stats",
             f"--object-store-memory={self.object_store}", *args],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        process.log = log
        self.processes.append(process)

    def _wait_port(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if self.processes[0].poll() is not None:
                    break
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"the Ray head did not start: {self.log('head')[-2000:]}")

    def log(self, name: str) -> str:
        path = self.temp_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_nodes(self, n: int, timeout: float = 90) -> None:
        """Wait until ``n`` nodes are alive (asked through a short-lived driver process, so
        that this process stays free to connect to the cluster itself)."""
        code = ("import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
                "print(sum(n['Alive'] for n in ray.nodes()))")  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = subprocess.run([sys.executable, "-c", code, self.address], env=self.env,
                                 capture_output=True, text=True, timeout=120)  # fmt: skip
            if out.stdout.strip().isdigit() and int(out.stdout.strip()) >= n:
                return
            time.sleep(1)
        raise RuntimeError(f"only some of the {n} Ray nodes came up: {out.stdout} {out.stderr}")

    def _members(self) -> list[tuple[int, str]]:
        """(pid, command name) of every live process in this cluster's sessions: the nodes'
        ``ray start`` processes and all they started (Ray's workers may leave the process group,
        never the session)."""
        sessions = {p.pid for p in self.processes}
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                pid = int(entry.name)
                if os.getsid(pid) not in sessions:
                    continue
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    cmd = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
                    found.append((pid, cmd))
            except (OSError, ProcessLookupError, IndexError):
                continue
        return found

    def task_pids(self, name: str = "_call") -> list[int]:
        """Ray worker processes of this cluster running a task ``name`` (featgeo's tasks are
        all ``featgeo.executors._call``; a worker's command line names its task)."""
        return [pid for pid, cmd in self._members() if cmd.startswith(f"ray::{name}")]

    def stop(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            members = self._members()
            if not members:
                break
            for pid, _ in members:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        for process in self.processes:
            process.wait(timeout=30)
            process.log.close()
        self.processes = []
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    @contextmanager
    def killing_a_worker(self, after: float = 0.0, timeout: float = 120):
        """Within the block, SIGKILL the first Ray worker found running a featgeo task,
        ``after`` seconds into it; yields the list that then holds its pid."""
        killed: list[int] = []
        stop = threading.Event()

        def kill() -> None:
            deadline = time.monotonic() + timeout
            while not killed and not stop.is_set() and time.monotonic() < deadline:
                pids = self.task_pids()
                if pids:
                    time.sleep(after)
                    try:
                        os.kill(pids[0], signal.SIGKILL)
                        killed.append(pids[0])
                    except ProcessLookupError:
                        pass
                time.sleep(0.01)

        thread = threading.Thread(target=kill, daemon=True)
        thread.start()
        try:
            yield killed
        finally:
            stop.set()
            thread.join(timeout=5)
