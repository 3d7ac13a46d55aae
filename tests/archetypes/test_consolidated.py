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
