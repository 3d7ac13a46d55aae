"""Elbow metrics of an AANet loss curve over k (SPEC §3 "Elbow metrics", seed 002).

For a loss curve L over k = k0 .. k_last (one AANet per k, Stage 1 trains k = 2..8):

- x_n = (k - k0) / (k_last - k0) and y_n = (L - L_last) / (L_0 - L_last) map the curve into the
  unit square, from (0, 1) at k0 to (1, 0) at k_last;
- d = |x_n + y_n - 1| / sqrt(2) is each point's distance to the chord x + y = 1 joining the ends;
- ``elbow_k`` = argmax d (the first k on ties), ``elbow_strength`` = max d (dimensionless;
  at most 1/sqrt(2) ~ 0.707 for a curve that stays between its end values);
- ``is_monotonic``: L is non-increasing from k0 up to and including the elbow k;
- ``pct_decrease`` = (max L - min L) / max L * 100 (percent, over the whole curve);
- ``k_differential`` = |recon elbow k - archetypal elbow k|.

Degenerate curves (our **Decision**; each has a test). The rules are checked in this order:

1. *Any non-finite loss* (NaN from a model with status ``too_few_points``, inf from a diverged
   run): the curve is **undefined**: ``k=None`` (NaN in :func:`elbow_table`),
   ``strength=NaN``, ``is_monotonic=False``, ``pct_decrease=NaN``. The NaN is the documented
   "no curve" value; the selection filters (``>=``, ``==``) are all False on it, so such a
   cluster is never selected.
2. *Flat curve* (max L == min L; includes a single point and the all-zero curve, i.e. max L == 0)
   or *fewer than 3 points*: there is no interior point, so no bend: ``k=k0``, ``strength=0.0``,
   ``is_monotonic=True`` (the one point k0 is trivially non-increasing). ``pct_decrease`` is
   the formula's value, and 0.0 when max L == 0 (nothing to decrease from).
3. *L_0 == L_last but the curve is not flat* (it dips and comes back): y_n divides by zero, and
   as L_last -> L_0 the strength grows without bound, so the elbow is **undefined**:
   ``k=None`` / NaN, ``strength=NaN``, ``is_monotonic=False``; ``pct_decrease`` is still
   computed (it does not use the end points).
4. Otherwise the formulas above. Rounding can make a straight line's d values differ by
   ~1e-16; d values within :data:`TIE_TOL` of the maximum count as ties (the first wins) and
   a maximum at or below :data:`TIE_TOL` is reported as strength 0.0, so a straight line has
   ``k=k0``, ``strength=0.0``.

Losses must be >= 0 (they are mean-squared-type losses); ``ks`` must be strictly increasing
integers (consecutive or not). Both are checked at the public boundary.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

TIE_TOL = 1e-12
"""d values within this of the maximum are ties (first wins); a max d at or below it is 0."""

_SQRT2 = math.sqrt(2.0)


class Elbow(NamedTuple):
    """Elbow metrics of one loss curve (see the module docstring for the degenerate cases)."""

    k: int | None
    """Elbow k, one of ``ks``; None when the curve or its elbow is undefined."""
    strength: float
    """max d, the normalised distance of the elbow to the end-to-end chord; NaN if undefined."""
    is_monotonic: bool
    """L non-increasing from k0 up to and including the elbow k; False if undefined."""
    pct_decrease: float
    """(max L - min L) / max L * 100, in percent; NaN when the curve has a non-finite loss."""

    @property
    def defined(self) -> bool:
        """True when an elbow k exists (rules 1 and 3 of the module docstring give False)."""
        return self.k is not None


class ElbowTable(NamedTuple):
    """Elbow metrics of many loss curves, one entry per curve (row of ``losses``)."""

    k: np.ndarray
    """[n_curves] float64: the elbow k, NaN where undefined (cast to int after masking)."""
    strength: np.ndarray
    """[n_curves] float64: max d, NaN where undefined."""
    is_monotonic: np.ndarray
    """[n_curves] bool."""
    pct_decrease: np.ndarray
    """[n_curves] float64, percent; NaN for curves with a non-finite loss."""


# -- validation (public boundary) -------------------------------------------------------------
def _check_ks(ks: Sequence[int] | np.ndarray) -> np.ndarray:
    """``ks`` as int64 [n_k]: non-empty, integer-valued, strictly increasing."""
    arr = np.asarray(ks)
    numeric = np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    if arr.dtype == np.bool_ or not numeric:
        raise TypeError(f"ks must be integers (e.g. range(2, 9)), got dtype {arr.dtype}")
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(
            f"ks must be a non-empty 1-D sequence of k values (e.g. range(2, 9)), "
            f"got shape {arr.shape}"
        )
    if np.issubdtype(arr.dtype, np.floating) and not (
        np.isfinite(arr).all() and (arr == np.round(arr)).all()
    ):
        raise ValueError(f"ks must hold whole numbers (e.g. range(2, 9)), got {arr.tolist()}")
    out = arr.astype(np.int64)
    if (np.diff(out) <= 0).any():
        raise ValueError(
            f"ks must be strictly increasing, got {out.tolist()}; sort ks (and reorder losses "
            "with the same permutation) and drop repeated k values"
        )
    return out


def _check_losses(losses: object, ndim: int, n_k: int) -> np.ndarray:
    """``losses`` as float64 with ``ndim`` dims and last axis ``n_k``; finite values >= 0."""
    try:
        arr = np.asarray(losses, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"losses must be numeric (use NaN for a missing loss), got {type(losses).__name__}"
        ) from err
    shape = "[n_k]" if ndim == 1 else "[n_curves, n_k]"
    if arr.ndim != ndim:
        hint = "; use elbow_table for many curves" if arr.ndim == 2 else ""
        raise ValueError(f"losses must be {ndim}-D {shape}, got shape {arr.shape}{hint}")
    if arr.shape[-1] != n_k:
        raise ValueError(
            f"losses must have one value per k: last axis {arr.shape[-1]} != len(ks) {n_k}"
        )
    finite = arr[np.isfinite(arr)]
    if finite.size and finite.min() < 0:
        raise ValueError(
            f"losses must be >= 0 (mean-squared-type losses), got min {finite.min():g}; "
            "pass the AANet losses, not a difference or log of them"
        )
    return arr


# -- scalar ------------------------------------------------------------------------------------
def elbow(losses: Sequence[float] | np.ndarray, ks: Sequence[int] | np.ndarray) -> Elbow:
    """Elbow metrics of one loss curve (SPEC §3).

    Args:
        losses: the loss at each k [n_k], >= 0; NaN/inf mark a missing model.
        ks: the k values [n_k], strictly increasing integers (e.g. ``range(2, 9)``).

    Returns:
        :class:`Elbow` (k, strength, is_monotonic, pct_decrease); degenerate curves follow the
        rules of the module docstring.

    Raises:
        TypeError: non-numeric ``losses`` or ``ks``.
        ValueError: empty or non-increasing ``ks``, a length mismatch, a negative loss.
    """
    k_arr = _check_ks(ks)
    return _elbow_1d(_check_losses(losses, 1, k_arr.size), k_arr)


def _elbow_1d(L: np.ndarray, ks: np.ndarray) -> Elbow:
    """Clean input: L float64 [n_k], ks int64 [n_k] strictly increasing."""
    if not np.isfinite(L).all():  # rule 1
        return Elbow(None, math.nan, False, math.nan)
    l_max, l_min = float(L.max()), float(L.min())
    pct = 0.0 if l_max == 0.0 else (l_max - l_min) / l_max * 100.0
    if l_max == l_min or L.size < 3:  # rule 2
        return Elbow(int(ks[0]), 0.0, True, pct)
    if L[0] == L[-1]:  # rule 3
        return Elbow(None, math.nan, False, pct)
    x = (ks - ks[0]) / (ks[-1] - ks[0])  # [n_k] in [0, 1]
    y = (L - L[-1]) / (L[0] - L[-1])  # [n_k], 1 at k0 and 0 at k_last
    d = np.abs(x + y - 1.0) / _SQRT2
    d_max = float(d.max())
    i = int(np.flatnonzero(d >= d_max - TIE_TOL)[0])  # first of the ties
    monotonic = bool((np.diff(L[: i + 1]) <= 0).all())
    return Elbow(int(ks[i]), d_max if d_max > TIE_TOL else 0.0, monotonic, pct)


# -- vectorised --------------------------------------------------------------------------------
def elbow_table(losses: np.ndarray, ks: Sequence[int] | np.ndarray) -> ElbowTable:
    """Elbow metrics of many loss curves at once; equal to :func:`elbow` row by row.

    Args:
        losses: [n_curves, n_k] losses, >= 0; NaN/inf mark a missing model.
        ks: the k values [n_k], strictly increasing integers.

    Returns:
        :class:`ElbowTable` of [n_curves] arrays; ``k`` is float64 so that undefined curves
        can hold NaN.

    Raises:
        TypeError / ValueError: as :func:`elbow`.
    """
    k_arr = _check_ks(ks)
    return _elbow_2d(_check_losses(losses, 2, k_arr.size), k_arr)


def _elbow_2d(L: np.ndarray, ks: np.ndarray) -> ElbowTable:
    """Clean input: L float64 [m, n_k], ks int64 [n_k]."""
    m, n = L.shape
    finite = np.isfinite(L).all(axis=1)  # [m]
    Lf = np.where(finite[:, None], L, 0.0)  # [m, n]; placeholder rows are overwritten below
    l_max, l_min = Lf.max(axis=1), Lf.min(axis=1)  # [m]
    pct = np.where(l_max > 0, (l_max - l_min) / np.where(l_max > 0, l_max, 1.0) * 100.0, 0.0)
    flat = (l_max == l_min) | (n < 3)  # rule 2
    denom = Lf[:, 0] - Lf[:, -1]  # [m]
    general = ~flat & (denom != 0)  # rule 4 (non-finite rows are fixed up last)

    x = (ks - ks[0]) / max(int(ks[-1] - ks[0]), 1)  # [n]
    y = (Lf - Lf[:, -1:]) / np.where(general, denom, 1.0)[:, None]  # [m, n]
    d = np.abs(x[None, :] + y - 1.0) / _SQRT2  # [m, n]
    d_max = d.max(axis=1)  # [m]
    idx = np.argmax(d >= (d_max - TIE_TOL)[:, None], axis=1)  # first of the ties
    # monotonic up to the elbow <=> the first increasing step j (L[j+1] > L[j]) is at j >= idx
    up = np.diff(Lf, axis=1) > 0  # [m, n-1]
    first_up = np.where(up.any(axis=1), np.argmax(up, axis=1), n) if n > 1 else np.ones(m, int)
    monotonic = first_up >= idx

    k = np.where(general, ks[idx].astype(np.float64), np.nan)
    strength = np.where(general, np.where(d_max > TIE_TOL, d_max, 0.0), np.nan)
    is_mono = general & monotonic
    k[flat], strength[flat], is_mono[flat] = float(ks[0]), 0.0, True
    k[~finite], strength[~finite], is_mono[~finite], pct[~finite] = np.nan, np.nan, False, np.nan
    return ElbowTable(k=k, strength=strength, is_monotonic=is_mono, pct_decrease=pct)


# -- k differential ----------------------------------------------------------------------------
def k_differential(
    recon_k: int | float | np.ndarray | None, arch_k: int | float | np.ndarray | None
) -> int | np.ndarray | None:
    """|recon elbow k - archetypal elbow k| (SPEC §3).

    Args:
        recon_k, arch_k: elbow k values: ints (or None/NaN for an undefined elbow), or
            [n] arrays from :func:`elbow_table` (NaN where undefined).

    Returns:
        An int for scalars (None when either k is None or NaN); a float64 array for arrays
        (NaN where either is NaN).

    Raises:
        ValueError: a scalar k that is not a whole number.
    """
    if recon_k is None or arch_k is None:
        return None
    if np.ndim(recon_k) == 0 and np.ndim(arch_k) == 0:
        r, a = float(recon_k), float(arch_k)
        if math.isnan(r) or math.isnan(a):
            return None
        for name, v in (("recon_k", r), ("arch_k", a)):
            if not (math.isfinite(v) and v == round(v)):
                raise ValueError(f"{name} must be a whole number (an elbow k), got {v!r}")
        return int(abs(r - a))
    return np.abs(np.asarray(recon_k, dtype=np.float64) - np.asarray(arch_k, dtype=np.float64))
