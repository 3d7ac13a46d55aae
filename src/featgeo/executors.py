"""Where the units of a long job run: here (``local``) or as tasks on a Ray cluster (``ray``).

    from featgeo.executors import check_executor, connect

    spec = check_executor("ray", "127.0.0.1:6379")   # validates; nothing is started
    with connect(spec) as pool:                       # a RayPool, or None for "local"
        for index, result in pool.map_unordered(work, payloads, num_cpus=1):
            ...                                       # the driver writes every result

A job is cut into units whose results depend only on the unit (Stage 1's (cluster, k) groups,
Stage 3's refits and vertex-scan blocks, the scan's matrices). The driver submits them as Ray
tasks with the resources they need (``num_cpus``; ``num_gpus=1`` for a CUDA unit, so a node with
8 GPUs runs 8 at once), keeps only a few more in flight than the cluster has slots (a unit's
payload, its training data or its store block, travels through Ray's object store, so the
memory held at once stays bounded), and writes every result itself, in the same files as a
local run. A task whose worker process or node dies is run again by Ray (``max_retries``), so
a lost worker costs time, never results.

What travels: each unit's payload (arrays and small models) is shipped by the driver through
the object store; nodes need featgeo and Ray installed (the same versions as the driver) but
no shared filesystem and no copy of the data.

Ray is an optional extra (``pip install 'featgeo[ray]'``), imported only when ``--executor
ray`` is asked for.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from featgeo.errors import ExecutionError

EXECUTORS = ("local", "ray")
RAY_VERSION = "2.60.0"
RAY_INSTALL = "pip install 'featgeo[ray]'"
MAX_RETRIES = 3
"""Ray runs a task again this many times when its worker process or node dies."""
PROBE_SECONDS = 5.0
"""How long a TCP connection to the head may take."""
GCS_PROBE_MS = 3000
"""How long the head may take to give its cluster id (Ray's client tries up to three times)."""


@dataclass(frozen=True)
class ExecutorSpec:
    """A checked ``--executor`` / ``--ray-address`` pair."""

    name: str = "local"
    ray_address: str | None = None
    """``auto`` (``RAY_ADDRESS``, else the cluster ``ray start`` last started on this machine)
    or ``HOST:PORT`` of the Ray head; None for ``local``."""

    @property
    def is_ray(self) -> bool:
        return self.name == "ray"


def check_executor(executor: str = "local", ray_address: str | None = None) -> ExecutorSpec:
    """Validate the options before anything is written or started.

    Raises:
        ValueError: an unknown executor, a ``--ray-address`` without ``--executor ray``, a
            malformed address, or ``ray`` when Ray is not installed (the message names the
            extra to install).
    """
    if isinstance(executor, ExecutorSpec):
        executor, ray_address = executor.name, executor.ray_address
    if executor not in EXECUTORS:
        raise ValueError(
            f"--executor must be one of {', '.join(EXECUTORS)}, got {executor!r}; use local (this "
            "machine) or ray (a Ray cluster, with --ray-address)"
        )
    if executor == "local":
        if ray_address is not None:
            raise ValueError(
                "--ray-address is read only with --executor ray; add --executor ray or drop "
                "--ray-address"
            )
        return ExecutorSpec()
    address = "auto" if ray_address is None else str(ray_address).strip()
    if address != "auto":
        _split_address(address)
    if importlib.util.find_spec("ray") is None:
        raise ValueError(
            f"--executor ray needs Ray, which is not installed in this environment: run "
            f"{RAY_INSTALL} (Ray {RAY_VERSION}) here and on every node, or use --executor local"
        )
    return ExecutorSpec("ray", address)


def _split_address(address: str, source: str = "--ray-address") -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")  # an IPv6 host: [::1]:6379
    ok = bool(host) and "/" not in host and (bracketed or ":" not in host)
    if not (ok and port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(
            f"{source} must be 'auto' or HOST:PORT, got {address!r}; pass the address of "
            "the Ray head that `ray start --head` printed (e.g. 10.0.0.1:6379)"
        )
    return host.strip("[]"), int(port)


@contextmanager
def connect(spec: ExecutorSpec) -> Iterator[RayPool | None]:
    """Connect to the cluster of ``spec`` for the duration of the block; None for ``local``.

    Raises:
        ValueError: no cluster answers at the address (nothing listens there, or it is not a
            Ray cluster), or ``auto`` finds no cluster; each with the fix.
    """
    if not spec.is_ray:
        yield None
        return
    try:
        import ray
    except ImportError as exc:  # installed, but broken (a partial install, a version clash)
        raise ValueError(
            f"--executor ray: Ray is installed but does not import ({exc}); reinstall it with "
            f"{RAY_INSTALL} (Ray {RAY_VERSION}), or use --executor local"
        ) from None

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started_here = not ray.is_initialized()
    if started_here:  # else: this process already joined a cluster (a notebook), used as is
        address, source = _resolve(spec.ray_address)
        address = _probe(address, source)
        try:
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False,
                     configure_logging=True)  # fmt: skip
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ValueError(
                f"{source}: could not join the Ray cluster at {address} "
                f"({' '.join(str(exc).split())[:200]}); check the address `ray start --head` "
                f"printed and that this machine runs Ray {RAY_VERSION}"
            ) from None
    else:
        address = ray.get_runtime_context().gcs_address
    try:
        yield RayPool(address)
    finally:
        if started_here:
            ray.shutdown()


def _resolve(address: str) -> tuple[str, str]:
    """``(address, where it came from)``; ``auto``: ``RAY_ADDRESS``, else the address ``ray
    start`` recorded on this machine (never a guess among Ray processes found running, which
    may belong to someone else)."""
    if address != "auto":
        return address, f"--ray-address {address}"
    from ray._private.utils import get_ray_address_file, read_ray_address

    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"].strip(), "--ray-address auto (from RAY_ADDRESS)"
    found = read_ray_address()
    if found:
        return found, f"--ray-address auto (recorded in {get_ray_address_file(None)})"
    raise ValueError(
        "--ray-address auto found no running Ray cluster (RAY_ADDRESS is unset and `ray start` "
        "recorded no cluster on this machine); start one with `ray start --head` or pass its "
        "HOST:PORT"
    )


def _probe(address: str, source: str) -> str:
    """The address ``ray.init`` will use, once something there answered as a Ray head.

    Ray reaches a loopback address through this machine's own address, so that is what is
    checked; then a GCS client with a timeout asks for the cluster's id, which fails fast where
    ``ray.init`` would retry for minutes (nothing listens, or what answers is not a Ray head).
    """
    from ray._private.services import canonicalize_bootstrap_address
    from ray._raylet import InnerGcsClient

    _split_address(address, source)
    resolved = canonicalize_bootstrap_address(address) or address
    host, port = _split_address(resolved, source)
    via = "" if resolved == address else f" (Ray reaches {address} as {resolved})"
    try:
        socket.create_connection((host, port), timeout=PROBE_SECONDS).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ValueError(
            f"{source}: no Ray cluster answers at {resolved}{via} ({reason}); start one with "
            "`ray start --head` and pass the address it prints, or use --executor local"
        ) from None
    try:
        InnerGcsClient.standalone(resolved, None, GCS_PROBE_MS)
    except Exception as exc:  # Ray's RpcError and friends: what answers is not a Ray head
        reason = " ".join(str(exc).split())[:120]
        raise ValueError(
            f"{source}: something answers at {resolved}{via} but it is not a Ray cluster's head "
            f"({reason}); pass the address `ray start --head` printed"
        ) from None
    return resolved


class RayPool:
    """Submits units to the connected cluster; results come back to the driver."""

    def __init__(self, address: str):
        self.address = address

    def resources(self) -> dict[str, float]:
        import ray

        return dict(ray.cluster_resources())

    def describe(self) -> dict[str, Any]:
        """The cluster, for a run's record (``stage1.json`` and friends)."""
        import ray

        resources = self.resources()
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        return {
            "executor": "ray",
            "address": self.address,
            "nodes": len(nodes),
            "cpus": resources.get("CPU", 0.0),
            "gpus": resources.get("GPU", 0.0),
        }

    def slots(self, num_cpus: float = 1, num_gpus: float = 0) -> int:
        """Units the cluster runs at once with these resources each (at least 1)."""
        resources = self.resources()
        counts = []
        if num_cpus:
            counts.append(resources.get("CPU", 0.0) // num_cpus)
        if num_gpus:
            counts.append(resources.get("GPU", 0.0) // num_gpus)
        return max(1, int(min(counts))) if counts else 1

    def unit_device(self, device: str):
        """The torch device units run on: ``auto`` is CUDA when the cluster has GPUs (the
        driver need not have one), ``cuda`` needs cluster GPUs.

        Raises:
            ValueError: ``cuda`` on a cluster without GPUs, or an unknown device name.
        """
        import torch

        resources = self.resources()
        gpus = resources.get("GPU", 0.0)
        if resources.get("CPU", 0.0) < 1:  # every unit holds a CPU: none would ever start
            raise ValueError(
                f"the Ray cluster at {self.address} has no CPU for featgeo's units (its nodes "
                "were started with --num-cpus 0 or are all busy being removed); add a node with "
                "CPUs (`ray start --address ... --num-cpus N`)"
            )
        if device == "auto":
            return torch.device("cuda" if gpus >= 1 else "cpu")
        try:
            parsed = torch.device(device)
        except (RuntimeError, TypeError):
            raise ValueError(f"--device must be auto, cpu or cuda, got {device!r}") from None
        if parsed.type not in ("cpu", "cuda"):
            raise ValueError(f"--device must be auto, cpu or cuda, got {device!r}")
        if parsed.index is not None:
            raise ValueError(
                f"--device {device}: on Ray each unit gets a GPU of its own, which it sees as "
                "cuda:0; pass --device cuda (or auto)"
            )
        if parsed.type == "cuda":
            if gpus < 1:
                raise ValueError(
                    f"--device {device}: the Ray cluster at {self.address} has no GPU; use "
                    "--device cpu, or start its nodes with GPUs (`ray start --num-gpus N`)"
                )
            return torch.device("cuda")  # Ray gives each task its own GPU as cuda:0
        return parsed

    def map_unordered(
        self,
        fn: Callable[..., Any],
        payloads: Iterable[Any],
        *,
        shared: tuple = (),
        num_cpus: float = 1,
        num_gpus: float = 0,
        ahead: int = 1,
        on_busy: Callable[[int], None] | None = None,
    ) -> Iterator[tuple[int, Any]]:
        """Run ``fn(payload, *shared)`` for every payload as a Ray task; yield ``(position,
        result)`` as tasks finish.

        ``shared`` is put into the object store once and given to every task. ``payloads`` is
        read lazily: at most ``slots + ahead`` tasks are in flight, so a payload can depend on
        results already yielded (Stage 3 leaves out the clusters that are full). Closing the
        iterator (an error, Ctrl-C, or the caller stopping early) cancels the tasks in flight.

        Raises:
            the task's own exception when a unit fails; :class:`~featgeo.errors.ExecutionError`
            when a unit's worker or node died more than :data:`MAX_RETRIES` times.
        """
        import ray

        task = ray.remote(_call).options(
            num_cpus=num_cpus, num_gpus=num_gpus, max_retries=MAX_RETRIES, retry_exceptions=False
        )
        refs = tuple(ray.put(value) for value in shared)
        slots = self.slots(num_cpus, num_gpus)
        window = slots + max(0, ahead)
        source = enumerate(payloads)
        pending: dict[Any, int] = {}
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) < window:
                    item = next(source, None)
                    if item is None:
                        exhausted = True
                        break
                    position, payload = item
                    pending[task.remote(fn, num_cpus, payload, *refs)] = position
                if on_busy is not None:
                    on_busy(min(len(pending), slots))
                if not pending:
                    return
                ready, _ = ray.wait(list(pending), num_returns=1)
                position = pending.pop(ready[0])
                yield position, _result(ready[0], position)
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)

    def map_ordered(self, fn, payloads, **options) -> Iterator[Any]:
        """:meth:`map_unordered`, results in the order of ``payloads``."""
        waiting: dict[int, Any] = {}
        following = 0
        for position, result in self.map_unordered(fn, payloads, **options):
            waiting[position] = result
            while following in waiting:
                yield waiting.pop(following)
                following += 1


def _call(fn, num_cpus, payload, *shared):
    """A task's body: one torch thread per CPU the task holds, then the unit."""
    import torch

    torch.set_num_threads(max(1, int(num_cpus)))
    return fn(payload, *shared)


def _result(ref, position: int):
    import ray
    from ray.exceptions import RayError, RayTaskError

    try:
        return ray.get(ref)
    except RayTaskError as exc:  # the unit's own code raised: the same error as locally
        cause = exc.cause
        if isinstance(cause, Exception):
            raise cause from None
        raise RuntimeError(f"unit {position} failed on the Ray cluster: {exc}") from None
    except RayError as exc:  # its worker or node died every time Ray ran it, or its data is lost
        raise ExecutionError(
            f"unit {position} could not finish on the Ray cluster ({type(exc).__name__}, "
            f"{MAX_RETRIES + 1} attempts: out of memory, or its worker or node died); see `ray "
            "logs` on the nodes, then run the same command again to resume"
        ) from None


__all__ = [
    "EXECUTORS",
    "MAX_RETRIES",
    "RAY_INSTALL",
    "RAY_VERSION",
    "ExecutorSpec",
    "RayPool",
    "check_executor",
    "connect",
]
