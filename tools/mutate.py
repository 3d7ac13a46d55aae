"""Mutation testing of featgeo's numeric modules with mutmut, one module at a time.

``make mutate`` calls this. The modules and the fast tests that check each one are listed in
``[tool.featgeo.mutate.modules]`` of pyproject.toml; the settings they share are in
``[tool.mutmut]``. mutmut 3 reads a single config from the folder it runs in and runs its whole
test selection once to map tests to functions, so each module runs in its own folder
``mutants/<module>/`` (links to ``src`` and ``tests``, a generated pyproject.toml with that
module's ``only_mutate`` and test files) and keeps its own results there: a rerun tests only
new or changed mutants, and then retests the previous survivors against the current tests.
mutmut runs through tools/mutmut_run.py, which also runs the tests that share a module-scoped
fixture with a test that reached the mutated function.

    python tools/mutate.py --modules sparsity.metrics,models.perplexity --jobs 2 --timeout 1800
    python tools/mutate.py --list

Prints, per module, the mutants generated / killed / survived / other (timeout, no tests,
suspicious) and the name of every survivor; ``mutmut show NAME`` in ``mutants/<module>/``
shows its diff.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "mutants"
MUTMUT = Path(sys.executable).parent / "mutmut"
# mutmut's own CLI plus the shared-fixture fix described in tools/mutmut_run.py.
MUTMUT_RUN = [sys.executable, str(ROOT / "tools" / "mutmut_run.py")]
RESULT_LINE = re.compile(r"^\s*(\S+__mutmut_\d+): (.+)$")


def _load_config() -> tuple[dict, dict, dict]:
    """(pytest ini options, shared [tool.mutmut], modules) from the root pyproject.toml."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["tool"]
    return tool["pytest"]["ini_options"], tool["mutmut"], tool["featgeo"]["mutate"]["modules"]


def _toml_table(name: str, table: dict) -> str:
    # Strings, lists of strings, numbers and booleans only: their JSON spelling is valid TOML.
    return "\n".join([f"[{name}]", *(f"{k} = {json.dumps(v)}" for k, v in table.items())])


def _prepare(name: str, module: dict, pytest_ini: dict, shared: dict) -> Path:
    """mutants/<name>/ with src and tests linked and the module's own pyproject.toml."""
    folder = WORK / name
    folder.mkdir(parents=True, exist_ok=True)
    for link in ("src", "tests"):
        if not (folder / link).is_symlink():
            (folder / link).symlink_to(Path("..", "..", link))
    mutmut = {k: v for k, v in shared.items() if k not in ("only_mutate",)}
    mutmut["only_mutate"] = [module["source"]]
    # A listed test file that does not exist (yet) is left out rather than failing the run.
    tests = [t for t in module["tests"] if (ROOT / t).is_file()]
    mutmut["pytest_add_cli_args_test_selection"] = tests
    text = _toml_table("tool.pytest.ini_options", pytest_ini) + "\n\n"
    text += _toml_table("tool.mutmut", mutmut) + "\n"
    (folder / "pyproject.toml").write_text(text, "utf-8")
    return folder


def _mutmut(folder: Path, args: list[str], timeout: int, log) -> int:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    cmd = ["timeout", str(timeout), "nice", "-n", "10", *MUTMUT_RUN, *args]
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    return subprocess.run(cmd, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT).returncode


def _results(folder: Path) -> dict[str, str]:
    """Mutant name -> status (killed, survived, timeout, no tests, ...)."""
    out = subprocess.run(
        [str(MUTMUT), "results", "--all", "true"], cwd=folder, capture_output=True, text=True
    ).stdout
    return dict(m.groups() for line in out.splitlines() if (m := RESULT_LINE.match(line)))


def run_module(name: str, module: dict, pytest_ini: dict, shared: dict, jobs: int, timeout: int):
    folder = _prepare(name, module, pytest_ini, shared)
    before = _results(folder) if (folder / "mutants").exists() else {}
    with open(folder / "run.log", "a", encoding="utf-8") as log:
        rc = _mutmut(folder, ["run", "--max-children", str(jobs)], timeout, log)
        # mutmut keeps an earlier verdict; retest the earlier survivors against today's tests.
        again = sorted(k for k, v in before.items() if v == "survived")
        if rc == 0 and again:
            rc = _mutmut(folder, ["run", "--max-children", str(jobs), *again], timeout, log)
    results = _results(folder)
    counts = {"generated": len(results)}
    for status in ("killed", "survived"):
        counts[status] = sum(v == status for v in results.values())
    counts["other"] = counts["generated"] - counts["killed"] - counts["survived"]
    survivors = sorted(k for k, v in results.items() if v == "survived")
    other = sorted(f"{k} ({v})" for k, v in results.items() if v not in ("killed", "survived"))
    return rc, counts, survivors, other


def main(argv: list[str] | None = None) -> int:
    pytest_ini, shared, modules = _load_config()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", default="", help="comma-separated names; empty = all")
    parser.add_argument("--jobs", type=int, default=2, help="mutmut --max-children")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per module run")
    parser.add_argument("--list", action="store_true", help="list the modules and their tests")
    args = parser.parse_args(argv)
    if args.list:
        for name, module in modules.items():
            print(f"{name:24s} {module['source']}  <- {' '.join(module['tests'])}")
        return 0
    names = [n.strip() for n in args.modules.split(",") if n.strip()] or list(modules)
    unknown = [n for n in names if n not in modules]
    if unknown:
        parser.error(f"unknown --modules {unknown}; valid names: {', '.join(modules)}")
    failed = False
    for name in names:
        rc, counts, survivors, other = run_module(
            name, modules[name], pytest_ini, shared, args.jobs, args.timeout
        )
        state = "ok" if rc == 0 else f"mutmut exit {rc} (124 = timeout); see mutants/{name}/run.log"
        failed |= rc != 0
        print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + f" [{state}]")
        for s in survivors:
            print(f"  survived  {s}")
        for s in other:
            print(f"  other     {s}")
        sys.stdout.flush()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
