"""Tests written for the surviving mutants of the SAE modules (``make mutate``): evaluate,
training, architectures, sparse_ops.

Expected values are computed here with plain numpy / torch from the definitions (the
docstring of :mod:`featgeo.sae.evaluate`, the training recipe), never by featgeo. The
``_Stats`` tests feed the running sums small hand-made batches, so that each formula (FVE with
the token mean, MSE per value, L0 per token, dead / dense fractions at their threshold, CE
losses and recovered) is pinned without running a model.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from eval_oracle import windows

from featgeo.corpus import load_corpus
from featgeo.sae import SAEConfig, SparseAutoencoder
from featgeo.sae import evaluate as ev
from featgeo.sae.evaluate import evaluate_sae


# -- evaluate: the running sums ----------------------------------------------------------------
def stats_batches():
    """Two batches (x, codes, recon) of 3 and 2 tokens, d_in 2, d_sae 5: latent 0 fires on 2
    of 5 tokens (0.4, the dense threshold used), latent 1 on 3, latent 4 never; the mean of x
    is far from 0."""
    x1 = torch.tensor([[3.0, 1.0], [5.0, 2.0], [4.0, 0.0]])
    c1 = torch.tensor([[1.0, 2.0, 0, 0, 0], [0, 0.5, 0, 0, 0], [3.0, 0, 0, 0, 0]])
    r1 = torch.tensor([[3.5, 1.0], [4.0, 2.5], [4.0, 0.5]])
    x2 = torch.tensor([[6.0, 1.0], [2.0, 3.0]])
    c2 = torch.tensor([[0, 1.0, 0.2, 0, 0], [0, 0, 0, 7.0, 0]])
    r2 = torch.tensor([[5.0, 1.0], [2.0, 2.0]])
    return [(x1, c1, r1), (x2, c2, r2)]


def filled_stats() -> ev._Stats:
    stats = ev._Stats(5, torch.device("cpu"))
    for x, codes, recon in stats_batches():
        stats.add(x, codes, recon)
    stats.add_ce((6.0, 3), (9.0, 3), (20.0, 3))
    stats.add_ce((4.0, 2), (6.0, 2), (10.0, 2))
    return stats


def test_stats_numbers_by_hand():
    x = np.concatenate([b[0].numpy() for b in stats_batches()]).astype(np.float64)
    codes = np.concatenate([b[1].numpy() for b in stats_batches()]).astype(np.float64)
    recon = np.concatenate([b[2].numpy() for b in stats_batches()]).astype(np.float64)
    sq_err = ((x - recon) ** 2).sum()
    total = ((x - x.mean(0)) ** 2).sum()
    freq = (codes != 0).sum(0) / 5  # [0.4, 0.6, 0.2, 0.2, 0]
    np.testing.assert_allclose(freq, [0.4, 0.6, 0.2, 0.2, 0.0])
    point = ev.sae_hook_point(
        SparseAutoencoder(SAEConfig(d_in=2, d_sae=5, hook_name="blocks.3.hook_resid_post")), None
    )
    result = filled_stats().result(point, "eval", 0.4, 1.5)
    assert result.n_tokens == 5 and (result.layer, result.split, result.seconds) == (3, "eval", 1.5)
    assert result.hook == "blocks.3.hook_resid_post" and result.dense_threshold == 0.4
    assert result.fve == pytest.approx(1 - sq_err / total, rel=1e-12)
    assert result.mse == pytest.approx(sq_err / x.size, rel=1e-12)
    assert result.l0 == pytest.approx((codes != 0).sum() / 5, rel=1e-12)
    assert result.dead_fraction == pytest.approx(1 / 5, abs=1e-15)
    assert result.dense_fraction == pytest.approx(1 / 5, abs=1e-15)  # 0.4 is not above 0.4
    assert result.ce_clean == pytest.approx(10 / 5, rel=1e-12)
    assert result.ce_sae == pytest.approx(15 / 5, rel=1e-12)
    assert result.ce_zero == pytest.approx(30 / 5, rel=1e-12)
    assert result.ce_recovered == pytest.approx((6 - 3) / (6 - 2), rel=1e-12)


def test_stats_status_line():
    stats = filled_stats()
    x = torch.cat([b[0] for b in stats_batches()]).double()
    recon = torch.cat([b[2] for b in stats_batches()]).double()
    fve = 1 - float((x - recon).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    assert stats.status() == f"FVE {fve:.3f}  L0 {7 / 5:.1f}"
    one = ev._Stats(3, torch.device("cpu"))  # one token: no variance, L0 = its count
    one.add(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 4.0, 1.0]]), torch.zeros(1, 2))
    assert one.status() == "FVE nan  L0 2.0"


def test_stats_undefined_ratios_are_nan():
    stats = ev._Stats(2, torch.device("cpu"))
    x = torch.ones(3, 2)  # no variance: FVE undefined
    stats.add(x, torch.zeros(3, 2), x)
    stats.add_ce((3.0, 3), (3.0, 3), (3.0, 3))  # zero = clean: recovered undefined
    point = ev.sae_hook_point(
        SparseAutoencoder(SAEConfig(d_in=2, d_sae=2, hook_name="blocks.0.hook_resid_post")), None
    )
    result = stats.result(point, "eval", 0.5, 0.0)
    assert math.isnan(result.fve) and math.isnan(result.ce_recovered)
    assert result.ce_clean == 1.0 and result.dead_fraction == 1.0 and result.dense_fraction == 0
    assert math.isnan(ev._Stats(2, torch.device("cpu")).ce_mean("clean"))


def test_stats_small_variance_and_float64_frequencies():
    """FVE is defined for any positive total variance (here 2e-4); latent frequencies are
    float64: a dense threshold just below 3/7 (within float32 rounding of it) counts the latent
    that fired on 3 of 7 tokens as dense."""
    stats = ev._Stats(2, torch.device("cpu"))
    x = torch.tensor([[0.01], [0.0], [0.0], [0.0], [0.0], [0.0], [0.0]]).repeat(1, 2)
    codes = torch.zeros(7, 2)
    codes[:3, 0] = 1.0
    stats.add(x, codes, torch.zeros(7, 2))
    total = float(((x.double() - x.double().mean(0)) ** 2).sum())
    assert 0 < total < 1
    assert stats.fve() == pytest.approx(1 - float((x.double() ** 2).sum()) / total, rel=1e-9)
    threshold = 3 / 7 - 1e-12
    assert np.float32(threshold) == np.float32(3 / 7)  # float32 could not tell them apart
    stats.add_ce((1.0, 1), (2.0, 1), (3.0, 1))
    point = ev.sae_hook_point(
        SparseAutoencoder(SAEConfig(d_in=2, d_sae=2, hook_name="blocks.0.hook_resid_post")), None
    )
    assert stats.result(point, "eval", threshold, 0.0).dense_fraction == 0.5


def test_stats_without_tokens_is_an_error():
    point = ev.sae_hook_point(
        SparseAutoencoder(SAEConfig(d_in=2, d_sae=2, hook_name="blocks.0.hook_resid_post")), None
    )
    with pytest.raises(ValueError, match=r"split 'dev' gave no tokens to evaluate on"):
        ev._Stats(2, torch.device("cpu")).result(point, "dev", 0.5, 0.0)


# -- evaluate: inputs, batches, CE -----------------------------------------------------------
@pytest.mark.parametrize(
    "value",
    [0, 1, 1.0, -0.1, 1.5, "0.5", None, True],
    ids=["0", "1", "1f", "neg", "1.5", "str", "none", "bool"],
)
def test_check_fraction_refuses(value):
    with pytest.raises(ValueError, match=rf"^--x must be a fraction in \(0, 1\), got {value!r}$"):
        ev._check_fraction("--x", value)


def test_check_fraction_accepts():
    assert ev._check_fraction("--x", 0.25) == 0.25
    assert type(ev._check_fraction("--x", np.float64(0.5))) is float


def tiny_sae(layer: int = 0) -> SparseAutoencoder:
    sae = SparseAutoencoder.from_config(
        SAEConfig(d_in=64, d_sae=32, hook_name=f"blocks.{layer}.hook_resid_post"), seed=1
    )
    return sae


BAD_EVAL = [
    (dict(max_tokens=0), "--tokens must be a positive int, got 0"),
    (dict(max_tokens=True), "--tokens must be a positive int, got True"),
    (dict(max_tokens=2.0), "--tokens must be a positive int, got 2.0"),
    (dict(batch_size=0), "--batch-size must be a positive int, got 0"),
    (dict(batch_size=False), "--batch-size must be a positive int, got False"),
    (dict(dense_threshold=1.0), r"--dense-threshold must be a fraction in \(0, 1\), got 1.0"),
]


@pytest.mark.parametrize("kwargs, match", BAD_EVAL, ids=[str(i) for i in range(len(BAD_EVAL))])
def test_evaluate_sae_bad_inputs(kwargs, match, model, tokenizer, text_corpus):
    with pytest.raises(ValueError, match=match):
        evaluate_sae(tiny_sae(), model, tokenizer, load_corpus(text_corpus), progress=False,
                     **kwargs)  # fmt: skip


def test_evaluate_sae_defaults(model, tokenizer, text_corpus):
    """The documented defaults: split "eval", context 256, 16384 tokens at most, dense
    threshold 0.1 (this corpus's eval split has fewer tokens, all of them are evaluated)."""
    corpus = load_corpus(text_corpus)
    docs = corpus.split("eval")
    expected = windows(docs, tokenizer, 256, 16_384)
    result = evaluate_sae(tiny_sae(), model, tokenizer, corpus, progress=False)
    assert result.split == "eval" and result.dense_threshold == 0.1
    assert result.n_tokens == sum(len(w) - 1 for w in expected) < 16_384
    assert max(len(w) for w in expected) == 256  # some documents span several windows
    explicit = evaluate_sae(tiny_sae(), model, tokenizer, corpus, context_size=256,
                            progress=False)  # fmt: skip
    assert (result.fve, result.ce_sae) == (explicit.fve, explicit.ce_sae)
    small = evaluate_sae(tiny_sae(), model, tokenizer, corpus, max_tokens=300, progress=False)
    assert small.n_tokens == 300


def test_evaluate_sae_signature_defaults():
    """The documented API defaults (module docstring / ``featgeo sae eval --help``); 16384
    tokens and context 256 cannot be told apart by running on the small test corpus."""
    import inspect

    params = inspect.signature(evaluate_sae).parameters
    defaults = {name: params[name].default for name in params}
    assert defaults == {"sae": inspect.Parameter.empty, "model": inspect.Parameter.empty,
                        "tokenizer": inspect.Parameter.empty, "corpus": inspect.Parameter.empty,
                        "layer": None, "split": "eval", "context_size": 256, "batch_size": 8,
                        "max_tokens": 16_384, "dense_threshold": 0.1, "progress": True}  # fmt: skip


def test_evaluate_sae_smallest_inputs_and_layer_override(model, tokenizer, text_corpus):
    """One token in batches of one is valid; ``layer`` replaces the hook name's block."""
    corpus = load_corpus(text_corpus)
    result = evaluate_sae(tiny_sae(0), model, tokenizer, corpus, layer=1, batch_size=1,
                          max_tokens=1, context_size=2, progress=False)  # fmt: skip
    assert result.n_tokens == 1 and result.layer == 1
    assert result.hook == "blocks.1.hook_resid_post"


def test_evaluate_sae_checks_the_context_against_the_model(model, tokenizer, text_corpus):
    limit = model.config.max_position_embeddings
    with pytest.raises(ValueError, match=f"max_position_embeddings {limit}"):
        evaluate_sae(tiny_sae(), model, tokenizer, load_corpus(text_corpus),
                     context_size=limit + 1, progress=False)  # fmt: skip


def test_evaluate_sae_batches_and_seconds(model, tokenizer, text_corpus, monkeypatch):
    """Batches of at most ``batch_size`` windows reach the model; ``seconds`` is the wall time
    of the call."""
    import time

    sizes = []
    real = ev._evaluate_batch

    def spy(model, sae, point, chunks, stats):
        sizes.append(len(chunks))
        return real(model, sae, point, chunks, stats)

    monkeypatch.setattr(ev, "_evaluate_batch", spy)
    before = time.perf_counter()
    result = evaluate_sae(tiny_sae(), model, tokenizer, load_corpus(text_corpus), batch_size=2,
                          max_tokens=100, context_size=16, progress=False)  # fmt: skip
    wall = time.perf_counter() - before
    assert sum(sizes) == 7 and max(sizes) == 2  # 100 tokens = 6 windows of 15 + one of 10
    assert isinstance(result.seconds, float) and 0 < result.seconds <= wall


def test_evaluate_sae_on_a_bfloat16_model(tiny_llama, tokenizer, text_corpus):
    """The float32 reconstruction is cast back to the model's dtype before it is spliced in."""
    from featgeo.models import load_model

    model = load_model(tiny_llama).to(torch.bfloat16)
    result = evaluate_sae(tiny_sae(), model, tokenizer, load_corpus(text_corpus),
                          max_tokens=40, context_size=16, progress=False)  # fmt: skip
    assert result.n_tokens == 40
    assert all(math.isfinite(v) for v in (result.ce_clean, result.ce_sae, result.ce_zero))


@pytest.mark.parametrize("batch_size, max_tokens", [(3, 200), (2, 47), (4, 10_000)])
def test_chunk_batches_against_the_windowing(batch_size, max_tokens, tokenizer, text_corpus):
    corpus = load_corpus(text_corpus)
    expected = windows(corpus.split("eval"), tokenizer, 20, max_tokens)
    got = list(ev._chunk_batches(corpus, "eval", tokenizer, 20, batch_size, max_tokens))
    assert all(1 <= len(b) <= batch_size for b in got)
    assert all(len(b) == batch_size for b in got[:-1])
    keys = [(c.doc_index, c.chunk_index) for b in got for c in b]
    assert all(type(d) is int and type(i) is int for d, i in keys) and keys == sorted(set(keys))
    flat = [c.token_ids for b in got for c in b]
    assert len(flat) == len(expected)
    for a, b in zip(flat, expected, strict=True):
        assert torch.equal(a, b)


def test_ce_is_the_masked_next_token_loss(model, tokenizer, text_corpus):
    """_ce sums the cross-entropy of the predictions made at positions 1.. (targets 2..) over
    the real tokens, and counts them; the oracle runs each window alone through HF's loss."""
    corpus = load_corpus(text_corpus)
    chunks = next(ev._chunk_batches(corpus, "eval", tokenizer, 16, 3, 10_000))
    chunks[1] = ev.Chunk(0, 0, chunks[1].token_ids[:9])  # a shorter row: padding in the batch
    ids, valid = ev.pad_chunks(chunks)
    point = ev.sae_hook_point(tiny_sae(), None)
    total, count = ev._ce(model, ids, valid, point, lambda h: h)
    want, n = 0.0, 0
    with torch.no_grad():
        for chunk in chunks:
            w = chunk.token_ids[None]
            labels = w.clone()
            labels[0, :2] = -100  # the prediction made at position 0 is not counted
            loss = model(input_ids=w, labels=labels).loss
            m = w.shape[1] - 2
            want += float(loss) * m
            n += m
    assert count == n
    assert total == pytest.approx(want, rel=1e-5)


# -- sparse_ops: the sparse TopK kernels against the dense computation -------------------------
def dense_topk_problem(seed: int = 0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    n, d_in, d_sae, k = 30, 7, 20, 4
    x = torch.randn(n, d_in, generator=gen, dtype=dtype)
    w = torch.randn(d_in, d_sae, generator=gen, dtype=dtype)
    b = torch.randn(d_sae, generator=gen, dtype=dtype)
    w_dec = torch.randn(d_sae, d_in, generator=gen, dtype=dtype)
    target = torch.randn(n, d_in, generator=gen, dtype=dtype)
    return x, w, b, w_dec, target, k


@pytest.mark.parametrize("wanted", ["x", "w", "b", "w_dec", "all"])
def test_sparse_kernels_give_the_dense_gradients(wanted):
    """Each of x, W_enc, b_enc, W_dec alone (and all together) asking for a gradient gets the
    dense TopK computation's; the others get none."""
    from featgeo.sae.sparse_ops import gathered_pre_activations, sparse_decode

    x0, w0, b0, d0, target, k = dense_topk_problem()

    def run(sparse: bool):
        t = {"x": x0.clone(), "w": w0.clone(), "b": b0.clone(), "w_dec": d0.clone()}
        for name in t:
            t[name].requires_grad_(wanted in (name, "all"))
        pre = t["x"] @ t["w"] + t["b"]
        idx = pre.detach().topk(k, dim=-1).indices
        if sparse:
            vals = gathered_pre_activations(t["x"], t["w"], t["b"], idx, pre.detach())
            recon = sparse_decode(idx, torch.relu(vals), t["w_dec"])
        else:
            codes = torch.zeros_like(pre).scatter(-1, idx, torch.relu(pre.gather(1, idx)))
            recon = codes @ t["w_dec"]
        loss = (recon - target).pow(2).sum()
        loss.backward()
        return loss.detach(), {name: v.grad for name, v in t.items()}

    dense_loss, dense = run(False)
    sparse_loss, sparse = run(True)
    torch.testing.assert_close(sparse_loss, dense_loss)
    for name in ("x", "w", "b", "w_dec"):
        if wanted in (name, "all"):
            assert sparse[name] is not None and sparse[name].abs().sum() > 0, name
            torch.testing.assert_close(sparse[name], dense[name], msg=name)
        else:
            assert sparse[name] is None, name


def test_gathered_values_are_the_selected_pre_activations():
    from featgeo.sae.sparse_ops import gathered_pre_activations, sparse_decode

    x, w, b, w_dec, _, k = dense_topk_problem(1, torch.float32)
    pre = x @ w + b
    idx = pre.topk(k, dim=-1).indices
    vals = gathered_pre_activations(x, w, b, idx, pre)
    torch.testing.assert_close(vals, torch.gather(pre, 1, idx))
    recon = sparse_decode(idx, vals, w_dec)
    expected = torch.stack([vals[t] @ w_dec[idx[t]] for t in range(x.shape[0])])
    torch.testing.assert_close(recon, expected)


# -- architectures ------------------------------------------------------------------------------
def test_normalize_decoder_rows_and_zero_rows():
    """Rows divided by their own L2 norm (hand-computed 3-4-5 rows); a zero row stays zero
    (the norm is clamped to eps, not divided by zero); no gradient is recorded."""
    sae = SparseAutoencoder(SAEConfig(d_in=2, d_sae=3))
    with torch.no_grad():
        sae.W_dec.copy_(torch.tensor([[3.0, 4.0], [0.0, 0.0], [0.0, -0.5]]))
    out = sae.normalize_decoder_()
    assert out is sae and sae.W_dec.grad is None
    torch.testing.assert_close(
        sae.W_dec.detach(), torch.tensor([[0.6, 0.8], [0.0, 0.0], [0.0, -1.0]])
    )
    with torch.no_grad():
        sae.W_dec.copy_(torch.tensor([[1e-13, 0.0], [2.0, 0.0], [0.0, 1.0]]))
    sae.normalize_decoder_(eps=1e-12)  # below eps: divided by eps, not by its norm
    assert float(sae.W_dec.detach()[0, 0]) == pytest.approx(0.1, rel=1e-5)
    sae.normalize_decoder_(eps=0.5)
    assert float(sae.W_dec.detach()[0, 0]) == pytest.approx(0.2, rel=1e-5)


def test_for_compute_float32_copy_or_self():
    sae = SparseAutoencoder.from_config(SAEConfig(d_in=4, d_sae=8), seed=2)
    assert sae.for_compute() is sae and sae.for_compute("cpu") is sae
    half = SparseAutoencoder.from_config(SAEConfig(d_in=4, d_sae=8, dtype="bfloat16"), seed=2)
    copy32 = half.for_compute()
    assert copy32 is not half and half.W_dec.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in copy32.parameters())
    assert copy32.cfg.dtype == "bfloat16"
    torch.testing.assert_close(copy32.W_dec, half.W_dec.float(), rtol=0, atol=0)


def test_extra_repr():
    topk = SparseAutoencoder(SAEConfig(d_in=4, d_sae=8, architecture="topk", k=2))
    assert topk.extra_repr() == "architecture=topk, d_in=4, d_sae=8, k=2"
    relu = SparseAutoencoder(SAEConfig(d_in=4, d_sae=8))
    assert relu.extra_repr() == "architecture=standard, d_in=4, d_sae=8"


def test_wrong_inputs_messages():
    sae = SparseAutoencoder(SAEConfig(d_in=4, d_sae=8))
    with pytest.raises(TypeError, match=r"^x must be a torch\.Tensor, got list$"):
        sae.encode([[0.0] * 4])
    with pytest.raises(ValueError, match=r"x must have last dimension 4, got shape \(\); check "
                       r"that the SAE belongs to this model and hook$"):  # fmt: skip
        sae.encode(torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"^codes must have last dimension 8, got shape \(2, 4\)"):
        sae.decode(torch.zeros(2, 4))


def test_unhashable_architecture_name():
    from featgeo.sae.architectures import get_architecture

    with pytest.raises(ValueError, match=r"unknown SAE architecture '\['topk'\]'; choose from "
                       r"jumprelu, standard, topk$"):  # fmt: skip
        get_architecture(["topk"])


# -- training: the pieces of the loss and its gradients ------------------------------------------
from featgeo.sae import training as tr  # noqa: E402


def test_remove_parallel_grad_by_hand():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    w = torch.nn.Parameter(w / w.norm(dim=1, keepdim=True))
    g = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    w.grad = g.clone()
    tr._remove_parallel_grad(w)
    wn, gn = w.detach().numpy(), g.numpy()
    expected = gn - (gn * wn).sum(1, keepdims=True) * wn
    np.testing.assert_allclose(w.grad.numpy(), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose((w.grad.numpy() * wn).sum(1), 0, atol=1e-12)
    empty = torch.nn.Parameter(torch.ones(2, 2))
    tr._remove_parallel_grad(empty)
    assert empty.grad is None


def test_rectangle_kernel_by_hand():
    threshold = torch.tensor([1.0], dtype=torch.float64)
    pre = threshold + torch.tensor([0.0, 0.2, 0.25, 0.3, -0.2, -0.25, 1.0], dtype=torch.float64)
    got = tr._rectangle(pre, threshold, 0.5)  # |pre - threshold| < 0.25, divided by 0.5
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, torch.tensor([2.0, 2.0, 0, 0, 2.0, 0, 0], dtype=torch.float64))


def jump_inputs():
    pre = torch.tensor(
        [[0.5, 0.8, 0.25], [0.45, 0.3, 1.0]], dtype=torch.float64, requires_grad=True
    )
    threshold = torch.tensor([0.5, 0.6, 0.1], dtype=torch.float64, requires_grad=True)
    grad = torch.tensor([[1.0, -2.0, 3.0], [0.5, 4.0, -1.0]], dtype=torch.float64)
    return pre, threshold, grad


def test_jumprelu_function_and_pseudo_gradients_by_hand():
    """Values pre * H(pre - t) (a tie pre = t gives 0); d/dpre = H(pre - t); d/dt =
    -t * K(pre - t) * grad summed over tokens, K = 1/eps on |pre - t| < eps/2 (eps = 0.2)."""
    pre, threshold, grad = jump_inputs()
    out = tr._JumpReLU.apply(pre, threshold, 0.2)
    torch.testing.assert_close(
        out.detach(), torch.tensor([[0.0, 0.8, 0.25], [0.0, 0.0, 1.0]], dtype=torch.float64)
    )
    out.backward(grad)
    on = torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(pre.grad, grad * on)
    # |pre - t| < 0.1 only at (0, 0) (a tie) and (1, 0) (0.05)
    kernel = torch.tensor([[5.0, 0, 0], [5.0, 0, 0]], dtype=torch.float64)
    expected = -(threshold.detach() * kernel * grad).sum(0)
    torch.testing.assert_close(threshold.grad, expected)
    assert float(threshold.grad[0]) == pytest.approx(-0.5 * 5 * 1.5)


def test_step_function_and_pseudo_gradient_by_hand():
    pre, threshold, grad = jump_inputs()
    out = tr._Step.apply(pre, threshold, 0.2)
    torch.testing.assert_close(
        out.detach(), torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    )
    out.backward(grad)
    assert pre.grad is None
    kernel = torch.tensor([[5.0, 0, 0], [5.0, 0, 0]], dtype=torch.float64)
    torch.testing.assert_close(threshold.grad, -(kernel * grad).sum(0))


def test_aux_loss_with_more_dead_latents_than_aux_k():
    """n_dead = 6 > aux_k = 3: scale 1; e_hat from the ReLU'd top-3 dead pre-activations."""
    gen = torch.Generator().manual_seed(4)
    sae = SparseAutoencoder.from_config(SAEConfig(d_in=5, d_sae=10, architecture="topk", k=2))
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(10, generator=gen))
    sae_in = torch.randn(7, 5, generator=gen)
    pre = (sae_in @ sae.W_enc + sae.b_enc).detach()
    dead = torch.zeros(10, dtype=torch.bool)
    dead[[0, 2, 3, 5, 8, 9]] = True
    err = torch.randn(7, 5, generator=gen)
    got = tr._aux_loss(sae, sae_in, pre, dead, err, 3)
    p = pre.double().numpy()
    masked = np.where(dead.numpy(), p, -np.inf)
    codes = np.zeros_like(p)
    for t in range(7):
        top = np.argsort(-masked[t], kind="stable")[:3]
        codes[t, top] = np.maximum(p[t, top], 0)
    e_hat = codes @ sae.W_dec.detach().double().numpy()
    expected = ((e_hat - err.double().numpy()) ** 2).sum()
    assert float(got.detach()) == pytest.approx(expected, rel=1e-5)


def test_geometric_median_defaults_start_and_stopping():
    import inspect

    params = inspect.signature(tr.geometric_median).parameters
    assert (params["max_iter"].default, params["tol"].default) == (100, 1e-6)
    rng = np.random.default_rng(0)
    far = rng.exponential(1.0, (50, 3)) * [1.0, 2.0, 3.0] + 100.0

    def weiszfeld_step(points, m):
        w = 1 / np.linalg.norm(points - m, axis=1)
        return (w[:, None] * points).sum(0) / w.sum()

    start = far.mean(0)
    step1 = weiszfeld_step(far, start)
    # one iteration without stopping: one step from the mean, in the input's dtype
    one = tr.geometric_median(torch.from_numpy(far).float(), max_iter=1, tol=0.0)
    assert one.dtype == torch.float32
    np.testing.assert_allclose(one.numpy(), step1, rtol=1e-6)
    # stop after the first step when it moved less than tol * (1 + |median|)
    d1 = np.linalg.norm(step1 - start)
    tol = 2 * d1 / (1 + np.linalg.norm(start))
    stopped = tr.geometric_median(torch.from_numpy(far).float(), tol=float(tol))
    assert stopped.dtype == torch.float32
    np.testing.assert_allclose(stopped.numpy(), step1, rtol=1e-6)
    # near the origin, a tol just under the first move must not stop there
    near = far - 100.0
    start, step1 = near.mean(0), weiszfeld_step(near, near.mean(0))
    tol = 0.9 * np.linalg.norm(step1 - start) / (1 + np.linalg.norm(start))
    full = tr.geometric_median(torch.from_numpy(near), tol=float(tol))
    assert np.linalg.norm(full.numpy() - step1) > 10 * np.linalg.norm(step1 - start) * 1e-3


def small_batches(n: int, scale: float = 1.0, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    dictionary = torch.randn(24, 8, generator=gen)
    out = []
    for _ in range(n):
        mask = torch.rand(64, 24, generator=gen) < 0.2
        out.append(((torch.rand(64, 24, generator=gen) * mask) @ dictionary + 1.0) * scale)
    return out


def half_dead_init(seed: int = 0) -> SparseAutoencoder:
    """TopK (k = 4) SAE whose latents 16.. have tiny encoder columns: never in the top 4, so
    dead after one batch, but with positive pre-activations for the AuxK loss to use."""
    sae = SparseAutoencoder.from_config(
        SAEConfig(d_in=8, d_sae=32, architecture="topk", k=4), seed=seed
    )
    with torch.no_grad():
        sae.W_enc[:, 16:] *= 1e-3
        sae.b_enc[16:] = 1e-3
        sae.b_dec.fill_(1.0)
    return sae


def test_topk_steps_train_b_enc_count_tokens_and_use_default_aux_k():
    """Two TopK steps with half the latents dead after step 1 (dead window = one batch) and
    the default aux_k (d_in // 2 = 4): b_enc moves for the latents picked by the main TopK and
    for the dead ones the AuxK loss picks (both reach it only through the sparse kernels);
    tokens are counted per row."""
    x1, x2 = small_batches(2)
    cfg = tr.TrainConfig(d_sae=32, total_tokens=128, k=4, batch_size=64, lr=1e-3,
                         dead_after_tokens=64, log_every=1, progress=False)  # fmt: skip
    trainer = tr.SAETrainer(cfg)
    b_enc = {}

    def stream():
        yield x1
        b_enc["before"] = trainer.sae_.b_enc.detach().clone()
        yield x2

    trainer.fit(stream(), init_sae=half_dead_init())
    assert trainer.tokens_seen_ == 128 and [r["tokens"] for r in trainer.history_] == [64, 128]
    assert trainer.history_[1]["dead_fraction"] == 0.5 and trainer.history_[1]["aux_loss"] > 0
    moved = (trainer.sae_.b_enc.detach() - b_enc["before"]).abs() > 1e-5
    assert bool(moved[:16].any()) and bool(moved[16:].any())


def test_topk_l0_counts_only_positive_picks():
    (x1,) = small_batches(1)
    cfg = tr.TrainConfig(d_sae=32, total_tokens=64, k=4, batch_size=64, lr=1e-3, log_every=1,
                         progress=False)  # fmt: skip
    init = SparseAutoencoder.from_config(SAEConfig(d_in=8, d_sae=32, architecture="topk", k=4))
    with torch.no_grad():
        init.b_enc.fill_(-1.0)
        init.b_dec.fill_(1.0)
    p = {n: t.detach().double() for n, t in init.named_parameters()}
    row = tr.SAETrainer(cfg).fit([x1], init_sae=init).history_[0]
    pre = (x1.double() - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    positive = (pre.topk(4, dim=1).values > 0).sum(1).double().mean()
    assert 0 < float(positive) < 4  # zeros among the k picked are not active
    assert row["l0"] == pytest.approx(float(positive), rel=1e-9)


def test_standard_dead_tracking_and_small_variance():
    """A ReLU SAE on activations of total variance < 1: the reported FVU is the plain ratio;
    with a dead window of one token the latents that fired on batch 1 are live at step 2."""
    x1, x2 = small_batches(2, scale=0.01)
    cfg = tr.TrainConfig(d_sae=32, total_tokens=128, architecture="standard", batch_size=64,
                         lr=1e-3, dead_after_tokens=1, log_every=1, progress=False)  # fmt: skip
    init = SparseAutoencoder.from_config(SAEConfig(d_in=8, d_sae=32), seed=1)
    with torch.no_grad():
        init.b_enc[:5] = -1e3
    p = {n: t.detach().double() for n, t in init.named_parameters()}
    trainer = tr.SAETrainer(cfg).fit([x1, x2], init_sae=init)
    x = x1.double()
    codes = ((x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]).clamp_min(0)
    total = float((x - x.mean(0)).pow(2).sum())
    assert total < 1
    fvu = float((x - codes @ p["W_dec"] - p["b_dec"]).pow(2).sum()) / total
    assert trainer.history_[0]["fvu"] == pytest.approx(fvu, rel=1e-5)
    fired = (codes > 0).any(0)
    assert 5 <= int((~fired).sum()) < 32
    assert trainer.history_[1]["dead_fraction"] == pytest.approx(float((~fired).double().mean()))


def test_topk_without_aux_coef_reports_no_aux_loss():
    x1, x2 = small_batches(2)
    cfg = tr.TrainConfig(d_sae=32, total_tokens=128, k=4, batch_size=64, lr=1e-3, aux_coef=0.0,
                         dead_after_tokens=64, log_every=1, progress=False)  # fmt: skip
    trainer = tr.SAETrainer(cfg).fit([x1, x2], init_sae=half_dead_init())
    assert trainer.history_[1]["dead_fraction"] == 0.5 and trainer.history_[1]["aux_loss"] == 0


@pytest.mark.parametrize("l0_coef", [None, 0.002])
def test_jumprelu_l0_coefficient_and_thresholds(l0_coef):
    """The adaptive L0 weight: 1e-3 * exp(0.01 (L0 - k) / k) after one step (L0 of that step);
    a given weight stays. Thresholds move by about lr, staying below 1."""
    (x1,) = small_batches(1)
    cfg = tr.TrainConfig(d_sae=32, total_tokens=64, architecture="jumprelu", k=4, batch_size=64,
                         lr=1e-3, l0_coef=l0_coef, log_every=1, progress=False)  # fmt: skip
    init = SparseAutoencoder.from_config(SAEConfig(d_in=8, d_sae=32, architecture="jumprelu"))
    with torch.no_grad():
        init.threshold.copy_(torch.linspace(0.0, 0.5, 32))
    trainer = tr.SAETrainer(cfg).fit([x1], init_sae=init)
    l0 = trainer.history_[0]["l0"]
    assert abs(l0 - 4) > 2
    expected = 1e-3 * math.exp(0.01 * (l0 - 4) / 4) if l0_coef is None else l0_coef
    assert trainer.l0_coef_ == pytest.approx(expected, rel=1e-9)
    assert float(trainer.sae_.threshold.detach().max()) < 0.51


def test_jumprelu_tie_is_off():
    sae = SparseAutoencoder(SAEConfig(d_in=2, d_sae=3, architecture="jumprelu"))
    with torch.no_grad():
        sae.threshold.copy_(torch.tensor([0.5, 0.5, 0.0]))
    pre = torch.tensor([[0.5, 0.7, -0.1]])
    torch.testing.assert_close(sae.architecture.activate(pre, sae), torch.tensor([[0.0, 0.7, 0.0]]))


def test_from_config_draws_float64_rows_with_seed_0_by_default():
    cfg = SAEConfig(d_in=5, d_sae=7)
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    expected = (w / w.norm(dim=1, keepdim=True)).float()
    sae = SparseAutoencoder.from_config(cfg)
    torch.testing.assert_close(sae.W_dec.detach(), expected, rtol=0, atol=0)
    torch.testing.assert_close(sae.W_enc.detach(), expected.T, rtol=0, atol=0)


def test_inputs_are_cast_to_the_sae_dtype():
    """A float64 SAE without b_dec on the input takes float32 activations and codes."""
    sae = SparseAutoencoder.from_config(
        SAEConfig(d_in=3, d_sae=4, dtype="float64", apply_b_dec_to_input=False), seed=1
    )
    x = torch.tensor([[1.0, -2.0, 0.5]])
    expected = (x.double() @ sae.W_enc.detach() + sae.b_enc.detach()).clamp_min(0)
    torch.testing.assert_close(sae.encode(x).detach(), expected)
    codes = torch.tensor([[1.0, 0.0, 2.0, 0.0]])
    recon = codes.double() @ sae.W_dec.detach() + sae.b_dec.detach()
    torch.testing.assert_close(sae.decode(codes).detach(), recon)


def test_jumprelu_thresholds_are_clamped_at_zero():
    """Latents 0 and 1 have constant pre-activations just above a tiny threshold (inside the
    kernel) and opposite decoder rows, so one of their thresholds is pushed down by about lr,
    past 0: it must end at exactly 0, never below."""
    (x1,) = small_batches(1)
    cfg = tr.TrainConfig(d_sae=4, total_tokens=64, architecture="jumprelu", k=2, batch_size=64,
                         lr=1e-3, l0_coef=0.0, log_every=1, progress=False)  # fmt: skip
    init = SparseAutoencoder.from_config(SAEConfig(d_in=8, d_sae=4, architecture="jumprelu"))
    u = torch.ones(8) / 8**0.5
    with torch.no_grad():
        init.W_enc[:, :2] = 0.0
        init.b_enc[:2] = 1.1e-4
        init.threshold.copy_(torch.tensor([1e-4, 1e-4, 0.5, 0.5]))
        init.W_dec[0], init.W_dec[1] = u, -u
        init.b_dec.copy_(x1.mean(0))
    thresholds = tr.SAETrainer(cfg).fit([x1], init_sae=init).sae_.threshold.detach()
    assert float(thresholds.min()) == 0.0
