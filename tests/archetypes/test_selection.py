"""Stage 2 selection (SPEC §3 "Selection", seed 002 "Selection Criteria") on Stage 1 CSVs written
here by hand with the csv module: quality filters, mu / population sigma over the passing
clusters, categories A / B / C / D with the priority A > D > B > C, the manual list, refit k,
ordering, per-filter counts, thresholds as options, the selection table round trip and every
bad input.

Every expected value is a literal worked out by hand (the arithmetic is in the comments) or
computed here with numpy / math; nothing is computed with selection.py's own helpers.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from featgeo.archetypes.quality import QualityFilters
from featgeo.archetypes.selection import (
    SELECTION_COLUMNS,
    NoClustersSelected,
    SelectionCriteria,
    find_csv,
    parse_manual,
    read_selection,
    read_stage1_csv,
    select_clusters,
    selection_cells,
    selection_thresholds,
)
from featgeo.errors import InputError
from featgeo.files import write_csv

# Seed 002's "CSV Column Reference", copied from the issue text (as in test_stage1.py).
SEED_COLUMNS = (
    "n_clusters_total cluster_id n_latents latent_indices aanet_k aanet_status aanet_loss "
    "aanet_recon_loss aanet_archetypal_loss aanet_extrema_loss decoder_dir_rank "
    "activation_pca_rank cluster_recon_error aanet_recon_loss_elbow_k "
    "aanet_recon_loss_elbow_strength aanet_archetypal_loss_elbow_k "
    "aanet_archetypal_loss_elbow_strength k_differential recon_is_monotonic arch_is_monotonic "
    "recon_pct_decrease arch_pct_decrease sae_id average_l0"
).split()

KS = (2, 3, 4, 5)
ROW_ORDER = (3, 5, 2, 4)
"""Each cluster's k rows are written in this order: the reader must sort them by k."""

# Loss curves over k = 2..5 whose chord elbow (SPEC §3) is worked out by hand:
# x_n = (k - 2) / 3 = [0, 1/3, 2/3, 1], y_n = (L - L_last) / (L_0 - L_last),
# d = |x_n + y_n - 1| / sqrt(2), elbow k = argmax d.
#   shape (1.0, 0.4, 0.3, 0.2): y_n = [1, 1/4, 1/8, 0], x_n + y_n - 1 = [0, -5/12, -5/24, 0]
#       -> elbow k = 3;
#   shape (1.0, 0.8, 0.3, 0.2): y_n = [1, 3/4, 1/8, 0], x_n + y_n - 1 = [0, 1/12, -5/24, 0]
#       -> elbow k = 4.
# Recon curves are the shapes x 2, archetypal curves the shapes x 0.1 (same elbows).
RECON_CURVES = {3: (2.0, 0.8, 0.6, 0.4), 4: (2.0, 1.6, 0.6, 0.4)}
ARCH_CURVES = {3: (0.1, 0.04, 0.03, 0.02), 4: (0.1, 0.08, 0.03, 0.02)}


# -- writing Stage 1 CSVs by hand -----------------------------------------------------------------
def cluster(cid, r, a, rk, ak, *, n_latents=3, rmono=True, amono=True, rpct=80.0, apct=80.0,
            status="ok", recon_curve=None, arch_curve=None):  # fmt: skip
    """One cluster's cluster-level cells: recon / archetypal elbow strength (r, a) and k (rk,
    ak); k_differential = |rk - ak|. Loss curves follow the elbow k unless given."""
    return {
        "cid": cid, "r": r, "a": a, "rk": rk, "ak": ak,
        "kd": None if rk is None else abs(rk - ak),
        "n_latents": n_latents, "rmono": rmono, "amono": amono, "rpct": rpct, "apct": apct,
        "status": status,
        "recon": recon_curve or RECON_CURVES.get(rk, RECON_CURVES[3]),
        "arch": arch_curve or ARCH_CURVES.get(ak, ARCH_CURVES[3]),
    }  # fmt: skip


def untrained(cid, n_latents=2):
    """A cluster whose models were not trained: empty losses and elbow cells (Stage 1 writes
    NaN as an empty cell), not monotonic."""
    return cluster(cid, None, None, None, None, n_latents=n_latents, rmono=False, amono=False,
                   rpct=None, apct=None, status="too_few_points")  # fmt: skip


def text(value):
    if value is None:
        return ""
    if isinstance(value, bool):
        return "True" if value else "False"
    return str(value)


def stage1_rows(n, clusters, n_total=None):
    """One row per (cluster, k), cluster-level cells repeated on each, k rows out of order."""
    rows = []
    for c in clusters:
        latents = " ".join(str(100 * c["cid"] + i) for i in range(c["n_latents"]))
        for k in ROW_ORDER:
            ok = c["status"] == "ok"
            recon = c["recon"][KS.index(k)] if ok else None
            arch = c["arch"][KS.index(k)] if ok else None
            cells = {
                "n_clusters_total": n if n_total is None else n_total,
                "cluster_id": c["cid"], "n_latents": c["n_latents"], "latent_indices": latents,
                "aanet_k": k, "aanet_status": c["status"],
                "aanet_loss": recon + 4 * arch if ok else None,
                "aanet_recon_loss": recon, "aanet_archetypal_loss": arch,
                "aanet_extrema_loss": 0.0 if ok else None,
                "decoder_dir_rank": c["n_latents"], "activation_pca_rank": c["n_latents"],
                "cluster_recon_error": 0.01,
                "aanet_recon_loss_elbow_k": c["rk"], "aanet_recon_loss_elbow_strength": c["r"],
                "aanet_archetypal_loss_elbow_k": c["ak"],
                "aanet_archetypal_loss_elbow_strength": c["a"],
                "k_differential": c["kd"],
                "recon_is_monotonic": c["rmono"], "arch_is_monotonic": c["amono"],
                "recon_pct_decrease": c["rpct"], "arch_pct_decrease": c["apct"],
                "sae_id": "hand-made-sae", "average_l0": 32.0,
            }  # fmt: skip
            rows.append({name: text(value) for name, value in cells.items()})
    return rows


def write_rows(path, rows, columns=SEED_COLUMNS):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_stage1(folder, n, clusters, **kwargs):
    """Stage 1's layout: ``{folder}/clusters_{n}/consolidated_metrics_n{n}.csv``."""
    return write_rows(Path(folder) / f"clusters_{n}" / f"consolidated_metrics_n{n}.csv",
                      stage1_rows(n, clusters, **kwargs))  # fmt: skip


def summary(selection):
    """(cluster id, category, categories, refit k) per selected row, in order."""
    return [(r["cluster_id"], r["category"], r["categories"], r["refit_k"]) for r in selection.rows]


def ids(selection):
    return [r["cluster_id"] for r in selection.rows]


def criteria(**kwargs):
    filters = {k: kwargs.pop(k) for k in list(kwargs) if k in QualityFilters.__dataclass_fields__}
    return SelectionCriteria(filters=QualityFilters(**filters), **kwargs)


# -- the main hand-made CSV (n = 512, 22 clusters) ------------------------------------------------
# Fifteen clusters pass every filter; seven fail one or more (their strengths, 0.65 / 0.60, are
# the largest of the file, so a failing cluster counted in mu / sigma or selected shows).
MAIN = [
    cluster(0, 0.10, 0.20, 3, 4, rpct=20.0),  # at the pct_decrease threshold: passes
    cluster(1, 0.34, 0.32, 3, 3),  # D
    cluster(2, 0.50, 0.38, 3, 4),  # A B
    cluster(3, 0.65, 0.60, 3, 5, n_latents=1),  # fails min_latents and k_differential (2)
    cluster(4, 0.376, 0.40, 4, 3),  # A (just: z_r = 0.511; 0.494 with ddof=1)
    cluster(5, 0.48, 0.52, 3, 4),  # A B C
    cluster(6, 0.12, 0.10, 3, 4),
    cluster(7, 0.50, 0.30, 4, 4),  # D B
    cluster(8, 0.65, 0.60, 3, 4, rmono=False, rpct=10.0),  # fails monotonic and pct_decrease
    cluster(9, 0.40, 0.40, 3, 3),  # A D
    cluster(10, 0.32, 0.22, 3, 3, n_latents=2),  # k_differential 0 but arch below mu: none
    cluster(11, 0.65, 0.60, 3, 4, amono=False),  # fails monotonic
    cluster(12, 0.40, 0.50, 4, 3),  # A C
    cluster(13, 0.08, 0.15, 4, 3),
    cluster(14, 0.65, 0.60, 3, 4, rpct=19.9),  # fails pct_decrease
    cluster(15, 0.42, 0.18, 4, 3, n_latents=2),  # recon above mu + 0.5 sigma, arch not: none
    cluster(16, 0.65, 0.60, 3, 3, apct=15.0),  # fails pct_decrease
    cluster(17, 0.15, 0.05, 3, 4),
    cluster(18, 0.65, 0.60, 3, 5),  # fails k_differential (2)
    untrained(19),  # fails monotonic, pct_decrease, k_differential (empty cells)
    cluster(20, 0.20, 0.12, 3, 4),
    cluster(21, 0.05, 0.25, 4, 3, apct=20.0),
]
PASSING = [0, 1, 2, 4, 5, 6, 7, 9, 10, 12, 13, 15, 17, 20, 21]
MAIN_FAILURES = {"min_latents": 1, "monotonic": 3, "pct_decrease": 4, "k_differential": 3}
# min_latents: 3; monotonic: 8, 11, 19; pct_decrease: 8, 14, 16, 19; k_differential: 3, 18, 19.

# Over the 15 passing clusters (population sigma, ddof=0):
#   recon: sum = 4.436, mu_r = 4.436 / 15 = 0.295733; sum of squares = 1.681976,
#          sigma_r = sqrt(1.681976 / 15 - mu_r^2) = sqrt(0.0246735) = 0.157078
#   arch:  sum = 4.09,  mu_a = 4.09 / 15 = 0.272667;  sum of squares = 1.4099,
#          sigma_a = sqrt(1.4099 / 15 - mu_a^2) = sqrt(0.0196462) = 0.140165
MU_R, SUMSQ_R = 4.436 / 15, 1.681976
MU_A, SUMSQ_A = 4.09 / 15, 1.4099
SIGMA_R = math.sqrt(SUMSQ_R / 15 - MU_R**2)
SIGMA_A = math.sqrt(SUMSQ_A / 15 - MU_A**2)

# The main test runs with sigma_a = 0.5, sigma_bc = 1.0: with SPEC's 3 sigma, k clusters can
# only all beat mu + 3 sigma when there are more than 10 k passing clusters (sum of z^2 = N),
# too many for a readable table; SPEC's defaults are checked on the same file below and on
# THREE_SIGMA.
#   A: r > mu_r + 0.5 sigma_r = 0.374272 and a > mu_a + 0.5 sigma_a = 0.342749
#   B: r > mu_r + sigma_r = 0.452811          C: a > mu_a + sigma_a = 0.412832
#   D: k_differential 0 and r > 0.295733 and a > 0.272667
# Cluster (r, a, kd) -> categories; chosen = first; strength sum orders within a category:
#   5 (0.48, 0.52, 1) A B C, sum 1.00     12 (0.40, 0.50, 1) A C, sum 0.90
#   2 (0.50, 0.38, 1) A B, sum 0.88       9 (0.40, 0.40, 0) A D, sum 0.80
#   4 (0.376, 0.40, 1) A, sum 0.776       7 (0.50, 0.30, 0) D B, sum 0.80
#   1 (0.34, 0.32, 0) D, sum 0.66
#   10 (0.32, 0.22, 0): a < mu_a, no D;   15 (0.42, 0.18, 1): a < mu_a + 0.5 sigma_a, no A
MAIN_CRITERIA = dict(sigma_a=0.5, sigma_bc=1.0)
MAIN_EXPECTED = [  # (cluster id, category, categories, refit k = archetypal elbow k)
    (5, "A", "A B C", 4),
    (12, "A", "A C", 3),
    (2, "A", "A B", 4),
    (9, "A", "A D", 3),
    (4, "A", "A", 3),
    (7, "D", "D B", 4),
    (1, "D", "D", 3),
]


@pytest.fixture
def main_dir(tmp_path):
    write_stage1(tmp_path, 512, MAIN)
    return tmp_path


def test_categories_priority_and_order(main_dir):
    selection = select_clusters(main_dir, [512], criteria(**MAIN_CRITERIA))
    assert summary(selection) == MAIN_EXPECTED
    by_id = {c["cid"]: c for c in MAIN}
    for row in selection.rows:
        c = by_id[row["cluster_id"]]
        assert row["n_clusters"] == 512
        assert row["refit_k_source"] == "arch"
        assert row["passes_quality_filters"] is True
        assert row["n_latents"] == 3
        first = 100 * c["cid"]
        assert row["latent_indices"] == f"{first} {first + 1} {first + 2}"
        assert row["aanet_recon_loss_elbow_k"] == c["rk"]
        assert row["aanet_archetypal_loss_elbow_k"] == c["ak"]
        assert row["aanet_recon_loss_elbow_strength"] == c["r"]
        assert row["aanet_archetypal_loss_elbow_strength"] == c["a"]
        assert row["k_differential"] == abs(c["rk"] - c["ak"])
        assert list(row) == SELECTION_COLUMNS


def test_thresholds_are_mean_and_population_std_over_the_passing_clusters(main_dir):
    (s,) = select_clusters(main_dir, [512], criteria(**MAIN_CRITERIA)).per_n
    assert SIGMA_R == pytest.approx(0.157078, abs=1e-6)
    assert SIGMA_A == pytest.approx(0.140165, abs=1e-6)
    for got, mu, sigma in ((s.recon_thresholds, MU_R, SIGMA_R), (s.arch_thresholds, MU_A, SIGMA_A)):
        assert got["mu"] == pytest.approx(mu, rel=1e-12)
        assert got["sigma"] == pytest.approx(sigma, rel=1e-9)
        assert got["one_sigma"] == pytest.approx(mu + sigma, rel=1e-9)
        assert got["three_sigma"] == pytest.approx(mu + 3 * sigma, rel=1e-9)
    # numpy on the passing clusters' cells agrees with the hand sums
    by_id = {c["cid"]: c for c in MAIN}
    r = np.array([by_id[i]["r"] for i in PASSING])
    assert s.recon_thresholds["sigma"] == pytest.approx(r.std(ddof=0), rel=1e-12)
    assert s.recon_thresholds["sigma"] != pytest.approx(r.std(ddof=1), rel=1e-6)


def test_filter_counts_and_summary(main_dir):
    selection = select_clusters(main_dir, [512], criteria(**MAIN_CRITERIA))
    (s,) = selection.per_n
    path = main_dir / "clusters_512" / "consolidated_metrics_n512.csv"
    assert s.n_clusters == 512 and s.csv == path
    assert s.csv_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert s.n_clusters_found == 22 and s.n_passing == 15
    assert s.filter_failures == MAIN_FAILURES
    assert s.category_counts == {"M": 0, "A": 5, "D": 2, "B": 0, "C": 0}
    assert sorted(selection.clusters) == [(512, c["cid"]) for c in MAIN]
    info = json.loads(json.dumps(selection.info()))
    assert info["criteria"]["sigma_a"] == 0.5 and info["criteria"]["filters"]["min_latents"] == 2
    assert info["per_n"][0]["filter_failures"] == MAIN_FAILURES
    assert info["per_n"][0]["csv"] == str(path)


def test_frame_has_the_selection_columns(main_dir):
    selection = select_clusters(main_dir, [512], criteria(**MAIN_CRITERIA))
    frame = selection.frame()
    assert list(frame.columns) == SELECTION_COLUMNS
    assert frame["cluster_id"].tolist() == [5, 12, 2, 9, 4, 7, 1]
    assert frame["category"].tolist() == ["A"] * 5 + ["D"] * 2
    assert frame["refit_k"].tolist() == [4, 3, 4, 3, 3, 4, 3]


# -- thresholds as options ----------------------------------------------------------------------
def test_spec_defaults_on_the_main_file(main_dir):
    # A: r > mu_r + sigma_r = 0.452811 and a > mu_a + sigma_a = 0.412832: only 5 (0.48, 0.52)
    #    (2 has a = 0.38). B / C: mu + 3 sigma = 0.767 / 0.693: nobody.
    # D: 7, 9 and 1 as before; 7 (0.5 + 0.3) and 9 (0.4 + 0.4) tie at 0.8: by id.
    selection = select_clusters(main_dir, [512])
    assert summary(selection) == [(5, "A", "A", 4), (7, "D", "D", 4), (9, "D", "D", 3),
                                  (1, "D", "D", 3)]  # fmt: skip
    assert selection.criteria == SelectionCriteria()


def test_sigma_a_above_sigma_bc_shows_d_before_b_before_c(main_dir):
    # Nobody beats mu + 10 sigma, so A is empty and the order D > B > C shows: 5 is B and C
    # (B wins), 7 is D and B (D wins).
    selection = select_clusters(main_dir, [512], criteria(sigma_a=10.0, sigma_bc=1.0))
    assert summary(selection) == [
        (7, "D", "D B", 4), (9, "D", "D", 3), (1, "D", "D", 3),
        (5, "B", "B C", 4), (2, "B", "B", 4),
        (12, "C", "C", 3),
    ]  # fmt: skip


def test_sigma_bc(main_dir):
    # Largest z: r 1.300 (clusters 2, 7), a 1.765 (cluster 5): none beats 3 sigma.
    selection = select_clusters(main_dir, [512], criteria(sigma_a=0.5, sigma_bc=3.0))
    assert summary(selection) == [(5, "A", "A", 4), (12, "A", "A", 3), (2, "A", "A", 4),
                                  (9, "A", "A D", 3), (4, "A", "A", 3), (7, "D", "D", 4),
                                  (1, "D", "D", 3)]  # fmt: skip


def test_require_monotonic_false_lets_cluster_11_in(main_dir):
    # 11 (0.65, 0.60) now passes (8 still fails pct_decrease, 19 pct_decrease and k_diff).
    #   recon: sum 5.086, mu 0.317875, sum sq 2.104476, sigma sqrt(2.104476/16 - mu^2) = 0.174600
    #   arch:  sum 4.69,  mu 0.293125, sum sq 1.7699,   sigma sqrt(1.7699/16 - mu^2)   = 0.157151
    #   A > (0.405175, 0.371701); B > 0.492475; C > 0.450276; D > (0.317875, 0.293125)
    #   11 A B C; 5 (0.48, 0.52) A C; 2 (0.50, 0.38) A B; 7 D B; 9 (0.4, 0.4) D only now;
    #   1 D; 12 (0.40, 0.50) C only now; 4 (0.376) drops out.
    selection = select_clusters(main_dir, [512],
                                criteria(require_monotonic=False, **MAIN_CRITERIA))  # fmt: skip
    assert summary(selection) == [(11, "A", "A B C", 4), (5, "A", "A C", 4), (2, "A", "A B", 4),
                                  (7, "D", "D B", 4), (9, "D", "D", 3), (1, "D", "D", 3),
                                  (12, "C", "C", 3)]  # fmt: skip
    (s,) = selection.per_n
    assert s.filter_failures == {**MAIN_FAILURES, "monotonic": 0}
    assert s.n_passing == 16
    mu = 5.086 / 16
    assert s.recon_thresholds["mu"] == pytest.approx(mu, rel=1e-12)
    assert s.recon_thresholds["sigma"] == pytest.approx(math.sqrt(2.104476 / 16 - mu**2), rel=1e-9)


def test_max_k_differential_and_min_latents(main_dir):
    # max_k_differential=2: 18 (kd 2) passes; same sums as with 11 above, so 18 takes its place.
    selection = select_clusters(main_dir, [512], criteria(max_k_differential=2, **MAIN_CRITERIA))
    assert ids(selection) == [18, 5, 2, 7, 9, 1, 12]
    assert selection.rows[0]["categories"] == "A B C" and selection.rows[0]["refit_k"] == 5
    assert selection.per_n[0].filter_failures == {**MAIN_FAILURES, "k_differential": 1}
    # min_latents=1 alone: 3 still fails k_differential, nothing else changes
    selection = select_clusters(main_dir, [512], criteria(min_latents=1, **MAIN_CRITERIA))
    assert summary(selection) == MAIN_EXPECTED
    assert selection.per_n[0].filter_failures == {**MAIN_FAILURES, "min_latents": 0}
    # both: 3 and 18 (both 0.65, 0.60) pass: 17 clusters,
    #   recon: sum 5.736, mu 0.337412, sum sq 2.526976, sigma 0.186545
    #   arch:  sum 5.29,  mu 0.311176, sum sq 2.1299,   sigma 0.168693
    #   A > (0.430684, 0.395523), B > 0.523957, C > 0.479869
    #   3, 18 A B C (same sums: by id); 5 (0.48, 0.52) A C; 9 D; 1 D; 12 (0.40, 0.50) C;
    #   2 (0.50, 0.38): a below 0.395523 and r below 0.523957: none; 7 (0.50, 0.30):
    #   a = 0.30 < mu_a = 0.311176, so not D any more: none.
    selection = select_clusters(
        main_dir, [512], criteria(min_latents=1, max_k_differential=2, **MAIN_CRITERIA)
    )
    assert summary(selection) == [
        (3, "A", "A B C", 5), (18, "A", "A B C", 5), (5, "A", "A C", 4),
        (9, "D", "D", 3), (1, "D", "D", 3), (12, "C", "C", 3),
    ]  # fmt: skip
    assert selection.rows[0]["n_latents"] == 1
    # min_latents=3: 10, 15 and 19 (2 latents) fail too
    (s,) = select_clusters(main_dir, [512], criteria(min_latents=3, **MAIN_CRITERIA)).per_n
    assert s.filter_failures == {**MAIN_FAILURES, "min_latents": 4}
    assert s.n_passing == 13
    assert s.recon_thresholds["mu"] == pytest.approx((4.436 - 0.32 - 0.42) / 13, rel=1e-12)


def test_min_pct_decrease_option(main_dir):
    # 19.9 % passes at 19.9: cluster 14 (0.65, 0.60) joins and changes everything.
    selection = select_clusters(main_dir, [512], criteria(min_pct_decrease=19.9, **MAIN_CRITERIA))
    assert selection.per_n[0].filter_failures == {**MAIN_FAILURES, "pct_decrease": 3}
    assert selection.per_n[0].n_passing == 16
    assert ids(selection)[0] == 14
    # 20.000001 %: clusters 0 and 21 (exactly 20 %) fail too
    (s,) = select_clusters(main_dir, [512],
                           criteria(min_pct_decrease=20.000001, **MAIN_CRITERIA)).per_n  # fmt: skip
    assert s.filter_failures == {**MAIN_FAILURES, "pct_decrease": 6}
    assert s.n_passing == 13


# -- SPEC's 3 sigma, by hand ----------------------------------------------------------------------
# 12 passing clusters: 10 at (0.1, 0.1), cluster 1 at (0.7, 0.1), cluster 0 at (0.1, 0.7).
#   recon: mu = 1.8 / 12 = 0.15; deviations -0.05 (x 11) and 0.55: sum sq = 11 * 0.0025 + 0.3025
#          = 0.33, sigma = sqrt(0.33 / 12) = 0.165831; mu + 3 sigma = 0.647494 < 0.7: 1 is B.
#   arch the same with 0 as the outlier: 0 is C. mu + sigma = 0.315831: neither is A (the other
#   strength is 0.1 < mu), no k_differential 0: no D. B before C though 0 < 1.
THREE_SIGMA = [cluster(0, 0.1, 0.7, 3, 4), cluster(1, 0.7, 0.1, 4, 3)] + [
    cluster(i, 0.1, 0.1, 3, 4) for i in range(2, 12)
]


def test_spec_defaults_find_three_sigma_outliers(tmp_path):
    write_stage1(tmp_path, 64, THREE_SIGMA)
    selection = select_clusters(tmp_path, [64])
    assert summary(selection) == [(1, "B", "B", 3), (0, "C", "C", 4)]
    assert selection.per_n[0].recon_thresholds["three_sigma"] == pytest.approx(
        0.15 + 3 * math.sqrt(0.33 / 12), rel=1e-9
    )


# -- refit k --------------------------------------------------------------------------------------
def test_refit_k_recon_and_criteria_on_the_main_file(main_dir):
    recon = select_clusters(main_dir, [512], criteria(refit_k="recon", **MAIN_CRITERIA))
    assert [(r["cluster_id"], r["refit_k"]) for r in recon.rows] == [
        (5, 3), (12, 4), (2, 3), (9, 3), (4, 4), (7, 4), (1, 3)]  # fmt: skip
    assert {r["refit_k_source"] for r in recon.rows} == {"recon"}
    # the main file's loss curves follow its elbow cells, so the loss criteria agree with them
    arch = select_clusters(main_dir, [512], criteria(refit_k="archetypal_elbow", **MAIN_CRITERIA))
    assert [r["refit_k"] for r in arch.rows] == [k for *_, k in MAIN_EXPECTED]
    curve = select_clusters(main_dir, [512], criteria(refit_k="recon_elbow", **MAIN_CRITERIA))
    assert [r["refit_k"] for r in curve.rows] == [3, 4, 3, 3, 4, 4, 3]


# Cluster 2 is the only one selected (A: mu = 0.7 / 3 = 0.233333, sigma = sqrt((2 * 0.133333^2
# + 0.266667^2) / 3) = 0.188562, 0.5 > 0.421895 on both). Its elbow cells say recon k 3, arch
# k 4, but its curves are crossed: recon has the k = 4 shape, archetypal the k = 3 shape. The
# rules "arch" / "recon" read the cells; the criteria read the curves (hand elbows above).
CROSSED = [
    cluster(0, 0.1, 0.1, 3, 4),
    cluster(1, 0.1, 0.1, 3, 4),
    cluster(2, 0.5, 0.5, 3, 4, recon_curve=RECON_CURVES[4], arch_curve=ARCH_CURVES[3]),
]


@pytest.mark.parametrize(
    "rule,k", [("arch", 4), ("recon", 3), ("archetypal_elbow", 3), ("recon_elbow", 4)]
)
def test_refit_k_rules_read_cells_and_criteria_read_curves(tmp_path, rule, k):
    write_stage1(tmp_path, 16, CROSSED)
    selection = select_clusters(tmp_path, [16], criteria(refit_k=rule))
    assert summary(selection) == [(2, "A", "A", k)]
    assert selection.rows[0]["refit_k_source"] == rule


def test_a_criterion_without_its_inputs_is_refused(main_dir):
    # knee_extra_vertex needs inside fractions; the seed's columns have none
    with pytest.raises(ValueError, match="has no knee_extra_vertex k"):
        select_clusters(main_dir, [512], criteria(refit_k="knee_extra_vertex", **MAIN_CRITERIA))


def test_refit_k_by_a_criterion_that_reads_inside_fractions(tmp_path):
    # knee_extra_vertex (docs/archetypes.md "Choosing k"): recon 2.0, 0.5, 0.45, 0.4 over
    # k = 2..5 has range 1.6; the first k within 10% of it above the floor (0.4 + 0.16 = 0.56)
    # is 3. Inside fractions 1, 1, 0.95, 0.2: k + 1 = 4 keeps 0.95 >= 0.9 inside, so k = 4;
    # 5 keeps 0.2, so it stops there.
    inside = {2: "1.0", 3: "1.0", 4: "0.95", 5: "0.2"}
    rows = stage1_rows(16, [cluster(2, 0.5, 0.5, 3, 3, recon_curve=(2.0, 0.5, 0.45, 0.4))])
    for row in rows:
        row["inside_fraction"] = inside[int(row["aanet_k"])]
    write_rows(tmp_path / "clusters_16" / "consolidated_metrics_n16.csv", rows,
               [*SEED_COLUMNS, "inside_fraction"])  # fmt: skip
    found = select_clusters(tmp_path, [16], criteria(manual=((16, 2),),
                                                     refit_k="knee_extra_vertex"))  # fmt: skip
    assert summary(found) == [(2, "M", "M", 4)]


# -- strict thresholds ----------------------------------------------------------------------------
# Six passing clusters whose strengths have means of exactly 0.5 (binary fractions): cluster 1
# has the recon strength mu, cluster 2 the archetypal strength mu; both need strictly more.
EDGE = [(0.25, 0.25), (0.5, 0.75), (0.75, 0.5), (0.5, 0.5), (0.75, 0.75), (0.25, 0.25)]


def test_category_a_needs_both_strengths_strictly_above_the_threshold(tmp_path):
    # sigma_a = 0: the A threshold is mu itself; k_differential 1 keeps D out, sigma_bc 10 B/C
    write_stage1(tmp_path, 8, [cluster(i, r, a, 3, 4) for i, (r, a) in enumerate(EDGE)])
    assert summary(select_clusters(tmp_path, [8], criteria(sigma_a=0, sigma_bc=10))) == [
        (4, "A", "A", 4)]  # fmt: skip


def test_category_d_needs_both_strengths_strictly_above_mu(tmp_path):
    write_stage1(tmp_path, 8, [cluster(i, r, a, 3, 3) for i, (r, a) in enumerate(EDGE)])
    assert summary(select_clusters(tmp_path, [8], criteria(sigma_a=10, sigma_bc=10))) == [
        (4, "D", "D", 3)]  # fmt: skip


# -- the manual list ------------------------------------------------------------------------------
def test_parse_manual():
    assert parse_manual("3,5", [512]) == ((512, 3), (512, 5))
    assert parse_manual(" 512:3, 768:10 ", [512, 768]) == ((512, 3), (768, 10))
    assert parse_manual("5,512:5,3", [512]) == ((512, 5), (512, 3))  # repeats dropped
    assert parse_manual(None, [512]) == parse_manual("", [512]) == parse_manual(" ", [512]) == ()
    with pytest.raises(ValueError, match="ambiguous") as err:
        parse_manual("512:3,3", [512, 768])
    assert "N:ID" in str(err.value) and "512:3" in str(err.value)
    for bad in ("x", "3;5", "3,,5", ":3", "512:", "-1", "1.5", "512:3:1"):
        with pytest.raises(ValueError, match="N:ID"):
            parse_manual(bad, [512])
    with pytest.raises(ValueError, match="1024 is not in") as err:
        parse_manual("1024:3", [512, 768])
    assert "[512, 768]" in str(err.value)


def test_manual_clusters_come_first_in_list_order(main_dir):
    # 8 fails two filters, 7 passes (D B); the list's order wins over ids and categories, 7 is
    # not repeated among the ranked clusters. 8 fails the filters, so it has no category of its
    # own (categories are defined over the filtered set), although its strengths would be
    # z_r = (0.65 - 0.295733) / 0.157078 = 2.26 and z_a = 2.34 against the passing clusters.
    manual = parse_manual("8,7", [512])
    selection = select_clusters(main_dir, [512], criteria(manual=manual, **MAIN_CRITERIA))
    assert summary(selection) == [(8, "M", "M", 4), (7, "M", "M D B", 4)] + [
        row for row in MAIN_EXPECTED if row[0] != 7
    ]
    assert [r["passes_quality_filters"] for r in selection.rows[:3]] == [False, True, True]
    (s,) = selection.per_n
    assert s.category_counts == {"M": 2, "A": 5, "D": 1, "B": 0, "C": 0}
    assert s.n_passing == 15 and s.filter_failures == MAIN_FAILURES  # manual changes no counts


def test_manual_list_without_duplicates_from_the_library_api(main_dir):
    selection = select_clusters(
        main_dir, [512], criteria(manual=((512, 7), (512, 7)), **MAIN_CRITERIA)
    )
    assert ids(selection) == [7, 5, 12, 2, 9, 4, 1]


def test_manual_clusters_are_kept_when_nothing_passes(main_dir):
    # no cluster passes: thresholds are NaN and the manual cluster has no other category
    selection = select_clusters(main_dir, [512],
                                criteria(min_pct_decrease=100, manual=((512, 3),)))  # fmt: skip
    assert summary(selection) == [(3, "M", "M", 5)]
    assert selection.rows[0]["passes_quality_filters"] is False
    assert math.isnan(selection.per_n[0].recon_thresholds["mu"])


def test_manual_errors(main_dir):
    with pytest.raises(ValueError, match="no cluster 99"):
        select_clusters(main_dir, [512], criteria(manual=((512, 99),)))
    for rule in ("arch", "recon", "archetypal_elbow"):  # 19 was never trained
        with pytest.raises(ValueError, match=f"cluster 19 of n_clusters=512 has no {rule} k"):
            select_clusters(main_dir, [512], criteria(manual=((512, 19),), refit_k=rule))
    with pytest.raises(ValueError, match="n_clusters=256, which is not among"):
        select_clusters(main_dir, [512], criteria(manual=((256, 3),)))


# -- nothing selected -----------------------------------------------------------------------------
def test_no_clusters_selected_names_each_filter_and_its_option(main_dir):
    with pytest.raises(NoClustersSelected) as err:
        select_clusters(main_dir, [512], criteria(min_pct_decrease=100))
    message = str(err.value)
    assert isinstance(err.value, InputError) and isinstance(err.value, ValueError)
    for part in ("n=512: 22 clusters", "min_latents removed 1 (--min-latents)",
                 "monotonic removed 3 (--no-require-monotonic)",
                 "pct_decrease removed 22 (--min-pct-decrease)",
                 "k_differential removed 3 (--max-k-differential)", "none passed",
                 "--sigma-a 1", "--sigma-bc 3", "--manual"):  # fmt: skip
        assert part in message, part


def test_no_clusters_selected_when_none_beats_the_thresholds(tmp_path):
    # all strengths equal: sigma = 0 and nobody is above mu
    write_stage1(tmp_path, 8, [cluster(i, 0.3, 0.3, 3, 3) for i in range(3)])
    with pytest.raises(NoClustersSelected, match="3 passed and none beat the category thresholds"):
        select_clusters(tmp_path, [8])


# -- several n_clusters -----------------------------------------------------------------------
# n = 512: r = a = 0.10, 0.12, 0.14, 0.16 (ids 0..3, k_differential 0):
#   mu = 0.52 / 4 = 0.13, sum sq dev = 2 * (0.03^2 + 0.01^2) = 0.002, sigma = sqrt(0.0005)
#   = 0.022361: A > 0.152361 (3), D > 0.13 (2, 3).
# n = 768: 0.40 .. 0.46: mu 0.43, the same sigma: again 3 is A D and 2 is D.
# Pooled over both files: mu = 0.28, sigma = sqrt(0.184 / 8) = 0.151658: nothing of n = 512
# would be selected and 0 and 1 of n = 768 would be D.
def write_two(folder):
    for n, values in ((512, (0.10, 0.12, 0.14, 0.16)), (768, (0.40, 0.42, 0.44, 0.46))):
        write_stage1(folder, n, [cluster(i, v, v, 3, 3) for i, v in enumerate(values)])


def test_thresholds_are_per_n(tmp_path):
    write_two(tmp_path)
    selection = select_clusters(tmp_path, [512, 768])
    assert [(r["n_clusters"], r["cluster_id"], r["category"], r["categories"])
            for r in selection.rows] == [(512, 3, "A", "A D"), (512, 2, "D", "D"),
                                         (768, 3, "A", "A D"), (768, 2, "D", "D")]  # fmt: skip
    s512, s768 = selection.per_n
    assert (s512.n_clusters, s768.n_clusters) == (512, 768)
    assert s512.recon_thresholds["mu"] == pytest.approx(0.13)
    assert s768.arch_thresholds["mu"] == pytest.approx(0.43)
    assert s512.arch_thresholds["sigma"] == pytest.approx(math.sqrt(0.0005), rel=1e-9)
    assert s768.recon_thresholds["sigma"] == pytest.approx(math.sqrt(0.0005), rel=1e-9)
    assert sorted(selection.clusters) == [(n, i) for n in (512, 768) for i in range(4)]


def test_manual_pairs_per_n(tmp_path):
    write_two(tmp_path)
    manual = parse_manual("768:0,512:1", [512, 768])
    selection = select_clusters(tmp_path, [512, 768], criteria(manual=manual))
    assert [(r["n_clusters"], r["cluster_id"], r["category"]) for r in selection.rows] == [
        (512, 1, "M"), (512, 3, "A"), (512, 2, "D"), (768, 0, "M"), (768, 3, "A"), (768, 2, "D"),
    ]  # fmt: skip
    with pytest.raises(ValueError, match="768:7"):
        select_clusters(tmp_path, [512, 768], criteria(manual=((768, 7),)))


def test_a_missing_csv_is_reported_before_any_work(tmp_path):
    write_stage1(tmp_path, 512, MAIN)
    with pytest.raises(FileNotFoundError, match="consolidated_metrics_n768.csv"):
        select_clusters(tmp_path, [512, 768])


# -- finding and reading Stage 1's CSV ------------------------------------------------------------
def test_find_csv_in_both_layouts(tmp_path):
    flat = write_stage1(tmp_path / "a", 512, MAIN[:3]).rename(
        tmp_path / "a" / "consolidated_metrics_n512.csv"
    )
    assert find_csv(tmp_path / "a", 512) == flat
    nested = write_stage1(tmp_path / "b", 512, MAIN[:3])
    assert find_csv(tmp_path / "b", 512) == nested
    assert find_csv(str(tmp_path / "b"), 512) == nested
    # both present: Stage 1's layout wins
    write_stage1(tmp_path / "a", 512, MAIN[:3])
    assert find_csv(tmp_path / "a", 512) == tmp_path / "a" / "clusters_512" / flat.name
    # the flat layout works through select_clusters too
    write_rows(tmp_path / "c" / "consolidated_metrics_n512.csv", stage1_rows(512, MAIN))
    flat_selection = select_clusters(tmp_path / "c", [512], criteria(**MAIN_CRITERIA))
    assert summary(flat_selection) == MAIN_EXPECTED


def test_find_csv_names_the_file_and_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="CSV not found") as err:
        find_csv(tmp_path, 256)
    assert "consolidated_metrics_n256.csv" in str(err.value)
    assert str(tmp_path) in str(err.value) and str(tmp_path / "clusters_256") in str(err.value)
    # a folder of that name is not a file
    (tmp_path / "clusters_256" / "consolidated_metrics_n256.csv").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="CSV not found"):
        find_csv(tmp_path, 256)


def test_read_stage1_csv(tmp_path):
    clusters = [cluster(7, 0.5, 0.4, 4, 3), untrained(2), cluster(5, 0.1, 0.2, 3, 4)]
    rows = stage1_rows(32, clusters)
    rows[0]["n_clusters_total"] = ""  # an empty n_clusters_total is accepted
    path = write_rows(tmp_path / "x.csv", rows, [*SEED_COLUMNS, "inside_fraction"])
    got = read_stage1_csv(path, 32)
    assert [c.cluster_id for c in got] == [2, 5, 7]  # by id, not file order
    c2, c5, c7 = got
    assert c7.n_clusters == 32 and c7.ks == [2, 3, 4, 5]  # sorted although written 3, 5, 2, 4
    assert c7.recon == list(RECON_CURVES[4]) and c7.archetypal == list(ARCH_CURVES[3])
    assert c5.recon == list(RECON_CURVES[3]) and c5.archetypal == list(ARCH_CURVES[4])
    assert c7.latent_indices == [700, 701, 702]
    assert c7.cells["aanet_archetypal_loss_elbow_strength"] == "0.4"
    assert all(math.isnan(v) for v in c7.inside)  # empty column cells
    assert c2.ks == [2, 3, 4, 5] and all(math.isnan(v) for v in c2.recon + c2.archetypal)


def test_read_stage1_csv_ignores_losses_of_models_that_did_not_train(tmp_path):
    rows = stage1_rows(32, [cluster(1, 0.5, 0.4, 4, 3)])
    rows[1]["aanet_status"] = "diverged"  # k = 5, losses still written
    (c,) = read_stage1_csv(write_rows(tmp_path / "x.csv", rows), 32)
    assert math.isnan(c.recon[3]) and math.isnan(c.archetypal[3])
    assert c.recon[:3] == list(RECON_CURVES[4][:3])


def test_read_stage1_csv_without_elbow_columns(tmp_path):
    columns = [c for c in SEED_COLUMNS if c not in ("aanet_recon_loss_elbow_strength",
                                                    "k_differential")]  # fmt: skip
    path = write_rows(tmp_path / "clusters_32" / "consolidated_metrics_n32.csv",
                      stage1_rows(32, MAIN[:3]), columns)  # fmt: skip
    with pytest.raises(ValueError, match="aanet_recon_loss_elbow_strength, k_differential") as err:
        read_stage1_csv(path, 32)
    assert "rerun Stage 1" in str(err.value)
    with pytest.raises(ValueError, match="k_differential"):
        select_clusters(tmp_path, [32])


@pytest.mark.parametrize(
    "column,value,line",
    [("cluster_id", "x", 4), ("aanet_k", "", 2), ("n_latents", "two", 7),
     ("latent_indices", "1 x", 3), ("n_latents", "9", 5)],
)  # fmt: skip
def test_read_stage1_csv_names_a_malformed_line(tmp_path, column, value, line):
    rows = stage1_rows(32, MAIN[:3])
    rows[line - 2][column] = value
    path = write_rows(tmp_path / "x.csv", rows)
    with pytest.raises(ValueError, match=f"line {line} is malformed"):
        read_stage1_csv(path, 32)


@pytest.mark.parametrize(
    "column,value,reason",
    [("aanet_recon_loss_elbow_strength", "abc", "is not a finite number"),
     ("aanet_archetypal_loss_elbow_strength", "inf", "is not a finite number"),
     ("recon_pct_decrease", "nan", "is not a finite number"),
     ("aanet_recon_loss_elbow_k", "3.5", "is not an integer"),
     ("k_differential", "x", "is not a finite number"),
     ("recon_is_monotonic", "yes", "is not True or False"),
     ("arch_is_monotonic", "", "is not True or False")],
)  # fmt: skip
def test_read_stage1_csv_refuses_cells_that_do_not_parse(tmp_path, column, value, reason):
    rows = stage1_rows(32, MAIN[:3])
    for row in rows[4:8]:  # every row of cluster 1: a consistent but unreadable cell
        row[column] = value
    path = write_rows(tmp_path / "x.csv", rows)
    with pytest.raises(ValueError, match=f"line 6 is malformed .*{column} .*{reason}"):
        read_stage1_csv(path, 32)


def test_read_stage1_csv_refuses_inconsistent_or_truncated_files(tmp_path):
    rows = stage1_rows(32, MAIN[:3])
    rows[5]["aanet_recon_loss_elbow_strength"] = "0.99"  # cluster 1's second row disagrees
    with pytest.raises(ValueError, match="line 7 is malformed .*elbow_strength differs"):
        read_stage1_csv(write_rows(tmp_path / "a.csv", rows), 32)
    text = write_rows(tmp_path / "b.csv", stage1_rows(32, MAIN[:3])).read_text()
    (tmp_path / "b.csv").write_text(text[: len(text) - 60])  # the last line cut short
    with pytest.raises(ValueError, match="line 13 is malformed .*wrong number of fields"):
        read_stage1_csv(tmp_path / "b.csv", 32)
    lines = text.splitlines()
    (tmp_path / "c.csv").write_text("\n".join([lines[0], lines[1] + ",extra", *lines[2:]]))
    with pytest.raises(ValueError, match="line 2 is malformed .*wrong number of fields"):
        read_stage1_csv(tmp_path / "c.csv", 32)
    rows = [
        r for r in stage1_rows(32, MAIN[:3]) if not (r["cluster_id"] == "2" and r["aanet_k"] == "4")
    ]
    with pytest.raises(ValueError, match="cluster 2 has models for k = \\[2, 3, 5\\]"):
        read_stage1_csv(write_rows(tmp_path / "d.csv", rows), 32)
    rows = stage1_rows(32, MAIN[:3])
    for row in rows[4:8]:
        row["aanet_archetypal_loss_elbow_k"] = "9"
    with pytest.raises(ValueError, match="cluster 1 has models .* and elbows \\[3.0, 9.0\\]"):
        read_stage1_csv(write_rows(tmp_path / "e.csv", rows), 32)


def test_read_stage1_csv_other_bad_files(tmp_path):
    path = write_rows(tmp_path / "a.csv", stage1_rows(32, MAIN[:3], n_total=64))
    with pytest.raises(ValueError, match="line 2 is malformed .*n_clusters_total 64 is not 32"):
        read_stage1_csv(path, 32)
    rows = stage1_rows(32, MAIN[:3])
    path = write_rows(tmp_path / "b.csv", rows + [dict(rows[5])])  # cluster 1, k = 5 again
    with pytest.raises(ValueError, match=r"line 14 is malformed \(cluster 1 k=5 is repeated\)"):
        read_stage1_csv(path, 32)
    path = write_rows(tmp_path / "c.csv", [])
    with pytest.raises(ValueError, match="has no rows"):
        read_stage1_csv(path, 32)
    path = tmp_path / "d.csv"
    path.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ValueError, match="not a readable CSV"):
        read_stage1_csv(path, 32)


# -- selection_thresholds -------------------------------------------------------------------------
def test_selection_thresholds_by_hand():
    # finite values 0.1, 0.2, 0.6: mu = 0.9 / 3 = 0.3; deviations -0.2, -0.1, 0.3, sum of squares
    # 0.14, sigma = sqrt(0.14 / 3) = 0.216025 (ddof=0; ddof=1 would give sqrt(0.07) = 0.264575)
    got = selection_thresholds(["0.1", "", 0.2, None, "nan", " 0.6 ", math.inf, "x"])
    sigma = math.sqrt(0.14 / 3)
    assert got["mu"] == pytest.approx(0.3, rel=1e-12)
    assert got["sigma"] == pytest.approx(sigma, rel=1e-12)
    assert got["sigma"] == pytest.approx(np.std([0.1, 0.2, 0.6]), rel=1e-12)
    assert got["one_sigma"] == pytest.approx(0.3 + sigma, rel=1e-12)
    assert got["three_sigma"] == pytest.approx(0.3 + 3 * sigma, rel=1e-12)
    assert selection_thresholds([0.25]) == {"mu": 0.25, "sigma": 0.0, "one_sigma": 0.25,
                                            "three_sigma": 0.25}  # fmt: skip
    for empty in ([], ["", None, math.nan]):
        got = selection_thresholds(empty)
        assert sorted(got) == ["mu", "one_sigma", "sigma", "three_sigma"]
        assert all(math.isnan(v) for v in got.values())
    values = np.random.default_rng(0).random(50)
    got = selection_thresholds(list(values))
    assert got["mu"] == pytest.approx(values.mean(), rel=1e-12)
    assert got["sigma"] == pytest.approx(values.std(ddof=0), rel=1e-12)


# -- the selection table --------------------------------------------------------------------------
def test_selection_cells_round_trip(main_dir, tmp_path):
    chosen = criteria(manual=((512, 8),), refit_k="recon", **MAIN_CRITERIA)
    selection = select_clusters(main_dir, [512], chosen)
    cells = selection_cells(selection.rows)
    assert cells[0] == {
        "n_clusters": "512", "cluster_id": "8", "category": "M", "categories": "M",
        "refit_k": "3", "refit_k_source": "recon", "n_latents": "3",
        "latent_indices": "800 801 802", "aanet_recon_loss_elbow_k": "3",
        "aanet_recon_loss_elbow_strength": "0.65", "aanet_archetypal_loss_elbow_k": "4",
        "aanet_archetypal_loss_elbow_strength": "0.6", "k_differential": "1",
        "passes_quality_filters": "False",
    }  # fmt: skip
    path = write_csv(tmp_path / "sel.csv", cells, SELECTION_COLUMNS)
    assert read_selection(path, [512]) == selection.rows
    assert read_selection(str(path), [256, 512]) == selection.rows


def selection_file(folder, rows):
    rows = [{**ROW, **row} for row in rows]
    return write_csv(Path(folder) / "sel.csv", rows, SELECTION_COLUMNS)


ROW = {"n_clusters": "512", "cluster_id": "3", "category": "A", "categories": "A D",
       "refit_k": "4", "refit_k_source": "arch", "n_latents": "2", "latent_indices": "5 9",
       "aanet_recon_loss_elbow_k": "4", "aanet_recon_loss_elbow_strength": "0.5",
       "aanet_archetypal_loss_elbow_k": "4", "aanet_archetypal_loss_elbow_strength": "0.25",
       "k_differential": "0", "passes_quality_filters": "True"}  # fmt: skip


def test_read_selection_filters_by_n(tmp_path):
    path = selection_file(tmp_path, [{}, {"n_clusters": "768", "cluster_id": "3", "category": "M",
                                          "aanet_recon_loss_elbow_k": "",
                                          "passes_quality_filters": "False"}])  # fmt: skip
    (row,) = read_selection(path, [768])
    assert row["n_clusters"] == 768 and row["category"] == "M"
    assert row["aanet_recon_loss_elbow_k"] is None and row["passes_quality_filters"] is False
    (row,) = read_selection(path, [512])
    assert row == {"n_clusters": 512, "cluster_id": 3, "category": "A", "categories": "A D",
                   "refit_k": 4, "refit_k_source": "arch", "n_latents": 2,
                   "latent_indices": "5 9", "aanet_recon_loss_elbow_k": 4,
                   "aanet_recon_loss_elbow_strength": 0.5, "aanet_archetypal_loss_elbow_k": 4,
                   "aanet_archetypal_loss_elbow_strength": 0.25, "k_differential": 0,
                   "passes_quality_filters": True}  # fmt: skip
    assert len(read_selection(path, [512, 768])) == 2


def test_read_selection_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_selection(tmp_path / "none.csv", [512])
    path = write_csv(tmp_path / "cols.csv", [ROW], [c for c in SELECTION_COLUMNS if c != "refit_k"])
    with pytest.raises(ValueError, match="no column.* refit_k"):
        read_selection(path, [512])
    for bad in ({"category": "E"}, {"refit_k": "1"}, {"refit_k": ""}, {"cluster_id": "x"},
                {"latent_indices": "5 x"}):  # fmt: skip
        path = selection_file(tmp_path, [{}, bad])
        with pytest.raises(ValueError, match="line 3 is malformed"):
            read_selection(path, [512])
    path = selection_file(tmp_path, [{}, {"category": "D"}])
    with pytest.raises(ValueError, match="lists a cluster twice"):
        read_selection(path, [512])
    assert read_selection(selection_file(tmp_path, [{"refit_k": "2"}]), [512])[0]["refit_k"] == 2
    path = selection_file(tmp_path, [{}])
    with pytest.raises(NoClustersSelected, match=r"no row for n_clusters \[768\]"):
        read_selection(path, [768])


# -- the criteria object --------------------------------------------------------------------------
def test_selection_criteria_checks_its_fields():
    for name, bad in (("sigma_a", math.nan), ("sigma_bc", True), ("sigma_a", "1")):
        with pytest.raises(ValueError, match=f"--{name.replace('_', '-')} must be a finite"):
            SelectionCriteria(**{name: bad})
    with pytest.raises(ValueError, match="--refit-k 'elbow'.*archetypal_elbow"):
        SelectionCriteria(refit_k="elbow")
    with pytest.raises(TypeError, match="QualityFilters"):
        SelectionCriteria(filters={"min_latents": 2})
    with pytest.raises(TypeError, match="SelectionCriteria"):
        select_clusters(".", [512], {"sigma_a": 1.0})
    got = SelectionCriteria(manual=[("512", 3.0)], sigma_a=2)
    assert got.manual == ((512, 3),)
    assert got.to_dict() == {
        "filters": {"min_latents": 2, "min_pct_decrease": 20.0, "max_k_differential": 1,
                    "require_monotonic": True},
        "sigma_a": 2, "sigma_bc": 3.0, "manual": [[512, 3]], "refit_k": "arch",
    }  # fmt: skip


def test_selection_thresholds_of_huge_strengths_do_not_overflow():
    t = selection_thresholds([1e300, 3e300])
    assert t["mu"] == pytest.approx(2e300) and t["sigma"] == pytest.approx(1e300)


@pytest.mark.parametrize(
    "column,value,reason",
    [("k_differential", "0", "has k_differential '0' but elbows"),
     ("aanet_status", "bogus", "aanet_status 'bogus' is not one of"),
     ("latent_indices", "100 100 101", "latent_indices must be distinct"),
     ("aanet_recon_loss_elbow_strength", "-0.5", "is negative")],
)  # fmt: skip
def test_read_stage1_csv_refuses_inconsistent_cluster_cells(tmp_path, column, value, reason):
    rows = stage1_rows(32, MAIN[:3])
    for row in rows[4:8]:  # cluster 1 (elbows 3 and 3 after MAIN; set a wrong differential)
        row[column] = value
    if column == "k_differential":
        for row in rows[4:8]:
            row["aanet_archetypal_loss_elbow_k"] = "4"
    with pytest.raises(ValueError, match=reason):
        read_stage1_csv(write_rows(tmp_path / "x.csv", rows), 32)


def test_line_numbers_count_blank_lines_and_a_missing_k_blames_its_cluster(tmp_path):
    text = write_rows(tmp_path / "a.csv", stage1_rows(32, MAIN[:3])).read_text().splitlines()
    text.insert(3, "")  # a blank line before file line 4
    bad = text[7].split(",")
    bad[SEED_COLUMNS.index("recon_is_monotonic")] = "maybe"
    text[7] = ",".join(bad)
    (tmp_path / "b.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(ValueError, match="line 8 is malformed"):
        read_stage1_csv(tmp_path / "b.csv", 32)
    rows = [
        r for r in stage1_rows(32, MAIN[:3]) if not (r["cluster_id"] == "0" and r["aanet_k"] == "2")
    ]
    with pytest.raises(ValueError, match=r"cluster 0 has models for k = \[3, 4, 5\]"):
        read_stage1_csv(write_rows(tmp_path / "c.csv", rows), 32)
