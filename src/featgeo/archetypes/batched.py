"""One stacked tensor program that trains many independent AANets at once.

Every model's parameters live in ``[n_models, ...]`` tensors and every layer is one batched
matmul, so hundreds of small models cost a handful of kernel launches per step instead of
hundreds (the seed's one-model-at-a-time loop is launch-bound: 6-9 ms per step on an H200
whatever the data size). Models of different k, of different clusters and with different data
dimensions sit side by side: the data dimension is zero-padded to the widest model, the
bottleneck to k_max - 1, the batch rows to the longest batch, and the padded parameters start at
zero and receive zero gradient, so they stay zero and change nothing (Adam's weight decay of a
zero parameter is zero).

Each model keeps its own Adam moments, learning rate, ReduceLROnPlateau state, gradient-norm
clipping and early stopping, all as ``[n_models]`` tensors with torch's update rules, so a model
trained in a stack matches the same model trained alone with ``torch.optim.Adam``,
``ReduceLROnPlateau`` and ``clip_grad_norm_`` (:mod:`featgeo.archetypes.reference`; float error
aside). A model that stops leaves the stack at the next check and costs nothing afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from featgeo.archetypes.config import AANetConfig
from featgeo.archetypes.network import (
    MAX_ROW_SLOTS_EXTREMA,
    bottleneck_noise,
    init_params,
    layer_sizes,
    n_encoder_layers,
    noise_keys,
)
from featgeo.archetypes.simplex import barycentric_operator

LOSS_NAMES = ("loss", "recon", "archetypal", "extrema")
"""Columns of a loss curve: total, then the three terms (SPEC §3)."""
STOP_REASONS = ("early_stop", "min_lr", "max_steps")

_BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-8  # torch.optim.Adam defaults
_PLATEAU_EPS = 1e-8  # ReduceLROnPlateau ignores smaller lr changes


class BatchSource(Protocol):
    """Where the trainer gets data: datasets indexed 0..n-1, each with its own points.

    ``dims[i]`` is dataset i's data dimension D_i, ``d_model[i]`` the dimension its
    reconstruction error is normalised by (D_i in the full space; d_model for subspace
    coordinates, which rescales the recon term by r/d: SPEC §3's MSE over d_model elements).
    """

    dims: np.ndarray
    d_model: np.ndarray
    outer_lr_scale: np.ndarray | None
    """Optional step multiplier per dataset for the first and last layer (see
    :func:`featgeo.archetypes.sources.outer_lr_scale`); None = 1."""

    def extrema(self, i: int) -> torch.Tensor:
        """float32 ``[n_extrema, D_i]``, the points prepended to every batch (first k used)."""
        ...

    def batch(self, step: int, datasets: np.ndarray) -> list[torch.Tensor]:
        """float32 ``[n_rows, D_i]`` data rows of every dataset in ``datasets`` at ``step``."""
        ...


@dataclass(frozen=True)
class ModelSpec:
    """One AANet to train: k archetypes on dataset ``data`` of the source, seeded by ``seed``."""

    k: int
    data: int
    seed: int


@dataclass
class AANetFit:
    """What training one model produced."""

    spec: ModelSpec
    params: list[torch.Tensor]
    """float32 CPU tensors ``[W1 [D, 64], b1 [64], ...]`` (unpadded)."""
    curve: np.ndarray
    """float32 ``[steps, 4]``: total, recon, archetypal, extrema loss of every step."""
    stop_reason: str
    lr: float
    """Learning rate when training stopped."""
    final: dict[str, float] = field(default_factory=dict)
    """Median of the last ``final_window`` step losses, keyed by :data:`LOSS_NAMES`."""
    lr_curve: np.ndarray | None = None
    """float64 ``[steps]``: the learning rate every step was taken with."""

    @property
    def steps(self) -> int:
        return int(self.curve.shape[0])


def final_losses(curve: np.ndarray, window: int) -> dict[str, float]:
    """Median of the last ``window`` rows of ``curve [steps, 4]`` per loss (SPEC §3)."""
    tail = np.asarray(curve[-window:], dtype=np.float64)
    return {name: float(np.median(tail[:, i])) for i, name in enumerate(LOSS_NAMES)}


class _Stack:
    """Per-model state of the models still training, as stacked tensors (leading axis M)."""

    PER_MODEL = ("k", "seeds", "bmask", "bary_a", "bary_c", "kmask", "ext", "d_model",
                 "outer_scale", "lr", "plateau_best", "plateau_bad", "smooth_best", "smooth_since",
                 "ids")  # fmt: skip
    """Tensor attributes with one entry per model (besides parameters and Adam moments)."""

    def __init__(self, specs, source, config, device, dtype):
        self.config, self.device, self.dtype = config, device, dtype
        hidden = config.hidden
        self.k = torch.tensor([s.k for s in specs], dtype=torch.int64)
        self.k_max = int(self.k.max())
        self.data = np.array([s.data for s in specs], dtype=np.int64)
        dims = np.asarray(source.dims)[self.data]
        self.d_max = int(dims.max())
        self.ids = torch.arange(len(specs))
        self.seeds = torch.tensor([s.seed for s in specs], dtype=torch.int64)

        padded = [
            torch.zeros(len(specs), *shape)
            for shape in _param_shapes(self.d_max, self.k_max, hidden)
        ]
        for m, spec in enumerate(specs):
            own_params = init_params(int(dims[m]), spec.k, hidden, spec.seed)
            for full, own in zip(padded, own_params, strict=True):
                full[(m, *(slice(0, n) for n in own.shape))] = own
        self.params = [p.to(device, dtype).requires_grad_() for p in padded]
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]

        kk = self.k.tolist()
        bottleneck = self.k_max - 1
        self.bmask = torch.zeros(len(specs), bottleneck)
        self.bary_a = torch.zeros(len(specs), bottleneck, self.k_max)
        self.bary_c = torch.zeros(len(specs), self.k_max)
        self.kmask = torch.zeros(len(specs), self.k_max, self.k_max)
        self.ext = torch.zeros(len(specs), self.k_max, self.d_max)
        for m, k in enumerate(kk):
            self.bmask[m, : k - 1] = 1
            a, c = barycentric_operator(k, dtype=torch.float32)
            self.bary_a[m, : k - 1, :k] = a
            self.bary_c[m, :k] = c
            self.kmask[m, :k, :k] = 1
            points = source.extrema(int(self.data[m]))[:k]
            if points.shape[0] < k:
                raise ValueError(
                    f"dataset {self.data[m]} has {points.shape[0]} extrema, a k={k} model needs {k}"
                )
            self.ext[m, :k, : points.shape[1]] = points
        self.eye = torch.eye(self.k_max, device=device, dtype=dtype)
        self.d_model = torch.as_tensor(np.asarray(source.d_model)[self.data], dtype=dtype)
        outer = getattr(source, "outer_lr_scale", None)
        outer = np.ones(len(source.dims)) if outer is None else np.asarray(outer, dtype=float)
        self.outer_scale = torch.as_tensor(outer[self.data], dtype=dtype)
        self.lr = torch.full((len(specs),), float(config.lr), dtype=torch.float64)
        self.plateau_best = torch.full((len(specs),), math.inf, dtype=torch.float64)
        self.plateau_bad = torch.zeros(len(specs), dtype=torch.int64)
        self.smooth_best = torch.full((len(specs),), math.inf, dtype=torch.float64)
        self.smooth_since = torch.zeros(len(specs), dtype=torch.int64)
        for name in ("bmask", "bary_a", "bary_c", "kmask", "ext"):
            setattr(self, name, getattr(self, name).to(dtype))
        for name in self.PER_MODEL:
            setattr(self, name, getattr(self, name).to(device))

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def keep(self, keep: torch.Tensor) -> None:
        """Drop every model whose ``keep`` entry is False."""
        self.params = [p.detach()[keep].requires_grad_() for p in self.params]
        self.exp_avg = [t[keep] for t in self.exp_avg]
        self.exp_avg_sq = [t[keep] for t in self.exp_avg_sq]
        for name in self.PER_MODEL:
            setattr(self, name, getattr(self, name)[keep])
        self.data = self.data[keep.cpu().numpy()]


def _param_shapes(d: int, k: int, hidden: tuple[int, ...]) -> list[tuple[int, ...]]:
    shapes = []
    for fan_in, fan_out in layer_sizes(d, k, hidden):
        shapes += [(fan_in, fan_out), (fan_out,)]
    return shapes


def _forward(stack: _Stack, x: torch.Tensor, rowmask: torch.Tensor, noise: torch.Tensor):
    """Per-model losses ``[M]`` of the stacked batch ``x [M, rows, D]`` (rows: k_max extrema
    slots, then data; ``rowmask [M, rows]`` marks the real ones)."""
    cfg, params = stack.config, stack.params
    n_enc = n_encoder_layers(cfg.hidden)
    h = x
    for i in range(n_enc):  # encoder; the bottleneck is linear
        h = torch.baddbmm(params[2 * i + 1].unsqueeze(1), h, params[2 * i])
        h = torch.relu(h) if i < n_enc - 1 else h * stack.bmask.unsqueeze(1)
    z = h  # [M, rows, k_max - 1], padded dimensions exactly 0
    lam = torch.baddbmm(stack.bary_c.unsqueeze(1), z, stack.bary_a)  # [M, rows, k_max]
    h = z + cfg.noise_std * noise
    n_layers = len(params) // 2
    for i in range(n_enc, n_layers):
        h = torch.baddbmm(params[2 * i + 1].unsqueeze(1), h, params[2 * i])
        if i < n_layers - 1:
            h = torch.relu(h)
    n_rows = rowmask.sum(dim=1)
    # Padded data dimensions of x and of the reconstruction are both exactly 0.
    recon = (((h - x) ** 2).sum(dim=2) * rowmask).sum(dim=1) / (n_rows * stack.d_model)
    archetypal = ((torch.relu(-lam).sum(dim=2) ** 2) * rowmask).sum(dim=1) / n_rows
    k2 = (stack.k * stack.k).to(lam.dtype)
    extrema = (((lam[:, : stack.k_max] - stack.eye) ** 2) * stack.kmask).sum(dim=(1, 2)) / k2
    total = cfg.recon_weight * recon + cfg.archetypal_weight * archetypal
    total = total + cfg.extrema_weight * extrema
    return torch.stack([total, recon, archetypal, extrema], dim=1)  # [M, 4]


def _clip_and_adam(stack: _Stack, step: int) -> None:
    """Per-model ``clip_grad_norm_`` then one ``torch.optim.Adam`` step (weight decay as L2)."""
    cfg = stack.config
    with torch.no_grad():
        grads = [p.grad for p in stack.params]
        norm2 = sum((g.double() ** 2).flatten(1).sum(dim=1) for g in grads)
        coef = torch.clamp(cfg.grad_clip / (norm2.sqrt() + 1e-6), max=1.0).to(stack.dtype)
        bias1 = 1 - _BETA1**step
        bias2_sqrt = math.sqrt(1 - _BETA2**step)
        step_size = (stack.lr / bias1).to(stack.dtype)
        last = len(stack.params) - 2
        for i, (p, g, m, v) in enumerate(
            zip(stack.params, grads, stack.exp_avg, stack.exp_avg_sq, strict=True)
        ):
            shape = (-1,) + (1,) * (p.dim() - 1)
            # Input and output layers touch the data dimension: see ``outer_lr_scale``.
            size = step_size * stack.outer_scale if i in (0, last, last + 1) else step_size
            g = g * coef.view(shape)
            if cfg.weight_decay:
                g = g.add(p, alpha=cfg.weight_decay)
            m.lerp_(g, 1 - _BETA1)
            v.mul_(_BETA2).addcmul_(g, g, value=1 - _BETA2)
            denom = (v.sqrt() / bias2_sqrt).add_(_EPS)
            p.sub_(size.view(shape) * m / denom)
            p.grad = None


def _plateau(stack: _Stack, total: torch.Tensor) -> None:
    """ReduceLROnPlateau(mode="min", threshold_mode="rel", cooldown=0) on each model's loss."""
    cfg = stack.config
    total = total.double()
    better = total < stack.plateau_best * (1 - cfg.lr_threshold)
    stack.plateau_best = torch.where(better, total, stack.plateau_best)
    stack.plateau_bad = torch.where(better, 0, stack.plateau_bad + 1)
    reduce = stack.plateau_bad > cfg.lr_patience
    new_lr = torch.clamp(stack.lr * cfg.lr_factor, min=cfg.min_lr)
    stack.lr = torch.where(reduce & (stack.lr - new_lr > _PLATEAU_EPS), new_lr, stack.lr)
    stack.plateau_bad = torch.where(reduce, 0, stack.plateau_bad)


def _early_stop(stack: _Stack, curves: torch.Tensor, step: int) -> torch.Tensor:
    """SPEC §3's smoothed early stopping at a check step: returns ``[M]`` bool (stop now)."""
    cfg = stack.config
    window = cfg.smoothing_window
    smooth = curves[stack.ids, step - window : step, 0].double().mean(dim=1)
    improved = smooth < stack.smooth_best - cfg.early_stop_delta
    stack.smooth_best = torch.where(improved, smooth, stack.smooth_best)
    stack.smooth_since = torch.where(improved, step, stack.smooth_since)
    return ~improved & (step - stack.smooth_since >= cfg.early_stop_patience)


def check_device(device: str | torch.device) -> torch.device:
    """``auto`` / ``cpu`` / ``cuda[:N]`` as a torch device; a CUDA request without CUDA, or an
    unknown name, is a ``ValueError`` naming the fix."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} was requested but CUDA is not available; use 'cpu'")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {str(device)!r}")
    return device


def is_check_step(step: int, config: AANetConfig) -> bool:
    """Whether stopping rules are evaluated after ``step`` (1-based) steps."""
    return step % config.check_interval == 0 and step >= config.smoothing_window


def _batch(stack: _Stack, source: BatchSource, step: int, keys_cache: dict):
    """Stacked rows ``[M, k_max + R, D_max]``, their mask and their noise at ``step``."""
    datasets, local = np.unique(stack.data, return_inverse=True)
    rows = source.batch(step, datasets)
    counts = torch.tensor([r.shape[0] for r in rows], dtype=torch.int64)
    n_rows = int(counts.max()) if len(rows) else 0
    data = torch.zeros(len(datasets), n_rows, stack.d_max, dtype=stack.dtype)
    for j, r in enumerate(rows):
        data[j, : r.shape[0], : r.shape[1]] = r
    device = stack.device
    local_t = torch.as_tensor(local, dtype=torch.int64)
    x = torch.cat([stack.ext, data[local_t].to(device)], dim=1)
    data_mask = (torch.arange(n_rows)[None, :] < counts[local_t][:, None]).to(stack.dtype)
    ext_mask = torch.arange(stack.k_max, device=device)[None, :] < stack.k[:, None]
    ext_mask = ext_mask.to(stack.dtype)
    rowmask = torch.cat([ext_mask, data_mask.to(device)], dim=1)
    size = (stack.k_max, n_rows)
    if keys_cache.get("size") != size:
        slots = torch.cat(
            [torch.arange(stack.k_max), MAX_ROW_SLOTS_EXTREMA + torch.arange(n_rows)]
        ).to(device)
        keys_cache.update(size=size, keys=noise_keys(slots, stack.k_max - 1))
    noise = bottleneck_noise(stack.seeds, step, keys_cache["keys"]).to(stack.dtype)
    noise = noise * stack.bmask.unsqueeze(1)
    return x, rowmask, noise


def train_stack(
    specs: Sequence[ModelSpec],
    source: BatchSource,
    config: AANetConfig,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    on_step=None,
) -> list[AANetFit]:
    """Train every model of ``specs`` on ``source`` together; results in the order of ``specs``.

    ``dtype`` is the compute precision (float64 for exact comparisons in tests); returned
    parameters and curves are float32. ``on_step(step, n_training)`` is called after every step
    (progress display). Models stop on their own: after ``early_stop_patience`` steps without a
    smoothed improvement, once their learning rate has reached ``min_lr``, or at ``max_steps``
    (stopping rules are evaluated every ``check_interval`` steps, SPEC §3).
    """
    if not specs:
        return []
    device = check_device(device)
    n_data = len(source.dims)
    for spec in specs:
        for name, value, low, high in (("k", spec.k, 2, MAX_ROW_SLOTS_EXTREMA),
                                       ("data", spec.data, 0, n_data - 1),
                                       ("seed", spec.seed, 0, 2**63 - 1)):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise TypeError(f"ModelSpec.{name} must be an int, got {value!r}")
            if not low <= value <= high:
                raise ValueError(f"ModelSpec.{name} must lie in {low}..{high}, got {value}")
    stack = _Stack(list(specs), source, config, device, dtype)
    curves = torch.zeros(len(specs), config.max_steps, 4, device=device, dtype=dtype)
    lrs = torch.zeros(len(specs), config.max_steps, device=device, dtype=torch.float64)
    stopped_at = [0] * len(specs)
    reasons = [""] * len(specs)
    final_lr = [0.0] * len(specs)
    saved: dict[int, list[torch.Tensor]] = {}
    keys_cache: dict = {}
    for step in range(1, config.max_steps + 1):
        x, rowmask, noise = _batch(stack, source, step, keys_cache)
        per_model = _forward(stack, x, rowmask, noise)
        per_model[:, 0].sum().backward()
        _clip_and_adam(stack, step)
        per_model = per_model.detach()
        curves[stack.ids, step - 1] = per_model
        lrs[stack.ids, step - 1] = stack.lr
        _plateau(stack, per_model[:, 0])
        if on_step is not None:
            on_step(step, len(stack))
        if step == config.max_steps:
            stop = torch.ones(len(stack), dtype=torch.bool, device=device)
            why = ["max_steps"] * len(stack)
        elif is_check_step(step, config):
            early = _early_stop(stack, curves, step)
            low_lr = stack.lr <= config.min_lr
            stop = early | low_lr
            if not bool(stop.any()):
                continue
            why = ["early_stop" if e else "min_lr" for e in early.tolist()]
        else:
            continue
        stopping = stop.nonzero().flatten()
        for m in stopping.tolist():
            model = int(stack.ids[m])
            stopped_at[model], reasons[model] = step, why[m]
            final_lr[model] = float(stack.lr[m])
            saved[model] = [p.detach()[m].cpu() for p in stack.params]
        if step == config.max_steps:
            break
        stack.keep(~stop)
        if len(stack) == 0:
            break
    curves = curves.cpu().to(torch.float32).numpy()
    lrs = lrs.cpu().numpy()
    dims = np.asarray(source.dims)
    fits = []
    for model, spec in enumerate(specs):
        shapes = _param_shapes(int(dims[spec.data]), spec.k, config.hidden)
        params = [
            full[tuple(slice(0, n) for n in shape)].to(torch.float32).clone()
            for full, shape in zip(saved[model], shapes, strict=True)
        ]
        curve = curves[model, : stopped_at[model]].copy()
        fits.append(
            AANetFit(
                spec=spec,
                params=params,
                curve=curve,
                stop_reason=reasons[model],
                lr=final_lr[model],
                final=final_losses(curve, config.final_window),
                lr_curve=lrs[model, : stopped_at[model]].copy(),
            )
        )
    return fits
