"""Seeded synthetic point clouds with a known number of archetypes, for testing AANets.

An AANet (van Dijk et al. 2019, "Finding archetypal spaces using neural networks") should find
k* archetypes in points drawn inside a simplex with k* vertices, and the k-selection criterion
(the elbow metrics of SPEC §3, :mod:`featgeo.archetypes.elbow`) should pick k = k* there and
find no convincing elbow in the controls (a Gaussian blob, a uniform ball).

Like an SAE cluster's AANet training points, x = a_c @ W_dec[c], which lie exactly in the
linear span of the cluster's decoder rows (SPEC §3), every set lies in a random linear subspace
of R^d of dimension ``rank`` (orthonormal ``basis`` [d, rank]), not centred at the origin.

Scale (all lengths in the units of X):

- simplex: the mean pairwise distance between vertices (the "edge length") is exactly 1;
- every set is centred :data:`CENTRE_NORM` from the origin (simplex: its vertex centroid);
- controls: RMS distance to their centre :data:`CONTROL_RMS` = 0.3, about what Dirichlet(1)
  points on a regular unit-edge simplex with 3-5 vertices have (0.26-0.29).

Seeding: every set is drawn from ``np.random.SeedSequence(seed)``, split into independent
streams for the subspace, the shape, the weights and the noise, so sets that differ only in
``noise`` share their subspace, vertices and weights. :func:`synthetic_suite` gives each set its
own seed derived from (suite seed, set name), so adding sets never changes the others.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

CENTRE_NORM = 0.5
"""Distance of each set's centre (a simplex's vertex centroid) from the origin."""
CONTROL_RMS = 0.3
"""RMS distance of control points to their centre (a unit-edge simplex cloud is 0.26-0.29)."""
MAX_CONDITION = 3.0
"""Default bound on the simplex's aspect ratio (see :func:`simplex_points`)."""

Kind = Literal["simplex", "blob", "ball"]


@dataclass(frozen=True, eq=False)
class SyntheticSet:
    """One synthetic point cloud and its ground truth."""

    X: np.ndarray
    """[n, d] float32 points."""
    vertices: np.ndarray | None
    """[k_star, d] float64 simplex vertices; None for controls."""
    k_star: int | None
    """True number of archetypes; None for controls (no archetypes)."""
    basis: np.ndarray
    """[d, rank] float64 orthonormal basis of the subspace the clean data lies in."""
    name: str
    """Readable id, e.g. ``simplex_k4_r8_a0.3_n0.05`` or ``blob_r4``."""
    kind: Kind
    """``simplex``, ``blob`` or ``ball``."""
    weights: np.ndarray | None = None
    """[n, k_star] float64 Dirichlet weights (rows sum to 1); X = weights @ vertices + noise."""
    alpha: float | None = None
    """Dirichlet concentration; None for controls."""
    noise: float = 0.0
    """Per-direction std of the Gaussian noise added to X."""
    noise_full: bool = False
    """True when the noise fills all of R^d (then X leaves the subspace)."""
    seed: int = 0
    """The seed this set was drawn from (re-draw it with the same call and seed)."""

    @property
    def rank(self) -> int:
        """Dimension of the subspace ``basis`` spans."""
        return self.basis.shape[1]


# -- validation -------------------------------------------------------------------------------
def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_float(value: object, name: str, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}")
    return v


def _check_space(d: object, rank: object) -> tuple[int, int]:
    d_, rank_ = _check_int(d, "d", 1), _check_int(rank, "rank", 1)
    if rank_ > d_:
        raise ValueError(f"rank must be <= d (a subspace of R^d), got rank={rank_}, d={d_}")
    return d_, rank_


# -- shared pieces ----------------------------------------------------------------------------
def _streams(seed: int) -> list[np.random.Generator]:
    """Independent generators for: subspace, shape, weights/points, noise."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)]


def _orthonormal(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """Haar-random [rows, cols] matrix with orthonormal columns (cols <= rows)."""
    q, r = np.linalg.qr(rng.standard_normal((rows, cols)))
    return q * np.sign(np.diag(r))  # the sign fix makes the draw Haar-distributed


def _centre(rng: np.random.Generator, rank: int) -> np.ndarray:
    """[rank] a random point at distance CENTRE_NORM from the origin (subspace coordinates)."""
    g = rng.standard_normal(rank)
    return g / np.linalg.norm(g) * CENTRE_NORM


def _regular_simplex(k: int) -> np.ndarray:
    """[k, k-1] centred regular simplex with edge length 1 (closed form, platform-independent).

    Vertex i is ``(e_i - 1/k) / sqrt 2`` (so ||v_i - v_j|| = 1) written in the Helmert basis of
    the hyperplane ``sum(w) = 0``: orthonormal rows h_j, j = 1..k-1, with h_j 1 = 0.
    """
    helmert = np.zeros((k - 1, k))
    for j in range(1, k):
        helmert[j - 1, :j] = 1.0
        helmert[j - 1, j] = -float(j)
        helmert[j - 1] /= math.sqrt(j * (j + 1))
    return helmert.T / math.sqrt(2.0)  # (e_i - 1/k) @ helmert.T = helmert[:, i]


def _tag(x: float) -> str:
    return f"{x:g}"


# -- simplex ----------------------------------------------------------------------------------
def simplex_points(
    n: int,
    k_star: int,
    *,
    d: int = 576,
    rank: int | None = None,
    alpha: float = 1.0,
    noise: float = 0.01,
    noise_full: bool = False,
    max_condition: float = MAX_CONDITION,
    seed: int = 0,
) -> SyntheticSet:
    """n points inside a random simplex with k_star vertices in a rank-``rank`` subspace of R^d.

    Vertices: a regular simplex stretched along k_star-1 random axes by factors in
    [1, ``max_condition``] (log-uniform), turned to a random orientation inside a random
    rank-``rank`` linear subspace, rescaled to mean edge length 1 and centred
    :data:`CENTRE_NORM` from the origin. (Unconstrained Gaussian vertices are often nearly flat
    when rank ~ k_star, i.e. look like fewer archetypes; the bound keeps k* unambiguous.)
    Weights: Dirichlet(alpha * 1); alpha < 1 puts points near the vertices, alpha = 1 spreads
    them uniformly over the simplex. Noise: isotropic Gaussian with std ``noise`` per direction,
    inside the subspace (so X stays exactly in a rank-``rank`` subspace, like SAE cluster
    reconstructions) or, with ``noise_full=True``, in all d directions (norm ~ noise*sqrt(d)).

    Args:
        n: number of points (>= 1).
        k_star: number of vertices (>= 2).
        d: ambient dimension (576 = SmolLM2-135M's hidden size).
        rank: subspace dimension, k_star-1 <= rank <= d; None means k_star.
        alpha: Dirichlet concentration (> 0).
        noise: noise std per direction (>= 0), in the units of X (edge length 1).
        noise_full: add the noise in all of R^d instead of only the subspace.
        max_condition: bound (>= 1) on the ratio of the simplex's longest to shortest axis.
        seed: non-negative int; the same arguments and seed give byte-identical X.

    Returns:
        :class:`SyntheticSet` of kind ``simplex`` named like ``simplex_k4_r8_a0.3_n0.05``
        (``_full`` appended with ``noise_full``).

    Raises:
        TypeError: a non-int count or a non-number parameter.
        ValueError: a value out of range (the message names it and the allowed range).
    """
    n = _check_int(n, "n", 1)
    k_star = _check_int(k_star, "k_star", 2)
    d, rank = _check_space(d, k_star if rank is None else rank)
    if rank < k_star - 1:
        raise ValueError(
            f"rank must be >= k_star - 1 = {k_star - 1} (a simplex with {k_star} vertices spans "
            f"{k_star - 1} dimensions), got rank={rank}; raise rank or lower k_star"
        )
    alpha = _check_float(alpha, "alpha", positive=True)
    noise = _check_float(noise, "noise", positive=False)
    max_condition = _check_float(max_condition, "max_condition", positive=True)
    if max_condition < 1:
        raise ValueError(f"max_condition must be >= 1, got {max_condition}")
    seed = _check_int(seed, "seed", 0)
    rng_space, rng_shape, rng_weights, rng_noise = _streams(seed)

    basis = _orthonormal(rng_space, d, rank)  # [d, rank]
    stretch = np.exp(rng_shape.uniform(0.0, math.log(max_condition), size=k_star - 1))
    turn = _orthonormal(rng_shape, rank, k_star - 1).T  # [k-1, rank], orthonormal rows
    coords = _regular_simplex(k_star) @ (stretch[:, None] * turn)  # [k, rank], centred
    edges = np.linalg.norm(coords[:, None] - coords[None], axis=-1)[np.triu_indices(k_star, 1)]
    coords = coords / edges.mean() + _centre(rng_shape, rank)  # mean edge 1
    vertices = coords @ basis.T  # [k, d]

    weights = rng_weights.dirichlet(np.full(k_star, alpha), size=n)  # [n, k]
    X = weights @ vertices  # [n, d] float64
    if noise > 0:
        if noise_full:
            X = X + rng_noise.normal(0.0, noise, size=(n, d))
        else:
            X = X + rng_noise.normal(0.0, noise, size=(n, rank)) @ basis.T
    name = f"simplex_k{k_star}_r{rank}_a{_tag(alpha)}_n{_tag(noise)}" + (
        "_full" if noise_full else ""
    )
    return SyntheticSet(
        X=X.astype(np.float32),
        vertices=vertices,
        k_star=k_star,
        basis=basis,
        name=name,
        kind="simplex",
        weights=weights,
        alpha=alpha,
        noise=noise,
        noise_full=noise_full,
        seed=seed,
    )


# -- controls ---------------------------------------------------------------------------------
def gaussian_blob(n: int, *, d: int = 576, rank: int, seed: int = 0) -> SyntheticSet:
    """Anisotropic Gaussian in a random rank-``rank`` subspace: a control with no archetypes.

    Per-axis std proportional to ``geomspace(1, 1/3, rank)`` along the basis columns (random
    directions of R^d), scaled so the RMS distance to the centre is :data:`CONTROL_RMS`; centred
    :data:`CENTRE_NORM` from the origin. A low-rank blob (rank 2-4) is the hard control: its
    AANet loss curve can look like a simplex's.

    Args:
        n: number of points (>= 1). d: ambient dimension. rank: 1 <= rank <= d.
        seed: non-negative int.

    Returns:
        :class:`SyntheticSet` of kind ``blob`` named ``blob_r{rank}`` (k_star and vertices None).

    Raises:
        TypeError / ValueError: as :func:`simplex_points`.
    """
    n = _check_int(n, "n", 1)
    d, rank = _check_space(d, rank)
    seed = _check_int(seed, "seed", 0)
    rng_space, rng_shape, rng_points, _ = _streams(seed)
    basis = _orthonormal(rng_space, d, rank)
    std = np.geomspace(1.0, 1.0 / 3.0, rank)
    std *= CONTROL_RMS / np.linalg.norm(std)  # E||z - c||^2 = sum std^2 = CONTROL_RMS^2
    z = _centre(rng_shape, rank) + rng_points.standard_normal((n, rank)) * std  # [n, rank]
    return _control(z, basis, "blob", seed)


def uniform_ball(n: int, *, d: int = 576, rank: int, seed: int = 0) -> SyntheticSet:
    """Uniform points in a rank-``rank`` ball in a random subspace: a control with no archetypes.

    Radius R = CONTROL_RMS * sqrt((rank + 2) / rank), so that the RMS distance to the centre
    (R * sqrt(rank / (rank + 2)) for a uniform ball) is :data:`CONTROL_RMS`; centred
    :data:`CENTRE_NORM` from the origin.

    Args / Returns / Raises: as :func:`gaussian_blob`; kind ``ball``, name ``ball_r{rank}``.
    """
    n = _check_int(n, "n", 1)
    d, rank = _check_space(d, rank)
    seed = _check_int(seed, "seed", 0)
    rng_space, rng_shape, rng_points, _ = _streams(seed)
    basis = _orthonormal(rng_space, d, rank)
    direction = rng_points.standard_normal((n, rank))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    radius = CONTROL_RMS * math.sqrt((rank + 2) / rank) * rng_points.random(n) ** (1.0 / rank)
    z = _centre(rng_shape, rank) + direction * radius[:, None]  # [n, rank]
    return _control(z, basis, "ball", seed)


def _control(z: np.ndarray, basis: np.ndarray, kind: Kind, seed: int) -> SyntheticSet:
    return SyntheticSet(
        X=(z @ basis.T).astype(np.float32),
        vertices=None,
        k_star=None,
        basis=basis,
        name=f"{kind}_r{basis.shape[1]}",
        kind=kind,
        seed=seed,
    )


# -- the default suite ------------------------------------------------------------------------
SUITE_K_STARS = (3, 4, 5)
SUITE_ALPHAS = (1.0, 0.3)
SUITE_NOISES = (0.01, 0.05)
SUITE_EXTRA_RANKS = (8, 16)
"""Simplex ranks besides k* itself."""
SUITE_CONTROL_RANKS = (2, 3, 4, 8, 16)
"""Ranks 2-4 matter: a low-rank blob mimics a simplex's reconstruction loss curve."""


def derived_seed(seed: int, name: str) -> int:
    """The seed of suite set ``name``: a function of (suite seed, name) only.

    Uses SHA-256 of the name (not Python's salted ``hash``), so it is stable across runs.
    """
    digest = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    state = np.random.SeedSequence([_check_int(seed, "seed", 0), digest]).generate_state(2)
    return int(state[0]) << 32 | int(state[1])


def synthetic_suite(*, n: int = 2000, d: int = 576, seed: int = 0) -> list[SyntheticSet]:
    """The default grid of synthetic sets (46 with the defaults).

    k* in (3, 4, 5) x rank in (k*, 8, 16) x alpha in (1.0, 0.3) x noise in (0.01, 0.05), noise
    inside the subspace, then the controls ``blob`` and ``ball`` at ranks (2, 3, 4, 8, 16).
    Each set's seed is :func:`derived_seed` (seed, its name), so the suite is reproducible and
    adding sets does not change the others. Ranks above ``d`` are skipped.

    Memory: n * d * 4 bytes per set (4.6 MB with the defaults, ~210 MB for the suite).

    Returns:
        list of :class:`SyntheticSet` in grid order (simplices by k*, rank, alpha, noise; then
        blobs; then balls); names are unique.
    """
    sets: list[SyntheticSet] = []
    for k_star in SUITE_K_STARS:
        for rank in (k_star, *SUITE_EXTRA_RANKS):
            if rank > d:
                continue
            for alpha in SUITE_ALPHAS:
                for noise in SUITE_NOISES:
                    name = f"simplex_k{k_star}_r{rank}_a{_tag(alpha)}_n{_tag(noise)}"
                    s = simplex_points(
                        n, k_star, d=d, rank=rank, alpha=alpha, noise=noise,
                        seed=derived_seed(seed, name),
                    )  # fmt: skip
                    assert s.name == name
                    sets.append(s)
    for make, kind in ((gaussian_blob, "blob"), (uniform_ball, "ball")):
        for rank in SUITE_CONTROL_RANKS:
            if rank <= d:
                sets.append(make(n, d=d, rank=rank, seed=derived_seed(seed, f"{kind}_r{rank}")))
    return sets
