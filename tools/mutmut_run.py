"""``mutmut`` with one fix for tests that share a module- or session-scoped fixture.

mutmut 3 runs, for each mutant, only the tests that called the mutated function while it
collected its stats. A fixture with ``scope="module"`` runs once, inside the first test that
asks for it, so the tests after it that only read its result (an oracle comparing the CSV a
fixture wrote, say) are never run against any mutant, and mutants they would kill "survive".

This wrapper (tools/mutate.py runs it in place of the ``mutmut`` script, with the same
arguments) lets mutmut collect its stats as usual, then adds to every function's tests all the
selected tests that share a non-function-scoped fixture with one of them. Written against the
pinned mutmut==3.8.1 (``mutmut.__main__.collect_or_load_stats`` and ``mutmut.state``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import mutmut.__main__ as mutmut_main
from mutmut.configuration import config
from mutmut.state import state
from mutmut.stats import save_stats

PLUGIN = "_shared_fixture_plugin"
PLUGIN_SOURCE = """
import json, os

def pytest_collection_finish(session):
    out = {}
    for item in session.items:
        info = getattr(item, "_fixtureinfo", None)
        defs = info.name2fixturedefs.items() if info is not None else ()
        out[item.nodeid] = sorted(n for n, d in defs if d and d[-1].scope != "function")
    with open(os.environ["FEATGEO_FIXTURE_SCOPES"], "w") as fh:
        json.dump(out, fh)
"""


def _shared_fixtures() -> dict[str, list[str]]:
    """Test node id -> names of the non-function-scoped fixtures it uses (selected tests)."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / f"{PLUGIN}.py").write_text(PLUGIN_SOURCE)
        out = Path(tmp) / "scopes.json"
        env = dict(os.environ, FEATGEO_FIXTURE_SCOPES=str(out))
        env["PYTHONPATH"] = os.pathsep.join([tmp, env.get("PYTHONPATH", "")])
        cmd = [sys.executable, "-m", "pytest", "--collect-only", "-q", "--rootdir=.",
               "-p", PLUGIN, *config().pytest_add_cli_args,
               *config().pytest_add_cli_args_test_selection]  # fmt: skip
        subprocess.run(cmd, cwd="mutants", env=env, capture_output=True, check=False)
        return json.loads(out.read_text()) if out.exists() else {}


def _widen_test_sets() -> None:
    scopes = _shared_fixtures()
    by_fixture: dict[str, set[str]] = {}
    for test, fixtures in scopes.items():
        for name in fixtures:
            by_fixture.setdefault(f"{test.split('::')[0]}::{name}", set()).add(test)
    added = 0
    for tests in state().tests_by_mangled_function_name.values():
        extra = set()
        for test in tests:
            for name in scopes.get(test, ()):
                extra |= by_fixture[f"{test.split('::')[0]}::{name}"]
        extra = {t for t in extra - tests if t in state().duration_by_test}
        tests |= extra
        added += len(extra)
    save_stats()
    print(f"    shared fixtures: {added} test associations added")


_collect_or_load_stats = mutmut_main.collect_or_load_stats


def collect_or_load_stats(*args, **kwargs):
    _collect_or_load_stats(*args, **kwargs)
    _widen_test_sets()


mutmut_main.collect_or_load_stats = collect_or_load_stats

if __name__ == "__main__":
    sys.argv[0] = "mutmut"
    mutmut_main.cli()
