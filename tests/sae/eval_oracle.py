"""An independent recomputation of ``featgeo sae eval`` (test helper, not a test module).

Everything here is written from the definitions (SPEC §3, the docstring of
:mod:`featgeo.sae.evaluate`) with plain torch and the Hugging Face model's own loss; it calls
nothing of featgeo's evaluation, windowing, hooks or SAE encode/decode. The SAE enters only
through its parameter tensors. Each chunk runs alone, unpadded (featgeo pads and batches).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Oracle:
    n_tokens: int
    fve: float
    mse: float
    l0: float
    dead_fraction: float
    dense_fraction: float
    ce_clean: float
    ce_sae: float
    ce_zero: float
    ce_recovered: float
    mean_share: float
    """sum_t ||mean(x)||^2 / sum_t ||x_t - mean(x)||^2: how far FVE is from its mean-free form."""


def windows(docs, tokenizer, context_size: int, max_tokens: int) -> list[torch.Tensor]:
    """SPEC §3 windowing: each document tokenized alone (no special tokens) and cut into
    non-overlapping windows of ``context_size``; a window of fewer than 2 tokens is dropped;
    position 0 of a window is not evaluated; stop after ``max_tokens`` evaluated tokens, the
    last window cut to ``left + 1`` tokens."""
    out, left = [], max_tokens
    for doc in docs:
        ids = tokenizer(doc.text, add_special_tokens=False)["input_ids"]
        for start in range(0, len(ids), context_size):
            window = ids[start : start + context_size]
            if len(window) < 2:
                continue
            window = window[: left + 1]
            out.append(torch.tensor(window, dtype=torch.long))
            left -= len(window) - 1
            if left == 0:
                return out
    return out


def codes_of(x: torch.Tensor, params: dict[str, torch.Tensor], architecture: str, k=None):
    """The SAELens encoder written out: pre = (x - b_dec) W_enc + b_enc, then the activation
    (ReLU; TopK = ReLU of the pre-activations at or above the k-th largest; JumpReLU = ReLU
    where pre > threshold). x: [n, d_in] -> [n, d_sae]."""
    pre = (x - params["b_dec"]) @ params["W_enc"] + params["b_enc"]
    if architecture == "standard":
        return pre.clamp_min(0)
    if architecture == "topk":
        kth = pre.sort(dim=-1, descending=True).values[:, k - 1 : k]  # [n, 1]
        return torch.where(pre >= kth, pre.clamp_min(0), torch.zeros_like(pre))
    if architecture == "jumprelu":
        return torch.where(pre > params["threshold"], pre.clamp_min(0), torch.zeros_like(pre))
    raise AssertionError(architecture)


def recon_of(x, params, architecture, k=None) -> torch.Tensor:
    """x_hat = codes W_dec + b_dec, [n, d_in]."""
    return codes_of(x, params, architecture, k) @ params["W_dec"] + params["b_dec"]


def _block_output_edit(model, layer: int, edit):
    """A forward hook on decoder block ``layer`` replacing its output hidden states by
    ``edit(h)`` (h: [1, s, d])."""

    def hook(_module, _args, output):
        if isinstance(output, tuple):
            return (edit(output[0]), *output[1:])
        return edit(output)

    return model.model.layers[layer].register_forward_hook(hook)


def _summed_hf_loss(model, ids: torch.Tensor) -> tuple[float, int]:
    """HF's own causal-LM loss over targets 2.. of one window (labels of positions 0 and 1
    ignored: position 0 is never spliced, so its prediction is shared by all runs), as a sum."""
    labels = ids.clone()
    labels[:, :2] = -100
    n = ids.shape[1] - 2
    if n <= 0:
        return 0.0, 0
    loss = model(input_ids=ids, labels=labels, use_cache=False).loss
    return float(loss) * n, n


@torch.no_grad()
def recompute(
    sae,
    model,
    tokenizer,
    docs,
    layer: int,
    *,
    context_size: int,
    max_tokens: int,
    dense_threshold: float = 0.1,
) -> Oracle:
    """Every number of ``evaluate_sae`` for an SAE reading the output of block ``layer``
    (``layer`` must not be the last block: HF applies the final norm to that hidden state)."""
    assert layer < len(model.model.layers) - 1
    cfg = sae.cfg
    params = {name: p.detach().float().cpu() for name, p in sae.named_parameters()}
    xs, x_hats, codes = [], [], []
    totals = {"clean": [0.0, 0], "sae": [0.0, 0], "zero": [0.0, 0]}

    def add(name, loss_count):
        totals[name][0] += loss_count[0]
        totals[name][1] += loss_count[1]

    for window in windows(docs, tokenizer, context_size, max_tokens):
        ids = window[None]  # [1, s]
        out = model(input_ids=ids, output_hidden_states=True, use_cache=False)
        x = out.hidden_states[layer + 1][0, 1:].float()  # [s-1, d]: block `layer`, pos 1..
        xs.append(x)
        codes.append(codes_of(x, params, cfg.architecture, cfg.k))
        x_hats.append(recon_of(x, params, cfg.architecture, cfg.k))
        add("clean", _summed_hf_loss(model, ids))

        def splice(h, value):
            h = h.clone()
            h[:, 1:] = value(h[:, 1:])
            return h

        for name, value in (
            ("sae", lambda h: recon_of(h[0], params, cfg.architecture, cfg.k)[None]),
            ("zero", torch.zeros_like),
        ):
            handle = _block_output_edit(model, layer, lambda h, v=value: splice(h, v))
            try:
                add(name, _summed_hf_loss(model, ids))
            finally:
                handle.remove()

    x = torch.cat(xs).double()  # [n, d]
    x_hat = torch.cat(x_hats).double()
    on = torch.cat(codes) != 0  # [n, d_sae]
    centred = x - x.mean(0)  # per-dimension mean over the evaluated tokens
    freq = on.double().mean(0)  # [d_sae] firing rate of each latent
    clean, with_sae, zero = (totals[n][0] / totals[n][1] for n in ("clean", "sae", "zero"))
    return Oracle(
        n_tokens=x.shape[0],
        fve=float(1 - (x - x_hat).pow(2).sum() / centred.pow(2).sum()),
        mse=float((x - x_hat).pow(2).mean()),
        l0=float(on.sum(1).double().mean()),
        dead_fraction=float((freq == 0).double().mean()),
        dense_fraction=float((freq > dense_threshold).double().mean()),
        ce_clean=clean,
        ce_sae=with_sae,
        ce_zero=zero,
        ce_recovered=(zero - with_sae) / (zero - clean),
        mean_share=float(x.mean(0).pow(2).sum() * x.shape[0] / centred.pow(2).sum()),
    )
