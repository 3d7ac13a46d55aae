"""Every ``featgeo`` command on malformed paths: one line on stderr, exit code 2, no traceback,
and only advice the command can follow.

The commands are listed from the typer app itself, so a new command is covered (or fails the
``test_every_command_is_covered`` check until its valid base arguments are added below). Each
path-like parameter of a command is replaced, one at a time, by each malformed input of its
kind while the other parameters stay valid (tiny inputs built here).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import torch
from typer.main import get_command
from typer.testing import CliRunner

from featgeo.cli import app

runner = CliRunner()
ROOT = get_command(app)


def leaf_commands(group=ROOT, path: tuple[str, ...] = ()) -> dict:
    """Command path ('hamming single') -> click command, for every leaf of the app."""
    if isinstance(getattr(group, "commands", None), dict):
        found = {}
        for name, sub in group.commands.items():
            found.update(leaf_commands(sub, (*path, name)))
        return found
    return {" ".join(path): group}


COMMANDS = leaf_commands()

# Path-like parameters by option string (or argument name): what they expect.
INPUT_FOLDERS = {
    "--model",
    "--corpus",
    "--matrices-dir",
    "--results-dir",
    "--seeds-dir",
    "path",
    "--sae",
    "--clusters-dir",
    "--csv-dir",
    "--stage1-models-dir",
    "--stage1-dir",
    "--stage3-dir",
    "--sparsity-report",
}
INPUT_FILES = {"matrix", "--scan-csv", "--from", "--selection"}
OUTPUT_FOLDERS = {"--out", "--output-dir", "--save-dir"}
OUTPUT_FILES = {"--output-json", "--json"}
PATH_PARAMS = INPUT_FOLDERS | INPUT_FILES | OUTPUT_FOLDERS | OUTPUT_FILES
# Where one command's option is another kind than the same option elsewhere.
KIND_OF = {("aanet select", "--out"): "output-file"}
FLAG = "<flag>"
"""A base-argument value meaning: pass the option alone (a boolean flag)."""

# Malformed values by kind of parameter. ``{tmp}`` is the test's own folder.
BAD_INPUTS = ["missing", "empty-file", "text-file", "empty-dir", "bad-json-dir"]
BAD_OUTPUT_FOLDERS = ["text-file", "under-a-file", "foreign-dir"]
# A user's folder with a file at each level a command replaces as a whole: the folder itself
# (scan, seeds, report, corpus, SAE), a method folder (prune), a clusters_{n} folder (cluster,
# aanet stage1), an n{n} folder (aanet stage3).
FOREIGN = ("notes.txt", "wanda/notes.txt", "clusters_2/notes.txt", "n2/notes.txt")
BAD_OUTPUT_FILES = ["empty-dir", "under-a-file"]
# A text file is a valid one-document corpus; a binary file is not.
TEXT_IS_VALID = {"--corpus", "--from"}


def is_option(param) -> bool:
    return param.param_type_name == "option"  # typer vendors click: no isinstance checks


def param_key(param) -> str:
    return param.opts[0] if is_option(param) else param.name


def command_options(command) -> set[str]:
    return {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)} | {"--help"}


# -- tiny valid inputs -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def valid(tiny_llama, text_corpus, tmp_path_factory) -> dict[str, Path]:
    """A valid value for every path parameter (tiny, built once)."""
    from featgeo.sae import SAEConfig, SparseAutoencoder, save_sae

    root = tmp_path_factory.mktemp("valid")
    g = torch.Generator().manual_seed(0)
    matrix = torch.randn(24, 32, generator=g) * (torch.rand(24, 32, generator=g) > 0.5)
    mats = root / "mats" / "wanda"
    mats.mkdir(parents=True)
    torch.save(matrix, mats / "layer0-mlp.down_proj.pt")
    torch.save(matrix, root / "matrix.pt")
    results = root / "results"
    results.mkdir()
    result = runner.invoke(
        app,
        ["hamming", "multi", str(root / "matrix.pt"), "--n-executions", "2", "--n-features",
         "6", "--n-clusters", "2", "--output-json", str(results / "m.json")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    cfg = SAEConfig(
        d_in=64, d_sae=16, architecture="standard", hook_name="blocks.1.hook_resid_post"
    )
    sae = save_sae(SparseAutoencoder.from_config(cfg, seed=0), root / "sae")
    with pytest.MonkeyPatch.context() as mp:  # a finished Stage 1 run for `aanet select/stage3`
        mp.setenv("FEATGEO_CACHE", str(root / "cache"))
        result = runner.invoke(
            app,
            ["aanet", "stage1", "--sae", str(sae), "--model", str(tiny_llama), "--corpus",
             str(text_corpus), "--device", "cpu", "--context-size", "32", "--store-tokens",
             "256", "--n-clusters", "2", "--k-max", "4", "--max-steps", "20", "--workers", "1",
             "--save-dir", str(root / "stage1")],
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    return {
        "--model": tiny_llama,
        "--corpus": text_corpus,
        "--matrices-dir": root / "mats",
        "--results-dir": results,
        "path": sae,
        "matrix": root / "matrix.pt",
        "--from": text_corpus,
        "--csv-dir": root / "stage1",
    }


def base_args(command: str, valid: dict, tmp: Path) -> dict[str, str]:
    """Valid, cheap arguments for ``command`` (options by name; arguments by param name)."""
    tiny = {"--device": "cpu"}
    common = {"--model": valid["--model"], "--corpus": valid["--corpus"]}
    small_store = {**common, **tiny, "--context-size": "32", "--store-tokens": "256"}
    args = {
        "model info": {"--model": valid["--model"]},
        "corpus build": {"--from": valid["--from"], "--out": tmp / "built"},
        "corpus info": common,
        "prune": {**common, **tiny, "--method": "wanda", "--calib-samples": "2",
                  "--seqlen": "16", "--eval-windows": "1", "--out": tmp / "pruned"},
        "ppl": {**common, **tiny, "--seqlen": "16", "--eval-windows": "1"},
        "hamming single": {"matrix": valid["matrix"], "--n-features": "6", "--n-clusters": "2",
                           "--output-json": tmp / "single.json"},
        "hamming multi": {"matrix": valid["matrix"], "--n-executions": "2", "--n-features": "6",
                          "--n-clusters": "2", "--output-json": tmp / "multi.json"},
        "hamming seeds": {"--method": "wanda", "--component": "mlp.down_proj", "--layer": "0",
                          "--seeds": "1", "--n-similar": "6", "--k-values": "2",
                          "--matrices-dir": valid["--matrices-dir"],
                          "--output-dir": tmp / "seeds"},
        "hamming report": {"--results-dir": valid["--results-dir"], "--out": tmp / "report"},
        "hamming scan": {"--matrices-dir": valid["--matrices-dir"], "--out": tmp / "scan",
                         **tiny},
        "sae train": {**common, **tiny, "--layer": "1", "--out": tmp / "sae", "--d-sae": "16",
                      "--k": "4", "--tokens": "256", "--batch-size": "64",
                      "--activation-tokens": "256", "--context-size": "32"},
        "sae load": {"path": valid["path"]},
        "sae eval": {"path": valid["path"], **common, **tiny, "--tokens": "256",
                     "--context-size": "32", "--json": tmp / "eval.json"},
        "sae store": {"path": valid["path"], **small_store},
        "sae cluster": {"path": valid["path"], **small_store, "--n-clusters": "2",
                        "--out": tmp / "clusters"},
        "aanet stage1": {"--sae": valid["path"], **small_store, "--n-clusters": "2",
                         "--k-max": "3", "--max-steps": "20", "--save-dir": tmp / "stage1"},
        "aanet select": {"--csv-dir": valid["--csv-dir"], "--n-clusters-list": "2",
                         "--manual": "0", "--out": tmp / "selection.csv"},
        "aanet stage3": {"--csv-dir": valid["--csv-dir"], "--n-clusters-list": "2",
                         "--manual": "0", "--skip-training": FLAG, **tiny, "--workers": "1",
                         "--store-tokens": "256", "--samples-per-vertex": "2",
                         "--save-dir": tmp / "stage3"},
        # The malformed --out is refused before any step runs (the real chain is slow).
        "demo": {"--quick": FLAG, "--out": tmp / "demo"},
        "review": {"--stage1-dir": valid["--csv-dir"], "--out": tmp / "review"},
    }  # fmt: skip
    return {k: str(v) for k, v in args[command].items()}


def bad_value(kind: str, tmp: Path) -> Path:
    """A malformed path of ``kind``, created under ``tmp``."""
    bad = tmp / "bad"
    bad.mkdir(exist_ok=True)
    if kind == "missing":
        return bad / "does-not-exist"
    if kind == "empty-file":
        (bad / "empty.pt").write_bytes(b"")
        return bad / "empty.pt"
    if kind == "text-file":
        (bad / "notes.txt").write_text("this is not what featgeo expects here\n")
        return bad / "notes.txt"
    if kind == "binary-file":
        (bad / "blob.txt").write_bytes(bytes(range(256)) * 4)
        return bad / "blob.txt"
    if kind == "empty-dir":
        (bad / "empty-dir").mkdir(exist_ok=True)
        return bad / "empty-dir"
    if kind == "bad-json-dir":
        folder = bad / "bad-json"
        folder.mkdir(exist_ok=True)
        for name in ("cfg.json", "config.json", "manifest.json", "corpus.json"):
            (folder / name).write_text('{"d_in": 64, "hook_name": ')
        return folder
    if kind == "foreign-dir":
        for name in FOREIGN:
            (bad / "foreign" / name).parent.mkdir(parents=True, exist_ok=True)
            (bad / "foreign" / name).write_text("the user's own notes\n")
        return bad / "foreign"
    if kind == "under-a-file":
        (bad / "file").write_text("a file, not a folder\n")
        return bad / "file" / "inside"
    raise ValueError(kind)


def cases() -> list:
    found = []
    for name, command in COMMANDS.items():
        for param in command.params:
            key = param_key(param)
            if KIND_OF.get((name, key)) == "output-file":
                kinds = BAD_OUTPUT_FILES
            elif key in TEXT_IS_VALID:
                kinds = [k if k != "text-file" else "binary-file" for k in BAD_INPUTS]
            elif key in INPUT_FOLDERS or key in INPUT_FILES:
                kinds = BAD_INPUTS
            elif key in OUTPUT_FOLDERS:
                kinds = BAD_OUTPUT_FOLDERS
            elif key in OUTPUT_FILES:
                kinds = BAD_OUTPUT_FILES
            else:
                continue
            found += [pytest.param(name, key, kind, id=f"{name} {key} {kind}") for kind in kinds]
    return found


def to_argv(command: str, args: dict[str, str]) -> list[str]:
    cmd = COMMANDS[command]
    argv = command.split()
    positional = [p.name for p in cmd.params if not is_option(p)]
    argv += [args[name] for name in positional if name in args]
    for key, value in args.items():
        if key not in positional:
            argv += [key] if value == FLAG else [key, value]
    return argv


def check_advice(line: str, command: str) -> None:
    """Every ``--option`` in an error line is an option of the command it is said for: the
    running command, or the ``featgeo ...`` command quoted in backticks around it."""
    quoted = re.findall(r"`featgeo ([^`]*)`", line)
    for text in quoted:
        words = shlex.split(text)
        sub = next((" ".join(words[:n]) for n in (2, 1) if " ".join(words[:n]) in COMMANDS), None)
        assert sub is not None, f"'{line}' quotes an unknown command `featgeo {text}`"
        for option in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text):
            assert option in command_options(COMMANDS[sub]), (
                f"'{line}' suggests {option}, which `featgeo {sub}` does not have"
            )
    rest = re.sub(r"`featgeo [^`]*`", "", line)
    for option in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", rest):
        assert option in command_options(COMMANDS[command]), (
            f"'featgeo {command}' printed '{line}', which names {option}; the command has "
            f"no such option"
        )


def assert_one_line_error(result, command: str) -> str:
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output}"
    assert "Traceback" not in result.output, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("featgeo: error:"), result.stderr
    check_advice(lines[0], command)
    return lines[0]


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATGEO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("command,key,kind", cases())
def test_malformed_path(command, key, kind, valid, tmp_path):
    args = base_args(command, valid, tmp_path / "work")
    (tmp_path / "work").mkdir()
    args[key] = str(bad_value(kind, tmp_path))
    result = runner.invoke(app, to_argv(command, args))
    assert_one_line_error(result, command)
    written = [p for p in (tmp_path / "work").rglob("*")]
    assert not written, f"files written before the error: {written}"
    if kind == "foreign-dir":  # refused, and nothing of the user's was touched
        for name in FOREIGN:
            assert (Path(args[key]) / name).read_text() == "the user's own notes\n", name


def test_every_command_is_covered(valid, tmp_path):
    """Each command has base arguments here and at least one path parameter under test."""
    for name, command in COMMANDS.items():
        args = base_args(name, valid, tmp_path)  # KeyError: add the new command above
        keys = {param_key(p) for p in command.params}
        assert keys & PATH_PARAMS, f"'featgeo {name}' has no path parameter under test"
        required = {param_key(p) for p in command.params if p.required}
        assert required <= set(args), f"'featgeo {name}' needs {required - set(args)} here"


def test_valid_base_arguments_parse(valid, tmp_path):
    """The base arguments are accepted by click (so each failure above is the bad path)."""
    for name in COMMANDS:
        ctx = COMMANDS[name].make_context(
            name, to_argv(name, base_args(name, valid, tmp_path))[len(name.split()) :]
        )
        ctx.close()


@pytest.mark.parametrize("command", ["aanet select", "aanet stage3", "review"])
def test_base_arguments_of_the_aanet_stages_run(command, valid, tmp_path):
    """These commands read a finished Stage 1 run: their base arguments must succeed (so each
    failure above is the bad path, not an unusable Stage 1 run)."""
    result = runner.invoke(app, to_argv(command, base_args(command, valid, tmp_path / "work")))
    assert result.exit_code == 0, result.output
    assert list((tmp_path / "work").iterdir())


@pytest.mark.parametrize(
    "line,command,ok",
    [
        ("featgeo: error: split 'calibration' is empty; use --split all", "prune", False),
        ("featgeo: error: split 'calibration' is empty; use --split all", "ppl", True),
        ("featgeo: error: rebuild it with `featgeo corpus build --force`", "prune", True),
        ("featgeo: error: rebuild it with `featgeo corpus build --forse`", "prune", False),
        ("featgeo: error: run `featgeo nothing --x` first", "prune", False),
    ],
)
def test_advice_check_catches_options_the_command_lacks(line, command, ok):
    if ok:
        check_advice(line, command)
    else:
        with pytest.raises(AssertionError):
            check_advice(line, command)


def test_a_malformed_config_json_in_a_model_folder(tiny_llama, tmp_path):
    """A model folder whose config.json is not JSON: one line naming the file."""
    folder = tmp_path / "model"
    folder.mkdir()
    for path in Path(tiny_llama).iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "config.json").write_text('{"model_type": "llama", ')
    result = runner.invoke(app, ["model", "info", "--model", str(folder)])
    line = assert_one_line_error(result, "model info")
    assert "config.json" in line


def test_a_malformed_sae_cfg_json(valid, tmp_path):
    folder = tmp_path / "sae"
    folder.mkdir()
    for path in Path(valid["path"]).iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps(cfg)[:-5])
    line = assert_one_line_error(runner.invoke(app, ["sae", "load", str(folder)]), "sae load")
    assert "cfg.json" in line


def test_empty_split_advice_names_only_options_of_the_command(tiny_llama, tmp_path):
    """A one-document corpus leaves most splits empty: ``ppl`` may suggest ``--split all``;
    ``prune``, which has no --split, must not."""
    corpus = tmp_path / "one.txt"
    corpus.write_text("this is not what featgeo expects here\n")  # lands in sae_train
    common = ["--model", str(tiny_llama), "--corpus", str(corpus), "--device", "cpu"]
    common += ["--seqlen", "16", "--eval-windows", "1"]
    out = tmp_path / "out"
    pruned = runner.invoke(app, ["prune", *common, "--method", "wanda", "--out", str(out)])
    line = assert_one_line_error(pruned, "prune")
    assert "'calibration'" in line and "--split" not in line and "more documents" in line
    assert not out.exists()
    scored = runner.invoke(app, ["ppl", *common, "--split", "eval"])
    assert "Use --split all" in assert_one_line_error(scored, "ppl")
