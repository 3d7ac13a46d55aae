"""Synthetic archetype suite: determinism, subspace, exact weights, scale, names, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from featgeo.archetypes.synthetic import (
    CENTRE_NORM,
    CONTROL_RMS,
    SyntheticSet,
    derived_seed,
    gaussian_blob,
    simplex_points,
    synthetic_suite,
    uniform_ball,
)

D = 48  # small ambient dimension keeps every test fast; the code path is the same as d=576


def make_simplex(**overrides) -> SyntheticSet:
    kwargs = {"n": 300, "k_star": 4, "d": D, "rank": 8, "alpha": 1.0, "noise": 0.01, "seed": 3}
    kwargs.update(overrides)
    return simplex_points(**kwargs)


def subspace_residual(s: SyntheticSet) -> float:
    """||X - X B B^T|| / ||X||: 0 when X lies in span(basis)."""
    X = s.X.astype(np.float64)
    return float(np.linalg.norm(X - X @ s.basis @ s.basis.T) / np.linalg.norm(X))


CONTROLS = [gaussian_blob, uniform_ball]


# -- determinism ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make",
    [make_simplex, lambda **kw: gaussian_blob(200, d=D, rank=4, **kw),
     lambda **kw: uniform_ball(200, d=D, rank=4, **kw)],
    ids=["simplex", "blob", "ball"],
)  # fmt: skip
def test_same_seed_same_bytes(make):
    a, b, c = make(seed=11), make(seed=11), make(seed=12)
    assert a.X.tobytes() == b.X.tobytes()
    assert a.basis.tobytes() == b.basis.tobytes()
    assert a.X.tobytes() != c.X.tobytes()


def test_noise_level_changes_only_the_noise():
    # Separate seed streams: the subspace, vertices and weights do not depend on noise.
    clean, noisy = make_simplex(noise=0.0), make_simplex(noise=0.05)
    np.testing.assert_array_equal(clean.vertices, noisy.vertices)
    np.testing.assert_array_equal(clean.weights, noisy.weights)
    eps = (noisy.X.astype(np.float64) - clean.X) @ clean.basis  # [n, rank] noise coordinates
    assert eps.std() == pytest.approx(0.05, rel=0.1)


def test_suite_sets_depend_only_on_seed_and_name():
    suite = synthetic_suite(n=40, d=D, seed=5)
    assert [s.name for s in suite] == [s.name for s in synthetic_suite(n=40, d=D, seed=5)]
    for s in suite:
        assert s.seed == derived_seed(5, s.name)
    # Rebuilding one set on its own (as if the rest of the grid were different) gives the
    # same bytes: adding sets to the suite cannot change the others.
    one = next(s for s in suite if s.name == "simplex_k4_r8_a0.3_n0.05")
    alone = simplex_points(40, 4, d=D, rank=8, alpha=0.3, noise=0.05, seed=one.seed)
    assert alone.X.tobytes() == one.X.tobytes()
    blob = next(s for s in suite if s.name == "blob_r3")
    assert gaussian_blob(40, d=D, rank=3, seed=blob.seed).X.tobytes() == blob.X.tobytes()
    other = synthetic_suite(n=40, d=D, seed=6)
    assert all(a.X.tobytes() != b.X.tobytes() for a, b in zip(suite, other, strict=True))


# -- the suite grid ---------------------------------------------------------------------------
def test_suite_grid_names_and_controls():
    suite = synthetic_suite(n=20, d=D, seed=0)
    names = [s.name for s in suite]
    assert len(names) == len(set(names)) == 3 * 3 * 2 * 2 + 2 * 5
    assert "simplex_k4_r8_a0.3_n0.05" in names and "simplex_k3_r3_a1_n0.01" in names
    simplices = [s for s in suite if s.kind == "simplex"]
    assert {(s.k_star, s.rank) for s in simplices} == {
        (k, r) for k in (3, 4, 5) for r in (k, 8, 16)
    }
    controls = [s for s in suite if s.kind != "simplex"]
    assert sorted(s.name for s in controls) == sorted(
        f"{kind}_r{r}" for kind in ("blob", "ball") for r in (2, 3, 4, 8, 16)
    )
    for s in controls:
        assert s.k_star is None and s.vertices is None and s.weights is None
    for s in suite:
        assert s.X.shape == (20, D) and s.X.dtype == np.float32


def test_suite_skips_ranks_above_d():
    names = [s.name for s in synthetic_suite(n=10, d=8, seed=0)]
    assert not any("_r16" in name for name in names)
    assert "simplex_k5_r8_a1_n0.05" in names and "ball_r8" in names


# -- geometry ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("k_star", "rank"), [(3, 2), (4, 4), (5, 16)], ids=str)
def test_in_subspace_noise_keeps_the_rank(k_star, rank):
    s = make_simplex(k_star=k_star, rank=rank, noise=0.05)
    assert s.basis.shape == (D, rank)
    np.testing.assert_allclose(s.basis.T @ s.basis, np.eye(rank), atol=1e-12)
    assert subspace_residual(s) < 1e-6  # float32 rounding only
    sigma = np.linalg.svd(s.X.astype(np.float64), compute_uv=False)
    assert sigma[rank - 1] > 1e-3 * sigma[0]  # noise fills the whole subspace ...
    assert sigma[rank] < 1e-5 * sigma[0]  # ... and nothing outside it


def test_full_space_noise_leaves_the_subspace():
    s = make_simplex(noise=0.05, noise_full=True)
    assert s.name.endswith("_full")
    X = s.X.astype(np.float64)
    outside = X - X @ s.basis @ s.basis.T  # [n, d]: pure noise in d - rank directions
    assert outside.std() == pytest.approx(0.05, rel=0.1)


@pytest.mark.parametrize(("k_star", "rank"), [(3, 2), (4, 4), (4, 8)], ids=str)
def test_dirichlet_weights_recovered_exactly(k_star, rank):
    # Oracle: with noise 0, x = w @ V and sum(w) = 1, so w solves [V^T; 1^T] w = [x; 1]; the
    # row of ones makes the system full rank even when rank = k_star - 1 (V^T has rank k-1).
    s = make_simplex(k_star=k_star, rank=rank, noise=0.0, alpha=0.5)
    A = np.vstack([s.vertices.T, np.ones(k_star)])  # [d+1, k]
    B = np.vstack([s.X.T.astype(np.float64), np.ones(len(s.X))])  # [d+1, n]
    w, *_ = np.linalg.lstsq(A, B, rcond=None)
    np.testing.assert_allclose(w.T, s.weights, atol=1e-5)  # float32 X
    assert (s.weights >= 0).all()
    np.testing.assert_allclose(s.weights.sum(axis=1), 1.0, atol=1e-12)


@pytest.mark.parametrize("k_star", [2, 3, 5])
def test_simplex_scale_and_shape(k_star):
    s = make_simplex(k_star=k_star, rank=k_star + 1, max_condition=2.0)
    V = s.vertices
    edges = np.linalg.norm(V[:, None] - V[None], axis=-1)[np.triu_indices(k_star, 1)]
    assert edges.mean() == pytest.approx(1.0, abs=1e-12)  # documented scale
    assert np.linalg.norm(V.mean(axis=0)) == pytest.approx(CENTRE_NORM, abs=1e-12)
    np.testing.assert_allclose(V - V @ s.basis @ s.basis.T, 0.0, atol=1e-12)
    sigma = np.linalg.svd(V - V.mean(axis=0), compute_uv=False)[: k_star - 1]
    assert sigma[0] / sigma[-1] <= 2.0 + 1e-9  # max_condition bounds the aspect ratio


@pytest.mark.parametrize("k_star", [3, 4, 5])
def test_small_alpha_concentrates_near_vertices(k_star):
    # Measured at n=1000: the median nearest-vertex distance ratio is 0.54 (k=3) .. 0.75 (k=5)
    # and the mean max weight grows by 0.15-0.18; the thresholds leave a wide margin.
    def stats(alpha):
        s = make_simplex(n=1000, k_star=k_star, alpha=alpha, noise=0.0, seed=7)
        dist = np.linalg.norm(s.X[:, None].astype(np.float64) - s.vertices[None], axis=-1)
        return np.median(dist.min(axis=1)), s.weights.max(axis=1).mean()

    (near_03, top_03), (near_1, top_1) = stats(0.3), stats(1.0)
    assert near_03 < 0.85 * near_1
    assert top_03 > top_1 + 0.08


@pytest.mark.parametrize("make", CONTROLS, ids=["blob", "ball"])
@pytest.mark.parametrize("rank", [2, 8])
def test_controls_scale_and_subspace(make, rank):
    s = make(2000, d=D, rank=rank, seed=1)
    assert s.rank == rank and s.k_star is None and s.kind in ("blob", "ball")
    assert subspace_residual(s) < 1e-6
    X = s.X.astype(np.float64)
    rms = np.sqrt(((X - X.mean(axis=0)) ** 2).sum(axis=1).mean())
    assert rms == pytest.approx(CONTROL_RMS, rel=0.1)
    assert np.linalg.norm(X.mean(axis=0)) == pytest.approx(CENTRE_NORM, abs=0.05)


def test_ball_is_bounded_and_blob_is_anisotropic():
    ball = uniform_ball(2000, d=D, rank=3, seed=2)
    z = (ball.X.astype(np.float64) @ ball.basis) - ball.X.astype(np.float64).mean(0) @ ball.basis
    radius = CONTROL_RMS * np.sqrt(5 / 3)
    assert np.linalg.norm(z, axis=1).max() <= radius + 0.02
    blob = gaussian_blob(4000, d=D, rank=4, seed=2)
    var = np.linalg.svd(blob.X - blob.X.mean(0), compute_uv=False) ** 2
    assert var[0] / var[3] == pytest.approx(9.0, rel=0.3)  # std ratio 3 between first and last


# -- bad input --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "err", "match"),
    [
        ({"n": 0}, ValueError, "n must be >= 1"),
        ({"n": 2.0}, TypeError, "n must be an int"),
        ({"k_star": 1}, ValueError, "k_star must be >= 2"),
        ({"k_star": 5, "rank": 3}, ValueError, r"rank must be >= k_star - 1 = 4"),
        ({"rank": D + 1}, ValueError, "rank must be <= d"),
        ({"alpha": 0.0}, ValueError, "alpha must be finite and > 0"),
        ({"alpha": float("nan")}, ValueError, "alpha must be finite"),
        ({"noise": -0.1}, ValueError, "noise must be finite and >= 0"),
        ({"noise": "0.1"}, TypeError, "noise must be a number"),
        ({"max_condition": 0.5}, ValueError, "max_condition must be >= 1"),
        ({"seed": -1}, ValueError, "seed must be >= 0"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_bad_input(overrides, err, match):
    with pytest.raises(err, match=match):
        make_simplex(**overrides)


@pytest.mark.parametrize("make", CONTROLS, ids=["blob", "ball"])
def test_controls_bad_input(make):
    with pytest.raises(ValueError, match="rank must be <= d"):
        make(10, d=4, rank=5)
    with pytest.raises(ValueError, match="rank must be >= 1"):
        make(10, d=4, rank=0)
