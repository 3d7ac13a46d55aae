"""``featgeo review`` on real runs (``review_inputs``: Stage 1, Stage 3 with vertex samples on a
hostile corpus, a sparsity report): the AANet data against independent recomputations from the
Stage 1 CSVs, the training-curve files and the vertex-sample records; a planted CSV whose
categories are worked out by hand; escaping of corpus text; the site written whole or not at
all; partial inputs; and every bad input as one line, exit code 2 and nothing written."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from featgeo.cli import app
from featgeo.files import read_json

runner = CliRunner()


@pytest.fixture(autouse=True)
def _env(review_inputs, monkeypatch):
    monkeypatch.setenv("FEATGEO_CACHE", str(review_inputs["cache"]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- helpers -----------------------------------------------------------------------------------
def invoke_ok(args) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def load_review_js(site: Path) -> dict:
    text = (site / "data" / "review.js").read_text(encoding="utf-8")
    prefix = "window.FEATGEO_REVIEW = "
    assert text.startswith(prefix) and text.endswith(";\n"), text[:80]
    return json.loads(text[len(prefix) : -2])


def load_cluster_js(site: Path, n: int, cid: int) -> dict:
    text = (site / "data" / "clusters" / f"n{n}" / f"c{cid}.js").read_text(encoding="utf-8")
    match = re.fullmatch(r"featgeoReview\.clusterLoaded\((\d+), (\d+), (.*)\);\n", text, re.S)
    assert match and (int(match[1]), int(match[2])) == (n, cid), text[:80]
    return json.loads(match[3])


def read_csv(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def stage1_clusters(stage1: Path, n: int) -> dict[int, list[dict]]:
    """Rows of Stage 1's CSV by cluster id (one row per k)."""
    by_id: dict[int, list[dict]] = defaultdict(list)
    for row in read_csv(stage1 / f"clusters_{n}" / f"consolidated_metrics_n{n}.csv"):
        by_id[int(row["cluster_id"])].append(row)
    return dict(by_id)


def sig(value, digits: int):
    """A number as the page shows it: ``digits`` significant digits (None when empty)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    x = float(value)
    return None if not math.isfinite(x) else float(f"{x:.{digits}g}")


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def one_line_error(result, *messages: str) -> str:
    """Exit code 2, one ``featgeo: error:`` line and nothing else, no traceback; every
    ``--option`` it names outside a quoted ``featgeo ...`` command is one of review's."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("featgeo: error:"), result.output
    line = lines[0]
    for message in messages:
        assert message in line, line
    review_options = {o for p in _review_command().params for o in (*p.opts, *p.secondary_opts)}
    for option in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", re.sub(r"`featgeo [^`]*`", "", line)):
        assert option in review_options, f"{line!r} names {option}, which review lacks"
    return line


def _review_command():
    from typer.main import get_command

    return get_command(app).commands["review"]


# -- the oracle of SPEC §3 ----------------------------------------------------------------------
class Criteria:
    """The selection options by hand (SPEC §3 defaults), with their CLI spelling."""

    def __init__(self, min_latents=2, min_pct=20.0, max_kdiff=1, monotonic=True, sigma_a=1.0,
                 sigma_bc=3.0):  # fmt: skip
        self.min_latents, self.min_pct, self.max_kdiff = min_latents, min_pct, max_kdiff
        self.monotonic, self.sigma_a, self.sigma_bc = monotonic, sigma_a, sigma_bc

    def options(self) -> list[str]:
        return ["--min-latents", str(self.min_latents), "--min-pct-decrease", str(self.min_pct),
                "--max-k-differential", str(self.max_kdiff),
                "--require-monotonic" if self.monotonic else "--no-require-monotonic",
                "--sigma-a", str(self.sigma_a), "--sigma-bc", str(self.sigma_bc)]  # fmt: skip

    def failures(self, cells: dict) -> list[str]:
        def number(name):
            cell = cells[name].strip()
            return float(cell) if cell else math.nan

        out = []
        if not int(cells["n_latents"]) >= self.min_latents:
            out.append("min_latents")
        if self.monotonic and not (
            cells["recon_is_monotonic"] == "True" and cells["arch_is_monotonic"] == "True"
        ):
            out.append("monotonic")
        if not (number("recon_pct_decrease") >= self.min_pct
                and number("arch_pct_decrease") >= self.min_pct):  # fmt: skip
            out.append("pct_decrease")
        if not number("k_differential") <= self.max_kdiff:
            out.append("k_differential")
        return out


FIXTURE_CRITERIA = Criteria(min_pct=0, max_kdiff=10, monotonic=False, sigma_a=0, sigma_bc=0)
"""The selection ``review_inputs`` ran Stage 3 and built its site with (its SELECT_OPTIONS)."""
CRITERIA = {
    "fixture": FIXTURE_CRITERIA,
    "defaults": Criteria(),
    "mixed": Criteria(
        min_latents=10, min_pct=0, max_kdiff=1, monotonic=True, sigma_a=0.5, sigma_bc=1
    ),  # fmt: skip
}


def expected_summary(stage1: Path, n: int, criteria: Criteria) -> dict:
    """Thresholds and per-cluster failures and categories, recomputed from the CSV."""
    clusters = stage1_clusters(stage1, n)
    cells = {cid: rows[0] for cid, rows in clusters.items()}
    failures = {cid: criteria.failures(c) for cid, c in cells.items()}
    passing = [cid for cid in cells if not failures[cid]]
    recon = np.array([float(cells[c]["aanet_recon_loss_elbow_strength"]) for c in passing])
    arch = np.array([float(cells[c]["aanet_archetypal_loss_elbow_strength"]) for c in passing])
    mu_r, s_r = (recon.mean(), recon.std(ddof=0)) if passing else (math.nan, math.nan)
    mu_a, s_a = (arch.mean(), arch.std(ddof=0)) if passing else (math.nan, math.nan)
    categories = {}
    for cid, c in cells.items():
        r = float(c["aanet_recon_loss_elbow_strength"])
        a = float(c["aanet_archetypal_loss_elbow_strength"])
        found = []
        if not failures[cid]:
            if r > mu_r + criteria.sigma_a * s_r and a > mu_a + criteria.sigma_a * s_a:
                found.append("A")
            if float(c["k_differential"]) == 0 and r > mu_r and a > mu_a:
                found.append("D")
            if r > mu_r + criteria.sigma_bc * s_r:
                found.append("B")
            if a > mu_a + criteria.sigma_bc * s_a:
                found.append("C")
        categories[cid] = found
    return {
        "ids": sorted(cells),
        "failures": failures,
        "n_passing": len(passing),
        "thresholds": {
            "recon": {
                "mu": mu_r,
                "sigma": s_r,
                "a": mu_r + criteria.sigma_a * s_r,
                "bc": mu_r + criteria.sigma_bc * s_r,
            },
            "arch": {
                "mu": mu_a,
                "sigma": s_a,
                "a": mu_a + criteria.sigma_a * s_a,
                "bc": mu_a + criteria.sigma_bc * s_a,
            },
        },  # fmt: skip
        "categories": categories,
    }


def assert_close(page_value, expected: float, what: str) -> None:
    if not math.isfinite(expected):
        assert page_value is None, what
    else:
        assert page_value == pytest.approx(expected, rel=1e-5, abs=1e-12), what


def check_page_against_csvs(site: Path, stage1: Path, criteria: Criteria) -> dict:
    """Every number and category of ``data/review.js`` against the CSVs; returns the page's
    chosen category by (n, id)."""
    data = load_review_js(site)
    assert data["n_clusters"] == [4, 6] == [s["n_clusters"] for s in data["summaries"]]
    assert data["criteria"]["sigma_a"] == criteria.sigma_a
    assert data["criteria"]["filters"] == {
        "min_latents": criteria.min_latents, "min_pct_decrease": criteria.min_pct,
        "max_k_differential": criteria.max_kdiff, "require_monotonic": criteria.monotonic,
    }  # fmt: skip
    assert data["criteria"]["sigma_bc"] == criteria.sigma_bc
    chosen = {}
    for summary in data["summaries"]:
        n = summary["n_clusters"]
        expected = expected_summary(stage1, n, criteria)
        clusters = stage1_clusters(stage1, n)
        assert [c["id"] for c in summary["clusters"]] == expected["ids"]
        assert summary["n_passing"] == expected["n_passing"]
        for axis in ("recon", "arch"):
            for key in ("mu", "sigma", "a", "bc"):
                assert_close(summary["thresholds"][axis][key], expected["thresholds"][axis][key],
                             f"n={n} {axis} {key}")  # fmt: skip
        for entry in summary["clusters"]:
            cid = entry["id"]
            rows = sorted(clusters[cid], key=lambda r: int(r["aanet_k"]))
            cells = rows[0]
            what = f"n={n} cluster {cid}"
            assert entry["latents"] == [int(v) for v in cells["latent_indices"].split()], what
            assert entry["n_latents"] == int(cells["n_latents"]), what
            assert entry["recon_strength"] == sig(cells["aanet_recon_loss_elbow_strength"], 6)
            assert entry["arch_strength"] == sig(cells["aanet_archetypal_loss_elbow_strength"], 6)
            assert entry["recon_elbow_k"] == int(cells["aanet_recon_loss_elbow_k"]), what
            assert entry["arch_elbow_k"] == int(cells["aanet_archetypal_loss_elbow_k"]), what
            assert entry["k_differential"] == int(cells["k_differential"]), what
            assert entry["recon_pct_decrease"] == sig(cells["recon_pct_decrease"], 4), what
            assert entry["arch_pct_decrease"] == sig(cells["arch_pct_decrease"], 4), what
            assert entry["decoder_rank"] == int(cells["decoder_dir_rank"]), what
            assert entry["pca_rank"] == int(cells["activation_pca_rank"]), what
            assert entry["ks"] == [int(r["aanet_k"]) for r in rows], what
            assert entry["recon"] == [sig(r["aanet_recon_loss"], 6) for r in rows], what
            assert entry["archetypal"] == [sig(r["aanet_archetypal_loss"], 6) for r in rows]
            assert entry["failed_filters"] == expected["failures"][cid], what
            assert entry["categories"] == expected["categories"][cid], what
            cats = expected["categories"][cid]
            assert entry["category"] == (cats[0] if cats else None), what
            chosen[(n, cid)] = entry["category"]
    return chosen


def selected_by_cli(stage1: Path, criteria: Criteria, tmp_path: Path) -> dict:
    """``featgeo aanet select`` with the same options: {(n, id): category} ({} when it
    selects nothing)."""
    table = tmp_path / f"selection-{len(list(tmp_path.glob('selection-*')))}.csv"
    result = runner.invoke(app, ["aanet", "select", "--csv-dir", str(stage1),
                                 "--n-clusters-list", "4,6", *criteria.options(),
                                 "--out", str(table)])  # fmt: skip
    if result.exit_code == 2 and "No clusters selected" in result.output:
        return {}
    assert result.exit_code == 0, result.output
    return {(int(r["n_clusters"]), int(r["cluster_id"])): r["category"] for r in read_csv(table)}


@pytest.fixture(scope="module")
def sites(review_inputs, tmp_path_factory) -> dict[str, Path]:
    """The fixture's site and AANet-only sites of the Stage 1 run for the other criteria."""
    root = tmp_path_factory.mktemp("review-sites")
    out = {"fixture": review_inputs["site"]}
    for name, criteria in CRITERIA.items():
        if name != "fixture":
            out[name] = root / name
            invoke_ok(["review", "--stage1-dir", review_inputs["stage1"], *criteria.options(),
                       "--out", out[name]])  # fmt: skip
    return out


# -- 1. the AANet page's data --------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CRITERIA))
def test_the_scatter_data_agrees_with_the_csvs_and_with_select(name, sites, review_inputs,
                                                               tmp_path):  # fmt: skip
    criteria = CRITERIA[name]
    stage1 = review_inputs["stage1"]
    chosen = check_page_against_csvs(sites[name], stage1, criteria)
    selected = selected_by_cli(stage1, criteria, tmp_path)
    assert {key: cat for key, cat in chosen.items() if cat} == selected
    if name == "fixture":  # Stage 3 ran on this selection: its clusters are on the page
        assert len(selected) >= 2
        rows = read_csv(review_inputs["stage3"] / "selection.csv")
        assert {(int(r["n_clusters"]), int(r["cluster_id"])): r["category"] for r in rows} == (
            selected
        )


def test_the_criteria_variants_differ(sites):
    """The variants test different things: under "mixed" some clusters pass the filters and
    some fail them, under "fixture" every one passes."""

    def summaries(name):
        return load_review_js(sites[name])["summaries"]

    assert [s["n_passing"] for s in summaries("fixture")] == [4, 6]
    entries = [c for s in summaries("mixed") for c in s["clusters"]]
    failed = {name for c in entries for name in c["failed_filters"]}
    assert failed, "no cluster fails a filter under 'mixed'"
    assert 0 < sum(s["n_passing"] for s in summaries("mixed")) < len(entries)


# A planted copy of the Stage 1 run: strengths, elbows and filter cells chosen so that the
# categories are known by hand (options: SPEC defaults, sigma_a 0.5, sigma_bc 1).
# n=6: cluster 0 fails the monotonic filter with huge strengths (left out of mu and sigma);
# clusters 1..5 pass (1 at exactly pct_decrease 20, 3 at exactly k_differential 1).
# recon strengths 0 2 3 0 3 -> mu 1.6, sigma sqrt(1.84) = 1.3565 (ddof=1 would be 1.5166);
# arch strengths 0 2 3 3 0 -> the same. mu + 0.5 sigma = 2.278, mu + 1 sigma = 2.956.
PLANTED_6 = {  # id: (recon strength, arch strength, recon elbow k, arch elbow k, filters)
    0: (100.0, 100.0, 3, 2, {"arch_is_monotonic": "False"}),
    1: (0.0, 0.0, 3, 2, {"recon_pct_decrease": "20.0"}),
    2: (2.0, 2.0, 3, 3, {}),  # k_differential 0, both > mu, not > mu + 0.5 sigma: D
    3: (3.0, 3.0, 4, 3, {}),  # A (also B and C)
    4: (0.0, 3.0, 3, 2, {}),  # C
    5: (3.0, 0.0, 3, 2, {}),  # B (3 > 2.956; with ddof=1 3 < 3.117: nothing)
}
PLANTED_6_CATEGORIES = {0: [], 1: [], 2: ["D"], 3: ["A", "B", "C"], 4: ["C"], 5: ["B"]}
# n=4: clusters 0 (pct_decrease 19.99) and 1 (k_differential 2) fail with huge strengths; 2 and
# 3 pass with equal strengths, so that sigma = 0 and both sit exactly on every threshold: no
# category (">" in SPEC §3, not ">=").
PLANTED_4 = {
    0: (100.0, 100.0, 3, 3, {"arch_pct_decrease": "19.99"}),
    1: (100.0, 100.0, 4, 2, {}),
    2: (0.5, 0.5, 3, 3, {}),
    3: (0.5, 0.5, 3, 3, {}),
}
PLANTED_CRITERIA = Criteria(sigma_a=0.5, sigma_bc=1)


def plant(stage1: Path, folder: Path) -> Path:
    shutil.copytree(stage1, folder)
    for n, plan in ((4, PLANTED_4), (6, PLANTED_6)):
        path = folder / f"clusters_{n}" / f"consolidated_metrics_n{n}.csv"
        rows = read_csv(path)
        for row in rows:
            recon, arch, recon_k, arch_k, cells = plan[int(row["cluster_id"])]
            row.update({
                "aanet_recon_loss_elbow_strength": repr(recon),
                "aanet_archetypal_loss_elbow_strength": repr(arch),
                "aanet_recon_loss_elbow_k": str(recon_k),
                "aanet_archetypal_loss_elbow_k": str(arch_k),
                "k_differential": str(abs(recon_k - arch_k)),
                "recon_is_monotonic": "True", "arch_is_monotonic": "True",
                "recon_pct_decrease": "50.0", "arch_pct_decrease": "50.0",
            })  # fmt: skip
            row.update(cells)
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return folder


@pytest.fixture(scope="module")
def planted(review_inputs, tmp_path_factory) -> Path:
    return plant(review_inputs["stage1"], tmp_path_factory.mktemp("planted") / "stage1")


def test_planted_categories_worked_out_by_hand(planted, tmp_path):
    site = tmp_path / "site"
    invoke_ok(["review", "--stage1-dir", planted, *PLANTED_CRITERIA.options(), "--out", site])
    chosen = check_page_against_csvs(site, planted, PLANTED_CRITERIA)
    data = {s["n_clusters"]: s for s in load_review_js(site)["summaries"]}
    six = data[6]
    assert six["n_passing"] == 5
    sigma = math.sqrt(1.84)
    for axis in ("recon", "arch"):
        t = six["thresholds"][axis]
        assert t["mu"] == pytest.approx(1.6) and t["sigma"] == pytest.approx(sigma, rel=1e-5)
        assert t["a"] == pytest.approx(1.6 + 0.5 * sigma, rel=1e-5)
        assert t["bc"] == pytest.approx(1.6 + sigma, rel=1e-5)
    by_id = {c["id"]: c for c in six["clusters"]}
    assert {cid: c["categories"] for cid, c in by_id.items()} == PLANTED_6_CATEGORIES
    assert by_id[0]["failed_filters"] == ["monotonic"]
    assert all(not by_id[cid]["failed_filters"] for cid in range(1, 6))
    four = data[4]
    assert four["n_passing"] == 2
    assert four["thresholds"]["recon"] == {"mu": 0.5, "sigma": 0.0, "a": 0.5, "bc": 0.5}
    failed = {c["id"]: c["failed_filters"] for c in four["clusters"]}
    assert failed == {0: ["pct_decrease"], 1: ["k_differential"], 2: [], 3: []}
    assert all(c["category"] is None for c in four["clusters"])
    assert {k: v for k, v in chosen.items() if v} == {(6, 2): "D", (6, 3): "A", (6, 4): "C",
                                                      (6, 5): "B"}  # fmt: skip
    assert selected_by_cli(planted, PLANTED_CRITERIA, tmp_path) == {
        (6, 3): "A", (6, 2): "D", (6, 5): "B", (6, 4): "C"}  # fmt: skip


# -- 2. per-cluster files: training curves and vertex samples -----------------------------------
def stage3_rows(stage3: Path) -> dict[tuple[int, int], dict]:
    return {(int(r["n_clusters"]), int(r["cluster_id"])): r
            for r in read_csv(stage3 / "selection.csv")}  # fmt: skip


def samples_file(stage3: Path, row: dict) -> Path:
    stem = f"cluster_{row['cluster_id']}_k{row['refit_k']}_category{row['category']}"
    return stage3 / f"n{row['n_clusters']}" / f"{stem}_vertex_samples.jsonl"


def test_training_curves_equal_stage1s(review_inputs):
    site, stage1 = review_inputs["site"], review_inputs["stage1"]
    for n in (4, 6):
        ids = sorted(stage1_clusters(stage1, n))
        assert sorted(p.name for p in (site / "data" / "clusters" / f"n{n}").iterdir()) == sorted(
            f"c{cid}.js" for cid in ids
        )
        expected: dict[int, dict[str, dict]] = defaultdict(dict)
        lines = (stage1 / f"clusters_{n}" / f"training_curves_n{n}.jsonl").read_text()
        for line in lines.splitlines():
            record = json.loads(line)
            expected[record["cluster_id"]][str(record["k"])] = {
                "step": record["step"],
                **{name: [sig(v, 5) for v in record[name]]
                   for name in ("loss", "recon", "archetypal")},
            }  # fmt: skip
        assert sorted(expected) == ids
        for cid in ids:
            training = load_cluster_js(site, n, cid)["training"]
            assert training == expected[cid], (n, cid)
            assert sorted(training, key=int) == ["2", "3", "4"]


def nearest(record: dict) -> float:
    return min(t["distance"] for t in record["triggers"])


def check_vertex_samples(site: Path, stage3: Path, tokenizer, shown: int) -> int:
    """The page's vertex samples of every Stage 3 cluster against its records; returns the
    number of samples checked."""
    rows = stage3_rows(stage3)
    checked = 0
    data = load_review_js(site)
    entries = {(s["n_clusters"], c["id"]): c for s in data["summaries"] for c in s["clusters"]}
    for key, entry in entries.items():
        detail = load_cluster_js(site, *key)
        if key not in rows:
            assert "stage3" not in entry and "vertex_samples" not in detail, key
            continue
        row = rows[key]
        assert entry["stage3"] == {"category": row["category"], "refit_k": int(row["refit_k"]),
                                   "samples": True}  # fmt: skip
        records = [json.loads(line) for line in samples_file(stage3, row).read_text().splitlines()]
        stats = read_json(
            samples_file(stage3, row).with_name(
                samples_file(stage3, row).name.replace(
                    "_vertex_samples.jsonl", "_vertex_stats.json"
                )
            )
        )
        page = detail["vertex_samples"]
        assert [v["vertex"] for v in page["vertices"]] == list(range(int(row["refit_k"])))
        assert page["stats"]["samples_per_vertex"] == stats["samples_per_vertex"]
        for vertex in page["vertices"]:
            v = vertex["vertex"]
            mine = [r for r in records if r["vertex"] == v]
            assert vertex["records"] == len(mine), (key, v)
            assert vertex["triggers"] == stats["vertices"][v]["triggers"]
            want = min(shown, len(mine)) if shown else len(mine)
            samples = vertex["samples"]
            assert len(samples) == want, (key, v)
            by_chunk = {(r["doc_index"], r["chunk_index"]): r for r in mine}
            picked = [by_chunk[(s["doc_index"], s["chunk_index"])] for s in samples]
            # nearest first, and none left out is nearer (up to the page's 4-digit rounding)
            distances = [nearest(r) for r in picked]
            assert [s["nearest"] for s in samples] == sorted(s["nearest"] for s in samples)
            for s, r in zip(samples, picked, strict=True):
                assert s["nearest"] == pytest.approx(nearest(r), abs=6e-5)
            left_out = [nearest(r) for r in mine if r not in picked]
            assert not left_out or max(distances) <= min(left_out) + 1e-4, (key, v)
            order = sorted(mine, key=nearest)[:want]
            gaps = [nearest(b) - nearest(a) for a, b in zip(order, order[1:], strict=False)]
            if all(gap > 1e-4 for gap in gaps):  # no near tie: exactly the nearest, in order
                assert picked == order, (key, v)
            for s, r in zip(samples, picked, strict=True):
                assert s["document"] == r["document"]
                assert "".join(s["pieces"]) == tokenizer.decode(r["token_ids"]) == r["text"]
                assert len(s["pieces"]) == len(r["token_ids"])
                assert [t["position"] for t in s["triggers"]] == [
                    t["position"] for t in r["triggers"]]  # fmt: skip
                for t, rt in zip(s["triggers"], r["triggers"], strict=True):
                    assert t["distance"] == sig(rt["distance"], 4)
                    assert s["pieces"][t["position"]] == rt["word"]
                checked += 1
    return checked


@pytest.fixture(scope="module")
def tokenizer(review_inputs):
    from featgeo.models.loading import load_tokenizer

    return load_tokenizer(str(review_inputs["model"]))


def test_vertex_samples_are_the_nearest_records(review_inputs, tokenizer):
    site, stage3 = review_inputs["site"], review_inputs["stage3"]
    assert load_review_js(site)["samples_shown"] == review_inputs["samples_shown"] == 2
    assert review_inputs["quota"] > review_inputs["samples_shown"]  # a real choice is made
    checked = check_vertex_samples(site, stage3, tokenizer, review_inputs["samples_shown"])
    assert checked >= 2 * len(stage3_rows(stage3))


def test_samples_shown_zero_shows_every_record(review_inputs, tokenizer, tmp_path):
    from featgeo.archetypes.quality import QualityFilters
    from featgeo.archetypes.selection import SelectionCriteria
    from featgeo.reports.review import build_review

    criteria = SelectionCriteria(
        filters=QualityFilters(min_pct_decrease=0.0, max_k_differential=10,
                               require_monotonic=False),
        sigma_a=0.0, sigma_bc=0.0)  # fmt: skip
    site = tmp_path / "all"
    build_review(site, stage1_dir=review_inputs["stage1"], stage3_dir=review_inputs["stage3"],
                 criteria=criteria, samples_shown=0)  # fmt: skip
    stage3 = review_inputs["stage3"]
    total = sum(len(samples_file(stage3, r).read_text().splitlines())
                for r in stage3_rows(stage3).values())  # fmt: skip
    assert check_vertex_samples(site, stage3, tokenizer, 0) == total > 0


# -- 3. escaping -----------------------------------------------------------------------------------
def test_corpus_text_reaches_the_data_escaped_and_never_the_html(review_inputs):
    site, hostile = review_inputs["site"], review_inputs["hostile"]
    data_files = sorted((site / "data").rglob("*.js"))
    assert len(data_files) == 1 + 4 + 6
    for path in data_files:
        text = path.read_text(encoding="utf-8")
        assert "<" not in text, path  # every "<" of the corpus is \u003c
        assert "\u2028" not in text and "\u2029" not in text
    # the hostile line is in every sample shown (it follows every sentence), intact
    samples = [s for n in (4, 6) for cid in range(n)
               for v in load_cluster_js(site, n, cid).get("vertex_samples", {}).get("vertices", [])
               for s in v["samples"]]  # fmt: skip
    assert samples and all(hostile in "".join(s["pieces"]) for s in samples)
    assert all(s["document"].endswith(review_inputs["title_markup"]) for s in samples)
    for page in sorted(site.glob("*.html")):
        text = page.read_text(encoding="utf-8")
        assert "__pwned" not in text and "onerror" not in text and "doc0" not in text, page
        assert text.count("<script") == text.count('<script src="'), page


def test_the_data_json_is_escaped_by_to_js():
    from featgeo.reports.review import to_js

    hostile = '</script><script>alert(1)</script>\u2028x\u2029"'
    text = to_js("X", {"t": hostile})
    assert "<" not in text and "\u2028" not in text and "\u2029" not in text
    assert json.loads(text[len("window.X = ") : -2]) == {"t": hostile}


# -- 4. written whole or not at all --------------------------------------------------------------
def build(out: Path, review_inputs) -> None:
    from featgeo.archetypes.quality import QualityFilters
    from featgeo.archetypes.selection import SelectionCriteria
    from featgeo.reports.review import build_review

    criteria = SelectionCriteria(
        filters=QualityFilters(min_pct_decrease=0.0, max_k_differential=10,
                               require_monotonic=False),
        sigma_a=0.0, sigma_bc=0.0)  # fmt: skip
    build_review(out, stage1_dir=review_inputs["stage1"], stage3_dir=review_inputs["stage3"],
                 sparsity_report=review_inputs["report"], criteria=criteria,
                 samples_shown=2)  # fmt: skip


@pytest.mark.parametrize("crash", [RuntimeError, KeyboardInterrupt])
def test_a_failed_build_leaves_the_old_site_untouched(review_inputs, tmp_path, monkeypatch, crash):
    import featgeo.reports.review as module

    out = tmp_path / "parent" / "site"
    build(out, review_inputs)
    before = files(out)
    assert "index.html" in before and "data/review.js" in before
    siblings = sorted(p.name for p in out.parent.iterdir())
    real = module.vertex_samples
    calls = []

    def crash_on_the_second_cluster(*args, **kwargs):
        calls.append(sorted(p.relative_to(out.parent).as_posix()
                            for p in out.parent.rglob("*") if p.is_file()))  # fmt: skip
        if len(calls) == 2:
            raise crash("crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "vertex_samples", crash_on_the_second_cluster)
    with pytest.raises(crash):
        build(out, review_inputs)
    # the crash came midway: files of the new site had been written beside the old one
    assert any(".partial/data/clusters/" in p for p in calls[-1])
    assert any("vendor/plotly.min.js" in p and p.startswith(".") for p in calls[-1])
    assert files(out) == before
    assert sorted(p.name for p in out.parent.iterdir()) == siblings == ["site"]
    fresh = tmp_path / "fresh" / "site"
    (tmp_path / "fresh").mkdir()
    calls.clear()
    with pytest.raises(crash):
        build(fresh, review_inputs)
    assert not list((tmp_path / "fresh").iterdir())


def test_a_rebuild_replaces_the_site_whole(review_inputs, tmp_path):
    out = tmp_path / "site"
    invoke_ok([*review_inputs["site_args"][:-1], out])
    assert files(out).keys() == files(review_inputs["site"]).keys()
    (out / "data" / "clusters" / "n4" / "c99.js").write_text("stale")
    invoke_ok(["review", "--stage1-dir", review_inputs["stage1"], "--out", out])
    assert not (out / "data" / "clusters" / "n4" / "c99.js").exists()
    assert not (out / "sparsity.html").exists() and (out / "aanet.html").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]


def test_the_cli_site_matches_the_library_site(review_inputs, tmp_path):
    """Same inputs, same options: the same bytes."""
    out = tmp_path / "site"
    build(out, review_inputs)
    a, b = files(out), files(review_inputs["site"])
    assert a.keys() == b.keys()
    for name in a:
        assert a[name] == b[name], name


# -- 5. partial inputs ---------------------------------------------------------------------------
def top_level(site: Path) -> list[str]:
    return sorted(p.name for p in site.iterdir())


def test_stage1_alone(review_inputs, tmp_path):
    out = tmp_path / "site"
    text = invoke_ok(["review", "--stage1-dir", review_inputs["stage1"],
                      *review_inputs["select_options"], "--out", out])  # fmt: skip
    assert "Wrote index.html, aanet.html to" in " ".join(text.split())
    assert sorted(p.name for p in out.glob("*.html")) == ["aanet.html", "index.html"]
    assert read_json(out / "review.json")["pages"] == ["aanet.html"]
    data, full = load_review_js(out), load_review_js(review_inputs["site"])
    assert data["stage3"] is False and full["stage3"] is True
    for summary in full["summaries"]:
        for entry in summary["clusters"]:
            entry.pop("stage3", None)
    assert data["summaries"] == full["summaries"]
    for n in (4, 6):
        for cid in range(n):
            detail = load_cluster_js(out, n, cid)
            assert list(detail) == ["training"]
    index = (out / "index.html").read_text()
    assert 'href="sparsity.html"' not in index and 'href="aanet.html"' in index


def test_sparsity_report_alone(review_inputs, tmp_path):
    out = tmp_path / "site"
    report = review_inputs["report"]
    text = invoke_ok(["review", "--sparsity-report", report, "--out", out])
    assert "Wrote index.html, sparsity.html to" in " ".join(text.split())
    assert sorted(p.name for p in out.glob("*.html")) == ["index.html", "sparsity.html"]
    assert not (out / "data").exists()
    page = (out / "sparsity.html").read_text(encoding="utf-8")
    original = (report / "report.html").read_text(encoding="utf-8")
    tables = re.findall(r"<table.*?</table>", original, re.S)
    assert len(tables) >= 2 and all(t in page for t in tables)
    figures = re.findall(r"data:image/png;base64,[A-Za-z0-9+/=]+", original)
    assert len(figures) >= 4 and re.findall(r"data:image/png;base64,[A-Za-z0-9+/=]+", page) == (
        figures
    )
    assert "Block coherence and nearest-neighbour Hamming distance" in page  # the scan section
    h1 = re.search(r"<h1>(.*?)</h1>", original, re.S)[1]
    assert h1 not in page and page.count("<h1>") == 1 and "<h1>Sparsity patterns</h1>" in page
    assert (review_inputs["site"] / "sparsity.html").read_text(encoding="utf-8").count(
        "data:image/png;base64,") == len(figures)  # fmt: skip


def test_the_site_is_self_contained(review_inputs):
    site = review_inputs["site"]
    assert top_level(site) == ["aanet.html", "assets", "data", "index.html", "review.json",
                               "sparsity.html", "vendor"]  # fmt: skip
    for page in site.glob("*.html"):
        text = page.read_text(encoding="utf-8")
        for ref in re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)""", text):
            if ref.startswith("data:"):
                continue
            assert "//" not in ref and (site / ref).is_file(), (page.name, ref)
    assert (site / "vendor" / "plotly-LICENSE.txt").is_file()


# -- 6. bad inputs ---------------------------------------------------------------------------------
def review(*args) -> list[str]:
    return ["review", *[str(a) for a in args]]


@pytest.fixture(scope="module")
def other_stage1(review_inputs, tmp_path_factory) -> Path:
    """Stage 1 again on the same inputs with another seed (and fewer, smaller steps)."""
    out = tmp_path_factory.mktemp("other") / "stage1"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEATGEO_CACHE", str(review_inputs["cache"]))
        mp.setenv("HF_HUB_OFFLINE", "1")
        invoke_ok(["aanet", "stage1", "--sae", review_inputs["sae"], "--model",
                   review_inputs["model"], "--corpus", review_inputs["corpus"], "--save-dir", out,
                   "--n-clusters", "4,6", "--k-min", "2", "--k-max", "4", "--max-steps", "10",
                   "--batch-tokens", "256",
                   "--context-size", "64", "--store-tokens", "2000", "--device", "cpu",
                   "--workers", "1", "--models-per-unit", "6", "--seed", "1"])  # fmt: skip
    return out


def test_a_stage1_folder_without_csvs(review_inputs, tmp_path):
    out = tmp_path / "out"
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(runner.invoke(app, review("--stage1-dir", empty, "--out", out)),
                   "holds no Stage 1 CSV", "featgeo aanet stage1")  # fmt: skip
    for other in (review_inputs["stage3"], review_inputs["corpus"], review_inputs["report"]):
        one_line_error(runner.invoke(app, review("--stage1-dir", other, "--out", out)),
                       f"--stage1-dir '{other}' holds no Stage 1 CSV")  # fmt: skip
    one_line_error(runner.invoke(app, review("--stage1-dir", tmp_path / "nope", "--out", out)),
                   "is not a folder")  # fmt: skip
    assert not out.exists()


def test_a_stage3_run_of_another_stage1_run(review_inputs, other_stage1, planted, tmp_path):
    out = tmp_path / "out"
    for stage1 in (other_stage1, planted):
        result = runner.invoke(app, review("--stage1-dir", stage1, "--stage3-dir",
                                           review_inputs["stage3"], "--out", out))  # fmt: skip
        one_line_error(result, "was made from another Stage 1 run",
                       "pass the --stage1-dir that Stage 3 was run on")  # fmt: skip
    assert not out.exists()
    assert not list(tmp_path.iterdir())


def test_an_unwritable_out(review_inputs, tmp_path):
    """As root chmod does not stop writes: /sys refuses them for everyone."""
    result = runner.invoke(app, review("--stage1-dir", review_inputs["stage1"], "--out",
                                       "/sys/featgeo-review-test"))  # fmt: skip
    one_line_error(result, "--out '/sys/featgeo-review-test' cannot be written")
    (tmp_path / "file").write_text("x")
    for out, message in ((tmp_path / "file", "is a file"), (tmp_path / "file" / "in", "a file")):
        result = runner.invoke(app, review("--stage1-dir", review_inputs["stage1"], "--out", out))
        one_line_error(result, message)
    assert (tmp_path / "file").read_text() == "x"


def test_missing_or_lone_options(review_inputs, tmp_path):
    out = tmp_path / "out"
    one_line_error(runner.invoke(app, review("--stage3-dir", review_inputs["stage3"], "--out",
                                             out)),
                   "--stage3-dir needs --stage1-dir")  # fmt: skip
    one_line_error(runner.invoke(app, review("--stage3-dir", review_inputs["stage3"],
                                             "--sparsity-report", review_inputs["report"],
                                             "--out", out)),
                   "--stage3-dir needs --stage1-dir")  # fmt: skip
    one_line_error(runner.invoke(app, review("--out", out)), "nothing to review",
                   "--stage1-dir", "--sparsity-report")  # fmt: skip
    one_line_error(runner.invoke(app, review("--stage1-dir", review_inputs["stage1"],
                                             "--samples-shown", "-1", "--out", out)),
                   "--samples-shown must be an integer >= 0, got -1")  # fmt: skip
    assert not out.exists()


def test_a_sparsity_report_that_is_not_one(review_inputs, tmp_path):
    out = tmp_path / "out"
    scan = review_inputs["report"].parent / "scan"
    for bad in (scan, review_inputs["stage1"], tmp_path / "missing"):
        result = runner.invoke(app, review("--sparsity-report", bad, "--out", out))
        one_line_error(result, f"--sparsity-report '{bad}' is not a featgeo report",
                       "`featgeo hamming report")  # fmt: skip
    half = tmp_path / "half"
    half.mkdir()
    (half / "report.html").write_text("<html><body><h1>x</h1></body></html>")
    one_line_error(runner.invoke(app, review("--sparsity-report", half, "--out", out)),
                   "is not a featgeo report")  # fmt: skip
    assert not out.exists()


def test_an_out_folder_of_someone_elses_files(review_inputs, tmp_path):
    out = tmp_path / "mine"
    (out / "data").mkdir(parents=True)
    (out / "index.html").write_text("my own page")
    (out / "data" / "review.js").write_text("my own script")
    before = files(out)
    result = runner.invoke(app, review("--stage1-dir", review_inputs["stage1"], "--out", out))
    one_line_error(result, f"--out '{out}' already holds files that featgeo did not write")
    assert files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_a_site_or_a_marker_beside_someone_elses_files_is_never_replaced(review_inputs, tmp_path):
    """A ``review.json`` alone does not make a folder a site to replace: a user's file in an
    earlier site, or beside a file of that name, would be deleted by the rebuild."""
    out = tmp_path / "site"
    invoke_ok(review("--sparsity-report", review_inputs["report"], "--out", out))
    (out / "notes.txt").write_text("mine")
    (out / "mythesis").mkdir()
    before = files(out)
    result = runner.invoke(app, review("--sparsity-report", review_inputs["report"], "--out", out))
    one_line_error(result, f"--out '{out}' is an earlier featgeo output but also holds files "
                   "featgeo did not write there (mythesis, notes.txt)")  # fmt: skip
    assert files(out) == before and (out / "notes.txt").read_text() == "mine"
    other = tmp_path / "other"
    other.mkdir()
    (other / "review.json").write_text('{"reviewer": "bob"}')
    (other / "thesis.tex").write_text("x")
    result = runner.invoke(
        app, review("--sparsity-report", review_inputs["report"], "--out", other)
    )
    one_line_error(result, "(thesis.tex)")
    assert (other / "thesis.tex").read_text() == "x"


def test_an_unfinished_or_unreadable_stage3_run(review_inputs, tmp_path):
    out = tmp_path / "out"
    running = tmp_path / "running"
    shutil.copytree(review_inputs["stage3"], running)
    info = read_json(running / "stage3.json")
    info["status"] = "running"
    (running / "stage3.json").write_text(json.dumps(info))
    args = ("--stage1-dir", review_inputs["stage1"], "--out", out)
    one_line_error(runner.invoke(app, review("--stage3-dir", running, *args)),
                   "holds an unfinished Stage 3 run", "`featgeo aanet stage3`")  # fmt: skip
    (running / "stage3.json").write_text("{not json")
    one_line_error(runner.invoke(app, review("--stage3-dir", running, *args)),
                   "stage3.json is not readable")  # fmt: skip
    one_line_error(runner.invoke(app, review("--stage3-dir", review_inputs["report"], *args)),
                   "is not a Stage 3 run (no stage3.json)")  # fmt: skip
    assert not out.exists()


def test_a_stage3_run_missing_a_clusters_samples(review_inputs, tmp_path):
    out = tmp_path / "out"
    broken = tmp_path / "stage3"
    shutil.copytree(review_inputs["stage3"], broken)
    row = next(iter(stage3_rows(broken).values()))
    samples_file(broken, row).unlink()
    one_line_error(runner.invoke(app, review("--stage1-dir", review_inputs["stage1"],
                                             "--stage3-dir", broken, "--out", out)),
                   "is missing from the Stage 3 run")  # fmt: skip
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage3"]


# -- damaged or foreign inputs found by a fresh user ---------------------------------------------
def _damaged_stage3(review_inputs, tmp_path, edit) -> Path:
    """A copy of the fixture's Stage 3 run with ``edit(records_path)`` applied to the first
    selected cluster's vertex samples."""
    copy = tmp_path / "stage3"
    shutil.copytree(review_inputs["stage3"], copy)
    edit(sorted(copy.glob("n*/cluster_*_vertex_samples.jsonl"))[0])
    return copy


def test_vertex_samples_that_disagree_with_their_stats_or_the_tokenizer(review_inputs, tmp_path):
    out = tmp_path / "out"

    def empty(path):
        path.write_text("")

    def alien_token(path):
        lines = path.read_text().splitlines()
        record = json.loads(lines[0])
        record["token_ids"][3] = 10**9
        path.write_text("\n".join([json.dumps(record), *lines[1:]]) + "\n")

    for edit, message in ((empty, "records of vertex"), (alien_token, "has token id 1000000000")):
        stage3 = _damaged_stage3(review_inputs, tmp_path / edit.__name__, edit)
        result = runner.invoke(app, review("--stage1-dir", review_inputs["stage1"],
                                           "--stage3-dir", stage3, "--out", out))  # fmt: skip
        one_line_error(result, message, "--force")
        assert not out.exists()


def test_a_character_split_over_byte_tokens_is_shown_whole(review_inputs):
    """Byte-level BPE splits 'ř' into two tokens, each decoding to U+FFFD alone; the pieces
    give the character whole to the first and still join to the text."""
    from transformers import AutoTokenizer

    from featgeo.reports.review import _Pieces

    tokenizer = AutoTokenizer.from_pretrained(review_inputs["model"])
    text = "Jiří Trnka, naïve café"
    ids = tokenizer.encode(text, add_special_tokens=False)
    alone = [tokenizer.decode([i]) for i in ids]
    assert any("\ufffd" in piece for piece in alone)  # the case the merge is for
    pieces = _Pieces(tokenizer)(ids)
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)
    assert len(pieces) == len(ids)
    for piece, single in zip(pieces, alone, strict=True):  # whole tokens are left as they are
        if "\ufffd" not in single:
            assert piece == single


def test_a_report_of_another_tool_and_empty_paths(review_inputs, tmp_path):
    out = tmp_path / "out"
    other = tmp_path / "other report"
    other.mkdir()
    (other / "report.md").write_text("# My notes\n")
    (other / "report.html").write_text("<html><body><script>alert(1)</script></body></html>")
    one_line_error(runner.invoke(app, review("--sparsity-report", other, "--out", out)),
                   "report.md is not one of `featgeo hamming report`")  # fmt: skip
    for option in ("--out", "--stage1-dir", "--sparsity-report"):
        args = {"--stage1-dir": review_inputs["stage1"], "--out": out} | {option: " "}
        result = runner.invoke(app, review(*[str(x) for pair in args.items() for x in pair]))
        one_line_error(result, f"{option} is empty; pass a folder path")
    assert not out.exists()
    lacking = tmp_path / "lacking"
    shutil.copytree(review_inputs["stage3"], lacking)
    info = read_json(lacking / "stage3.json")
    del info["settings"]["stage1_csv_sha256"]
    (lacking / "stage3.json").write_text(json.dumps(info))
    result = runner.invoke(app, review("--stage1-dir", review_inputs["stage1"],
                                       "--stage3-dir", lacking, "--out", out))  # fmt: skip
    one_line_error(result, "stage3.json lacks its 'stage1_csv_sha256' entry")


def test_the_tokenizer_model_of_a_stage3_run(tmp_path):
    """stage3.json's ``model``; for runs written before it was recorded, Stage 1's ``model``
    setting, then the SAE's ``model_name`` (either cfg.json layout), then the embedded model."""
    from featgeo.reports.review import _stage3_model

    stage1 = tmp_path / "stage1"
    stage1.mkdir()
    sae = tmp_path / "sae"
    sae.mkdir()
    info = {"model": "m-recorded", "sae": str(sae)}
    assert _stage3_model(info, stage1) == "m-recorded"
    del info["model"]
    assert _stage3_model(info, stage1) == "embedded"  # nothing recorded anywhere
    cfg = {"d_in": 8, "d_sae": 16, "metadata": {"model_name": "m-sae", "hook_name": "h"}}
    (sae / "cfg.json").write_text(json.dumps(cfg))
    assert _stage3_model(info, stage1) == "m-sae"
    (sae / "cfg.json").write_text(json.dumps({"d_in": 8, "d_sae": 16, "model_name": "m-flat"}))
    assert _stage3_model(info, stage1) == "m-flat"
    (stage1 / "stage1.json").write_text(json.dumps({"settings": {"model": "m-stage1"}}))
    assert _stage3_model(info, stage1) == "m-stage1"
