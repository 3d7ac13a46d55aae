"""The AANet network as plain tensors: layer shapes, seeded initialisation, counter-based
bottleneck noise and the forward pass of one model.

AANet (van Dijk et al. 2019): an MLP encoder d -> 64 -> 32 -> (k-1) with ReLU hidden layers and
a linear bottleneck, whose output z is read as a point of a fixed regular simplex in R^(k-1), and
a mirrored decoder (k-1) -> 32 -> 64 -> d. Parameters are a flat list ``[W1, b1, W2, b2, ...]``
with ``W`` stored as ``[fan_in, fan_out]`` so that a layer is ``x @ W + b``; the batched trainer
stacks the same list along a leading model axis.
"""

from __future__ import annotations

import math

import torch

MAX_ROW_SLOTS_EXTREMA = 64
"""Noise keys: extrema rows use slots 0..63, data rows start at 64 (so k <= 64)."""
_MASK32 = 0xFFFFFFFF


def layer_sizes(d: int, k: int, hidden: tuple[int, ...]) -> list[tuple[int, int]]:
    """``(fan_in, fan_out)`` of every linear layer, encoder then decoder (6 for hidden=(64, 32))."""
    widths = [d, *hidden, k - 1]
    encoder = list(zip(widths[:-1], widths[1:], strict=True))
    decoder = [(b, a) for a, b in reversed(encoder)]
    return encoder + decoder


def n_encoder_layers(hidden: tuple[int, ...]) -> int:
    return len(hidden) + 1


def init_params(d: int, k: int, hidden: tuple[int, ...], seed: int) -> list[torch.Tensor]:
    """float32 parameters ``[W1 [d, 64], b1 [64], ...]`` drawn like ``torch.nn.Linear``'s
    default (uniform in +-1/sqrt(fan_in) for weights and biases) from a generator seeded with
    ``seed``, so a model's initial state depends on its seed alone, never on its stack-mates.
    """
    gen = torch.Generator().manual_seed(int(seed))
    params = []
    for fan_in, fan_out in layer_sizes(d, k, hidden):
        bound = 1.0 / math.sqrt(fan_in)
        params.append((torch.rand(fan_in, fan_out, generator=gen) * 2 - 1) * bound)
        params.append((torch.rand(fan_out, generator=gen) * 2 - 1) * bound)
    return params


def _mix32(x: torch.Tensor) -> torch.Tensor:
    # A 32-bit integer finaliser (xor-shift-multiply); int64 arithmetic keeps the low 32 bits.
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def noise_keys(rows: torch.Tensor, dims: int) -> torch.Tensor:
    """Counter keys ``[len(rows), dims, 2]`` (int64) of the noise at row slots ``rows``."""
    dim = torch.arange(dims, device=rows.device, dtype=torch.int64)
    counter = (rows.to(torch.int64)[:, None] * 64 + dim[None, :]) * 2
    return _mix32(torch.stack([counter, counter + 1], dim=-1))


def bottleneck_noise(seeds: torch.Tensor, step: int, keys: torch.Tensor) -> torch.Tensor:
    """Standard normal noise ``[len(seeds), rows, dims]`` that depends only on (model seed, step,
    row slot, dimension): a counter-based hash turned into normals by Box-Muller.

    Training a model alone or in any stack therefore sees the same noise. ``keys`` comes from
    :func:`noise_keys`; ``seeds`` is int64 ``[n_models]``.
    """
    seed_key = _mix32(_mix32(seeds.to(torch.int64)) ^ (int(step) & _MASK32))
    h = _mix32(keys[None] ^ seed_key[:, None, None, None])  # [M, rows, dims, 2]
    u = (h.to(torch.float64) + 0.5) / 4294967296.0  # in (0, 1)
    normal = torch.sqrt(-2.0 * torch.log(u[..., 0])) * torch.cos(2.0 * math.pi * u[..., 1])
    return normal.to(torch.float32)


def row_slots(k: int, n_data: int, device=None) -> torch.Tensor:
    """Noise row slots of a batch laid out as k extrema rows then n_data data rows."""
    ext = torch.arange(k, device=device)
    return torch.cat([ext, MAX_ROW_SLOTS_EXTREMA + torch.arange(n_data, device=device)])


def encode(params: list[torch.Tensor], x: torch.Tensor, hidden: tuple[int, ...]) -> torch.Tensor:
    """Bottleneck embedding ``z [n, k-1]`` of ``x [n, d]``."""
    h = x
    n_enc = n_encoder_layers(hidden)
    for i in range(n_enc):
        h = h @ params[2 * i] + params[2 * i + 1]
        if i < n_enc - 1:
            h = torch.relu(h)
    return h


def decode(params: list[torch.Tensor], z: torch.Tensor, hidden: tuple[int, ...]) -> torch.Tensor:
    """Reconstruction ``[n, d]`` of bottleneck points ``z [n, k-1]``."""
    h = z
    n_enc = n_encoder_layers(hidden)
    n_dec = len(params) // 2 - n_enc
    for i in range(n_dec):
        j = n_enc + i
        h = h @ params[2 * j] + params[2 * j + 1]
        if i < n_dec - 1:
            h = torch.relu(h)
    return h


__all__ = [
    "bottleneck_noise",
    "decode",
    "encode",
    "init_params",
    "layer_sizes",
    "noise_keys",
    "row_slots",
]
