"""Tests written for the surviving mutants of the pruning modules (docs/testing.md, `make mutate
MODULES=pruning.masks,pruning.wanda,pruning.magnitude,pruning.sparsegpt`).

Every expected value is computed by hand or by numpy / plain torch written out here, never by
asking featgeo again.
"""

import numpy as np
import pytest
import torch

from featgeo.pruning import MagnitudePruner, SparseGPTPruner, WandaPruner, get_pruner
from featgeo.pruning.masks import (
    _at_or_below_threshold,
    _smallest_by_sort,
    check_ties,
    matrix_mask,
    parse_nm,
    row_mask,
)


# -- masks ---------------------------------------------------------------------------------------
def test_extreme_sparsities_give_boolean_masks_the_pruners_can_use():
    """sparsity 0 prunes nothing and 1 prunes everything, as bool masks (masked_fill refuses
    any other dtype)."""
    w = torch.tensor([[1.0, -2.0, 3.0], [-4.0, 5.0, -6.0]])
    x = torch.ones(4, 3)
    for ties in ("exact", "reference"):
        none, every = matrix_mask(w.abs(), 0.0, "exact"), matrix_mask(w.abs(), 1.0, ties)
        assert none.dtype == every.dtype == torch.bool
        assert not none.any() and every.all()
    none, every = row_mask(w.abs(), 0.0), row_mask(w.abs(), 1.0)
    assert none.dtype == every.dtype == torch.bool
    assert not none.any() and every.all()
    assert torch.equal(WandaPruner(0.0).fit(x).prune(w), w)
    assert (WandaPruner(1.0).fit(x).prune(w) == 0).all()
    assert torch.equal(MagnitudePruner(0.0).prune(w), w)
    assert (MagnitudePruner(1.0).prune(w) == 0).all()
    assert (MagnitudePruner(1.0, ties="reference").prune(w) == 0).all()


def test_stable_sort_reference_by_hand():
    # stable ascending order: 0 (col 3), 1 (col 1), 1 (col 2), 2 (col 0); k = 2 takes cols 3, 1
    mask = _smallest_by_sort(torch.tensor([[2.0, 1.0, 1.0, 0.0]]), 2)
    assert mask.dtype == torch.bool
    assert mask.tolist() == [[False, True, False, True]]


def test_reference_threshold_per_row_against_numpy():
    """The reference rule along the last dim: every score <= the (k+1)-th smallest of its row."""
    scores = torch.randint(0, 3, (6, 10)).float()
    s = scores.numpy()
    for k in range(0, 10):
        expected = s <= np.sort(s, axis=-1)[:, [k]]
        got = _at_or_below_threshold(scores, k)
        assert got.dtype == torch.bool
        assert np.array_equal(got.numpy(), expected), k
    assert _at_or_below_threshold(scores, 10).all()


def test_reference_threshold_uses_the_last_dim_of_a_3d_tensor():
    """ "Along the last dim" for any rank (nm_mask-style [rows, groups, m] groups): dim 1 of a
    3-D tensor would compare across groups instead."""
    scores = torch.randint(0, 5, (3, 4, 6)).float()
    s = scores.numpy()
    for k in (0, 2, 5):
        expected = s <= np.sort(s, axis=-1)[..., [k]]
        assert np.array_equal(_at_or_below_threshold(scores, k).numpy(), expected), k
    # k = 3 selects everything when the last dim has 3 entries, not when only dim 1 has 3
    assert _at_or_below_threshold(torch.rand(2, 8, 3), 3).all()
    assert not _at_or_below_threshold(torch.rand(2, 3, 8), 3).all()


def test_reference_threshold_by_hand():
    scores = torch.tensor([[3.0, 1.0, 2.0, 1.0], [0.0, 5.0, 4.0, 6.0]])
    # k = 1: threshold = 2nd smallest of each row: row 0 -> 1 (both 1s), row 1 -> 4
    assert _at_or_below_threshold(scores, 1).tolist() == [
        [False, True, False, True],
        [True, False, True, False],
    ]
    # matrix_mask(reference) over the whole matrix: k = int(8 * 0.25) = 2, sorted: 0 1 1 2 ...
    # threshold = sorted[2] = 1, so 0 and both 1s go.
    assert matrix_mask(scores, 0.25, "reference").tolist() == [
        [False, True, False, True],
        [True, False, False, False],
    ]


def test_unknown_ties_message_names_the_choices():
    check_ties("exact")
    check_ties("reference")
    with pytest.raises(ValueError, match="^--ties must be one of exact, reference, got 'k'$"):
        check_ties("k")


@pytest.mark.parametrize("text,expected", [("", None), ("1:4", (1, 4)), ("3:8", (3, 8))])
def test_parse_nm_empty_and_n_of_one(text, expected):
    assert parse_nm(text) == expected


# -- wanda / sparsegpt statistics ----------------------------------------------------------------
@pytest.mark.parametrize("pruner", [WandaPruner, SparseGPTPruner], ids=["wanda", "sparsegpt"])
def test_dead_inputs_by_hand(pruner):
    # sums of squares per column: 1, 0, 5 -> only column 1 never fired
    x = torch.tensor([[1.0, 0.0, -2.0], [0.0, 0.0, 1.0]])
    assert pruner().fit(x).dead_inputs_.tolist() == [False, True, False]


def test_sparsegpt_hessian_by_hand():
    """H = (2/n) X^T X. SparseGPT's pruning is unchanged by a uniform scale of H (the damping is
    relative), so only the statistic itself can show a wrong token count."""
    x = torch.tensor([[1.0, 2.0], [3.0, 0.0]])  # X^T X = [[10, 2], [2, 4]], n = 2
    pruner = SparseGPTPruner().fit(x)
    assert pruner.hessian_.tolist() == [[10.0, 2.0], [2.0, 4.0]]
    assert pruner.n_tokens_ == 2
    # one more token [0, 1]: X^T X = [[10, 2], [2, 5]], n = 3
    pruner.partial_fit(torch.tensor([[0.0, 1.0]]))
    torch.testing.assert_close(pruner.hessian_, torch.tensor([[20.0, 4.0], [4.0, 10.0]]) / 3)
    assert pruner.n_tokens_ == 3


# -- sparsegpt: a direct implementation of the reference ``fasterprune`` -------------------------
def direct_fasterprune(weight, hessian, *, sparsity=0.5, nm=None, blocksize=128, percdamp=0.01):
    """SparseGPT as the reference ``fasterprune`` (IST-DASLab/sparsegpt) writes it, exact ties.

    ``blocksize`` is the block actually used (for N:M a multiple of M). Unstructured masks: the
    first k = int(rows * width * s) of a stable ascending sort of w^2 / d^2 over the block; N:M:
    the n smallest w^2 / d^2 of each group of m columns, chosen when the group is reached.
    """
    w = weight.float().clone()
    h = hessian.clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    h += percdamp * torch.mean(torch.diag(h)) * torch.eye(h.shape[0])
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    rows, cols = w.shape
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1, hinv1 = w[:, i1:i2].clone(), hinv[i1:i2, i1:i2]
        q1, err1 = torch.zeros_like(w1), torch.zeros_like(w1)
        d = torch.diag(hinv1)
        if nm is None:
            tmp = (w1**2 / d.reshape(1, -1) ** 2).flatten()
            k = int(tmp.numel() * sparsity)
            mask1 = torch.zeros(tmp.numel(), dtype=torch.bool)
            mask1[torch.sort(tmp, stable=True).indices[:k]] = True
            mask1 = mask1.reshape(w1.shape)
        else:
            mask1 = torch.zeros_like(w1, dtype=torch.bool)
        for i in range(i2 - i1):
            col = w1[:, i]
            if nm is not None and i % nm[1] == 0:
                tmp = w1[:, i : i + nm[1]] ** 2 / d[i : i + nm[1]].reshape(1, -1) ** 2
                picked = torch.topk(tmp, nm[0], dim=1, largest=False).indices
                mask1.scatter_(1, i + picked, True)
            q = col.clone()
            q[mask1[:, i]] = 0
            q1[:, i] = q
            err = (col - q) / hinv1[i, i]
            w1[:, i:] -= err.unsqueeze(1).matmul(hinv1[i, i:].unsqueeze(0))
            err1[:, i] = err
        w[:, i1:i2] = q1
        w[:, i2:] -= err1.matmul(hinv[i1:i2, i2:])
    return w


@pytest.fixture(scope="module")
def several_blocks():
    """A 12 x 40 weight (continuous values: no ties) and correlated inputs, one input dead."""
    g = torch.Generator().manual_seed(11)
    w = torch.randn(12, 40, generator=g)
    x = torch.randn(200, 40, generator=g) @ (torch.eye(40) + 0.3 * torch.randn(40, 40, generator=g))
    x[:, 3] = 0
    return w, x


def assert_same_pruning(ours, theirs):
    assert torch.equal(ours == 0, theirs == 0)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "nm,blocksize,used",
    [
        ((2, 4), 128, 128),  # one block of 40
        ((2, 4), 16, 16),  # blocks 16, 16, 8: the lazy update crosses blocks
        ((2, 4), 10, 8),  # rounded down to a multiple of M
        ((2, 4), 2, 4),  # never below M
        ((1, 4), 12, 12),
        ((4, 8), 12, 8),
    ],
    ids=str,
)
def test_sparsegpt_nm_equals_direct_fasterprune(several_blocks, nm, blocksize, used):
    w, x = several_blocks
    pruner = SparseGPTPruner(nm=nm, blocksize=blocksize).fit(x)
    hessian = 2 / x.shape[0] * x.T @ x
    theirs = direct_fasterprune(w, hessian, nm=nm, blocksize=used)
    assert_same_pruning(pruner.prune(w), theirs)


@pytest.mark.parametrize(
    "sparsity,blocksize,percdamp",
    [(0.5, 128, 0.01), (0.5, 16, 0.01), (0.3, 7, 0.01), (0.7, 16, 0.01), (0.5, 16, 0.5)],
    ids=str,
)
def test_sparsegpt_unstructured_equals_direct_fasterprune(
    several_blocks, sparsity, blocksize, percdamp
):
    w, x = several_blocks
    pruner = SparseGPTPruner(sparsity, blocksize=blocksize, percdamp=percdamp).fit(x)
    hessian = 2 / x.shape[0] * x.T @ x
    theirs = direct_fasterprune(
        w, hessian, sparsity=sparsity, blocksize=blocksize, percdamp=percdamp
    )
    assert_same_pruning(pruner.prune(w), theirs)


def test_sparsegpt_defaults_are_half_unstructured_128_and_one_percent():
    """The constructor defaults against the paper's settings, on more than 128 columns."""
    g = torch.Generator().manual_seed(12)
    w = torch.randn(6, 140, generator=g)
    x = torch.randn(300, 140, generator=g) @ (
        torch.eye(140) + 0.2 * torch.randn(140, 140, generator=g)
    )
    theirs = direct_fasterprune(
        w, 2 / x.shape[0] * x.T @ x, sparsity=0.5, blocksize=128, percdamp=0.01
    )
    assert_same_pruning(SparseGPTPruner().fit(x).prune(w), theirs)


def test_sparsegpt_returns_the_weight_dtype_and_leaves_it_untouched(several_blocks):
    w, x = several_blocks
    w16 = w.to(torch.bfloat16)
    before = w16.clone()
    pruned = SparseGPTPruner(0.5, blocksize=16).fit(x).prune(w16)
    assert pruned.dtype == torch.bfloat16
    assert torch.equal(w16, before)
    hessian = 2 / x.shape[0] * x.T @ x
    theirs = direct_fasterprune(before, hessian, sparsity=0.5, blocksize=16).to(torch.bfloat16)
    assert torch.equal(pruned == 0, theirs == 0)


# -- device: statistics fitted on the CPU, weight on CUDA ----------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_statistics_fitted_on_cpu_prune_a_cuda_weight(method):
    """The pruners move their statistics to the weight's device (``.to(weight.device)``)."""
    x = torch.randn(256, 32)
    w = torch.randn(16, 32)
    cpu = get_pruner(method)(0.5).fit(x).prune(w)
    gpu = get_pruner(method)(0.5).fit(x).prune(w.cuda())
    assert gpu.device.type == "cuda"
    agree = ((cpu == 0) == (gpu.cpu() == 0)).float().mean().item()
    assert agree > 0.99


# -- base: the pruner contract -------------------------------------------------------------------
def test_registry_returns_the_classes():
    assert get_pruner("wanda") is WandaPruner
    assert get_pruner("magnitude") is MagnitudePruner
    assert get_pruner("sparsegpt") is SparseGPTPruner


def test_default_sparsity_is_one_half():
    w = torch.arange(1.0, 17.0).reshape(4, 4)  # distinct |w|: the 8 smallest are 1..8
    pruned = MagnitudePruner().prune(w)
    assert torch.equal(pruned == 0, w <= 8)


@pytest.mark.parametrize("pruner_cls", [WandaPruner, SparseGPTPruner])
def test_refitting_forgets_the_first_inputs(pruner_cls):
    """fit() resets: fit(a) then fit(b) equals a fresh fit(b) (partial_fit would accumulate)."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, 8, generator=g) * 10, torch.randn(64, 8, generator=g)
    w = torch.randn(6, 8, generator=g)
    refit = pruner_cls(0.5).fit(a).fit(b)
    fresh = pruner_cls(0.5).fit(b)
    assert refit.n_tokens_ == fresh.n_tokens_ == 64
    torch.testing.assert_close(refit.prune(w), fresh.prune(w), rtol=0, atol=0)


def test_partial_fit_flattens_every_leading_dim():
    """[batch, seq, in] inputs are tokens x in: statistics equal those of the flattened 2-D."""
    x = torch.randn(2, 5, 3)
    flat = WandaPruner(0.5).fit(x.reshape(10, 3))
    batched = WandaPruner(0.5).fit(x)
    assert batched.n_tokens_ == 10
    torch.testing.assert_close(batched.input_norm_, flat.input_norm_)
    torch.testing.assert_close(batched.input_norm_, (x.reshape(10, 3) ** 2).mean(0).sqrt())


def test_contract_messages():
    with pytest.raises(RuntimeError, match=r"^this WandaPruner is not fitted yet; call fit"):
        WandaPruner(0.5).prune(torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"^pruner inputs contain NaN or inf; check the model"):
        WandaPruner(0.5).fit(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match=r"^N:M 2:4 needs in_features divisible by 4, got 6"):
        MagnitudePruner(nm=(2, 4)).prune(torch.ones(3, 6))
