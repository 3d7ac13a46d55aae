"""`featgeo aanet stage1` on a tiny random Llama and a random TopK SAE: the seed's CSV columns
and rows, models, curves, plots and stage1.json checked against independent computations;
reuse, --force, resume after an interruption, too-few-point clusters and every bad input."""

from __future__ import annotations

import csv
import itertools
import json
import math
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from featgeo.archetypes import executors
from featgeo.archetypes.config import AANetConfig
from featgeo.archetypes.stage1 import Stage1Config, run_stage1
from featgeo.archetypes.units import run_unit as real_run_unit
from featgeo.cli import app
from featgeo.files import read_json

runner = CliRunner()

# Seed 002's "CSV Column Reference", copied from the issue text (not from featgeo's code).
SEED_COLUMNS = (
    "n_clusters_total cluster_id n_latents latent_indices aanet_k aanet_status aanet_loss "
    "aanet_recon_loss aanet_archetypal_loss aanet_extrema_loss decoder_dir_rank "
    "activation_pca_rank cluster_recon_error aanet_recon_loss_elbow_k "
    "aanet_recon_loss_elbow_strength aanet_archetypal_loss_elbow_k "
    "aanet_archetypal_loss_elbow_strength k_differential recon_is_monotonic arch_is_monotonic "
    "recon_pct_decrease arch_pct_decrease sae_id average_l0"
).split()
PLOTS = ("pca_vs_geometric_rank", "decoder_rank_dist", "elbow_strength_dists",
         "recon_vs_arch_unzoomed", "recon_vs_arch_zoomed")  # fmt: skip
KS = (2, 3, 4)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def env(stage_env):
    return stage_env


@pytest.fixture(autouse=True)
def _cache(env, monkeypatch):
    monkeypatch.setenv("FEATGEO_CACHE", str(env["root"] / "cache"))


def cli_args(env, save_dir, *extra, n="4,6"):
    """The seed's underscore spellings wherever the seed has one."""
    return [
        "aanet", "stage1", "--sae", str(env["sae"]), "--n_clusters", n, "--save_dir",
        str(save_dir), "--k_min", "2", "--k_max", "4", "--aanet_max_steps", "40",
        "--aanet_early_stop_patience", "20", "--aanet_loss_smoothing_window", "8",
        "--model", str(env["model"]), "--corpus", str(env["corpus"]), "--context_size", "64",
        "--store_tokens", "2000", "--device", "cpu", "--models_per_unit", "6", "--workers", "1",
        *extra,
    ]  # fmt: skip


def library_config(env, **overrides) -> Stage1Config:
    """The settings of :func:`cli_args` as a Stage1Config."""
    aanet = AANetConfig(max_steps=40, early_stop_patience=20, smoothing_window=8)
    kwargs = dict(n_clusters=(4, 6), k_min=2, k_max=4, aanet=aanet, models_per_unit=6,
                  model=str(env["model"]), corpus=str(env["corpus"]), context_size=64,
                  store_tokens=2000)  # fmt: skip
    kwargs.update(overrides)
    return Stage1Config(**kwargs)


@pytest.fixture(scope="module")
def run(env):
    out = env["root"] / "run"
    result = runner.invoke(app, cli_args(env, out, "--workers", "2"))  # a pool of 2 processes
    assert result.exit_code == 0, result.output
    return out, result.output


def read_rows(path):
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return reader.fieldnames, list(reader)


def num(cell: str) -> float:
    return math.nan if cell == "" else float(cell)


def one_line_error(result, message: str) -> None:
    """Exit code 2 and one error line, the last one (a log line such as "reusing activation
    store" may come before it), naming the problem."""
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    errors = [line for line in lines if line.startswith("featgeo: error:")]
    assert len(errors) == 1 and errors[0] == lines[-1] and message in errors[0], result.output
    assert "Traceback" not in result.output


def record_units(monkeypatch, interrupt_at: int | None = None) -> list[int]:
    """Record the index of every unit trained from now on; raise KeyboardInterrupt (a Ctrl-C)
    when the ``interrupt_at``-th one starts."""
    calls: list[int] = []

    def run_unit(unit, **kwargs):
        calls.append(unit.index)
        if len(calls) == interrupt_at:
            raise KeyboardInterrupt
        return real_run_unit(unit, **kwargs)

    monkeypatch.setattr(executors, "run_unit", run_unit)
    return calls


# -- the outputs -------------------------------------------------------------------------------
def test_csv_has_the_seed_columns_first_in_order_and_one_row_per_cluster_and_k(run):
    out, _ = run
    for n in (4, 6):
        columns, rows = read_rows(out / f"clusters_{n}" / f"consolidated_metrics_n{n}.csv")
        assert columns[: len(SEED_COLUMNS)] == SEED_COLUMNS
        assert "aanet_steps" in columns[len(SEED_COLUMNS) :]
        _, clusters = read_rows(out / "latent_clusters" / f"clusters_{n}" / "cluster_metrics.csv")
        ids = sorted(int(c["cluster_id"]) for c in clusters)
        keys = [(int(r["cluster_id"]), int(r["aanet_k"])) for r in rows]
        assert keys == list(itertools.product(ids, KS))  # sorted, complete, no duplicates
        by_id = {c["cluster_id"]: c for c in clusters}
        for row in rows:
            cluster = by_id[row["cluster_id"]]
            for column in cluster:  # the clustering's own metrics, unchanged
                assert row[column] == cluster[column], column
            assert row["n_clusters_total"] == str(len(ids))
            assert row["aanet_status"] == "ok"
            assert float(row["average_l0"]) == 6.0  # TopK k=6: exactly 6 codes per token
            assert row["sae_id"].endswith("sae")


def test_losses_are_the_saved_models_medians_of_the_last_20_steps(run):
    out, _ = run
    _, rows = read_rows(out / "clusters_4" / "consolidated_metrics_n4.csv")
    for row in rows:
        path = out / "clusters_4" / f"aanet_cluster_{row['cluster_id']}_k{row['aanet_k']}.pt"
        saved = torch.load(path, map_location="cpu", weights_only=True)
        curve = saved["loss_curve"].numpy().astype(np.float64)  # [steps, 4]
        assert curve.shape[0] == int(row["aanet_steps"]) <= 40
        medians = np.median(curve[-20:], axis=0)
        names = ("aanet_loss", "aanet_recon_loss", "aanet_archetypal_loss", "aanet_extrema_loss")
        for value, name in zip(medians, names, strict=True):
            assert float(row[name]) == value, name
        assert saved["k"] == int(row["aanet_k"])
        assert saved["stop_reason"] == row["aanet_stop_reason"]


def oracle_elbow(losses, ks):
    """SPEC §3 elbow metrics by hand; a flat curve (e.g. all-zero archetypal losses: every
    point inside) has its elbow at k0 with strength 0 and no decrease."""
    L, k = np.asarray(losses, float), np.asarray(ks, float)
    if L.max() == L.min():
        return int(k[0]), 0.0, True, 0.0 if L.max() == 0 else (L.max() - L.min()) / L.max() * 100
    x = (k - k[0]) / (k[-1] - k[0])
    y = (L - L[-1]) / (L[0] - L[-1])
    d = np.abs(x + y - 1) / math.sqrt(2)
    i = int(np.argmax(d))
    monotonic = all(L[j + 1] <= L[j] for j in range(i))
    return int(k[i]), float(d[i]), monotonic, (L.max() - L.min()) / L.max() * 100


def test_elbow_and_quality_columns_match_a_hand_computation(run):
    out, _ = run
    for n in (4, 6):
        _, rows = read_rows(out / f"clusters_{n}" / f"consolidated_metrics_n{n}.csv")
        for cid, group in itertools.groupby(rows, key=lambda r: r["cluster_id"]):
            group = list(group)
            recon = [float(r["aanet_recon_loss"]) for r in group]
            arch = [float(r["aanet_archetypal_loss"]) for r in group]
            rk, rs, rm, rp = oracle_elbow(recon, KS)
            ak, as_, am, ap = oracle_elbow(arch, KS)
            for r in group:
                assert int(r["aanet_recon_loss_elbow_k"]) == rk
                assert float(r["aanet_recon_loss_elbow_strength"]) == pytest.approx(rs, abs=1e-12)
                assert int(r["aanet_archetypal_loss_elbow_k"]) == ak
                assert float(r["aanet_archetypal_loss_elbow_strength"]) == pytest.approx(as_)
                assert r["recon_is_monotonic"] == str(rm) and r["arch_is_monotonic"] == str(am)
                assert float(r["recon_pct_decrease"]) == pytest.approx(rp, rel=1e-12)
                assert float(r["arch_pct_decrease"]) == pytest.approx(ap, rel=1e-12)
                assert int(r["k_differential"]) == abs(rk - ak)
                passes = (int(r["n_latents"]) >= 2 and rm and am and rp >= 20 and ap >= 20
                          and abs(rk - ak) <= 1)  # fmt: skip
                assert r["passes_quality_filters"] == str(passes), cid


def test_training_curves_have_one_record_per_model_matching_the_saved_curve(run):
    out, _ = run
    _, rows = read_rows(out / "clusters_6" / "consolidated_metrics_n6.csv")
    lines = (out / "clusters_6" / "training_curves_n6.jsonl").read_text().splitlines()
    assert len(lines) == len(rows)
    for line, row in zip(lines, rows, strict=True):
        record = json.loads(line)
        assert (record["cluster_id"], record["k"]) == (int(row["cluster_id"]), int(row["aanet_k"]))
        assert record["n_clusters"] == 6 and record["steps"] == int(row["aanet_steps"])
        assert record["step"][0] == 1 and record["step"][-1] == record["steps"]
        assert all(b - a == 10 for a, b in itertools.pairwise(record["step"][:-1]))
        path = out / "clusters_6" / f"aanet_cluster_{row['cluster_id']}_k{row['aanet_k']}.pt"
        curve = torch.load(path, weights_only=True)["loss_curve"].numpy()
        logged = np.array(record["step"]) - 1
        for j, name in enumerate(("loss", "recon", "archetypal", "extrema")):
            np.testing.assert_array_equal(np.float32(record[name]), curve[logged, j])
        assert record["lr"][0] == 0.0025 and all(
            a >= b for a, b in itertools.pairwise(record["lr"])
        )


def test_plots_are_png_images_and_stage1_json_records_the_run(run, env):
    from PIL import Image

    out, output = run
    for n in (4, 6):
        for name in PLOTS:
            path = out / f"clusters_{n}" / "plots" / f"{name}_n{n}.png"
            with Image.open(path) as image:
                assert image.format == "PNG" and min(image.size) > 100
    info = read_json(out / "stage1.json")
    assert info["status"] == "complete" and set(info["completed"]) == {"4", "6"}
    assert info["settings"]["aanet"]["max_steps"] == 40
    assert info["settings"]["aanet"]["early_stop_patience"] == 20
    assert info["settings"]["aanet"]["smoothing_window"] == 8
    assert info["store"]["n_tokens"] == 2000 and info["torch_version"] == torch.__version__
    for n in ("4", "6"):
        record = info["completed"][n]
        assert record["n_models"] == int(n) * len(KS) and record["status_counts"] == {
            "ok": int(n) * len(KS)
        }
        assert set(record["seconds"]) == {"clustering", "data", "training", "tables_and_plots"}
    assert "AANet models" in output and "30/30" in output  # the progress bar, n=4 and n=6
    assert f"details in {out}/stage1.json" in " ".join(output.split())
    assert not list(out.glob(".*partial"))


# -- reuse, force, resume ----------------------------------------------------------------------
def test_same_command_reuses_the_finished_run_byte_for_byte(run, env):
    out, _ = run
    csv_path = out / "clusters_4" / "consolidated_metrics_n4.csv"
    before = csv_path.read_bytes(), csv_path.stat().st_mtime_ns
    result = runner.invoke(app, cli_args(env, out))
    assert result.exit_code == 0, result.output
    assert "(reused)" in result.output
    assert (csv_path.read_bytes(), csv_path.stat().st_mtime_ns) == before


def test_other_settings_need_force(env, tmp_path):
    out = tmp_path / "run"
    assert runner.invoke(app, cli_args(env, out, n="4")).exit_code == 0
    csv_path = out / "clusters_4" / "consolidated_metrics_n4.csv"
    before = csv_path.read_bytes()
    changed = [a if a != "40" else "30" for a in cli_args(env, out, n="4")]
    one_line_error(runner.invoke(app, changed), "holds a Stage 1 run with other settings")
    assert csv_path.read_bytes() == before
    result = runner.invoke(app, [*changed, "--force"])
    assert result.exit_code == 0, result.output
    _, rows = read_rows(csv_path)
    assert max(int(r["aanet_steps"]) for r in rows) <= 30
    assert read_json(out / "stage1.json")["settings"]["aanet"]["max_steps"] == 30


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(env, tmp_path, monkeypatch):
    config = library_config(env, n_clusters=(6,), models_per_unit=6)  # 2 clusters per unit
    whole = run_stage1(
        env["sae"], tmp_path / "whole", config, device="cpu", workers=1, progress=False
    )
    record_units(monkeypatch, interrupt_at=3)
    with pytest.raises(KeyboardInterrupt):
        run_stage1(env["sae"], tmp_path / "cut", config, device="cpu", workers=1, progress=False)
    assert not (tmp_path / "cut" / "clusters_6").exists()  # only the hidden partial folder
    assert (tmp_path / "cut" / ".clusters_6.partial").is_dir()
    calls = record_units(monkeypatch)
    run_stage1(env["sae"], tmp_path / "cut", config, device="cpu", workers=1, progress=False)
    assert calls == [2]  # units 0 and 1 were finished: only unit 2 trains again
    for name in ("consolidated_metrics_n6.csv", "training_curves_n6.jsonl"):
        a = whole.save_dir / "clusters_6" / name
        assert a.read_bytes() == (tmp_path / "cut" / "clusters_6" / name).read_bytes(), name
    models = sorted(p.name for p in (whole.save_dir / "clusters_6").glob("*.pt"))
    assert models == sorted(p.name for p in (tmp_path / "cut" / "clusters_6").glob("*.pt"))
    assert not (tmp_path / "cut" / ".clusters_6.partial").exists()


def test_worker_processes_write_the_same_files(env, tmp_path):
    config = library_config(env, n_clusters=(6,), models_per_unit=6)
    one = run_stage1(env["sae"], tmp_path / "one", config, device="cpu", workers=1, progress=False)
    two = run_stage1(env["sae"], tmp_path / "two", config, device="cpu", workers=2,
                     progress=False)  # fmt: skip
    for name in ("consolidated_metrics_n6.csv", "training_curves_n6.jsonl"):
        a, b = (r.save_dir / "clusters_6" / name for r in (one, two))
        assert a.read_bytes() == b.read_bytes(), name
    for path in sorted((one.save_dir / "clusters_6").glob("*.pt")):
        a = torch.load(path, weights_only=True)["params"]
        b = torch.load(two.save_dir / "clusters_6" / path.name, weights_only=True)["params"]
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True)), path.name


def test_a_cluster_with_too_few_active_tokens_gets_rows_not_a_crash(run, env, tmp_path):
    out, _ = run
    clusters = tmp_path / "clusters"
    shutil.copytree(out / "latent_clusters" / "clusters_4", clusters / "clusters_4")
    metrics = clusters / "clusters_4" / "cluster_metrics.csv"
    columns, rows = read_rows(metrics)
    for row in rows:
        row["n_clusters_total"] = "5"
    rows.append({"n_clusters_total": "5", "cluster_id": "9", "n_latents": "2",
                 "latent_indices": " ".join(map(str, env["dead"])), "decoder_dir_rank": "2",
                 "cluster_recon_error": "0.0", "activation_pca_rank": "0"})  # fmt: skip
    with open(metrics, "w", newline="") as fh:
        writer = csv.DictWriter(fh, columns)
        writer.writeheader()
        writer.writerows(rows)
    config = library_config(env, n_clusters=(4,))
    result = run_stage1(env["sae"], tmp_path / "run", config, clusters_dir=clusters,
                        device="cpu", workers=1, progress=False)  # fmt: skip
    assert result.per_n[0].status_counts == {"ok": 12, "too_few_points": 3}
    _, rows = read_rows(tmp_path / "run" / "clusters_4" / "consolidated_metrics_n4.csv")
    dead = [r for r in rows if r["cluster_id"] == "9"]
    assert [r["aanet_k"] for r in dead] == ["2", "3", "4"]
    for r in dead:
        assert r["aanet_status"] == "too_few_points" and r["n_active_tokens"] == "0"
        for column in (
            "aanet_loss",
            "aanet_recon_loss",
            "aanet_archetypal_loss",
            "aanet_extrema_loss",
            "aanet_recon_loss_elbow_k",
            "k_differential",
        ):
            assert r[column] == "", column  # fmt: skip
        assert r["passes_quality_filters"] == "False"
    assert not list((tmp_path / "run" / "clusters_4").glob("aanet_cluster_9_*"))


# -- bad input ---------------------------------------------------------------------------------
def test_not_an_sae(env, tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "notes.txt").write_text("not an SAE\n")
    args = cli_args(env, tmp_path / "out")
    args[args.index("--sae") + 1] = str(folder)
    one_line_error(runner.invoke(app, args), "cfg.json")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "change,message",
    [
        ({"--n_clusters": "4,47"}, "--n-clusters 47 is larger than the 46 live latents"),
        ({"--n_clusters": "4,49"}, "--n-clusters 49 is larger than the SAE's 48 latents"),
        ({"--k_min": "1"}, "k_min must be >= 2"),
        ({"--k_min": "5"}, "k_min (5) must be <= k_max (4)"),
        ({"--aanet_max_steps": "0"}, "--max-steps must be a positive int"),
        ({"--models_per_unit": "many"}, "--models-per-unit must be 'auto' or an int"),
        ({"--clustering": "nosuch"}, "nosuch"),
        ({"--device": "tpu"}, "device must be 'auto', 'cpu' or 'cuda"),
        ({"--workers": "0"}, "--workers must be 'auto' or an int >= 1"),
        ({"--curve-every": "0"}, "curve_every must be an int >= 1"),
    ],
    ids=[
        "n>live",
        "n>d_sae",
        "k_min<2",
        "k_min>k_max",
        "steps",
        "units",
        "method",
        "device",
        "workers",
        "curve-every",
    ],  # fmt: skip
)
def test_bad_settings(env, tmp_path, change, message):
    args = cli_args(env, tmp_path / "out")
    for key, value in change.items():
        if key in args:
            args[args.index(key) + 1] = value
        else:
            args += [key, value]
    one_line_error(runner.invoke(app, args), message)
    assert not (tmp_path / "out").exists()


def test_unwritable_or_misplaced_save_dir(env, tmp_path):
    one_line_error(
        runner.invoke(app, cli_args(env, "/sys/featgeo-stage1-test")), "cannot be written"
    )
    (tmp_path / "file").write_text("x")
    one_line_error(runner.invoke(app, cli_args(env, tmp_path / "file")), "is a file")
    one_line_error(runner.invoke(app, cli_args(env, tmp_path / "file" / "in")), "a file")
    foreign = tmp_path / "foreign" / "clusters_4"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine\n")
    one_line_error(runner.invoke(app, cli_args(env, tmp_path / "foreign")), "did not write")
    assert (foreign / "notes.txt").read_text() == "mine\n"
    assert sorted(p.name for p in (tmp_path / "foreign").iterdir()) == ["clusters_4"]


def test_clusters_dir_without_the_requested_n(env, tmp_path):
    (tmp_path / "clusters").mkdir()
    result = runner.invoke(app, cli_args(env, tmp_path / "out", "--clusters-dir",
                                         str(tmp_path / "clusters")))  # fmt: skip
    one_line_error(result, "has no complete clusters_4 folder (missing clustering.json")
    assert not (tmp_path / "out").exists() and not list((tmp_path / "clusters").iterdir())


def test_clusters_changed_after_a_finished_run_need_force(run, env, tmp_path):
    out, _ = run
    clusters = tmp_path / "clusters"
    shutil.copytree(out / "latent_clusters" / "clusters_4", clusters / "clusters_4")
    args = cli_args(env, tmp_path / "run", "--clusters-dir", str(clusters), n="4")
    assert runner.invoke(app, args).exit_code == 0
    metrics = clusters / "clusters_4" / "cluster_metrics.csv"
    lines = metrics.read_text().splitlines(keepends=True)
    lines[1] = lines[1].rstrip("\n") + "0\n"  # cluster 0's activation_pca_rank, ten times
    metrics.write_text("".join(lines))
    one_line_error(runner.invoke(app, args), "changed since Stage 1 trained n_clusters=4")
    forced = runner.invoke(app, [*args, "--force"])
    assert forced.exit_code == 0, forced.output


def test_a_save_dir_in_use_by_another_process_is_refused(env, tmp_path):
    from featgeo.files import exclusive_dir

    out = tmp_path / "out"
    with exclusive_dir(out, "--save-dir"):  # as a running Stage 1 holds it
        one_line_error(runner.invoke(app, cli_args(env, out)), "another featgeo process is")
    assert not out.exists()


# -- what --force may remove, damaged records, refusals that change nothing ---------------------
def small_run(env, out, *extra):
    result = runner.invoke(app, cli_args(env, out, "--k_max", "4", *extra, n="4"))
    assert result.exit_code == 0, result.output
    return out


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_force_removes_only_what_stage1_wrote(env, tmp_path):
    out = small_run(env, tmp_path / "run")
    mine = {"clusters_128_backup/consolidated_metrics_n128.csv": "a,b\n",
            "clusters_128_backup/analysis.ipynb": "{}", "clusters_mine/data.txt": "x",
            "latent_clusters/notes.txt": "notes", "notes.md": "# mine"}  # fmt: skip
    for name, text in mine.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    changed = [a if a != "40" else "30" for a in cli_args(env, out, n="4")]
    assert runner.invoke(app, [*changed, "--force"]).exit_code == 0
    for name, text in mine.items():
        assert (out / name).read_text() == text, name
    assert read_json(out / "stage1.json")["settings"]["aanet"]["max_steps"] == 30


def test_force_with_bad_clusters_keeps_the_old_run(env, tmp_path, run):
    out = small_run(env, tmp_path / "run")
    before = snapshot(out)
    clusters = tmp_path / "clusters"
    shutil.copytree(run[0] / "latent_clusters" / "clusters_4", clusters / "clusters_4")
    info = read_json(clusters / "clusters_4" / "clustering.json")
    (clusters / "clusters_4" / "clustering.json").write_text(
        json.dumps({**info, "method": "spectral"})
    )
    args = cli_args(env, out, "--clusters-dir", str(clusters), "--force", n="4")
    one_line_error(runner.invoke(app, args), "were made with method spectral")
    (clusters / "clusters_4" / "clustering.json").write_text("[]")
    one_line_error(runner.invoke(app, args), "is not a clustering.json written by")
    assert snapshot(out) == before


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda i: [], "not a JSON object"),
        (lambda i: {**i, "completed": []}, "'completed' is not an object"),
        (lambda i: {**i, "completed": {"4": {}}}, "completed[4].n_clusters_found is missing"),
        (lambda i: {k: v for k, v in i.items() if k != "settings"}, "no settings"),
    ],
    ids=["list", "completed-list", "completed-empty", "no-settings"],
)
def test_damaged_stage1_json_is_one_line(env, tmp_path, edit, message):
    out = small_run(env, tmp_path / "run")
    path = out / "stage1.json"
    path.write_text(json.dumps(edit(read_json(path))))
    before = snapshot(out)
    one_line_error(runner.invoke(app, cli_args(env, out, n="4")), message)
    assert snapshot(out) == before


def test_refusals_and_reuse_leave_stage1_json_alone(env, tmp_path, run):
    clusters = tmp_path / "clusters"
    shutil.copytree(run[0] / "latent_clusters" / "clusters_4", clusters / "clusters_4")
    out = small_run(env, tmp_path / "run", "--clusters-dir", str(clusters))
    before = snapshot(out)
    again = runner.invoke(app, cli_args(env, out, "--clusters-dir", str(clusters), n="4"))
    assert again.exit_code == 0 and "(reused)" in again.output
    metrics = clusters / "clusters_4" / "cluster_metrics.csv"
    metrics.write_text(metrics.read_text().replace(",0.", ",1.", 1))
    one_line_error(runner.invoke(app, cli_args(env, out, "--clusters-dir", str(clusters), n="4")),
                   "changed since Stage 1 trained")  # fmt: skip
    assert snapshot(out) == before


def test_damaged_unit_records_are_trained_again(env, tmp_path, monkeypatch):
    config = library_config(env, n_clusters=(6,), models_per_unit=6)
    whole = run_stage1(env["sae"], tmp_path / "whole", config, device="cpu", workers=1,
                       progress=False)  # fmt: skip
    record_units(monkeypatch, interrupt_at=3)
    with pytest.raises(KeyboardInterrupt):
        run_stage1(env["sae"], tmp_path / "cut", config, device="cpu", workers=1, progress=False)
    units = tmp_path / "cut" / ".clusters_6.partial" / ".units"
    (units / "unit_00000.json").write_text("[]")
    record = read_json(units / "unit_00001.json")
    del record["records"][0]["final"]
    (units / "unit_00001.json").write_text(json.dumps(record))
    calls = record_units(monkeypatch)
    run_stage1(env["sae"], tmp_path / "cut", config, device="cpu", workers=1, progress=False)
    assert calls == [0, 1, 2]
    name = "consolidated_metrics_n6.csv"
    assert (whole.save_dir / "clusters_6" / name).read_bytes() == (
        tmp_path / "cut" / "clusters_6" / name
    ).read_bytes()


def test_a_resume_with_other_settings_and_no_record_starts_the_n_over(env, tmp_path, monkeypatch):
    config = library_config(env, n_clusters=(6,), models_per_unit=6)
    record_units(monkeypatch, interrupt_at=2)
    with pytest.raises(KeyboardInterrupt):
        run_stage1(env["sae"], tmp_path / "cut", config, device="cpu", workers=1, progress=False)
    (tmp_path / "cut" / "stage1.json").unlink()  # the record is gone: only the units know
    monkeypatch.setattr(executors, "run_unit", real_run_unit)
    other = library_config(env, n_clusters=(6,), models_per_unit=6,
                           aanet=AANetConfig(max_steps=30, early_stop_patience=20,
                                             smoothing_window=8))  # fmt: skip
    run_stage1(env["sae"], tmp_path / "cut", other, device="cpu", workers=1, progress=False)
    _, rows = read_rows(tmp_path / "cut" / "clusters_6" / "consolidated_metrics_n6.csv")
    assert max(int(r["aanet_steps"]) for r in rows) <= 30  # no unit of the 40-step run kept


def test_models_carry_their_cluster(run):
    from featgeo.archetypes import AANet

    out, _ = run
    net = AANet.load(out / "clusters_4" / "aanet_cluster_2_k3.pt")
    _, rows = read_rows(out / "clusters_4" / "consolidated_metrics_n4.csv")
    latents = next(r["latent_indices"] for r in rows if r["cluster_id"] == "2")
    extra = net.config_.extra
    assert (extra["n_clusters"], extra["cluster_id"], extra["k"]) == (4, 2, 3)
    assert extra["latent_indices"] == [int(v) for v in latents.split()]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--save-dir", ""], "--save-dir is empty"),
        (["--k_min", "3", "--k_max", "4"], "needs at least 3 values of k"),
    ],
    ids=["empty-save-dir", "two-ks"],
)
def test_more_bad_settings(env, tmp_path, args, message):
    one_line_error(runner.invoke(app, cli_args(env, tmp_path / "out", *args)), message)
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())


def test_truncated_cluster_metrics_and_folders_without_clustering_json(env, tmp_path, run):
    clusters = tmp_path / "clusters"
    shutil.copytree(run[0] / "latent_clusters" / "clusters_4", clusters / "clusters_4")
    metrics = clusters / "clusters_4" / "cluster_metrics.csv"
    metrics.write_text("".join(metrics.read_text().splitlines(keepends=True)[:3]))
    args = cli_args(env, tmp_path / "out", "--clusters-dir", str(clusters), n="4")
    one_line_error(runner.invoke(app, args), "lists 2 clusters but its n_clusters_total says 4")
    (clusters / "clusters_4" / "clustering.json").unlink()
    before = snapshot(clusters)
    one_line_error(runner.invoke(app, args), "missing clustering.json")
    assert snapshot(clusters) == before and not (tmp_path / "out").exists()


def test_cluster_columns_repeat_on_every_row_of_a_cluster_and_model_columns_differ(run):
    from featgeo.archetypes.consolidated import CLUSTER_COLUMNS, COLUMNS, MODEL_COLUMNS

    assert sorted(CLUSTER_COLUMNS + MODEL_COLUMNS) == sorted(COLUMNS)
    out, _ = run
    _, rows = read_rows(out / "clusters_6" / "consolidated_metrics_n6.csv")
    by_cluster = {}
    for row in rows:
        by_cluster.setdefault(row["cluster_id"], []).append(row)
    for group in by_cluster.values():
        for column in CLUSTER_COLUMNS:
            assert len({row[column] for row in group}) == 1, column
    assert len({row["aanet_k"] for row in rows if row["cluster_id"] == rows[0]["cluster_id"]}) > 1
