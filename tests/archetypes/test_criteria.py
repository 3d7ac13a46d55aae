"""k-selection criteria on hand-written loss curves (values worked out in the comments)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from featgeo.archetypes.criteria import (
    CRITERIA,
    DEFAULT_CRITERION,
    KNEE_FRACTION,
    envelope,
    get_criterion,
    select_k,
)

KS = np.arange(2, 9)
FLAT_ARCH = np.zeros(7)


def test_envelope_is_the_running_minimum():
    np.testing.assert_array_equal(envelope([5, 3, 4, 1, 2]), [5, 3, 3, 1, 1])


def test_recon_knee_by_hand():
    # Running minimum [10, 6, 1.5, 1, 1, 1, 1]; floor 1, span 9; 0.1 * 9 = 0.9 above the floor
    # means <= 1.9: first at k=4 (1.5). Strength = (6 - 1.5) / 9 = 0.5.
    recon = [10, 6, 1.5, 1, 1.2, 1, 1]
    choice = select_k(recon, FLAT_ARCH, KS, "recon_knee")
    assert choice.k == 4
    assert choice.strength == pytest.approx(0.5)
    assert KNEE_FRACTION == 0.1


def test_recon_knee_sharp_step_is_stronger_than_a_slope():
    sharp = select_k([10, 10, 10, 1, 1, 1, 1], FLAT_ARCH, KS, "recon_knee")
    slope = select_k([10, 8.5, 7, 5.5, 4, 2.5, 1], FLAT_ARCH, KS, "recon_knee")
    assert (sharp.k, sharp.strength) == (5, pytest.approx(1.0))
    # Slope: floor 1, span 9, <= 1.9 first at k=8; strength = 1.5 / 9.
    assert (slope.k, slope.strength) == (8, pytest.approx(1.5 / 9))


def test_recon_knee_degenerate_curves():
    assert select_k([2.0] * 7, FLAT_ARCH, KS, "recon_knee") == (2, 0.0)
    nan = select_k([1, 2, math.nan, 1, 1, 1, 1], FLAT_ARCH, KS, "recon_knee")
    assert nan.k is None and math.isnan(nan.strength)
    # The first k already at the floor: k0 with strength 0.
    assert select_k([1, 1.05, 5, 5, 5, 5, 5], FLAT_ARCH, KS, "recon_knee") == (2, 0.0)


def test_elbow_criteria_use_the_spec_elbow():
    # recon [10, 4, 3, 2.5, 2.2, 2.1, 2.0]: x_n = (k-2)/6, y_n = (L-2)/8; d at k=3 is
    # |1/6 + 2/8 - 1| / sqrt(2) = (7/12)/sqrt(2), the largest.
    recon = [10, 4, 3, 2.5, 2.2, 2.1, 2.0]
    assert select_k(recon, FLAT_ARCH, KS, "recon_elbow") == (
        3,
        pytest.approx(7 / 12 / math.sqrt(2)),
    )
    assert select_k(FLAT_ARCH + 1, recon, KS, "archetypal_elbow").k == 3
    # The envelope removes the bump at k=6 before taking the elbow.
    bumped = [10, 4, 3, 2.5, 9.0, 2.1, 2.0]
    assert select_k(bumped, FLAT_ARCH, KS, "recon_envelope_elbow").k == 3


def test_combined_elbow_adds_normalised_curves():
    # recon/10 + arch/8 = [2, 0.5, 0.3, 0.25, ...]: the elbow of that sum at k=3.
    recon = np.array([10, 4, 2, 1.5, 1.4, 1.3, 1.2])
    arch = np.array([8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8])
    assert select_k(recon, arch, KS, "combined_elbow").k == 3


def test_registry_and_errors():
    assert DEFAULT_CRITERION in CRITERIA
    with pytest.raises(ValueError, match="unknown k criterion 'x'; choose one of"):
        get_criterion("x")
    with pytest.raises(ValueError, match="one entry per k"):
        select_k([1, 2], [1, 2, 3], [2, 3, 4])


def test_inside_fraction_against_a_hand_triangle():
    from featgeo.archetypes.criteria import inside_fraction

    anchors = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    points = np.array([[0.2, 0.2], [0.5, 0.5], [0.95, 0.1], [-0.05, 0.5], [-0.2, 0.5], [1, 1]])
    # lambda = (1 - x - y, x, y): inside (>= -0.1) for the first four, outside for the last two.
    assert inside_fraction(points, anchors) == pytest.approx(4 / 6)
    assert inside_fraction(points, anchors, tol=0.0) == pytest.approx(2 / 6)
    with pytest.raises(ValueError, match="must share D"):
        inside_fraction(points, np.zeros((3, 3)))


def test_knee_extra_vertex_needs_inside_fractions():
    with pytest.raises(ValueError, match="needs the inside fractions"):
        select_k([3, 2, 1, 1, 1, 1, 1], FLAT_ARCH, KS, "knee_extra_vertex")
    # Knee at k=3 (recon within 10% of its range); inside stays >= 0.9 up to k=4: k=4.
    choice = select_k(
        [3, 1.1, 1, 1, 1, 1, 1], FLAT_ARCH, KS, "knee_extra_vertex",
        inside=[1, 0.97, 0.93, 0.4, 0.2, 0.1, 0.1],
    )  # fmt: skip
    assert choice == (4, pytest.approx(0.93))


@pytest.mark.parametrize("k_star", [3, 4, 5])
def test_default_criterion_recovers_k_star_of_a_trained_simplex(k_star):
    """Known answer end to end: a k*-vertex simplex in a rank-8 subspace of R^64, at the size
    of real cluster reconstructions, AANets for k = 2..7 in one stack, then the default."""
    from featgeo.archetypes.aanet import span_basis
    from featgeo.archetypes.batched import ModelSpec, train_stack
    from featgeo.archetypes.config import AANetConfig
    from featgeo.archetypes.criteria import inside_fraction
    from featgeo.archetypes.extrema import diffusion_extrema
    from featgeo.archetypes.sources import ArrayBatches
    from featgeo.archetypes.synthetic import simplex_points

    ks = list(range(2, 8))
    data = simplex_points(1500, k_star, d=64, rank=8, alpha=1.0, noise=0.01, seed=10 + k_star)
    X = data.X * 28.0
    Y = X @ span_basis(X)
    anchors = Y[diffusion_extrema(Y, ks[-1])]
    source = ArrayBatches([Y], [anchors], batch_size=256, d_model=[64])
    fits = train_stack([ModelSpec(k, 0, k) for k in ks], source, AANetConfig())
    choice = select_k(
        [f.final["recon"] for f in fits],
        [f.final["archetypal"] for f in fits],
        ks,
        inside=[inside_fraction(Y, anchors[:k]) for k in ks],
    )
    assert choice.k == k_star
