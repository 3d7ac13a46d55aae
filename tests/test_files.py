"""featgeo.files: the guards that keep a command from replacing what it did not write."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from featgeo.cli import app
from featgeo.files import check_output_dir, check_output_file


def test_new_empty_and_own_folders_are_accepted(tmp_path):
    check_output_dir(tmp_path / "new", "--out")
    (tmp_path / "empty").mkdir()
    check_output_dir(tmp_path / "empty", "--out")
    (tmp_path / "ours" / "summary").mkdir(parents=True)
    (tmp_path / "ours" / "summary" / "metrics_summary.json").write_text("{}")
    (tmp_path / "ours" / "seed_0").mkdir()
    check_output_dir(tmp_path / "ours", "--out", signature=("summary/metrics_summary.json",))


@pytest.mark.parametrize(
    "make,error,match",
    [
        (lambda p: p.write_text("x"), NotADirectoryError, r"^--out '.*target' is a file"),
        (lambda p: (p.mkdir(), (p / "b.txt").write_text("x"), (p / "a.txt").write_text("x")),
         FileExistsError, r"already holds files that featgeo did not write there \(a\.txt, "
         r"b\.txt\).*pass a new or empty folder"),
        (lambda p: (p.mkdir(), *((p / f"{i}.txt").write_text("x") for i in range(5))),
         FileExistsError, r"\(0\.txt, 1\.txt, 2\.txt, \.\.\.\)"),
    ],
    ids=["file", "foreign-folder", "many-files"],
)  # fmt: skip
def test_what_would_be_clobbered_is_refused(tmp_path, make, error, match):
    target = tmp_path / "target"
    make(target)
    with pytest.raises(error, match=match):
        check_output_dir(target, "--out", signature=("scan.csv",))


def test_an_own_folder_holding_other_files_is_refused(tmp_path):
    """A folder with the signature file is replaced as a whole: anything in it beyond what
    the command writes (``contents``) would be deleted, so it is refused, naming the files."""
    own = tmp_path / "scan"
    own.mkdir()
    for name in ("scan.csv", "scan_config.json", "heatmap_wanda_x.png"):
        (own / name).write_text("x")
    contents = ("scan.csv", "scan_config.json", "heatmap_*.png")
    check_output_dir(own, "--out", signature=("scan.csv",), contents=contents)
    (own / "thesis.tex").write_text("x")
    (own / "heatmap.txt").write_text("x")  # a pattern matches whole names only
    with pytest.raises(FileExistsError, match=r"--out '.*scan' is an earlier featgeo output "
                       r"but also holds files featgeo did not write there \(heatmap\.txt, "
                       r"thesis\.tex\).*move them out"):  # fmt: skip
        check_output_dir(own, "--out", signature=("scan.csv",), contents=contents)
    check_output_dir(own, "--out", signature=("scan.csv",))  # no contents given: signature only


def test_a_path_under_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError, match=r"lies under '.*f', which is a file"):
        check_output_dir(tmp_path / "f" / "out", "--out")
    with pytest.raises(NotADirectoryError, match=r"lies under"):
        check_output_file(tmp_path / "f" / "x.json", "--json")
    with pytest.raises(IsADirectoryError, match=r"--json '.*' is a folder"):
        check_output_file(tmp_path, "--json")


def test_sae_train_force_never_replaces_a_folder_of_other_files(tmp_path, monkeypatch):
    """--force replaces an SAE trained with other settings, not the user's own folder; the
    refusal comes before the model is loaded (a model path that does not exist is never read)."""
    monkeypatch.setenv("FEATGEO_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me\n")
    result = CliRunner().invoke(
        app, ["sae", "train", "--layer", "0", "--out", str(out), "--force", "--model",
              str(tmp_path / "no-model"), "--corpus", str(tmp_path / "no-corpus")],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "already holds files that featgeo did not write there (notes.txt)" in " ".join(
        result.stderr.split()
    )
    assert (out / "notes.txt").read_text() == "keep me\n"
