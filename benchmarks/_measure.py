"""Run one command and measure it from outside: wall seconds, peak RSS, bytes written.

    python benchmarks/_measure.py RESULT.json [--timeout SECONDS] -- COMMAND [ARGS...]

Standard library only, so this wrapper itself stays a few MB. It starts COMMAND as its only
child and, after the child exits, reads

- ``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss``: the peak resident set of the largest
  process in the child's tree (the child, or a grandchild it waited for). Because this wrapper
  has no other children, the maximum is the command's own, whatever ran before it;
- ``/proc/self/io``: Linux adds the I/O counters of every reaped descendant to its parent, so
  after the wait this wrapper's counters hold the command's. ``write_bytes`` counts bytes sent
  (or to be sent) to the storage layer at page-dirtying time; ``cancelled_write_bytes`` those
  dirtied and then truncated or deleted before reaching the disk (checkpoints, staging files).

It also samples ``/proc/<child>/status`` every 0.2 s for the split of the child's resident set:
``RssAnon`` (heap, tensors) and ``RssFile`` (pages of memory-mapped files, e.g. safetensors
weights, which the kernel can drop and re-read). The sampled peaks can miss a short spike; the
``ru_maxrss`` peak cannot.

With --timeout the command (its whole process group) is killed after SECONDS, and what was
measured until then is still written, with ``"timed_out": true``, and the wrapper exits with 124.
SIGINT, SIGTERM or SIGHUP to the wrapper kill the command the same way (``"stopped_by_signal"``;
exit 128 + the signal).

RESULT.json gets ``{"returncode", "timed_out", "stopped_by_signal", "wall_s", "peak_rss_bytes",
"sampled_peak_rss_anon_bytes", "sampled_peak_rss_file_bytes", "write_bytes",
"cancelled_write_bytes", "read_bytes", "wchar"}``; the wrapper exits with the command's code.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time

SAMPLE_S = 0.2
TIMEOUT_EXIT = 124  # as timeout(1)


def proc_io() -> dict[str, int]:
    """This process's ``/proc/self/io`` counters (zeros where the file does not exist)."""
    try:
        with open("/proc/self/io", encoding="ascii") as fh:
            return {k.strip(): int(v) for k, v in (line.split(":") for line in fh)}
    except OSError:
        return {}


def _sample_rss(pid: int, peaks: dict[str, int], done: threading.Event) -> None:
    """Keep the largest RssAnon / RssFile seen in /proc/PID/status until ``done``."""
    while not done.wait(SAMPLE_S):
        try:
            with open(f"/proc/{pid}/status", encoding="ascii") as fh:
                for line in fh:
                    key, _, value = line.partition(":")
                    if key in peaks:  # "RssAnon:   123456 kB"
                        peaks[key] = max(peaks[key], int(value.split()[0]) * 1024)
        except (OSError, ValueError, IndexError):
            pass


def main(argv: list[str]) -> int:
    timeout = None
    if len(argv) > 2 and argv[1] == "--timeout":
        timeout, argv = float(argv[2]), [argv[0], *argv[3:]]
    if len(argv) < 3 or argv[1] != "--":
        sys.stderr.write(__doc__)
        return 2
    result_path, command = argv[0], argv[2:]
    before = proc_io()
    start = time.perf_counter()
    # Its own session and process group, so that a timeout can kill it with whatever it
    # started; a signal that ends this wrapper (Ctrl-C reaches the terminal's process group,
    # not the child's) ends it too.
    child = subprocess.Popen(command, start_new_session=True)
    stopped_by: list[int] = []

    def stop(signum: int, frame) -> None:  # then child.wait() returns and the result is written
        stopped_by.append(signum)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop)
    with open(result_path + ".pid", "w", encoding="ascii") as fh:  # for a caller's last resort
        fh.write(str(child.pid))
    peaks = {"RssAnon": 0, "RssFile": 0}
    done = threading.Event()
    sampler = threading.Thread(target=_sample_rss, args=(child.pid, peaks, done), daemon=True)
    sampler.start()
    timed_out = False
    try:
        returncode = child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(child.pid, signal.SIGKILL)  # the command and whatever it started
        returncode = child.wait()
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    after = proc_io()
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    result = {
        "returncode": returncode,
        "timed_out": timed_out,
        "stopped_by_signal": stopped_by[0] if stopped_by else None,
        "wall_s": wall,
        # ru_maxrss is in kilobytes on Linux
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
        "sampled_peak_rss_anon_bytes": peaks["RssAnon"],
        "sampled_peak_rss_file_bytes": peaks["RssFile"],
        "write_bytes": delta.get("write_bytes"),
        "cancelled_write_bytes": delta.get("cancelled_write_bytes"),
        "read_bytes": delta.get("read_bytes"),
        "wchar": delta.get("wchar"),
    }
    with open(result_path, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=2)
    if stopped_by:
        return 128 + stopped_by[0]
    return TIMEOUT_EXIT if timed_out else returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
