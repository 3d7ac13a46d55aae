"""Criteria that read the number of archetypes k off a cluster's AANet loss curves over k.

Each criterion maps the final recon and archetypal losses of k = k0..k_last (one AANet per k),
and for some the cluster's *inside fractions* (:func:`inside_fraction`), to a :class:`KChoice`:
the chosen k and a strength (larger = more convincing), used to rank clusters and to tell
simplices from clouds without archetypes. The seed reads k off the
archetypal-loss elbow (SPEC §3); ``docs/archetypes.md`` measures every criterion here on a
seeded synthetic suite with known k* (``benchmarks/aanet_elbows.py``) and the best one is
:data:`DEFAULT_CRITERION`.

Registry: :data:`CRITERIA` (name -> function ``(recon, archetypal, ks, inside) -> KChoice``);
unknown names list the valid ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from featgeo.archetypes.elbow import _check_ks, elbow

KNEE_FRACTION = 0.1
"""``recon_knee``: k is the first whose recon is within this fraction of the recon range of the
curve's floor."""
INSIDE_TOL = 0.1
"""A point is inside a simplex when every barycentric coordinate is >= -INSIDE_TOL."""
INSIDE_MIN = 0.9
"""``knee_extra_vertex`` adds a vertex while at least this share of points stays inside."""


class KChoice(NamedTuple):
    """A criterion's answer: the chosen k (None if undefined) and its strength (NaN then)."""

    k: int | None
    strength: float


Criterion = Callable[[np.ndarray, np.ndarray, np.ndarray, "np.ndarray | None"], KChoice]


def inside_fraction(points, anchors, tol: float = INSIDE_TOL) -> float:
    """Share of ``points [n, D]`` inside the simplex spanned by ``anchors [k, D]``.

    Barycentric coordinates solve ``[anchors^T; 1^T] lambda = [x; 1]`` by least squares (the
    point's projection onto the anchors' affine hull; the minimum-norm solution when the anchors
    are affinely dependent); inside = every ``lambda_i >= -tol``. Invariant under rotations of
    the coordinates, so subspace and d_model coordinates give the same value.
    """
    points = np.asarray(points, dtype=np.float64)
    anchors = np.asarray(anchors, dtype=np.float64)
    if points.ndim != 2 or anchors.ndim != 2 or points.shape[1] != anchors.shape[1]:
        raise ValueError(
            f"points [n, D] and anchors [k, D] must share D, got {points.shape} and {anchors.shape}"
        )
    k = anchors.shape[0]
    system = np.vstack([anchors.T, np.ones((1, k))])  # [D + 1, k]
    rhs = np.vstack([points.T, np.ones((1, points.shape[0]))])  # [D + 1, n]
    lam = np.linalg.lstsq(system, rhs, rcond=None)[0].T  # [n, k]
    return float((lam.min(axis=1) >= -tol).mean())


def envelope(losses: np.ndarray) -> np.ndarray:
    """Running minimum over k: an AANet with more archetypes can always do what one with fewer
    does (a vertex can sit on an edge), so a larger loss at a larger k is an optimisation miss,
    not information."""
    return np.minimum.accumulate(np.asarray(losses, dtype=np.float64))


def _from_elbow(losses: np.ndarray, ks: np.ndarray) -> KChoice:
    result = elbow(losses, ks)
    return KChoice(result.k, result.strength)


def recon_elbow(recon, archetypal, ks, inside=None) -> KChoice:
    """Chord elbow of the recon loss (SPEC §3 elbow metric)."""
    return _from_elbow(recon, ks)


def archetypal_elbow(recon, archetypal, ks, inside=None) -> KChoice:
    """Chord elbow of the archetypal loss: seed 002's refit k."""
    return _from_elbow(archetypal, ks)


def recon_envelope_elbow(recon, archetypal, ks, inside=None) -> KChoice:
    """Chord elbow of the recon loss's running minimum (:func:`envelope`)."""
    return _from_elbow(envelope(recon), ks)


def recon_knee(recon, archetypal, ks, inside=None) -> KChoice:
    """The first k whose recon (running minimum) is within :data:`KNEE_FRACTION` of the range
    above its floor; strength = the share of the whole recon range that the step into that k
    removes (a simplex's recon falls in one step once the bottleneck has k*-1 dimensions; a
    cloud's falls gradually), 0 when the first k already qualifies."""
    env = envelope(recon)
    if not np.isfinite(env).all():
        return KChoice(None, float("nan"))
    top, floor = float(env[0]), float(env[-1])
    span = top - floor
    if span <= 0:
        return KChoice(int(ks[0]), 0.0)
    i = int(np.flatnonzero(env - floor <= KNEE_FRACTION * span)[0])
    strength = 0.0 if i == 0 else float((env[i - 1] - env[i]) / span)
    return KChoice(int(ks[i]), strength)


def combined_elbow(recon, archetypal, ks, inside=None) -> KChoice:
    """Chord elbow of recon/max(recon) + archetypal/max(archetypal) (both running minima)."""
    r, a = envelope(recon), envelope(archetypal)
    if not (np.isfinite(r).all() and np.isfinite(a).all()):
        return KChoice(None, float("nan"))
    total = r / max(r.max(), 1e-300) + (a / a.max() if a.max() > 0 else 0.0)
    return _from_elbow(total, ks)


def knee_extra_vertex(recon, archetypal, ks, inside=None) -> KChoice:
    """:func:`recon_knee`'s k, then one more vertex while the data stay inside the simplex of
    the next anchor set (``inside[k+1] >= INSIDE_MIN``); strength = ``inside[k]``.

    Why: the recon knee finds where the bottleneck has enough dimensions but can stop one short
    when two vertices are close or noisy; a true extra vertex opens a new direction that still
    contains the data, while an anchor beyond the last vertex is affinely dependent on the
    others (or an interior point) and leaves many points outside. A cloud without archetypes (a
    ball, a blob) has few points inside any simplex of its extrema, hence the strength.
    ``inside[i]`` is :func:`inside_fraction` of the cluster's points and its first ``ks[i]``
    diffusion extrema.
    """
    if inside is None:
        raise ValueError("criterion 'knee_extra_vertex' needs the inside fractions per k")
    knee = recon_knee(recon, archetypal, ks)
    inside = np.asarray(inside, dtype=np.float64)
    if knee.k is None or not np.isfinite(inside).all():
        return KChoice(None, float("nan"))
    i = int(np.flatnonzero(ks == knee.k)[0])
    while i + 1 < len(ks) and inside[i + 1] >= INSIDE_MIN:
        i += 1
    return KChoice(int(ks[i]), float(inside[i]))


CRITERIA: dict[str, Criterion] = {
    "recon_elbow": recon_elbow,
    "archetypal_elbow": archetypal_elbow,
    "recon_envelope_elbow": recon_envelope_elbow,
    "recon_knee": recon_knee,
    "combined_elbow": combined_elbow,
    "knee_extra_vertex": knee_extra_vertex,
}
DEFAULT_CRITERION = "knee_extra_vertex"


def get_criterion(name: str) -> Criterion:
    try:
        return CRITERIA[name]
    except KeyError:
        raise ValueError(
            f"unknown k criterion {name!r}; choose one of {sorted(CRITERIA)}"
        ) from None


def select_k(
    recon: Sequence[float],
    archetypal: Sequence[float],
    ks: Sequence[int],
    criterion: str = DEFAULT_CRITERION,
    inside: Sequence[float] | None = None,
) -> KChoice:
    """The number of archetypes of one cluster by ``criterion``.

    Args:
        recon, archetypal: final losses per k ``[n_k]`` (NaN for an untrained model).
        ks: the k values ``[n_k]``, strictly increasing.
        criterion: a name of :data:`CRITERIA`.
        inside: :func:`inside_fraction` per k ``[n_k]`` (needed by ``knee_extra_vertex``).

    Raises:
        ValueError: unknown criterion, length mismatch, missing inside fractions.
    """
    fn = get_criterion(criterion)
    ks_arr = _check_ks(ks)  # strictly increasing ints, clear errors (the elbow metrics' rules)
    recon_arr = np.asarray(recon, dtype=np.float64)
    arch_arr = np.asarray(archetypal, dtype=np.float64)
    if recon_arr.ndim != 1 or arch_arr.ndim != 1:
        raise ValueError("recon and archetypal must be 1-D (one loss per k) for one cluster")
    inside_arr = None if inside is None else np.asarray(inside, dtype=np.float64).reshape(-1)
    if inside_arr is not None and ((inside_arr < 0) | (inside_arr > 1)).any():
        raise ValueError("inside fractions must lie in [0, 1] (NaN for an untrained model)")
    if not recon_arr.size == arch_arr.size == ks_arr.size or (
        inside_arr is not None and inside_arr.size != ks_arr.size
    ):
        raise ValueError(
            f"recon ({recon_arr.size}), archetypal ({arch_arr.size}), ks ({ks_arr.size}) and "
            "inside must have one entry per k"
        )
    if not np.isfinite(recon_arr).all() or not np.isfinite(arch_arr).all():
        return KChoice(None, float("nan"))
    return fn(recon_arr, arch_arr, ks_arr, inside_arr)


__all__ = [
    "CRITERIA",
    "DEFAULT_CRITERION",
    "INSIDE_MIN",
    "INSIDE_TOL",
    "KNEE_FRACTION",
    "KChoice",
    "envelope",
    "get_criterion",
    "inside_fraction",
    "select_k",
]
