"""Stage 1 on Ray: the Ray executor against the local one on the same work, and a projection.

Both sides run the demo SAE's Stage 1 exactly as ``featgeo demo`` runs it (``featgeo demo
--dry-run`` prints the command: n = 128, 256; k = 2..8; 200 steps at most; 1,024 tokens a step;
store of 65,536 tokens), with the same seed and ``--device cpu``, each in its own fresh process
measured from outside by benchmarks/_measure.py:

- **local**: ``featgeo aanet stage1 ... --executor local --workers CPUS`` (a spawn pool of CPUS
  processes, one torch thread each);
- **ray**: ``featgeo aanet stage1 ... --executor ray --ray-address 127.0.0.1:PORT`` on a Ray
  cluster this script starts on 127.0.0.1 before the command and stops after it: one head node
  with CPUS CPUs (``--ray-nodes 1``), or a head and more nodes sharing them (``--ray-nodes N``).
  Each node is one ``ray start --block`` process in its own session; stopping the cluster kills
  exactly the processes of those sessions (never ``ray stop``, which would end every Ray on the
  machine), also on Ctrl-C or SIGTERM.

Printed: wall seconds of the training part (from the units' hand-out to the last unit's models
written, featgeo's ``seconds.training``) and of the whole command (interpreter start, imports,
connecting to Ray, data, training, tables and plots, disconnecting), best of ``--repeats`` (run
local, ray, local, ray, ...; other jobs on the machine only ever add time) and each repeat's
ratio, ray / local and the overhead in %, Ray's connect time, and whether every run wrote the
same bytes as the first (CSVs, curves and models). Each command runs with a few timers added in
its own process (``--child``): when Ray's connect returns, when each unit is handed to Ray,
starts and ends in its worker, reaches the driver and is written by it. From those: per-unit
costs (wall and CPU seconds in the worker, models per unit), Ray's per-unit overhead (dispatch:
from the moment a CPU was free and the unit submitted to its start in a worker; return: from its
end in the worker, or the driver being free, to the driver holding the result), the driver's
write time per unit, Ray's own seconds in the run (an upper bound that does not depend on two
noisy wall times), and a projection of Stage 1 at the seed's scale (1,664 clusters x 7 k =
11,648 models, and 10x that) onto 1, 8 and 64 one-CPU workers. Every projected number is
labelled so; GPU units are not measured by this script (it has no GPU side).

    python benchmarks/distributed.py                          # the demo's Stage 1, 2 CPUs
    python benchmarks/distributed.py --max-steps 20 --n-clusters 128   # smoke, about 1 minute
    python benchmarks/distributed.py --report distributed.json         # reprint, run nothing
    make bench-distributed ARGS="--repeats 3 --json distributed.json"

The demo SAE and its clusters are built once, with the demo's own commands, into --demo-dir
(default: TMPDIR/featgeo_distributed/demo; pass the --out of an earlier ``featgeo demo`` to reuse
its); the Stage 1 outputs go to --work (default: TMPDIR/featgeo_distributed) and are deleted
after the comparison unless --keep-outputs.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MEASURE = HERE / "_measure.py"
SEED_N_CLUSTERS = (128, 256, 512, 768)
"""Seed 002's Stage 1: k-means with these n, k = 2..8 (1,664 clusters, 11,648 models)."""
SEED_KS = 7
SEED_CPU_MODELS_PER_UNIT = 28
SEED_UNIT_SECONDS = 2 * 4568 / 416
"""Seconds per 28-model unit of the seed's settings on CPU, one thread: docs/benchmarks.md,
"Stage 1 on the default SAE" (training wall 4,568 s with 2 workers for 416 units, on the shared
2-core VM, so an upper bound)."""
PROJECT_WORKERS = (1, 8, 64)
GOAL_OVERHEAD = 0.10
WRAPPER_GRACE_S = 60.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", default=None, help="scratch (default: TMPDIR/featgeo_distributed)")
    p.add_argument(
        "--demo-dir",
        default=None,
        help="holds the demo SAE (saes/layer6-demo) and its clusters (sae_clusters); built "
        "there with the demo's commands when missing (default: WORK/demo)",
    )
    p.add_argument(
        "--quick", action="store_true", help="the settings of `featgeo demo --quick` (smoke)"
    )
    p.add_argument("--n-clusters", default=None, help="a subset of the demo's n (e.g. 128)")
    p.add_argument("--max-steps", type=int, default=None, help="override the demo's (smoke)")
    p.add_argument("--cpus", type=int, default=2, help="local --workers and the Ray cluster's CPUs")
    p.add_argument(
        "--ray-nodes", type=int, default=1, help="Ray nodes sharing the CPUs (1: one head)"
    )
    p.add_argument("--repeats", type=int, default=1, help="local, ray, local, ray, ...")
    p.add_argument("--seed", type=int, default=0, help="Stage 1's --seed, the same both sides")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per command")
    p.add_argument(
        "--seed-unit-seconds",
        type=float,
        default=SEED_UNIT_SECONDS,
        help="seconds of one 28-model unit with the seed's settings, for the projection "
        "(default: from docs/benchmarks.md, 'Stage 1 on the default SAE')",
    )
    p.add_argument("--keep-outputs", action="store_true", help="keep both Stage 1 outputs")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--report", default=None, help="print the tables of a saved JSON, run nothing")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("featgeo_args", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.featgeo_args and not args.child:
        p.error(f"unrecognized arguments: {' '.join(args.featgeo_args)}")
    if args.cpus < 1 or args.ray_nodes < 1 or args.cpus % args.ray_nodes:
        p.error(f"--cpus {args.cpus} must be >= 1 and a multiple of --ray-nodes {args.ray_nodes}")
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    return args


# -- the child: one featgeo command with timers ---------------------------------------------------
def _stamped_work(work, job):
    """A Ray unit's body: featgeo's own (``work``), plus when the unit started and ended in its
    worker (epoch seconds: one clock on a loopback cluster) and the worker's CPU seconds; they
    travel back in place of the unit's seconds."""
    started, cpu0 = time.time(), time.process_time()
    *head, seconds = work(job)
    return (*head, (seconds, started, time.time(), time.process_time() - cpu0))


def _unit_of(payload):
    """The TrainUnit in a task's payload (a tuple holding it)."""
    return next(x for x in payload if hasattr(x, "n_models"))


def run_child(result_path: str, featgeo_args: list[str]) -> int:
    """Run ``featgeo featgeo_args`` in this process with timers around Ray's connect, each
    unit's submission, its run in the worker, its arrival and its writing by the driver."""
    import featgeo.archetypes.executors as unit_executors
    import featgeo.archetypes.stage1 as stage1
    import featgeo.executors as executors
    from featgeo.cli import main as featgeo_main

    record: dict = {"connect_s": None, "disconnect_s": None, "calls": [], "units": []}
    submitted: dict[int, float] = {}  # id(unit) -> when handed to Ray
    saved: dict[int, tuple[float, float]] = {}  # id(unit) -> the driver's write, start and end
    real_connect, real_execute = executors.connect, stage1.execute_units
    real_save = getattr(stage1._Run, "_save_unit", None)

    @contextlib.contextmanager
    def timed_connect(spec):
        start = time.perf_counter()
        with real_connect(spec) as pool:
            record["connect_s"] = time.perf_counter() - start
            if pool is not None:
                unit_executors._work = functools.partial(_stamped_work, unit_executors._work)
                real_map = pool.map_unordered

                def timed_map(fn, payloads, **options):
                    def stamped():
                        for payload in payloads:  # pulled right before its task.remote()
                            submitted[id(_unit_of(payload))] = time.time()
                            yield payload

                    return real_map(fn, stamped(), **options)

                pool.map_unordered = timed_map
            yield pool
            closing = time.perf_counter()
        record["disconnect_s"] = time.perf_counter() - closing

    def timed_execute(units, **options):
        call = len(record["calls"])
        record["calls"].append({"units": len(units), "start": time.time()})
        results = real_execute(units, **options)
        try:
            for unit, fits, seconds in results:
                entry = {"call": call, "index": unit.index, "models": unit.n_models,
                         "received": time.time()}  # fmt: skip
                if isinstance(seconds, tuple):
                    seconds, entry["started"], entry["ended"], entry["cpu_s"] = seconds
                    entry["submitted"] = submitted.get(id(unit))
                entry["seconds"] = seconds
                yield unit, fits, seconds
                entry["resumed"] = time.time()  # the driver is done with it
                entry["saved"] = saved.get(id(unit))
                record["units"].append(entry)
        finally:
            results.close()
            record["calls"][call]["end"] = time.time()

    def timed_save(self, n, unit, *rest, **options):
        start = time.time()
        try:
            return real_save(self, n, unit, *rest, **options)
        finally:
            saved[id(unit)] = (start, time.time())

    executors.connect = timed_connect
    stage1.execute_units = timed_execute
    if real_save is not None:
        stage1._Run._save_unit = timed_save
    sys.argv = ["featgeo", *featgeo_args]
    code = 0
    try:
        featgeo_main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        Path(result_path).write_text(json.dumps(record))
    return code


# -- a Ray cluster on 127.0.0.1 -------------------------------------------------------------------
class LoopbackRay:
    """``nodes`` Ray nodes on 127.0.0.1 (the first the head) with ``cpus`` CPUs each and no GPU.

    Every node is one ``ray start --block`` process started in a session of its own; Ray's
    daemons and workers stay in their node's session, so :meth:`stop` kills exactly the
    processes of those sessions. Use it as a context manager (stopped on any exit)."""

    def __init__(self, nodes: int, cpus: int, object_store_mb: int = 300):
        self.nodes, self.cpus, self.object_store_mb = nodes, cpus, object_store_mb
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        # short: Ray's unix sockets live under it and a socket path is limited to 107 bytes
        self.temp_dir = Path(tempfile.mkdtemp(prefix="fgray", dir=tempfile.gettempdir()))
        self.processes: list[subprocess.Popen] = []
        self.logs: list = []
        self.env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1")
        self.seconds = None

    def __enter__(self) -> LoopbackRay:
        start = time.perf_counter()
        try:
            self._start("head", ["--head", f"--port={self.port}", "--include-dashboard=false",
                                 f"--temp-dir={self.temp_dir}"])  # fmt: skip
            self._wait_port()
            for i in range(1, self.nodes):
                self._start(f"node{i}", [f"--address={self.address}"])
            self._wait_nodes()
        except BaseException:
            self.stop()
            raise
        self.seconds = time.perf_counter() - start
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _start(self, name: str, args: list[str]) -> None:
        ray = Path(sys.executable).parent / "ray"
        log = open(self.temp_dir / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop()
        self.logs.append(log)
        self.processes.append(
            subprocess.Popen(
                [
                    str(ray),
                    "start",
                    "--block",
                    "--node-ip-address=127.0.0.1",
                    f"--num-cpus={self.cpus}",
                    "--num-gpus=0",
                    "--disable-usage-stats",
                    f"--object-store-memory={self.object_store_mb * 1024 * 1024}",
                    *args,
                ],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        )

    def _wait_port(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return
            if self.processes[0].poll() is not None:
                break
            time.sleep(0.3)
        raise RuntimeError(f"the Ray head did not start; its log:\n{self._log('head')}")

    def _wait_nodes(self, timeout: float = 120) -> None:
        """Until every node is alive with its CPUs, asked by a short-lived driver (so that the
        measured command is the first driver of this process's cluster)."""
        code = (
            "import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
            "print(sum(n['Alive'] for n in ray.nodes()), ray.cluster_resources().get('CPU'))"
        )
        deadline, out = time.monotonic() + timeout, None
        want = f"{self.nodes} {float(self.nodes * self.cpus)}"
        while time.monotonic() < deadline:
            out = subprocess.run([sys.executable, "-c", code, self.address], env=self.env,
                                 capture_output=True, text=True, timeout=timeout)  # fmt: skip
            if out.stdout.strip() == want:
                return
            time.sleep(1)
        raise RuntimeError(f"the Ray nodes did not come up ({want} wanted): {out and out.stdout}")

    def _log(self, name: str) -> str:
        path = self.temp_dir / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.is_file() else ""

    def members(self) -> list[int]:
        """Live processes of this cluster's sessions."""
        sessions = {p.pid for p in self.processes}
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                pid = int(entry.name)
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if os.getsid(pid) in sessions and state != "Z":
                    found.append(pid)
            except (OSError, IndexError):
                continue
        return found

    def stop(self) -> None:
        deadline = time.monotonic() + 30
        while self.processes and time.monotonic() < deadline:
            members = self.members()
            if not members:
                break
            for pid in members:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=30)
        for log in self.logs:
            log.close()
        self.processes, self.logs = [], []
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- the driver ---------------------------------------------------------------------------------
def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return run_child(args.child, args.featgeo_args)
    if args.report:
        report = json.loads(Path(args.report).read_text())
        summarise(report, report["settings"]["seed_unit_seconds"])  # with this script's model
        print_report(report)
        return 0
    signal.signal(signal.SIGTERM, _raise_interrupt)  # so that the finally blocks run
    work = Path(args.work or Path(tempfile.gettempdir()) / "featgeo_distributed")
    demo_dir = Path(args.demo_dir or work / ("demo-quick" if args.quick else "demo"))
    (work / "logs").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
           "CUDA_VISIBLE_DEVICES": "", "RAY_USAGE_STATS_ENABLED": "0"}  # fmt: skip

    base, step_env = prepare_demo(demo_dir, args, env)
    env.update(step_env)  # the demo's OMP_NUM_THREADS=1
    report = {
        "machine": _machine(),
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "settings": {k: v for k, v in vars(args).items() if k not in ("child", "featgeo_args")},
        "stage1_command": shlex.join(["featgeo", *_with(base, "--save-dir", "OUT")]),
        "runs": [],
    }
    outputs = []
    try:
        for repeat in range(args.repeats):
            for side in ("local", "ray"):
                out = work / "runs" / f"{side}{repeat}"
                shutil.rmtree(out, ignore_errors=True)
                outputs.append(out)
                run = run_side(side, repeat, base, out, args, work, env)
                report["runs"].append(run)
                console_print(f"{side} #{repeat}: {run['status']}, whole {run.get('wall_s', 0):.1f}"
                              f" s, training {run.get('training_s') or 0:.1f} s")  # fmt: skip
                _save(report, args.json, work)
        compare_outputs(report, outputs)
    finally:
        if not args.keep_outputs:
            for out in outputs:
                shutil.rmtree(out, ignore_errors=True)
            with contextlib.suppress(OSError):
                (work / "runs").rmdir()
    summarise(report, args.seed_unit_seconds)
    _save(report, args.json, work)
    print_report(report)
    return 0 if all(r["status"] == "ok" for r in report["runs"]) else 1


def prepare_demo(demo_dir: Path, args, env: dict) -> tuple[list[str], dict]:
    """The demo's Stage 1 command (its SAE and clusters built first if missing), with the
    benchmark's --n-clusters / --max-steps / --seed and ``--device cpu``."""
    from featgeo.demo import demo_steps, settings_for

    steps = {s.name: s for s in demo_steps(demo_dir, quick=args.quick)}
    stage1 = steps["aanet stage1"]
    sae = Path(_option(stage1.args, "--sae"))
    clusters = Path(_option(stage1.args, "--clusters-dir"))
    demo_n = [int(n) for n in _option(stage1.args, "--n-clusters").split(",")]
    n_clusters = [int(n) for n in (args.n_clusters or ",".join(map(str, demo_n))).split(",")]
    if not set(n_clusters) <= set(demo_n):
        raise SystemExit(f"--n-clusters must be a subset of the demo's {demo_n}, got {n_clusters}")
    if not (sae / "cfg.json").is_file():
        _run_step(steps["sae train"], env)
    d_sae = json.loads((sae / "cfg.json").read_text()).get("d_sae")
    if d_sae != settings_for(args.quick).d_sae:
        raise SystemExit(
            f"{sae} has d_sae {d_sae}, not the {'quick ' if args.quick else ''}demo's "
            f"{settings_for(args.quick).d_sae}; pass another --demo-dir"
        )
    if not all((clusters / f"clusters_{n}" / "clustering.json").is_file() for n in demo_n):
        _run_step(steps["sae cluster"], env)
    base = list(stage1.args)
    _set_option(base, "--n-clusters", ",".join(map(str, n_clusters)))
    if args.max_steps is not None:
        _set_option(base, "--max-steps", str(args.max_steps))
    _set_option(base, "--seed", str(args.seed))
    _set_option(base, "--device", "cpu")
    return base, dict(stage1.env)


def _run_step(step, env: dict) -> None:
    console_print(f"building the demo's input: featgeo {shlex.join(step.args)}")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "featgeo", *step.args], env={**env, **step.env},
                   check=True)  # fmt: skip
    console_print(f"  done in {time.perf_counter() - start:.0f} s")


def _option(args, flag: str) -> str:
    return args[list(args).index(flag) + 1]


def _with(args: list[str], flag: str, value: str) -> list[str]:
    out = list(args)
    _set_option(out, flag, value)
    return out


def _set_option(args: list[str], flag: str, value: str) -> None:
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]


def run_side(side, repeat, base, out, args, work, env) -> dict:
    """One Stage 1 command (``side`` local or ray), measured from outside; its timers read."""
    featgeo_args = [*base]
    _set_option(featgeo_args, "--save-dir", str(out))
    name = f"{side}{repeat}"
    timers = work / "logs" / f"{name}.timers.json"
    timers.unlink(missing_ok=True)
    run: dict = {"side": side, "repeat": repeat, "load_before": os.getloadavg()}
    cluster = contextlib.nullcontext()
    if side == "local":
        featgeo_args += ["--executor", "local", "--workers", str(args.cpus)]
    else:
        cluster = LoopbackRay(args.ray_nodes, args.cpus // args.ray_nodes)
    with cluster:
        if side == "ray":
            featgeo_args += ["--executor", "ray", "--ray-address", cluster.address]
            run["cluster"] = {"nodes": args.ray_nodes, "cpus_per_node": args.cpus // args.ray_nodes,
                              "start_s": cluster.seconds}  # fmt: skip
        run["command"] = shlex.join(["featgeo", *featgeo_args])
        child = [sys.executable, str(Path(__file__).resolve()), "--child", str(timers), "--",
                 *featgeo_args]  # fmt: skip
        run.update(measure(child, work, name, args.timeout, env))
    run["load_after"] = os.getloadavg()
    info_file = out / "stage1.json"
    if run["status"] == "ok" and info_file.is_file():
        info = json.loads(info_file.read_text())
        per_n = info["completed"]
        run["stage1_seconds"] = {n: c["seconds"] for n, c in per_n.items()}
        run["store_s"] = info.get("timings", {}).get("store")
        run["models"] = sum(c["n_models"] for c in per_n.values())
        run["executor"] = info.get("executor")
        run["workers"] = info.get("workers")
    if timers.is_file():
        run["timers"] = json.loads(timers.read_text())
        if run["status"] == "ok":
            run["training_s"] = training_seconds(run["timers"])
    return run


def measure(cmd: list[str], work: Path, name: str, timeout: float, env: dict) -> dict:
    """``cmd`` under benchmarks/_measure.py (wall seconds, peak RSS); log in work/logs."""
    result_file = work / "logs" / f"{name}.measure.json"
    result_file.unlink(missing_ok=True)
    log = work / "logs" / f"{name}.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, str(MEASURE), str(result_file), "--timeout", str(timeout), "--", *cmd],
            stdout=fh, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        try:  # the wrapper kills the command at `timeout`; this is only a last resort
            proc.wait(timeout=timeout + WRAPPER_GRACE_S)
        except BaseException:  # also Ctrl-C / SIGTERM: the wrapper then kills its command
            proc.terminate()
            proc.wait()
            pid_file = Path(f"{result_file}.pid")
            if pid_file.is_file():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.killpg(int(pid_file.read_text()), signal.SIGKILL)
            raise
    Path(f"{result_file}.pid").unlink(missing_ok=True)
    result = json.loads(result_file.read_text()) if result_file.is_file() else {}
    if not result:
        result["status"] = f"wrapper failed (exit {proc.returncode})"
    elif result["timed_out"]:
        result["status"] = f"timeout after {timeout:.0f} s"
    else:
        result["status"] = "ok" if result["returncode"] == 0 else f"exit {result['returncode']}"
    if result["status"] != "ok":
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        console_print(f"{name}: {result['status']}\n{tail}")
    result["log"] = str(log)
    return result


def compare_outputs(report: dict, outputs: list[Path]) -> None:
    """Whether every run wrote the same CSVs (and the same curves and models) as the first."""
    first = outputs[0]
    csvs = sorted(p.relative_to(first) for p in first.rglob("consolidated_metrics_n*.csv"))
    others = sorted(
        p.relative_to(first)
        for p in first.rglob("*")
        if p.is_file() and p.name != "stage1.json" and "plots" not in p.parts
        and p.suffix != ".csv"
    )  # fmt: skip
    checks = []
    for out in outputs[1:]:
        same_csv = bool(csvs) and all(_same(first / rel, out / rel) for rel in csvs)
        differing = [rel for rel in others if not _same(first / rel, out / rel)]
        extra = sum(1 for p in out.rglob("*") if p.is_file()) - sum(
            1 for p in first.rglob("*") if p.is_file()
        )
        checks.append(
            {
                "run": out.name,
                "vs": first.name,
                "csvs": [str(c) for c in csvs],
                "csv_identical": same_csv,
                "other_files": len(others),
                "other_files_differing": len(differing),
                "file_count_difference": extra,
            }
        )
    report["identical"] = checks


def _same(a: Path, b: Path) -> bool:
    return b.is_file() and a.read_bytes() == b.read_bytes()


# -- what the timers say --------------------------------------------------------------------------
def unit_stats(runs: list[dict]) -> dict:
    """Per-unit costs from the timers of ``runs`` (the repeats of one side), pooled."""
    units = [u for r in runs for u in (r.get("timers") or {}).get("units") or []]
    if not units:
        return {}
    out = {
        "units": len(units) // len(runs),
        "models_per_unit": _med_mean([u["models"] for u in units]),
        "unit_s": _med_mean([u["seconds"] for u in units]),
        "write_s": _med_mean([_write_seconds(u) for u in units]),
    }
    if not all("started" in u for u in units):
        return out
    dispatch, returns, steady, first_dispatch = [], [], [], []
    for run in runs:
        mine = run["timers"]["units"]
        d, r = _ray_latencies(mine)
        dispatch += d
        returns += r
        # the first task of each CPU also starts its worker process (torch, featgeo imported)
        slots = int(run.get("workers") or 1)
        first = set(sorted(range(len(mine)), key=lambda i: mine[i]["started"])[:slots])
        first_dispatch.append(max(d[i] for i in first))
        steady += [d[i] + r[i] for i in range(len(mine)) if i not in first]
    out.update(
        cpu_s=_med_mean([u["cpu_s"] for u in units]),
        dispatch_s=_med_mean(dispatch),
        return_s=_med_mean(returns),
        overhead_s=_med_mean([d + r for d, r in zip(dispatch, returns, strict=True)]),
        steady_overhead_s=_med_mean(
            steady or [d + r for d, r in zip(dispatch, returns, strict=True)]
        ),
        first_dispatch_s=statistics.fmean(first_dispatch),
    )
    return out


def _write_seconds(unit: dict) -> float:
    """The driver writing a unit's models and record (``_save_unit``), else all it did with
    the unit before asking for the next."""
    saved = unit.get("saved")
    return saved[1] - saved[0] if saved else unit["resumed"] - unit["received"]


def training_seconds(timers: dict) -> float | None:
    """Wall seconds of the training part: from the units' hand-out (``execute_units``) to the
    last unit's models written, summed over hand-outs (featgeo's ``seconds.training``)."""
    total = 0.0
    for call, info in enumerate(timers.get("calls") or []):
        mine = [u for u in timers["units"] if u["call"] == call]
        if mine:
            end = max(u["saved"][1] if u.get("saved") else u["resumed"] for u in mine)
            total += end - info["start"]
    return total or None


def _ray_latencies(units: list[dict]) -> tuple[list, list]:
    """Per unit (in ``units``' order), Ray's own latencies, without the waits that are not Ray's:

    - dispatch: its start in the worker minus the later of its submission and the last end of
      another unit before that start (a unit waiting for a free CPU is freed by that end);
    - return: the driver receiving it minus the later of its end in the worker and the driver
      being done with the unit it received before (the driver writes one unit at a time)."""
    ends = sorted(u["ended"] for u in units)
    by_arrival = sorted(range(len(units)), key=lambda i: units[i]["received"])
    driver_free = {by_arrival[0]: 0.0}
    for before, after in zip(by_arrival, by_arrival[1:], strict=False):
        driver_free[after] = units[before]["resumed"]
    dispatch, returns = [], []
    for i, u in enumerate(units):
        freed = max((e for e in ends if e <= u["started"]), default=u["submitted"])
        dispatch.append(max(0.0, u["started"] - max(u["submitted"], freed)))
        returns.append(max(0.0, u["received"] - max(u["ended"], driver_free[i])))
    return dispatch, returns


def _med_mean(values) -> dict:
    values = list(values)
    return {"median": statistics.median(values), "mean": statistics.fmean(values),
            "min": min(values), "max": max(values)}  # fmt: skip


def seed_scale_units(scale: int, models_per_unit: int = SEED_CPU_MODELS_PER_UNIT) -> int:
    per_unit = max(1, models_per_unit // SEED_KS)
    return sum(math.ceil(n * scale / per_unit) for n in SEED_N_CLUSTERS)


def summarise(report: dict, seed_unit_seconds: float) -> None:
    """Overheads (per repeat and over all), per-unit costs and the projection."""
    runs = [r for r in report["runs"] if r["status"] == "ok" and r.get("training_s")]
    by_side = {s: [r for r in runs if r["side"] == s] for s in ("local", "ray")}
    summary: dict = {}
    for side, rs in by_side.items():
        if rs:
            # best of the repeats: other jobs on the machine only ever add time
            summary[side] = {
                "whole_s": min(r["wall_s"] for r in rs),
                "training_s": min(r["training_s"] for r in rs),
                "whole_mean_s": statistics.fmean(r["wall_s"] for r in rs),
                "training_mean_s": statistics.fmean(r["training_s"] for r in rs),
                "units": unit_stats(rs),
            }
    if by_side["ray"]:
        summary["ray"]["connect_s"] = statistics.fmean(
            r["timers"]["connect_s"] for r in by_side["ray"]
        )
        summary["ray"]["disconnect_s"] = statistics.fmean(
            r["timers"]["disconnect_s"] or 0.0 for r in by_side["ray"]
        )
        summary["ray"]["cluster_start_s"] = statistics.fmean(
            r["cluster"]["start_s"] for r in by_side["ray"]
        )
    if "local" in summary and "ray" in summary:
        for part in ("whole_s", "training_s", "whole_mean_s", "training_mean_s"):
            summary[f"ratio_{part}"] = summary["ray"][part] / summary["local"][part]
        summary["goal_met"] = summary["ratio_whole_s"] - 1 < GOAL_OVERHEAD
        pairs = [(a, b) for a in by_side["local"] for b in by_side["ray"]
                 if a["repeat"] == b["repeat"]]  # fmt: skip
        summary["pairs"] = [{"repeat": a["repeat"], "whole": b["wall_s"] / a["wall_s"],
                             "training": b["training_s"] / a["training_s"]}
                            for a, b in pairs]  # fmt: skip
        # Ray's own seconds in a run, from the timers rather than from two loaded wall times:
        # connecting, disconnecting, the first tasks' worker start, and every unit's dispatch
        # and return latency spread over the CPUs that ran units side by side.
        ray, stats = summary["ray"], summary["ray"]["units"]
        slots = statistics.fmean(float(r.get("workers") or 1) for r in by_side["ray"])
        own = (ray["connect_s"] + ray["disconnect_s"] + stats["first_dispatch_s"]
               + stats["units"] * stats["overhead_s"]["mean"] / slots)  # fmt: skip
        summary["ray_own_s"] = own
        summary["ray_own_share"] = own / summary["local"]["whole_s"]
        summary["goal_met_ray_own"] = summary["ray_own_share"] < GOAL_OVERHEAD
    report["summary"] = summary
    report["projection"] = project(summary, seed_unit_seconds) if "ray" in summary else None


def project(summary: dict, seed_unit_seconds: float) -> dict:
    """Seed-scale Stage 1 on W one-CPU Ray workers, from the measured per-unit costs.

    upper = fixed + waves x (unit s + Ray overhead per unit) + units x driver write s (the
    driver's writes not overlapped with training); lower = fixed + the larger of the two terms
    (writes fully overlapped: the driver writes one unit while the workers train the next).
    fixed = Ray's connect + the first task's wait for its worker process; waves = ceil(units /
    W). Unit s: the mean CPU seconds of a unit measured in its Ray worker (one thread: its wall
    on a free core), or ``seed_unit_seconds`` for the seed's settings."""
    ray = summary["ray"]
    stats = ray["units"]
    costs = {
        "demo, CPU s (measured)": stats["cpu_s"]["mean"],
        "seed, wall s (docs)": seed_unit_seconds,
    }
    fixed = ray["connect_s"] + stats["first_dispatch_s"]
    overhead = stats["steady_overhead_s"]["mean"]
    write = stats["write_s"]["mean"]
    rows = []
    for scale in (1, 10):
        units = seed_scale_units(scale)
        for label, unit_s in costs.items():
            for workers in PROJECT_WORKERS:
                waves = math.ceil(units / workers)
                training, ray_s = waves * unit_s, waves * overhead
                writes = units * write
                upper = fixed + training + ray_s + writes
                lower = fixed + max(training + ray_s, writes)
                rows.append({"scale": scale, "models": units * SEED_CPU_MODELS_PER_UNIT,
                             "units": units, "unit_cost": label, "unit_s": unit_s,
                             "workers": workers, "waves": waves, "training_s": training,
                             "ray_overhead_s": fixed + ray_s, "driver_write_s": writes,
                             "upper_s": upper, "lower_s": lower,
                             "overhead_share": (upper - training) / upper})  # fmt: skip
    return {"fixed_s": fixed, "overhead_per_unit_s": overhead, "write_per_unit_s": write,
            "rows": rows}  # fmt: skip


# -- printing -----------------------------------------------------------------------------------
def console_print(*objects) -> None:
    from rich.console import Console

    Console(width=160).print(*objects)


def _fmt(value, spec=".1f", unit="") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def print_report(report: dict) -> None:
    from rich.table import Table

    summary = report.get("summary") or {}
    local, ray = summary.get("local"), summary.get("ray")
    console_print(f"Stage 1 command: {report['stage1_command']}")
    runs = Table(title="Every run (measured)")
    for col in ("run", "status", "whole command s", "training s", "store s", "models",
                "load before / after (1 min)", "peak RSS of the driver"):  # fmt: skip
        runs.add_column(col)
    for r in report["runs"]:
        runs.add_row(
            f"{r['side']} #{r['repeat']}", r["status"], _fmt(r.get("wall_s")),
            _fmt(r.get("training_s")), _fmt(r.get("store_s"), ".2f"), str(r.get("models", "-")),
            f"{r['load_before'][0]:.2f} / {r['load_after'][0]:.2f}",
            _fmt((r.get("peak_rss_bytes") or 0) / 1e9, ".2f", " GB"),
        )  # fmt: skip
    console_print(runs)
    if local and ray:
        first_ray = next(r for r in report["runs"] if r["side"] == "ray")
        cluster = first_ray.get("cluster", {})
        table = Table(title=f"local (--workers N) vs ray (loopback cluster: {cluster.get('nodes')} "
                            f"node(s) x {cluster.get('cpus_per_node')} CPU), measured")  # fmt: skip
        for col in ("", "local", "ray", "ray / local", "overhead"):
            table.add_column(col)
        n = len(summary.get("pairs", []))
        for label, key in (
            (f"training (wall s, best of {n})", "training_s"),
            (f"whole command (wall s, best of {n})", "whole_s"),
            (f"training (wall s, mean of {n})", "training_mean_s"),
            (f"whole command (wall s, mean of {n})", "whole_mean_s"),
        ):
            ratio = summary[f"ratio_{key}"]
            table.add_row(label, f"{local[key]:.1f}", f"{ray[key]:.1f}", f"{ratio:.3f}",
                          f"{(ratio - 1) * 100:+.1f}%")  # fmt: skip
        table.add_row(
            "Ray connect (s, in the whole command)", "-", f"{ray['connect_s']:.2f}", "", ""
        )
        table.add_row("Ray disconnect (s, in the whole command)", "-",
                      f"{ray['disconnect_s']:.2f}", "", "")  # fmt: skip
        table.add_row("cluster start (s, before the command)", "-",
                      f"{ray['cluster_start_s']:.1f}", "", "")  # fmt: skip
        console_print(table)
        pairs = ", ".join(f"#{p['repeat']}: {p['whole']:.3f} / {p['training']:.3f}"
                          for p in summary.get("pairs", []))  # fmt: skip
        console_print(f"ray / local per repeat (whole / training): {pairs}")
        if "ray_own_s" in summary:
            console_print(
                f"Ray's own seconds from the timers (connect + disconnect + first tasks' worker "
                f"start + units x (dispatch + return) / CPUs): {summary['ray_own_s']:.1f} s = "
                f"{summary['ray_own_share']:.1%} of local's whole command"
            )
        met = "met" if summary["goal_met"] else "NOT met"
        overhead = (summary["ratio_whole_s"] - 1) * 100
        console_print(f"goal: whole-command overhead under {GOAL_OVERHEAD:.0%}: {met} "
                      f"(best of the repeats: {overhead:+.1f}%)")  # fmt: skip
    for check in report.get("identical", []):
        console_print(f"{check['run']} vs {check['vs']}: CSVs {', '.join(check['csvs'])} "
                      f"byte-identical: {check['csv_identical']}; other files (curves, models; "
                      f"plots and stage1.json left out): {check['other_files']}, differing: "
                      f"{check['other_files_differing']}")  # fmt: skip
    units = Table(title="Per unit (measured; seconds: median / mean)")
    for col in ("side", "units", "models/unit", "unit wall s in worker", "unit CPU s",
                "Ray dispatch s", "Ray return s", "Ray overhead s (steady)",
                "first task's dispatch s", "driver write s"):  # fmt: skip
        units.add_column(col)
    for side in ("local", "ray"):
        s = (summary.get(side) or {}).get("units")
        if not s:
            continue

        def mm(key, spec=".3f", s=s):
            return f"{s[key]['median']:{spec}} / {s[key]['mean']:{spec}}" if key in s else "-"

        units.add_row(side, str(s["units"]), mm("models_per_unit", ".0f"), mm("unit_s", ".2f"),
                      mm("cpu_s", ".2f"), mm("dispatch_s"), mm("return_s"),
                      mm("steady_overhead_s"), _fmt(s.get("first_dispatch_s"), ".2f"),
                      mm("write_s"))  # fmt: skip
    console_print(units)
    projection = report.get("projection")
    if projection:
        table = Table(title="Seed-scale Stage 1 on W one-CPU Ray workers (PROJECTED from the "
                            "per-unit costs above; GPU: not measured)")  # fmt: skip
        for col in ("models", "units", "unit cost", "unit s", "W CPU workers", "waves",
                    "training s", "Ray overhead s", "driver writes s", "total (upper)",
                    "total (lower)", "not training (upper)", "GPU workers"):  # fmt: skip
            table.add_column(col)
        for row in projection["rows"]:
            table.add_row(
                f"{row['models']:,}", f"{row['units']:,}", row["unit_cost"], f"{row['unit_s']:.2f}",
                str(row["workers"]), f"{row['waves']:,}", f"{row['training_s']:,.0f}",
                f"{row['ray_overhead_s']:,.0f}", f"{row['driver_write_s']:,.0f}",
                _hms(row["upper_s"]), _hms(row["lower_s"]), f"{row['overhead_share']:.1%}",
                "not measured",
            )  # fmt: skip
        console_print(table)
        console_print(
            f"projection: upper = {projection['fixed_s']:.2f} s (connect + first task's worker "
            f"start) + waves x (unit s + {projection['overhead_per_unit_s']:.3f} s Ray overhead) "
            f"+ units x {projection['write_per_unit_s']:.3f} s driver write; lower: the larger of "
            "the last two terms (writes overlapped with training)"
        )
    console_print(f"machine: {report['machine']}")


def _hms(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _machine() -> dict:
    sys.path.insert(0, str(HERE))
    from _machine import machine_info

    return {**machine_info(), "load_average": os.getloadavg()}


def _save(report: dict, path: str | None, work: Path) -> None:
    text = json.dumps(report, indent=1, default=str)
    (work / "distributed.json").write_text(text)
    if path:
        Path(path).write_text(text)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        console_print("interrupted: the Ray cluster this run started was stopped")
        sys.exit(130)
