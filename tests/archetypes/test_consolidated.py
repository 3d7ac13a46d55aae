"""The consolidated CSV's cells and rows, by hand on records made up here."""

from __future__ import annotations

import math

import numpy as np
import pytest

from featgeo.archetypes.consolidated import (
    COLUMNS,
    SEED_COLUMNS,
    cluster_summary,
    consolidated_rows,
    csv_cell,
)


@pytest.mark.parametrize(
    "value,text",
    [(None, ""), (math.nan, ""), (math.inf, ""), (3, "3"), (np.int64(3), "3"), (True, "True"),
     (np.bool_(False), "False"), (0.1, "0.1"), (np.float32(0.1), repr(float(np.float32(0.1)))),
     (1e-7, "1e-07"), ("a b", "a b")],
)  # fmt: skip
def test_csv_cells(value, text):
    assert csv_cell(value) == text


def record(cid, k, recon, arch, status="ok"):
    final = {"loss": recon + 4 * arch, "recon": recon, "archetypal": arch, "extrema": 0.0}
    return {"cluster_id": cid, "k": k, "status": status, "n_active": 100, "steps": 30,
            "stop_reason": "max_steps", "final_lr": 0.0025, "inside_fraction": 1.0,
            "final": final if status == "ok" else dict.fromkeys(final), "curve": None}  # fmt: skip


CLUSTER = {"n_clusters_total": 1, "cluster_id": 0, "n_latents": 3, "latent_indices": "4 5 6",
           "decoder_dir_rank": 3, "cluster_recon_error": 0.0, "activation_pca_rank": 2}  # fmt: skip


def test_summary_of_a_curve_with_a_clear_elbow():
    # recon 1.0, 0.2, 0.1 over k = 2, 3, 4: x = 0, .5, 1; y = 1, 1/9, 0; d at k=3 = (7/18)/sqrt2
    records = [record(0, k, r, a) for k, r, a in [(2, 1.0, 0.4), (3, 0.2, 0.1), (4, 0.1, 0.0)]]
    s = cluster_summary(records, "recon_elbow")
    assert s["aanet_recon_loss_elbow_k"] == 3
    assert s["aanet_recon_loss_elbow_strength"] == pytest.approx(7 / 18 / math.sqrt(2))
    assert s["aanet_archetypal_loss_elbow_k"] == 3  # y = 1, .25, 0: d = .25 / sqrt 2 at k=3
    assert s["aanet_archetypal_loss_elbow_strength"] == pytest.approx(0.25 / math.sqrt(2))
    assert s["k_differential"] == 0 and s["recon_is_monotonic"] and s["arch_is_monotonic"]
    assert s["recon_pct_decrease"] == pytest.approx(90.0)
    assert s["arch_pct_decrease"] == pytest.approx(100.0)
    assert s["recommended_k"] == 3 and s["recommended_k_criterion"] == "recon_elbow"


def test_rows_are_sorted_complete_and_an_untrained_model_empties_the_elbows():
    records = [record(0, 3, 0.2, 0.1), record(0, 2, 1.0, 0.4),
               record(0, 4, math.nan, math.nan, status="too_few_points")]  # fmt: skip
    rows = consolidated_rows([CLUSTER], records, sae_id="s", average_l0=8.0,
                             criterion="recon_elbow")  # fmt: skip
    assert [r["aanet_k"] for r in rows] == [2, 3, 4]
    assert set(rows[0]) == set(COLUMNS) and COLUMNS[:24] == SEED_COLUMNS
    assert rows[2]["aanet_loss"] is None and rows[2]["aanet_status"] == "too_few_points"
    assert rows[0]["aanet_recon_loss_elbow_k"] is None and rows[0]["k_differential"] is None
    assert math.isnan(rows[0]["aanet_recon_loss_elbow_strength"])
    assert not rows[0]["passes_quality_filters"]


def test_records_and_clusters_must_agree():
    with pytest.raises(ValueError, match="clusters without models"):
        consolidated_rows([CLUSTER, {**CLUSTER, "cluster_id": 1}], [record(0, 2, 1.0, 0.1)],
                          sae_id="s", average_l0=1.0, criterion="recon_elbow")  # fmt: skip


def test_model_record_logs_every_nth_step_and_the_last():
    from featgeo.archetypes.batched import AANetFit, ModelSpec
    from featgeo.archetypes.consolidated import curve_record, model_record
    from featgeo.archetypes.engine import ClusterFit

    curve = np.arange(100, dtype=np.float32).reshape(25, 4)  # 25 steps x 4 losses
    curve[3, 2] = np.nan  # a NaN in a logged step would be None; step 4 is not logged
    curve[10, 1] = np.inf  # step 11 is logged
    lr_curve = np.full(25, 0.0025)
    lr_curve[20:] = 0.00125
    fit = AANetFit(ModelSpec(3, 0, 7), [], curve, "early_stop", 0.00125,
                   {"loss": 1.0, "recon": 2.0, "archetypal": 3.0, "extrema": math.nan},
                   lr_curve)  # fmt: skip
    result = ClusterFit(5, 3, "ok", 40, fit, None, 0.75)
    rec = model_record(result, curve_every=10)
    assert rec["curve"]["step"] == [1, 11, 21, 25]
    assert rec["curve"]["loss"] == [0.0, 40.0, 80.0, 96.0]
    assert rec["curve"]["recon"] == [1.0, None, 81.0, 97.0]
    assert rec["curve"]["lr"] == [0.0025, 0.0025, 0.00125, 0.00125]
    assert rec["final"] == {"loss": 1.0, "recon": 2.0, "archetypal": 3.0, "extrema": None}
    assert (rec["steps"], rec["stop_reason"], rec["final_lr"]) == (25, "early_stop", 0.00125)
    assert (rec["cluster_id"], rec["k"], rec["n_active"], rec["inside_fraction"]) == (
        5,
        3,
        40,
        0.75,
    )
    line = curve_record(128, rec)
    assert line["n_clusters"] == 128 and line["step"] == [1, 11, 21, 25]
    assert model_record(result, curve_every=1)["curve"]["step"] == list(range(1, 26))

    untrained = model_record(ClusterFit(6, 8, "too_few_points", 9), curve_every=10)
    assert untrained["steps"] == 0 and untrained["curve"] is None
    assert untrained["final"] == dict.fromkeys(("loss", "recon", "archetypal", "extrema"))
    assert untrained["inside_fraction"] is None
    empty = curve_record(128, untrained)
    assert all(empty[key] == [] for key in ("step", "loss", "recon", "archetypal", "extrema", "lr"))


def test_rows_carry_every_model_and_cluster_value():
    # x = 0, 1/3, 2/3, 1 over k = 2..5. recon: y = 1, 2/9, 1/9, 0, so x + y - 1 = 0, -4/9,
    # -2/9, 0: elbow k=3. arch: y = 1, .978, .956, 0, so x + y - 1 = 0, .311, .622, 0: k=4.
    ks = (2, 3, 4, 5)
    recon = (1.0, 0.3, 0.2, 0.1)
    arch = (0.9, 0.88, 0.86, 0.0)
    records = [record(0, k, r, a) for k, r, a in zip(ks, recon, arch, strict=True)]
    for r in records:
        r["steps"] = 10 * r["k"]
    rows = consolidated_rows([CLUSTER], records, sae_id="s", average_l0=8.0,
                             criterion="knee_extra_vertex")  # fmt: skip
    assert [r["aanet_steps"] for r in rows] == [20, 30, 40, 50]
    assert [r["aanet_recon_loss"] for r in rows] == list(recon)
    assert [r["aanet_archetypal_loss"] for r in rows] == list(arch)
    assert [r["aanet_loss"] for r in rows] == [r + 4 * a for r, a in zip(recon, arch, strict=True)]
    row = rows[0]
    assert row["aanet_recon_loss_elbow_k"] == 3 and row["aanet_archetypal_loss_elbow_k"] == 4
    assert row["k_differential"] == 1
    assert row["latent_indices"] == "4 5 6" and row["average_l0"] == 8.0 and row["sae_id"] == "s"
    assert row["passes_quality_filters"] is True  # 3 latents, monotonic, >= 20%, diff 1
    assert row["recommended_k_criterion"] == "knee_extra_vertex"
    assert row["recommended_k"] in ks


def test_a_diverged_model_makes_the_curve_undefined_even_with_finite_medians():
    records = [record(0, 2, 1.0, 0.4), record(0, 3, 0.2, 0.1), record(0, 4, 0.1, 0.0)]
    records[1]["status"] = "diverged"  # its medians are finite, its training was not
    s = cluster_summary(records, "recon_elbow")
    assert s["aanet_recon_loss_elbow_k"] is None and math.isnan(s["recon_pct_decrease"])
    assert s["recommended_k"] is None
    rows = consolidated_rows([CLUSTER], records, sae_id="s", average_l0=8.0,
                             criterion="recon_elbow")  # fmt: skip
    assert rows[1]["aanet_recon_loss"] is None and rows[0]["aanet_recon_loss"] == 1.0


def test_clusters_come_out_sorted_and_monotonicity_is_per_curve():
    up_recon = [record(1, 2, 1.0, 0.4), record(1, 3, 1.2, 0.1), record(1, 4, 0.1, 0.0)]
    good = [record(0, k, r, a) for k, r, a in [(2, 1.0, 0.4), (3, 0.2, 0.1), (4, 0.1, 0.0)]]
    clusters = [{**CLUSTER, "cluster_id": 1}, CLUSTER]  # given in reverse order
    rows = consolidated_rows(clusters, up_recon + good, sae_id="s", average_l0=1.0,
                             criterion="recon_elbow")  # fmt: skip
    assert [(r["cluster_id"], r["aanet_k"]) for r in rows] == [(0, 2), (0, 3), (0, 4), (1, 2),
                                                               (1, 3), (1, 4)]  # fmt: skip
    bad = rows[3]  # recon rises from k=2 to k=3, its elbow: not monotonic; arch is
    assert bad["recon_is_monotonic"] is False and bad["arch_is_monotonic"] is True
    assert bad["passes_quality_filters"] is False and rows[0]["passes_quality_filters"] is True
    assert all(r["aanet_stop_reason"] == "max_steps" and r["n_active_tokens"] == 100
               for r in rows)  # fmt: skip
