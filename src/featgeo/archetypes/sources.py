"""In-memory data for AANet training: datasets as arrays, batches drawn per step.

A dataset's batch at a step depends only on (its seed, the step), through the same
counter-based hash as the bottleneck noise, so a model sees the same batches whether it trains
alone or beside others (:mod:`featgeo.archetypes.batched`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from featgeo.archetypes.network import _mix32


def outer_lr_scale(dims: np.ndarray, d_model: np.ndarray) -> np.ndarray:
    """Step multiplier of the first and last layer for data in r < d_model subspace coordinates:
    ``sqrt(2/pi * d_model / r)`` (1 in the full space).

    Why: Adam normalises each coordinate, so it is not rotation invariant. In d_model
    coordinates the input layer's update has d_model sign-like entries per unit, and its part
    inside the r-dimensional span of the data is about sqrt(2/pi) sqrt(d_model) long (the mean
    |N(0,1)| is sqrt(2/pi)), against sqrt(r) for the same layer in r coordinates; likewise for
    the output layer. Scaling those two layers' steps keeps subspace training close to training
    in the full space (measured in ``docs/archetypes.md``); the hidden layers are the same.
    """
    dims = np.asarray(dims, dtype=np.float64)
    d_model = np.asarray(d_model, dtype=np.float64)
    return np.where(dims < d_model, np.sqrt(2 / np.pi * d_model / dims), 1.0)


def _check_points(name: str, points) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(points, dtype=np.float32))
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array [n, d], got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} holds NaN or infinite values; drop or fix those rows first")
    return t


def draw_rows(seeds: torch.Tensor, step: int, batch_size: int, sizes: torch.Tensor) -> torch.Tensor:
    """Row indices ``[len(seeds), batch_size]`` drawn uniformly with replacement from
    ``0..sizes[i]-1``, a function of (seed, step, slot) only."""
    slot = torch.arange(batch_size, dtype=torch.int64)
    key = _mix32(_mix32(seeds.to(torch.int64) ^ 0x5BD1E995) ^ (int(step) & 0xFFFFFFFF))
    h = _mix32(slot[None, :] ^ key[:, None])
    return h % sizes.to(torch.int64)[:, None]


class ArrayBatches:
    """Datasets held in memory; each step draws ``batch_size`` rows of each (with replacement;
    all rows, in order, when ``batch_size`` is None).

    ``arrays``: float ``[n_i, D_i]`` per dataset. ``extrema``: float ``[n_extrema_i, D_i]`` per
    dataset (the points prepended to every batch). ``d_model``: the reconstruction normaliser
    per dataset (default D_i; pass d_model for data in subspace coordinates). ``seeds``: one
    per dataset (default ``seed + i``).
    """

    def __init__(
        self,
        arrays: Sequence,
        extrema: Sequence,
        *,
        batch_size: int | None = 512,
        seed: int = 0,
        d_model: Sequence[int] | None = None,
        seeds: Sequence[int] | None = None,
    ):
        if len(arrays) != len(extrema):
            raise ValueError(f"got {len(arrays)} arrays but {len(extrema)} extrema sets")
        self.arrays = [_check_points(f"arrays[{i}]", a) for i, a in enumerate(arrays)]
        self._extrema = [_check_points(f"extrema[{i}]", e) for i, e in enumerate(extrema)]
        for i, (a, e) in enumerate(zip(self.arrays, self._extrema, strict=True)):
            if a.shape[1] != e.shape[1]:
                raise ValueError(f"extrema[{i}] has {e.shape[1]} columns, arrays[{i}] {a.shape[1]}")
        self.dims = np.array([a.shape[1] for a in self.arrays], dtype=np.int64)
        self.d_model = np.asarray(d_model if d_model is not None else self.dims, dtype=np.int64)
        self.outer_lr_scale = outer_lr_scale(self.dims, self.d_model)
        if batch_size is not None and (isinstance(batch_size, bool) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
        self.batch_size = batch_size
        seeds = [seed + i for i in range(len(arrays))] if seeds is None else list(seeds)
        self.seeds = torch.tensor(seeds, dtype=torch.int64)
        self.sizes = torch.tensor([a.shape[0] for a in self.arrays], dtype=torch.int64)

    def extrema(self, i: int) -> torch.Tensor:
        return self._extrema[i]

    def batch(self, step: int, datasets: np.ndarray) -> list[torch.Tensor]:
        if self.batch_size is None:
            return [self.arrays[i] for i in datasets]
        idx = torch.as_tensor(np.asarray(datasets), dtype=torch.int64)
        rows = draw_rows(self.seeds[idx], step, self.batch_size, self.sizes[idx])
        return [self.arrays[i][r] for i, r in zip(datasets.tolist(), rows, strict=True)]


class ClusterBatches:
    """Latent clusters of an activation store as AANet datasets (SPEC §3): each step draws
    ``batch_tokens`` token positions (:class:`featgeo.archetypes.data.StepBatches`) and every
    cluster trains on its active tokens among them, x = a_c @ W_dec[c] (or its subspace
    coordinates, with the recon term normalised by d_model).

    ``datas``: :class:`~featgeo.archetypes.data.ClusterData` per dataset; ``extrema``: float
    ``[n_extrema_i, D_i]`` per dataset (from :func:`cluster_extrema`).
    """

    def __init__(self, datas, extrema: Sequence, n_tokens: int, *, batch_tokens=4096, seed=0):
        from featgeo.archetypes.data import StepBatches

        if len(datas) != len(extrema):
            raise ValueError(f"got {len(datas)} clusters but {len(extrema)} extrema sets")
        self.datas = list(datas)
        self._extrema = [_check_points(f"extrema[{i}]", e) for i, e in enumerate(extrema)]
        self.dims = np.array([d.dim for d in self.datas], dtype=np.int64)
        self.d_model = np.array([d.d_model for d in self.datas], dtype=np.int64)
        self.outer_lr_scale = outer_lr_scale(self.dims, self.d_model)
        self.steps = StepBatches(self.datas, n_tokens, batch_tokens=batch_tokens, seed=seed)

    def extrema(self, i: int) -> torch.Tensor:
        return self._extrema[i]

    def batch(self, step: int, datasets: np.ndarray) -> list[torch.Tensor]:
        flat, counts = self.steps.flat_rows(step)
        ends = np.cumsum(counts)
        out = []
        for i in np.asarray(datasets).tolist():
            rows = flat[ends[i] - counts[i] : ends[i]]
            out.append(torch.from_numpy(self.datas[i].points(rows)))
        return out


def cluster_extrema(
    data,
    k_max: int,
    *,
    knn: int = 150,
    max_points: int = 1000,
    seed: int = 0,
    return_points: bool = False,
):
    """Diffusion extrema of one cluster: float32 ``[k_max, D]`` points from a seeded sample of
    at most ``max_points`` of its active tokens (SPEC §3: one k_max set, sliced to the first k).
    With ``return_points``, returns ``(warm-up points [m, D], extrema [k_max, D])``."""
    from featgeo.archetypes.extrema import diffusion_extrema

    rng = np.random.default_rng(seed)
    warm = np.sort(rng.permutation(data.n_active)[:max_points])
    points = data.points(warm)
    anchors = points[diffusion_extrema(points, k_max, knn=knn, max_points=max_points, seed=seed)]
    return (points, anchors) if return_points else anchors


__all__ = ["ArrayBatches", "ClusterBatches", "cluster_extrema", "draw_rows", "outer_lr_scale"]
