"""Diffusion extrema (featgeo.archetypes.extrema): vertices of known simplices, the ends of a
curved manifold, determinism and subsampling, bad inputs, degenerate inputs, and the Laplacian
spectrum against a Laplacian built by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from featgeo.archetypes.extrema import (
    _pairwise_sq_dists,
    _successive_projection,
    diffusion_extrema,
    diffusion_map,
)


# -- builders -------------------------------------------------------------------------------
def simplex_points(
    k: int, alpha: float, *, seed: int = 0, n: int = 1000, d: int = 64, noise: float = 0.01
) -> tuple[np.ndarray, np.ndarray]:
    """n points ``Dirichlet(alpha) @ V + N(0, noise^2)`` on a k-vertex simplex in R^d.

    The vertices V [k, d] span a random rank-k subspace: a slightly jittered regular simplex
    (edge ~ sqrt(2)) rotated by a random orthonormal basis Q [d, k]."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((d, k)))  # [d, k]
    V = (np.eye(k) + 0.1 * rng.standard_normal((k, k))) @ Q.T  # [k, d]
    X = rng.dirichlet(np.full(k, alpha), size=n) @ V + noise * rng.standard_normal((n, d))
    return X, V


def vertex_misses(X: np.ndarray, V: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per true vertex: distance to the nearest chosen point and to the nearest data point
    (the best any choice could do), both in units of the shortest edge; and which chosen point
    is nearest."""
    k = len(V)
    edge = min(np.linalg.norm(V[i] - V[j]) for i in range(k) for j in range(i + 1, k))
    to_chosen = np.linalg.norm(V[:, None] - X[idx][None], axis=2) / edge  # [k, len(idx)]
    best = np.linalg.norm(V[:, None] - X[None], axis=2).min(axis=1) / edge  # [k]
    return to_chosen.min(axis=1), best, to_chosen.argmin(axis=1)


# -- 1. known simplices ---------------------------------------------------------------------
# Measured (seed 0 / worst of seeds 0-19) miss = distance from each vertex to the nearest
# returned point, in shortest-edge units: k=3 a=1: 0.070/0.107; k=3 a=0.3: 0.059/0.076;
# k=4 a=1: 0.137/0.176; k=4 a=0.3: 0.059/0.073; k=5 a=1: 0.213/0.268; k=5 a=0.3: 0.061/0.083.
# Most of it is sampling: with Dirichlet(1) in 4 dimensions no point lies near a vertex (the
# nearest data point is 0.207 away for k=5 seed 0); the excess over the nearest data point was
# at most 0.084 over all 120 runs (noise alone is ~0.057 edge lengths).
SIMPLEX_CASES = [
    pytest.param(3, 1.0, 0.15, id="k3-uniform"),
    pytest.param(3, 0.3, 0.12, id="k3-peaked"),
    pytest.param(4, 1.0, 0.25, id="k4-uniform"),
    pytest.param(4, 0.3, 0.12, id="k4-peaked"),
    pytest.param(5, 1.0, 0.35, id="k5-uniform"),
    pytest.param(5, 0.3, 0.12, id="k5-peaked"),
]
MAX_EXCESS = 0.12


@pytest.mark.parametrize(("k", "alpha", "tol"), SIMPLEX_CASES)
def test_extrema_are_the_simplex_vertices(k, alpha, tol):
    X, V = simplex_points(k, alpha)
    idx = diffusion_extrema(X, k)
    assert idx.dtype == np.int64 and idx.shape == (k,)
    miss, best, nearest = vertex_misses(X, V, idx)
    assert sorted(nearest) == list(range(k)), "two vertices share one extremum"
    assert miss.max() <= tol, miss
    assert (miss - best).max() <= MAX_EXCESS, miss - best


@pytest.mark.parametrize("alpha", [1.0, 0.3], ids=["uniform", "peaked"])
def test_first_three_of_eight_cover_a_triangle(alpha):
    """k_max larger than the true number of vertices: the first 3 of 8 are still the vertices
    (needs the density normalisation and the diffusion time; without them a peaked triangle's
    first 3 included an edge midpoint)."""
    X, V = simplex_points(3, alpha)
    idx = diffusion_extrema(X, 8)
    assert len(set(idx.tolist())) == 8
    miss, best, nearest = vertex_misses(X, V, idx[:3])
    assert sorted(nearest) == [0, 1, 2]
    assert miss.max() <= 0.15 and (miss - best).max() <= MAX_EXCESS, miss


def test_ends_of_a_curved_arc_are_found():
    """A 270-degree arc: the extrema are its two ends, which are NOT the Euclidean farthest pair
    (that is a near-diameter), so this needs distances along the manifold."""
    rng = np.random.default_rng(0)
    theta = rng.uniform(0.0, 1.5 * np.pi, 600)
    Q, _ = np.linalg.qr(rng.standard_normal((64, 2)))
    X = np.c_[np.cos(theta), np.sin(theta)] @ Q.T + 0.01 * rng.standard_normal((600, 64))
    ends = np.sort(theta[diffusion_extrema(X, 2)])
    np.testing.assert_allclose(ends, [theta.min(), theta.max()], atol=0.05)


def test_successive_projection_picks_vertices_where_farthest_point_would_not():
    """A thin right triangle A=(0,0), B=(4,0), C=(0,1): after A and B, the point farthest from
    both is the middle of the hypotenuse, but the point farthest from line AB is C; only the
    affine-hull rule returns the three vertices."""
    g = np.linspace(0.0, 1.0, 21)
    bary = np.array([(a, b, 1 - a - b) for a in g for b in g if a + b <= 1 + 1e-12])  # [231, 3]
    pts = bary @ np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 1.0]])  # [231, 2]
    d2 = cdist(pts, pts, "sqeuclidean")
    idx = _successive_projection(pts - pts.mean(axis=0), d2, 3)
    vertices = {int(np.flatnonzero(bary[:, i] == 1.0)[0]) for i in range(3)}
    assert set(idx.tolist()) == vertices


def test_pairwise_distances_match_cdist_and_duplicates_are_exactly_zero():
    """The |a|^2 + |b|^2 - 2 a.b shortcut far from the origin: no negative round-off, exact
    zeros for duplicate rows, and the same numbers as scipy's cdist (in units of max |x - mean|,
    the scale the helper works in)."""
    base = 1e3 + np.random.default_rng(0).standard_normal((40, 576))
    X = np.r_[base, base[:10]]  # rows 40..49 duplicate rows 0..9
    d2 = _pairwise_sq_dists(X)
    scale = np.abs(X - X.mean(axis=0)).max()
    np.testing.assert_allclose(d2, cdist(X, X, "sqeuclidean") / scale**2, rtol=1e-9, atol=1e-12)
    assert d2.min() == 0.0
    assert (d2[np.arange(10), np.arange(40, 50)] == 0.0).all()


# -- 2. determinism, subsampling, invariances -----------------------------------------------
def test_same_seed_same_indices_and_subsample_indexes_full_x():
    X, V = simplex_points(4, 0.3, n=1500, seed=3)
    a = diffusion_extrema(X, 6, max_points=1000, seed=7)
    b = diffusion_extrema(X, 6, max_points=1000, seed=7)
    np.testing.assert_array_equal(a, b)
    # The indices are into the full X: they are rows of the seeded subsample, and the same
    # points as the extrema of that subsample computed directly.
    rows = np.sort(np.random.default_rng(7).choice(1500, size=1000, replace=False))
    assert np.isin(a, rows).all() and a.max() < 1500
    np.testing.assert_array_equal(a, rows[diffusion_extrema(X[rows], 6)])
    # Another seed draws another subsample; both must still find the 4 vertices.
    c = diffusion_extrema(X, 6, max_points=1000, seed=8)
    assert not np.isin(c, rows).all()
    assert sorted(vertex_misses(X, V, c[:4])[2]) == [0, 1, 2, 3]


def test_invariant_to_row_order_rotation_scale_and_tensor_input():
    X, _ = simplex_points(4, 1.0, n=400, seed=1)
    idx = diffusion_extrema(X, 4)
    perm = np.random.default_rng(0).permutation(400)
    np.testing.assert_array_equal(perm[diffusion_extrema(X[perm], 4)], idx)
    R, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((64, 64)))
    np.testing.assert_array_equal(diffusion_extrema(1e3 * X @ R + 5.0, 4), idx)
    np.testing.assert_array_equal(diffusion_extrema(torch.from_numpy(X).float(), 4), idx)


# -- 3. bad inputs --------------------------------------------------------------------------
def _nan_points():
    X = np.random.default_rng(0).standard_normal((20, 3))
    X[4, 1] = np.nan
    return X


def _inf_points():
    X = np.random.default_rng(0).standard_normal((20, 3))
    X[7, 0] = -np.inf
    return X


GOOD = np.random.default_rng(0).standard_normal((20, 3))
BAD_INPUTS = [
    pytest.param(GOOD[:3], {"k_max": 5}, ValueError, r"3 points but k_max=5", id="too-few"),
    pytest.param(GOOD, {"k_max": 0}, ValueError, r"k_max must be >= 1, got 0", id="k0"),
    pytest.param(GOOD, {"k_max": 2.5}, TypeError, r"k_max must be an int", id="k-float"),
    pytest.param(GOOD, {"k_max": True}, TypeError, r"k_max must be an int", id="k-bool"),
    pytest.param(_nan_points(), {"k_max": 3}, ValueError, r"NaN or inf in rows \[4\]", id="nan"),
    pytest.param(_inf_points(), {"k_max": 3}, ValueError, r"NaN or inf in rows \[7\]", id="inf"),
    pytest.param(GOOD[0], {"k_max": 1}, ValueError, r"2-D array \[n, d\]", id="1d"),
    pytest.param(GOOD[:0], {"k_max": 1}, ValueError, r"non-empty.*\(0, 3\)", id="empty"),
    pytest.param(GOOD.astype(complex), {"k_max": 2}, TypeError, r"real numbers", id="complex"),
    pytest.param(GOOD > 0, {"k_max": 2}, TypeError, r"real numbers.*bool", id="bool"),
    pytest.param([["a", "b"]], {"k_max": 1}, TypeError, r"real numbers", id="strings"),
    pytest.param(GOOD, {"k_max": 2, "knn": 0}, ValueError, r"knn must be >= 1", id="knn0"),
    pytest.param(
        GOOD, {"k_max": 5, "max_points": 4}, ValueError, r"max_points must be >= k_max=5", id="mp"
    ),
    pytest.param(GOOD, {"k_max": 2, "seed": -1}, ValueError, r"seed must be >= 0", id="seed"),
]


@pytest.mark.parametrize(("X", "kwargs", "error", "match"), BAD_INPUTS)
def test_bad_inputs_are_refused(X, kwargs, error, match):
    with pytest.raises(error, match=match):
        diffusion_extrema(X, **kwargs)


def test_diffusion_map_refuses_too_many_eigenvectors():
    with pytest.raises(ValueError, match=r"n_eigenvectors must be <= the number of points \(20\)"):
        diffusion_map(GOOD, 21)


# -- degenerate inputs ----------------------------------------------------------------------
def test_duplicates_give_distinct_indices_one_per_distinct_point_first():
    centres = np.random.default_rng(0).standard_normal((3, 5))
    X = np.repeat(centres, 100, axis=0)  # 3 distinct points, 100 copies each
    idx = diffusion_extrema(X, 5)
    assert len(set(idx.tolist())) == 5
    assert sorted((idx[:3] // 100).tolist()) == [0, 1, 2]


@pytest.mark.parametrize(
    ("X", "k_max"),
    [
        pytest.param(np.zeros((10, 4)), 4, id="all-identical"),
        pytest.param(np.ones((1, 4)), 1, id="one-point"),
        pytest.param(np.random.default_rng(0).standard_normal((8, 3)), 8, id="n-equals-k"),
        pytest.param(np.random.default_rng(0).standard_normal((2, 3)), 1, id="two-points"),
    ],
)
def test_tiny_and_constant_inputs_return_distinct_indices(X, k_max):
    idx = diffusion_extrema(X, k_max)
    assert idx.shape == (k_max,) and len(set(idx.tolist())) == k_max
    assert idx.min() >= 0 and idx.max() < len(X)


def test_disconnected_graph_reaches_every_component():
    rng = np.random.default_rng(0)
    X = np.r_[rng.standard_normal((300, 8)), rng.standard_normal((300, 8)) + 100.0]
    assert diffusion_map(X, 3).n_components == 2
    idx = diffusion_extrema(X, 4)
    assert sorted((idx[:2] // 300).tolist()) == [0, 1]
    assert len(set(idx.tolist())) == 4


# -- 4. the spectrum against a Laplacian built by hand --------------------------------------
def hand_built_random_walk(X: np.ndarray, knn: int) -> tuple[np.ndarray, np.ndarray]:
    """The documented graph, written out with loops: returns (L, P) with L the normalised
    Laplacian and P = D^-1 W the random walk of the alpha=1 normalised kernel W."""
    n = len(X)
    dist = [[math.dist(X[i], X[j]) for j in range(n)] for i in range(n)]
    neighbours, sigma = [], []
    for i in range(n):
        order = sorted(range(n), key=lambda j: dist[i][j])
        assert order[0] == i
        neighbours.append(set(order[1 : knn + 1]))
        sigma.append(dist[i][order[max(1, knn // 3)]])  # the (knn//3)-th neighbour
    K = np.eye(n)
    for i in range(n):
        for j in range(n):
            if i != j and (j in neighbours[i] or i in neighbours[j]):
                K[i, j] = math.exp(-(dist[i][j] ** 2) / (sigma[i] * sigma[j]))
    q = K.sum(axis=1)
    W = K / q[:, None] / q[None, :]
    deg = W.sum(axis=1)
    L = np.eye(n) - W / np.sqrt(deg)[:, None] / np.sqrt(deg)[None, :]
    return L, W / deg[:, None]


@pytest.mark.parametrize(
    ("n", "knn", "m"),
    [pytest.param(40, 6, 5, id="dense-solver"), pytest.param(230, 12, 6, id="lanczos")],
)
def test_laplacian_spectrum_matches_hand_built_oracle(n, knn, m):
    X = np.random.default_rng(n).standard_normal((n, 3)) * [3.0, 1.0, 0.3]
    L, P = hand_built_random_walk(X, knn)
    expected = np.linalg.eigvalsh(L)[:m]
    dm = diffusion_map(X, m, knn=knn)
    np.testing.assert_allclose(dm.eigenvalues, expected, atol=1e-10)
    assert dm.n_components == 1 and abs(dm.eigenvalues[0]) < 1e-10
    # Each non-trivial coordinate is a right eigenvector of the walk: P psi = mu psi.
    mu = 1.0 - dm.eigenvalues[1:]
    coords = dm.coordinates[:, 1:]
    np.testing.assert_allclose(P @ coords, coords * mu, atol=1e-9 * np.abs(coords).max())
    np.testing.assert_allclose(dm.stationary.sum(), 1.0)
    # Centred at the stationary mean; the trivial coordinate is then 0.
    np.testing.assert_allclose(dm.stationary @ dm.coordinates, 0.0, atol=1e-12)
    np.testing.assert_allclose(dm.coordinates[:, 0], 0.0, atol=1e-10)
    # Reruns agree bit for bit (fixed start vector), and reordering the points reorders the
    # coordinates without flipping any sign (each eigenvector's sign is fixed by its data).
    np.testing.assert_array_equal(diffusion_map(X, m, knn=knn).coordinates, dm.coordinates)
    perm = np.random.default_rng(0).permutation(n)
    np.testing.assert_allclose(
        diffusion_map(X[perm], m, knn=knn).coordinates,
        dm.coordinates[perm],
        atol=1e-8 * np.abs(dm.coordinates).max(),
    )
