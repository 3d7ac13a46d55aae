"""How the seed-000 analyses draw reference features and seed k-means (SPEC §2, issue 9).

Two schemes, selected with ``--rng``:

``legacy`` (default): what the original scripts do, so the same ``--seed`` analyses the same
features as they do.

- ``hamming_cluster_analysis.py`` / ``multi_execution_hamming_analysis.py``:
  ``np.random.seed(seed)`` once, then ``np.random.randint(0, N)`` for each execution, i.e. with
  replacement (two executions may share a reference feature); execution ``i`` runs k-means
  with ``random_state = seed + i`` (a single analysis is execution 0: ``random_state = seed``).
- ``multi_seed_clustering_analysis.py``: for every seed ``s``: ``np.random.seed(s)`` then
  ``np.random.randint(0, N)``, and k-means with ``random_state = s``.

featgeo uses a private ``np.random.RandomState(seed)`` instead of mutating numpy's global state;
it yields the same stream as ``np.random.seed(seed)`` followed by ``np.random.randint`` (both are
the legacy MT19937 generator). Example: seed 42 draws feature 1126 of N = 1536 (the columns of a
576 x 1536 down_proj) and feature 102 of N = 576 (the columns of a 1536 x 576 up_proj).

``generator``: featgeo's earlier scheme: ``numpy.random.default_rng(seed)`` draws the reference
features *without* replacement, and every execution's k-means uses ``random_state = seed``.

Not reproducible in either scheme: the original's between-cluster Hamming distance sampled 50
cross pairs with an unseeded RNG; featgeo averages over all cross pairs instead.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

RngScheme = Literal["legacy", "generator"]
RNG_SCHEMES: tuple[str, ...] = ("legacy", "generator")

BETWEEN_PAIRS_NOTE = (
    "all cross pairs (the original scripts sampled 50 pairs with an unseeded RNG, which cannot "
    "be reproduced)"
)


def check_rng(rng: str) -> RngScheme:
    """Validate an ``--rng`` value."""
    if rng not in RNG_SCHEMES:
        raise ValueError(
            f"--rng must be one of {', '.join(RNG_SCHEMES)}, got '{rng}'; 'legacy' reproduces "
            "the original scripts' draws"
        )
    return rng  # type: ignore[return-value]


def draw_references(
    n_total: int, n_executions: int, seed: int, rng: RngScheme = "legacy"
) -> list[int]:
    """Reference feature of each execution of ``hamming multi`` (execution 0 = ``hamming single``).

    legacy: ``RandomState(seed).randint(0, n_total)`` repeated ``n_executions`` times (with
    replacement); generator: ``default_rng(seed).choice(n_total, n_executions, replace=False)``.
    """
    check_rng(rng)
    if rng == "legacy":
        state = np.random.RandomState(seed)
        return [int(state.randint(0, n_total)) for _ in range(n_executions)]
    if n_executions > n_total:
        raise ValueError(
            f"--n-executions {n_executions} is larger than the {n_total} features; --rng "
            f"generator draws without replacement, so pass --n-executions {n_total} or less "
            "(or --rng legacy, which draws with replacement)"
        )
    chosen = np.random.default_rng(seed).choice(n_total, size=n_executions, replace=False)
    return [int(i) for i in chosen]


def reference_for_seed(n_total: int, seed: int, rng: RngScheme = "legacy") -> int:
    """Reference feature of seed ``seed`` in ``hamming seeds`` (and of ``hamming single``).

    legacy: ``RandomState(seed).randint(0, n_total)``; generator:
    ``default_rng(seed).integers(n_total)``.
    """
    check_rng(rng)
    if rng == "legacy":
        return int(np.random.RandomState(seed).randint(0, n_total))
    return int(np.random.default_rng(seed).integers(n_total))


def kmeans_random_state(seed: int, execution: int, rng: RngScheme = "legacy") -> int:
    """k-means ``random_state`` of execution ``execution``: legacy ``seed + execution``,
    generator ``seed``."""
    check_rng(rng)
    return seed + execution if rng == "legacy" else seed


def scheme_record(rng: RngScheme, *, per_seed: bool = False) -> dict[str, str]:
    """What goes into the JSON config so a reader knows how features and k-means were seeded."""
    check_rng(rng)
    if per_seed:
        draw = (
            "legacy numpy: np.random.seed(s); np.random.randint(0, N) for each seed s"
            if rng == "legacy"
            else "numpy.random.default_rng(s).integers(N) for each seed s"
        )
        state = "s (the seed)"
    elif rng == "legacy":
        draw = (
            "legacy numpy: np.random.seed(seed); np.random.randint(0, N) per execution "
            "(with replacement)"
        )
        state = "seed + execution index"
    else:
        draw = "numpy.random.default_rng(seed).choice(N, n_executions, replace=False)"
        state = "seed (every execution)"
    return {
        "rng": rng,
        "reference_draw": draw,
        "kmeans_random_state": state,
        "between_cluster_hamming_pairs": BETWEEN_PAIRS_NOTE,
    }
