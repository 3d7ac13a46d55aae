"""One AANet at a time with torch's own modules and optimisers: the seed's way of training.

This is the peer the batched trainer replaces (``benchmarks/aanet.py``) and its oracle in the
tests: ``torch.nn.Linear`` layers, ``torch.optim.Adam``, ``torch.nn.utils.clip_grad_norm_`` and
``torch.optim.lr_scheduler.ReduceLROnPlateau``, one Python step per model per batch. It shares
only the definitions with :mod:`featgeo.archetypes.batched` (initial parameters, batches,
bottleneck noise, stopping rule), none of its update code.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from featgeo.archetypes.batched import AANetFit, ModelSpec, final_losses, is_check_step
from featgeo.archetypes.config import AANetConfig
from featgeo.archetypes.network import (
    bottleneck_noise,
    init_params,
    layer_sizes,
    noise_keys,
    row_slots,
)
from featgeo.archetypes.simplex import barycentric_operator


class AANetModule(nn.Module):
    """AANet as an ``nn.Module`` (van Dijk et al. 2019): encoder, simplex, mirrored decoder."""

    def __init__(self, d: int, k: int, hidden: tuple[int, ...]):
        super().__init__()
        sizes = layer_sizes(d, k, hidden)
        n_enc = len(hidden) + 1
        self.k = k
        self.encoder = nn.ModuleList(nn.Linear(i, o) for i, o in sizes[:n_enc])
        self.decoder = nn.ModuleList(nn.Linear(i, o) for i, o in sizes[n_enc:])
        a, c = barycentric_operator(k, dtype=torch.float32)
        self.register_buffer("bary_a", a)
        self.register_buffer("bary_c", c)

    def load_flat(self, params: list[torch.Tensor]) -> None:
        """Load ``[W1 [in, out], b1, ...]`` (featgeo's layout; nn.Linear stores W transposed)."""
        layers = [*self.encoder, *self.decoder]
        with torch.no_grad():
            for i, layer in enumerate(layers):
                layer.weight.copy_(params[2 * i].T)
                layer.bias.copy_(params[2 * i + 1])

    def flat(self) -> list[torch.Tensor]:
        out = []
        for layer in [*self.encoder, *self.decoder]:
            out += [layer.weight.detach().T.contiguous(), layer.bias.detach().clone()]
        return out

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None):
        h = x
        for i, layer in enumerate(self.encoder):
            h = layer(h)
            if i < len(self.encoder) - 1:
                h = torch.relu(h)
        z = h
        lam = z @ self.bary_a + self.bary_c
        h = z if noise is None else z + noise
        for i, layer in enumerate(self.decoder):
            h = layer(h)
            if i < len(self.decoder) - 1:
                h = torch.relu(h)
        return h, lam


def train_one(
    spec: ModelSpec,
    source,
    config: AANetConfig,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> AANetFit:
    """Train one model the seed's way; same definitions as :func:`batched.train_stack`."""
    device = torch.device(device)
    d = int(source.dims[spec.data])
    d_model = float(source.d_model[spec.data])
    k = spec.k
    model = AANetModule(d, k, config.hidden).to(device, dtype)
    model.load_flat(init_params(d, k, config.hidden, spec.seed))
    # Group 0: the hidden layers; group 1: the data-facing first and last layer, whose step
    # subspace coordinates scale (featgeo.archetypes.sources.outer_lr_scale; 1 in the full space).
    outer = getattr(source, "outer_lr_scale", None)
    scale = 1.0 if outer is None else float(outer[spec.data])
    first, last = model.encoder[0], model.decoder[-1]
    outer_params = [first.weight, last.weight, last.bias]
    inner = [p for p in model.parameters() if all(p is not q for q in outer_params)]
    optimizer = torch.optim.Adam(
        [{"params": inner}, {"params": outer_params, "lr": config.lr * scale}],
        lr=config.lr,
        weight_decay=config.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer,
        mode="min",
        factor=config.lr_factor,
        patience=config.lr_patience,
        threshold=config.lr_threshold,
        min_lr=[config.min_lr, config.min_lr * scale],
    )
    extrema = source.extrema(spec.data)[:k].to(device, dtype)
    eye = torch.eye(k, device=device, dtype=dtype)
    seed = torch.tensor([spec.seed])
    curve: list[list[float]] = []
    lrs: list[float] = []
    best, since, reason = float("inf"), 0, "max_steps"
    for step in range(1, config.max_steps + 1):
        data = source.batch(step, np.array([spec.data]))[0].to(device, dtype)
        x = torch.cat([extrema, data])
        slots = row_slots(k, data.shape[0])
        noise = bottleneck_noise(seed, step, noise_keys(slots, k - 1))[0].to(device, dtype)
        x_hat, lam = model(x, config.noise_std * noise)
        recon = ((x_hat - x) ** 2).sum() / (x.shape[0] * d_model)
        archetypal = (torch.relu(-lam).sum(dim=1) ** 2).mean()
        extrema_loss = ((lam[:k] - eye) ** 2).mean()
        loss = (
            config.recon_weight * recon
            + config.archetypal_weight * archetypal
            + config.extrema_weight * extrema_loss
        )
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        lrs.append(optimizer.param_groups[0]["lr"])  # the rate this step is taken with
        optimizer.step()
        curve.append([float(t.detach()) for t in (loss, recon, archetypal, extrema_loss)])
        scheduler.step(float(loss.detach()))
        if step == config.max_steps:
            break
        if is_check_step(step, config):
            window = np.asarray(curve[-config.smoothing_window :], dtype=np.float32)
            smooth = float(window[:, 0].astype(np.float64).mean())
            if smooth < best - config.early_stop_delta:
                best, since = smooth, step
            elif step - since >= config.early_stop_patience:
                reason = "early_stop"
                break
            if optimizer.param_groups[0]["lr"] <= config.min_lr:
                reason = "min_lr"
                break
    curve_arr = np.asarray(curve, dtype=np.float32)
    return AANetFit(
        spec=spec,
        params=[p.cpu().to(torch.float32) for p in model.flat()],
        curve=curve_arr,
        stop_reason=reason,
        lr=float(optimizer.param_groups[0]["lr"]),
        final=final_losses(curve_arr, config.final_window),
        lr_curve=np.asarray(lrs, dtype=np.float64),
    )


__all__ = ["AANetModule", "train_one"]
