"""More bad input on the command line: unreadable matrix files, options named by the wrong
command, values checked late, and inaccurate messages. Each gives exit code 2, exactly one
stderr line starting ``featgeo: error:``, no traceback, and a message naming the problem and
a fix the running command can follow."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from featgeo.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATGEO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def one_line_error(args: list[str], *fragments: str) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output}"
    assert "Traceback" not in result.output and "Aborted" not in result.output, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("featgeo: error:"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# -- 1. unreadable matrix files ----------------------------------------------------------------
def _good_bytes(suffix: str, tmp: Path) -> bytes:
    matrix = torch.randn(8, 6) * (torch.rand(8, 6) > 0.5)
    path = tmp / f"good{suffix}"
    if suffix == ".npy":
        np.save(path, matrix.numpy())
    elif suffix == ".safetensors":
        save_file({"weight": matrix}, path)
    else:
        torch.save(matrix, path)
    return path.read_bytes()


def unreadable(kind: str, suffix: str, tmp: Path) -> Path:
    path = tmp / f"{kind}{suffix}"
    data = {
        "empty": b"",
        "truncated": _good_bytes(suffix, tmp)[:60],
        "garbage": np.random.default_rng(0).bytes(300),
        "text": b"hello world\n" * 10,
    }[kind]
    path.write_bytes(data)
    return path


NOT_READABLE = {
    ".npy": "is not a readable .npy file",
    ".pt": "is not a readable .pt tensor file",
    ".safetensors": "is not a readable .safetensors file",
}


@pytest.mark.parametrize("command", ["single", "multi"])
@pytest.mark.parametrize("suffix", [".npy", ".pt", ".safetensors"])
@pytest.mark.parametrize("kind", ["empty", "truncated", "garbage", "text"])
def test_an_unreadable_matrix_file_is_one_line(command, suffix, kind, tmp_path):
    path = unreadable(kind, suffix, tmp_path)
    line = one_line_error(["hamming", command, path], f"'{path}'", NOT_READABLE[suffix])
    assert "fr)" not in line and "expected" not in line  # a whole sentence, not a cut one


def test_an_unreadable_matrix_in_hamming_seeds(tmp_path):
    mats = tmp_path / "mats" / "wanda"
    mats.mkdir(parents=True)
    (mats / "layer0-mlp.down_proj.npy").write_bytes(b"")
    one_line_error(
        ["hamming", "seeds", "--method", "wanda", "--layer", "0", "--component",
         "mlp.down_proj", "--matrices-dir", tmp_path / "mats", "--output-dir", tmp_path / "o"],
        "is not a readable .npy file",
    )  # fmt: skip


def test_load_matrix_raises_value_error_not_eof(tmp_path):
    from featgeo.sparsity import load_matrix

    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.npy' is not a readable \.npy file"):
        load_matrix(tmp_path / "empty.npy")


def test_an_object_npy_is_named_as_such(tmp_path):
    path = tmp_path / "obj.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    one_line_error(["hamming", "single", path], "object (pickled) array")


def test_a_garbage_pt_message_is_a_clean_sentence(tmp_path):
    path = unreadable("garbage", ".pt", tmp_path)
    line = one_line_error(["hamming", "single", path])
    assert line.endswith("save the matrix with torch.save(tensor, path)"), line
    assert "PyTorch 2.6" not in line and "`torch.load`" not in line, line


# -- 2. --store-tokens, not --max-tokens ---------------------------------------------------------
@pytest.fixture(scope="module")
def sae_folder(tmp_path_factory) -> Path:
    from featgeo.sae import SAEConfig, SparseAutoencoder, save_sae

    cfg = SAEConfig(
        d_in=64, d_sae=16, architecture="standard", hook_name="blocks.1.hook_resid_post"
    )
    return save_sae(
        SparseAutoencoder.from_config(cfg, seed=0), tmp_path_factory.mktemp("s") / "sae"
    )


@pytest.mark.parametrize("command", ["store", "cluster"])
def test_negative_store_tokens_names_store_tokens(
    command, sae_folder, tiny_llama, text_corpus, tmp_path
):
    args = ["sae", command, sae_folder, "--model", tiny_llama, "--corpus", text_corpus,
            "--device", "cpu", "--store-tokens", "-5"]  # fmt: skip
    if command == "cluster":
        args += ["--n-clusters", "2", "--out", tmp_path / "clusters"]
    line = one_line_error(args, "--store-tokens must be >= 0 (0 stores the whole split), got -5")
    assert "--max-tokens" not in line
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.npy"))


def test_store_key_checks_the_budget():
    from featgeo.activations.store import store_key

    with pytest.raises(ValueError, match="--store-tokens must be >= 0"):
        store_key("m", "e", "c", "sae_train", 0, 32, -1)
    with pytest.raises(ValueError, match="max_tokens must be >= 1, or None"):
        store_key("m", "e", "c", "sae_train", 0, 32, 0)
    assert store_key("m", "e", "c", "sae_train", 0, 32, None)


def test_no_sae_message_names_an_option_no_command_has():
    """The SAE package's messages name options of its commands, or library parameter names."""
    from typer.main import get_command

    root = get_command(app)
    options = {
        opt for cmd in root.commands["sae"].commands.values() for p in cmd.params for opt in p.opts
    }
    import re

    folder = Path(__file__).parents[1] / "src" / "featgeo" / "sae"
    named = set()
    for path in folder.glob("*.py"):
        for literal in re.findall(r'f?"[^"\n]*"', path.read_text(encoding="utf-8")):
            named.update(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", literal))
    # --aux-coef / --l1-coef are named by TrainConfig only (reachable from the library alone)
    assert named - options <= {"--aux-coef", "--l1-coef"}, named - options


# -- 3. sae train --activation-tokens ----------------------------------------------------------
def train_args(tiny_llama, text_corpus, out, *extra):
    return ["sae", "train", "--layer", "0", "--model", tiny_llama, "--corpus", text_corpus,
            "--out", out, "--device", "cpu", "--d-sae", "16", "--k", "4", *extra]  # fmt: skip


@pytest.mark.parametrize("value", ["0", "-3"])
def test_activation_tokens_is_checked_up_front(value, tiny_llama, text_corpus, tmp_path):
    result_line = one_line_error(
        train_args(tiny_llama, text_corpus, tmp_path / "sae", "--activation-tokens", value),
        f"--activation-tokens must be >= 1, got {value}",
    )
    assert "INFO" not in result_line
    assert not (tmp_path / "cache").exists()  # nothing collected


def test_activation_tokens_below_batch_size(tiny_llama, text_corpus, tmp_path):
    one_line_error(
        train_args(tiny_llama, text_corpus, tmp_path / "sae", "--activation-tokens", "10",
                   "--batch-size", "64"),
        "--activation-tokens 10 is less than --batch-size 64",
    )  # fmt: skip
    assert not (tmp_path / "cache").exists()


def test_too_few_activation_rows_names_options_of_sae_train():
    from featgeo.activations.cache import shuffled_batches

    with pytest.raises(ValueError) as info:
        next(shuffled_batches(np.zeros((5, 4), np.float32), 64, 0))
    assert str(info.value) == (
        "only 5 activation rows for a batch size of 64; pass a larger --tokens / "
        "--activation-tokens, or a corpus whose split has more text, or lower --batch-size"
    )


def test_a_split_smaller_than_one_batch(tiny_llama, tmp_path):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("some words of text here and there.\n" * 8, encoding="utf-8")
    one_line_error(  # a one-file corpus is one document of the vertex split
        train_args(tiny_llama, corpus, tmp_path / "sae", "--tokens", "4096", "--batch-size",
                   "1024", "--split", "vertex", "--context-size", "16"),
        "activation rows for a batch size of 1024",
        "--activation-tokens",
    )  # fmt: skip


# -- 4. inaccurate messages --------------------------------------------------------------------
@pytest.mark.parametrize("command", ["single", "multi"])
def test_a_folder_as_matrix(command, tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    line = one_line_error(["hamming", command, folder], f"matrix file '{folder}' is a folder")
    assert "does not exist" not in line


def test_results_dir_that_is_a_file(tmp_path):
    path = tmp_path / "f.json"
    path.write_text("{}")
    line = one_line_error(
        ["hamming", "report", "--results-dir", path, "--out", tmp_path / "r"],
        f"--results-dir '{path}' is a file, not a folder",
    )
    assert "does not exist" not in line


def test_seeds_dir_that_is_a_file(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    matrix = torch.randn(24, 32) * (torch.rand(24, 32) > 0.5)
    torch.save(matrix, tmp_path / "m.pt")
    done = runner.invoke(
        app,
        ["hamming", "multi", str(tmp_path / "m.pt"), "--n-executions", "2", "--n-features",
         "6", "--n-clusters", "2", "--output-json", str(results / "m.json")],
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    (tmp_path / "seeds").write_text("x")
    one_line_error(
        ["hamming", "report", "--results-dir", results, "--seeds-dir", tmp_path / "seeds",
         "--out", tmp_path / "r"],
        "--seeds-dir", "is a file, not a folder",
    )  # fmt: skip


def test_matrices_dir_that_is_a_file(tmp_path):
    path = tmp_path / "afile"
    path.write_text("x")
    line = one_line_error(
        ["hamming", "seeds", "--method", "wanda", "--layer", "0", "--component",
         "mlp.down_proj", "--matrices-dir", path, "--output-dir", tmp_path / "o"],
        f"--matrices-dir '{path}' is a file, not a folder",
        "pass the folder `featgeo prune --out` exported to",
    )  # fmt: skip
    assert f"--out {path}" not in line


def test_prune_eval_windows_negative(tmp_path):
    one_line_error(
        ["prune", "--method", "wanda", "--eval-windows", "-1", "--out", tmp_path / "o"],
        "--eval-windows must be >= 0 (0 scores the whole split), got -1",
    )


def test_prune_config_takes_zero_eval_windows_as_the_whole_split():
    from featgeo.pruning.config import PruneConfig

    assert PruneConfig(eval_windows=0).eval_windows is None
    with pytest.raises(ValueError, match=r"must be >= 0 \(0 scores the whole split\)"):
        PruneConfig(eval_windows=-1)


@pytest.mark.parametrize("args", [["model", "info"], ["ppl"]])
def test_unknown_model_type(args, tiny_llama, tmp_path):
    import transformers

    folder = tmp_path / "model"
    folder.mkdir()
    config = json.loads((Path(tiny_llama) / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "nosuchmodel"}))
    line = one_line_error(
        [*args, "--model", folder],
        f"model '{folder}': transformers does not know model_type 'nosuchmodel'; featgeo "
        f"needs a model transformers {transformers.__version__} can load",
    )
    assert "pip install" not in line


def test_a_truncated_store_array_is_one_error(tmp_path):
    from featgeo.activations.sharded import FORMAT_VERSION, HEADER, open_arrays

    (tmp_path / HEADER).write_text(json.dumps({"format_version": FORMAT_VERSION, "complete": True}))
    (tmp_path / "acts.npy").write_bytes(b"")
    with pytest.raises(ValueError, match=r"acts\.npy is not a readable \.npy file"):
        open_arrays(tmp_path, ["acts"], "activation cache")
    os.remove(tmp_path / "acts.npy")
    with pytest.raises(ValueError, match="delete"):
        open_arrays(tmp_path, ["acts"], "activation cache")


# -- usage errors of the featgeo executable ----------------------------------------------------
@pytest.mark.parametrize(
    "args,fragment",
    [
        (["aanet", "stage3", "--csv-dir", "x", "--samples-per-vertex", "abc"],
         "Invalid value for '--samples-per-vertex'"),
        (["aanet", "select", "--bogus"], "No such option: --bogus"),
        (["prune", "--nope"], "No such option: --nope"),
        (["aanet", "select"], "Missing option '--csv-dir'"),
        (["nosuchcommand"], "No such command 'nosuchcommand'"),
        (["aanet"], "Missing command"),
        (["aanet", "select", "--bo[/x]gus"], "No such option: --bo[/x]gus"),  # not markup
    ],
)  # fmt: skip
def test_usage_errors_of_the_executable_are_one_line(args, fragment, tmp_path):
    """Unknown options and values of the wrong type, checked by the command-line parser
    before any command runs, are one line naming the command's --help, like other bad input."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "featgeo", *args], capture_output=True,
                         text=True, cwd=tmp_path, timeout=120)  # fmt: skip
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("featgeo: error:"), run.stderr
    assert fragment in lines[0] and "--help" in lines[0], lines[0]
    assert run.stdout == ""


def test_version_and_help_of_the_executable(tmp_path):
    import subprocess
    import sys

    from featgeo import __version__

    run = subprocess.run([sys.executable, "-m", "featgeo", "--version"], capture_output=True,
                         text=True, cwd=tmp_path, timeout=120)  # fmt: skip
    assert run.returncode == 0 and run.stdout.strip() == f"featgeo {__version__}", run.stderr
    run = subprocess.run([sys.executable, "-m", "featgeo", "aanet", "stage3", "--help"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)  # fmt: skip
    assert run.returncode == 0 and "Usage: featgeo aanet stage3" in run.stdout


def test_error_messages_are_text_not_markup(tmp_path):
    """A path with square brackets is printed as typed, and never crashes the printer."""
    for name in ("nonexist[/red]", "x[bold]y"):
        line = one_line_error(["aanet", "select", "--csv-dir", str(tmp_path / name)])
        assert f"'{tmp_path / name}' is not a folder" in line
