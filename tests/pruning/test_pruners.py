"""The three pruners on real layer inputs of a tiny randomly initialised Llama."""

import pytest
import torch

from featgeo.models import decoder_layers, load_model
from featgeo.pruning import MagnitudePruner, SparseGPTPruner, WandaPruner, get_pruner
from featgeo.pruning.sequential import capture_layer0_inputs

METHODS = ["magnitude", "wanda", "sparsegpt"]


@pytest.fixture(scope="module")
def mlp_down_inputs(tiny_llama):
    """The real input of layer 0's mlp.down_proj for 16 random sequences: [tokens, in]."""
    model = load_model(tiny_llama)
    ids = torch.randint(
        0, model.config.vocab_size, (16, 64), generator=torch.Generator().manual_seed(1)
    )
    captured = {}
    down = decoder_layers(model)[0].mlp.down_proj
    handle = down.register_forward_pre_hook(lambda _m, args: captured.setdefault("x", args[0]))
    inputs = capture_layer0_inputs(model, ids)
    with torch.no_grad():
        decoder_layers(model)[0](inputs.hidden, **inputs.kwargs)
    handle.remove()
    return captured["x"].reshape(-1, down.in_features), down.weight.detach().clone()


def test_wanda_scores_by_hand():
    x = torch.tensor([[1.0, 2.0, 0.0], [3.0, 2.0, 0.0]])  # mean x^2 per column: 5, 4, 0
    w = torch.tensor([[1.0, -1.0, 100.0], [2.0, 1.0, -3.0]])
    pruner = WandaPruner(sparsity=1 / 3).fit(x)
    torch.testing.assert_close(pruner.input_norm_, torch.tensor([5.0, 4.0, 0.0]).sqrt())
    # Column 2 never fires, so its score is 0 however large the weight: it goes first.
    assert pruner.prune(w).tolist() == [[1.0, -1.0, 0.0], [2.0, 1.0, 0.0]]


def test_wanda_partial_fit_equals_fit(mlp_down_inputs):
    x, w = mlp_down_inputs
    whole = WandaPruner(0.5).fit(x)
    parts = WandaPruner(0.5)
    for chunk in x.split(100):
        parts.partial_fit(chunk)
    torch.testing.assert_close(whole.input_norm_, parts.input_norm_)
    assert torch.equal(whole.prune(w), parts.prune(w))


def test_sparsegpt_hessian_accumulation_matches_definition(mlp_down_inputs):
    x, _ = mlp_down_inputs
    pruner = SparseGPTPruner()
    for chunk in x.split(77):
        pruner.partial_fit(chunk)
    torch.testing.assert_close(pruner.hessian_, 2 / x.shape[0] * x.T @ x, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.8])
def test_wanda_leaves_target_sparsity_in_every_row(mlp_down_inputs, sparsity):
    x, w = mlp_down_inputs
    pruned = WandaPruner(sparsity).fit(x).prune(w)
    per_row = (pruned == 0).sum(dim=1)
    assert (per_row == int(w.shape[1] * sparsity)).all()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("nm", [(2, 4), (4, 8)], ids=["2:4", "4:8"])
def test_nm_masks_have_exactly_n_zeros_per_group(mlp_down_inputs, method, nm):
    x, w = mlp_down_inputs
    pruned = get_pruner(method)(nm=nm).fit(x).prune(w)
    zeros = (pruned == 0).reshape(w.shape[0], -1, nm[1]).sum(dim=-1)
    assert (zeros == nm[0]).all()


@pytest.mark.parametrize("nm", [None, (2, 4)], ids=["unstructured", "2:4"])
def test_sparsegpt_has_lowest_layer_output_error(mlp_down_inputs, nm):
    x, w = mlp_down_inputs
    dense_out = x @ w.T
    errors = {}
    for method in METHODS:
        pruned = get_pruner(method)(0.5, nm).fit(x).prune(w)
        errors[method] = torch.linalg.norm(dense_out - x @ pruned.T).item()
    assert errors["sparsegpt"] < errors["wanda"]
    assert errors["sparsegpt"] < errors["magnitude"]


def test_sparsegpt_unstructured_hits_target_overall_not_per_row(mlp_down_inputs):
    x, w = mlp_down_inputs
    pruned = SparseGPTPruner(0.5).fit(x).prune(w)
    assert (pruned == 0).float().mean().item() == pytest.approx(0.5, abs=1e-3)
    per_row = (pruned == 0).float().mean(dim=1)
    assert per_row.std() > 0  # masks are chosen per block across rows (SPEC §1)


def test_sparsegpt_dead_inputs_get_zero_weight(mlp_down_inputs):
    x, w = mlp_down_inputs
    x = x.clone()
    x[:, 5] = 0
    pruned = SparseGPTPruner(0.2).fit(x).prune(w)
    assert (pruned[:, 5] == 0).all()


def test_magnitude_ignores_inputs_and_prunes_smallest():
    w = torch.tensor([[0.1, -5.0], [3.0, -0.2]])
    assert MagnitudePruner(0.5).prune(w).tolist() == [[0.0, -5.0], [3.0, 0.0]]


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_prune_before_fit_raises(method):
    with pytest.raises(RuntimeError, match="not fitted"):
        get_pruner(method)(0.5).prune(torch.ones(4, 4))


def test_prune_rejects_non_matrix_and_bad_nm_width():
    with pytest.raises(ValueError, match="2-D"):
        MagnitudePruner(0.5).prune(torch.ones(4))
    with pytest.raises(ValueError, match="divisible"):
        MagnitudePruner(0.5, (2, 4)).prune(torch.ones(4, 6))


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_fit_rejects_non_finite_inputs(method, bad):
    x = torch.ones(8, 4)
    x[3, 2] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        get_pruner(method)(0.5).fit(x)


def test_unknown_method_lists_choices():
    with pytest.raises(ValueError, match="magnitude, sparsegpt, wanda"):
        get_pruner("obs")
