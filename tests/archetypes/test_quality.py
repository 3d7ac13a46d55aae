"""SPEC §3's quality filters, threshold by threshold, on values and on CSV cells."""

from __future__ import annotations

import math

import pytest

from featgeo.archetypes.quality import QualityFilters, cell_flag, cell_number

GOOD = {"n_latents": 2, "recon_is_monotonic": True, "arch_is_monotonic": True,
        "recon_pct_decrease": 20.0, "arch_pct_decrease": 20.0, "k_differential": 1}  # fmt: skip


def test_a_cluster_at_every_threshold_passes():
    assert QualityFilters().failures(GOOD) == [] and QualityFilters().passes(GOOD)


@pytest.mark.parametrize(
    "change,failed",
    [
        ({"n_latents": 1}, ["min_latents"]),
        ({"recon_is_monotonic": False}, ["monotonic"]),
        ({"arch_is_monotonic": "False"}, ["monotonic"]),
        ({"recon_pct_decrease": 19.999}, ["pct_decrease"]),
        ({"arch_pct_decrease": math.nan}, ["pct_decrease"]),
        ({"k_differential": 2}, ["k_differential"]),
        ({"k_differential": ""}, ["k_differential"]),  # undefined elbow in a CSV
        ({"k_differential": None, "n_latents": "1"}, ["min_latents", "k_differential"]),
    ],
)
def test_each_filter_fails_on_its_own(change, failed):
    assert QualityFilters().failures({**GOOD, **change}) == failed


def test_csv_cells_are_read_like_values():
    cells = {k: str(v) for k, v in GOOD.items()}
    assert QualityFilters().passes(cells)
    assert not QualityFilters().passes({**cells, "recon_pct_decrease": ""})


def test_thresholds_are_options():
    loose = QualityFilters(min_latents=1, min_pct_decrease=0, max_k_differential=3,
                           require_monotonic=False)  # fmt: skip
    bad = {**GOOD, "n_latents": 1, "recon_is_monotonic": False, "recon_pct_decrease": 0.0,
           "k_differential": 3}  # fmt: skip
    assert loose.passes(bad) and not QualityFilters().passes(bad)
    assert QualityFilters(min_pct_decrease=50).failures(GOOD) == ["pct_decrease"]


@pytest.mark.parametrize(
    "kwargs", [{"min_latents": -1}, {"max_k_differential": 1.5}, {"min_pct_decrease": 101},
               {"min_pct_decrease": math.nan}, {"min_latents": True}],
)  # fmt: skip
def test_bad_thresholds(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        QualityFilters(**kwargs)


@pytest.mark.parametrize(
    "value,flag",
    [(True, True), (False, False), ("True", True), (" true ", True), ("1", True), ("1.0", True),
     ("False", False), ("", False), ("yes", False), (1, True), (0, False), (0.0, False),
     (math.nan, False), (None, False)],
)  # fmt: skip
def test_cell_flag(value, flag):
    assert cell_flag(value) is flag


@pytest.mark.parametrize(
    "value,number", [("3", 3.0), (" 2.5 ", 2.5), ("", math.nan), ("x", math.nan), (None, math.nan),
                     (True, 1.0), (7, 7.0)],
)  # fmt: skip
def test_cell_number(value, number):
    got = cell_number(value)
    assert got == number or (math.isnan(got) and math.isnan(number))


def test_threshold_bounds_are_inclusive():
    QualityFilters(min_latents=0, max_k_differential=0, min_pct_decrease=0)
    QualityFilters(min_pct_decrease=100)
    for kwargs in ({"max_k_differential": -1}, {"min_pct_decrease": -0.1},
                   {"min_pct_decrease": True}, {"min_pct_decrease": "20"}):  # fmt: skip
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            QualityFilters(**kwargs)
    assert QualityFilters().to_dict() == {
        "min_latents": 2,
        "min_pct_decrease": 20.0,
        "max_k_differential": 1,
        "require_monotonic": True,
    }
