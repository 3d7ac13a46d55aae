"""The fixed simplex and barycentric coordinates against hand computations and numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from featgeo.archetypes.simplex import barycentric, barycentric_operator, simplex_vertices


@pytest.mark.parametrize("k", range(2, 9))
def test_vertices_form_a_regular_simplex_centred_at_zero(k):
    v = simplex_vertices(k).numpy()
    assert v.shape == (k, k - 1)
    np.testing.assert_allclose(v.sum(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1, atol=1e-12)
    gram = v @ v.T  # regular: every pair at the same angle, cos = -1/(k-1)
    off = gram[~np.eye(k, dtype=bool)]
    np.testing.assert_allclose(off, -1 / (k - 1), atol=1e-12)


def test_k3_by_hand():
    # Helmert rows (1,-1,0)/sqrt2 and (1,1,-2)/sqrt6, scaled by sqrt(3/2).
    v = simplex_vertices(3).numpy()
    s = math.sqrt(1.5)
    expected = np.array([[1 / math.sqrt(2), 1 / math.sqrt(6)],
                         [-1 / math.sqrt(2), 1 / math.sqrt(6)],
                         [0.0, -2 / math.sqrt(6)]]) * s  # fmt: skip
    np.testing.assert_allclose(v, expected, atol=1e-12)


@pytest.mark.parametrize("k", [2, 3, 5, 8])
def test_barycentric_inverts_the_convex_combination(k):
    rng = np.random.default_rng(k)
    lam = rng.normal(size=(50, k))
    lam /= lam.sum(axis=1, keepdims=True)  # affine weights, some negative
    v = simplex_vertices(k)
    z = torch.from_numpy(lam) @ v
    np.testing.assert_allclose(barycentric(z, k).numpy(), lam, atol=1e-10)
    # numpy oracle: solve [V^T; 1] lambda = [z; 1]
    system = np.vstack([v.numpy().T, np.ones(k)])
    rhs = np.vstack([z.numpy().T, np.ones(len(z))])
    np.testing.assert_allclose(np.linalg.solve(system, rhs).T, lam, atol=1e-10)


def test_vertices_have_unit_coordinates_and_centre_is_uniform():
    a, c = barycentric_operator(4)
    np.testing.assert_allclose((simplex_vertices(4) @ a + c).numpy(), np.eye(4), atol=1e-12)
    np.testing.assert_allclose(c.numpy(), np.full(4, 0.25), atol=1e-12)


@pytest.mark.parametrize("k", [1, 0, 2.5, True])
def test_bad_k(k):
    with pytest.raises(ValueError, match="k must be an int >= 2"):
        simplex_vertices(k)


def test_wrong_width():
    with pytest.raises(ValueError, match="k-1 = 3 columns"):
        barycentric(torch.zeros(2, 2), 4)
