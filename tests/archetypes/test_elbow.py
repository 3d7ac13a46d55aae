"""Elbow metrics (SPEC §3): hand-computed curves, every degenerate rule, scalar/table parity."""

from __future__ import annotations

import math

import numpy as np
import pytest

from featgeo.archetypes.elbow import Elbow, elbow, elbow_table, k_differential

R2 = math.sqrt(2.0)
KS = list(range(2, 9))  # Stage 1 trains k = 2..8


def assert_elbow(got: Elbow, k, strength, is_monotonic, pct) -> None:
    assert got.k == k
    assert got.is_monotonic is is_monotonic
    if math.isnan(strength):
        assert math.isnan(got.strength)
    else:
        assert got.strength == pytest.approx(strength, abs=1e-12)
    if math.isnan(pct):
        assert math.isnan(got.pct_decrease)
    else:
        assert got.pct_decrease == pytest.approx(pct, abs=1e-12)


# -- hand-computed curves ---------------------------------------------------------------------
def test_typical_curve_by_hand():
    # L = [10, 4, 3, 2.5, 2.2, 2.1, 2.0] at k = 2..8; k0 = 2, k_last = 8, L_0 = 10, L_last = 2.
    # x_n = (k-2)/6 = [0, 1/6, 1/3, 1/2, 2/3, 5/6, 1]
    # y_n = (L-2)/8 = [1, 1/4, 1/8, 1/16, 1/40, 1/80, 0]
    #   k=3: 1/6 + 1/4 - 1 = -7/12   -> d = 7/(12 sqrt 2)  = 0.41248  (the max)
    #   k=4: 1/3 + 1/8 - 1 = -13/24  -> d = 13/(24 sqrt 2) = 0.38302
    #   k=5: 1/2 + 1/16 - 1 = -7/16  -> d = 7/(16 sqrt 2)  = 0.30936
    # elbow k = 3, strength = 7/(12 sqrt 2); 10 >= 4 so monotonic up to k=3;
    # pct_decrease = (10 - 2)/10 * 100 = 80.
    L = [10, 4, 3, 2.5, 2.2, 2.1, 2.0]
    assert_elbow(elbow(L, KS), 3, 7 / (12 * R2), True, 80.0)


def test_strength_uses_sqrt2_and_endpoint_normalisation():
    # Fails if d drops the 1/sqrt(2), or if y_n is normalised by (max L - min L) instead of
    # (L_0 - L_last): here max L = 6 sits at k=3, not at k0.
    # ks = 2..6, L = [4, 6, 1, 0.5, 0]: x_n = [0, 1/4, 1/2, 3/4, 1],
    # y_n = (L - 0)/(4 - 0) = [1, 3/2, 1/4, 1/8, 0]
    # x_n + y_n - 1 = [0, 3/4, -1/4, -1/8, 0] -> elbow k = 3, d = (3/4)/sqrt 2 = 0.53033.
    # (With y_n = L/6: [-1/3, 1/4, -1/3, -1/6, 0] -> elbow k=2, a different answer.)
    # L rises 4 -> 6 on the way to the elbow: not monotonic. pct = (6 - 0)/6 * 100 = 100.
    got = elbow([4, 6, 1, 0.5, 0], [2, 3, 4, 5, 6])
    assert_elbow(got, 3, 0.75 / R2, False, 100.0)
    assert got.strength != pytest.approx(0.75, abs=1e-3)  # the un-divided distance


def test_non_consecutive_ks_use_k_values_not_positions():
    # ks = [2, 4, 8], L = [8, 2, 0]: x_n = (k-2)/6 = [0, 1/3, 1]; y_n = L/8 = [1, 1/4, 0]
    # k=4: 1/3 + 1/4 - 1 = -5/12 -> d = 5/(12 sqrt 2) = 0.29463.
    # (Using positions, x_n = [0, 1/2, 1] would give 1/4/sqrt 2 = 0.17678.)  pct = 100.
    assert_elbow(elbow([8, 2, 0], [2, 4, 8]), 4, 5 / (12 * R2), True, 100.0)


def test_monotonic_only_up_to_the_elbow():
    # L = [10, 4, 3, 3.5, 2.2, 2.1, 2.0]: y_n = (L-2)/8 = [1, 1/4, 1/8, 3/16, ...]
    # k=3: 1/6 + 1/4 - 1 = -7/12 (max); k=4: 1/3 + 1/8 - 1 = -13/24; k=5: 1/2 + 3/16 - 1 = -5/16
    # The rise 3 -> 3.5 comes after the elbow k=3, so the curve still counts as monotonic.
    L = [10, 4, 3, 3.5, 2.2, 2.1, 2.0]
    assert_elbow(elbow(L, KS), 3, 7 / (12 * R2), True, 80.0)


def test_monotonic_allows_equal_steps():
    # ks = 2..6, L = [10, 10, 3, 2, 2]: x_n = [0, 1/4, 1/2, 3/4, 1],
    # y_n = (L-2)/8 = [1, 1, 1/8, 0, 0]
    # x_n + y_n - 1 = [0, 1/4, -3/8, -1/4, 0] -> elbow k = 4, d = (3/8)/sqrt 2.
    # Steps up to k=4: 10 -> 10 (equal counts as non-increasing), 10 -> 3. pct = 8/10*100 = 80.
    assert_elbow(elbow([10, 10, 3, 2, 2], [2, 3, 4, 5, 6]), 4, 0.375 / R2, True, 80.0)


@pytest.mark.parametrize(
    ("L", "d", "is_monotonic"),
    [
        # y_n = (L-2)/8 = [1, 7/8, 1/8, 3/16, 0]; x_n + y_n - 1 = [0, 1/8, -3/8, -1/16, 0]
        # -> elbow k=4 (d = 3/8/sqrt 2); steps 10 -> 9 -> 3 are non-increasing.
        ([10, 9, 3, 3.5, 2], 3 / 8, True),
        # y_n = [1, 15/16, 31/32, 1/16, 0]; x_n + y_n - 1 = [0, 3/16, 15/32, -3/16, 0]
        # -> elbow k=4 (d = 15/32/sqrt 2); 9.5 -> 9.75 rises before it.
        ([10, 9.5, 9.75, 2.5, 2], 15 / 32, False),
    ],
    ids=["falls-to-elbow", "rises-before-elbow"],
)
def test_monotonic_up_to_a_later_elbow(L, d, is_monotonic):
    assert_elbow(elbow(L, [2, 3, 4, 5, 6]), 4, d / R2, is_monotonic, 80.0)


def test_ties_pick_the_first_k():
    # ks = 0..4, L = [1, 0.25, 0.5, 0.75, 0]: x_n = k/4, y_n = L
    # x_n + y_n - 1 = [0, -1/2, 0, 1/2, 0]: |.| ties at k=1 and k=3 -> first, k = 1.
    assert_elbow(elbow([1, 0.25, 0.5, 0.75, 0], range(5)), 1, 0.5 / R2, True, 100.0)


@pytest.mark.parametrize(
    "L", [[8, 7, 6, 5, 4, 3, 2], [0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]], ids=["ints", "tenths"]
)
def test_straight_line_has_no_elbow(L):
    # d is 0 everywhere up to rounding (~1e-16): no bend -> k = k0, strength exactly 0.0.
    got = elbow(L, KS)
    assert (got.k, got.strength, got.is_monotonic) == (2, 0.0, True)


def test_increasing_curve_follows_the_formula():
    # ks = 1..3, L = [1, 2, 4]: x_n = [0, 1/2, 1], y_n = (L-4)/(1-4) = [1, 2/3, 0]
    # k=2: 1/2 + 2/3 - 1 = 1/6 -> d = 1/(6 sqrt 2); 1 -> 2 rises: not monotonic. pct = 3/4*100.
    assert_elbow(elbow([1, 2, 4], [1, 2, 3]), 2, 1 / (6 * R2), False, 75.0)


def test_invariant_to_loss_scale_and_k_shift():
    L = np.array([10, 4, 3, 2.5, 2.2, 2.1, 2.0])
    base = elbow(L, KS)
    moved = elbow(L * 1e-3, [k + 5 for k in KS])
    assert moved.k == base.k + 5
    assert moved.strength == pytest.approx(base.strength, rel=1e-12)
    assert moved.pct_decrease == pytest.approx(base.pct_decrease, rel=1e-12)


# -- degenerate curves ------------------------------------------------------------------------
NAN = math.nan


@pytest.mark.parametrize(
    ("L", "ks", "expected"),
    [
        # rule 1: any non-finite loss -> undefined, pct NaN too
        ([NAN] * 7, KS, (None, NAN, False, NAN)),
        ([10, 4, NAN, 2.5, 2.2, 2.1, 2.0], KS, (None, NAN, False, NAN)),
        ([10, 4, 3, 2.5, 2.2, 2.1, math.inf], KS, (None, NAN, False, NAN)),
        # rule 2: flat, all zero (max L == 0), one point, two points
        ([3, 3, 3], [2, 3, 4], (2, 0.0, True, 0.0)),
        ([0.0] * 7, KS, (2, 0.0, True, 0.0)),
        ([5.0], [4], (4, 0.0, True, 0.0)),
        ([10, 2], [2, 3], (2, 0.0, True, 80.0)),  # pct = 8/10*100
        ([2, 10], [2, 5], (2, 0.0, True, 80.0)),
        # rule 3: L_0 == L_last, not flat: elbow undefined, pct = (5-3)/5*100 = 40
        ([5, 3, 5], [2, 3, 4], (None, NAN, False, 40.0)),
    ],
    ids=["all-nan", "one-nan", "inf", "flat", "all-zero", "one-point", "two-points",
         "two-points-up", "ends-equal"],
)  # fmt: skip
def test_degenerate_curves(L, ks, expected):
    got = elbow(L, ks)
    assert_elbow(got, *expected)
    assert got.defined is (expected[0] is not None)
    table = elbow_table(np.array([L], dtype=float), ks)
    assert_table_row_equals(table, 0, got)


# -- bad input --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("L", "ks", "err", "match"),
    [
        ([], [], ValueError, "ks must be a non-empty"),
        ([1, 2], [[2, 3]], ValueError, "ks must be a non-empty 1-D"),
        ([3, 2, 1], [2, 2, 3], ValueError, "ks must be strictly increasing.*sort ks"),
        ([3, 2, 1], [4, 3, 2], ValueError, "ks must be strictly increasing"),
        ([3, 2, 1], [2, 2.5, 3], ValueError, "ks must hold whole numbers"),
        ([3, 2, 1], [2, 3, np.nan], ValueError, "ks must hold whole numbers"),
        ([3, 2], [True, False], TypeError, "ks must be integers"),
        ([3, 2], ["a", "b"], TypeError, "ks must be integers"),
        ([3, 2, 1], [2, 3], ValueError, "one value per k"),
        ([[3, 2, 1]], [2, 3, 4], ValueError, "use elbow_table"),
        ([3, -2, 1], [2, 3, 4], ValueError, "losses must be >= 0"),
        (["x", "y"], [2, 3], TypeError, "losses must be numeric"),
    ],
    ids=["empty", "ks-2d", "ks-repeat", "ks-decreasing", "ks-fraction", "ks-nan", "ks-bool",
         "ks-str", "length", "losses-2d", "negative", "losses-str"],
)  # fmt: skip
def test_bad_input(L, ks, err, match):
    with pytest.raises(err, match=match):
        elbow(L, ks)


def test_table_bad_input():
    with pytest.raises(ValueError, match=r"2-D \[n_curves, n_k\]"):
        elbow_table(np.array([3.0, 2.0, 1.0]), [2, 3, 4])
    with pytest.raises(ValueError, match="one value per k"):
        elbow_table(np.ones((2, 3)), [2, 3])


def test_float_whole_ks_accepted():
    assert elbow([8, 2, 0], np.array([2.0, 4.0, 8.0])).k == 4


# -- k differential ---------------------------------------------------------------------------
def test_k_differential():
    assert k_differential(3, 5) == 2
    assert k_differential(5, 3) == 2
    assert k_differential(4, 4) == 0
    assert k_differential(np.int64(7), 2.0) == 5
    assert k_differential(None, 3) is None
    assert k_differential(3, math.nan) is None
    got = k_differential(np.array([3.0, np.nan, 8.0]), np.array([5.0, 2.0, 8.0]))
    np.testing.assert_array_equal(got, [2.0, np.nan, 0.0])
    with pytest.raises(ValueError, match="recon_k must be a whole number"):
        k_differential(2.5, 3)


# -- vectorised == scalar ---------------------------------------------------------------------
def assert_table_row_equals(table, i: int, one: Elbow) -> None:
    if one.k is None:
        assert math.isnan(table.k[i])
    else:
        assert table.k[i] == one.k
    np.testing.assert_array_equal(table.strength[i], one.strength)  # NaN == NaN here
    np.testing.assert_array_equal(table.pct_decrease[i], one.pct_decrease)
    assert bool(table.is_monotonic[i]) is one.is_monotonic


def _curves(rng: np.random.Generator, n_k: int) -> np.ndarray:
    """Random decreasing, noisy and degenerate curves [n, n_k]."""
    decreasing = np.sort(rng.exponential(size=(300, n_k)), axis=1)[:, ::-1]
    noisy = rng.uniform(0, 5, size=(300, n_k))
    steps = rng.integers(0, 4, size=(200, n_k)).astype(float)  # many exact ties and flats
    special = np.zeros((6, n_k))
    special[1] = 3.0
    special[2, n_k // 2] = np.nan
    special[3] = np.linspace(8, 2, n_k)
    special[4, -1] = np.inf
    special[5] = special[3]
    special[5, -1] = special[5, 0]  # L_0 == L_last
    return np.concatenate([decreasing, noisy, steps, special])


@pytest.mark.parametrize("ks", [[2, 3, 4, 5, 6, 7, 8], [1, 2, 5, 9], [3, 7], [4]], ids=str)
def test_table_equals_scalar(ks):
    curves = _curves(np.random.default_rng(1), len(ks))
    table = elbow_table(curves, ks)
    assert table.k.shape == table.strength.shape == (len(curves),)
    assert table.is_monotonic.dtype == bool
    for i, row in enumerate(curves):
        assert_table_row_equals(table, i, elbow(row, ks))


def test_table_of_no_curves():
    table = elbow_table(np.zeros((0, 7)), KS)
    assert all(a.shape == (0,) for a in table)
