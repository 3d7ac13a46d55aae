"""Sparse kernels for TopK SAE training: only the k selected latents per token cost anything
after the one dense encoder product.

A dense TopK step spends five [n, d_in] x [d_in, d_sae] products (encode; decode; and in the
backward pass the encoder weight gradient, the input gradient and the decoder gradient), yet
each token uses only k of the d_sae latents. Here the selection runs on the dense
pre-activations without autograd, and the selected values go through
:class:`_GatheredLinear`, whose backward works on the n x k selected entries only (a sparse
matrix product, an ``embedding_bag`` and an ``index_add``); decoding is an ``embedding_bag``
over the selected decoder rows. The gradients equal the dense computation's (see
tests/sae/test_sae_training.py). Measured in benchmarks/sae.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class _GatheredLinear(torch.autograd.Function):
    """values[t, j] = x[t] @ W[:, idx[t, j]] + b[idx[t, j]], with sparse gradients.

    The forward values are given (gathered from pre-activations already computed); only the
    backward pass is implemented here.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, indices, values):  # noqa: D102
        ctx.save_for_backward(x, weight, indices)
        return values.clone()

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        x, weight, indices = ctx.saved_tensors
        n, k = indices.shape
        d_sae = weight.shape[1]
        grad = grad.contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = F.embedding_bag(
                indices, weight.t().contiguous(), per_sample_weights=grad, mode="sum"
            )  # [n, d_in]
        if ctx.needs_input_grad[1]:
            tokens = torch.arange(n, device=x.device).repeat_interleave(k)
            coords = torch.stack([indices.reshape(-1), tokens])
            selected = torch.sparse_coo_tensor(
                coords, grad.reshape(-1), (d_sae, n), check_invariants=False
            )
            grad_w = torch.sparse.mm(selected, x).t()  # [d_in, d_sae]
        if ctx.needs_input_grad[2]:
            flat = indices.reshape(-1)
            grad_b = torch.zeros(d_sae, dtype=grad.dtype, device=grad.device)
            grad_b.index_add_(0, flat, grad.reshape(-1))
        return grad_x, grad_w, grad_b, None, None


def gathered_pre_activations(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    indices: torch.Tensor,
    pre: torch.Tensor,
) -> torch.Tensor:
    """Differentiable ``pre.gather(1, indices)`` where ``pre = x @ weight + bias`` [n, d_sae]
    was computed without autograd; gradients reach x, weight and bias sparsely."""
    return _GatheredLinear.apply(x, weight, bias, indices, pre.gather(1, indices))


def sparse_decode(indices: torch.Tensor, values: torch.Tensor, w_dec: torch.Tensor):
    """sum_j values[t, j] * w_dec[indices[t, j]] -> [n, d_in] (no bias)."""
    return F.embedding_bag(indices, w_dec, per_sample_weights=values, mode="sum")


__all__ = ["gathered_pre_activations", "sparse_decode"]
