"""Parity with the reference code (locuslab/wanda, IST-DASLab/sparsegpt): ``--order`` and
``--ties`` (issue 9 §1). The reference behaviour is re-implemented here, straightforwardly and
independently of featgeo's drivers, and featgeo must match it bit for bit."""

from __future__ import annotations

import pytest
import torch

from featgeo.models import COMPONENTS, decoder_layers, get_component, load_model
from featgeo.pruning import MagnitudePruner, SparseGPTPruner, WandaPruner, matrix_mask
from featgeo.pruning import run as prune_run
from featgeo.pruning.config import PruneConfig
from featgeo.pruning.run import run_prune
from featgeo.pruning.sequential import capture_layer0_inputs, prune_layer

SPARSITY = 0.5


@pytest.fixture(scope="module")
def wide_llama(tmp_path_factory, text_corpus, tiny_llama_builder):
    """A tiny Llama whose linears have 192 and 384 inputs, so SparseGPT visits several
    128-column blocks (one of them partial)."""
    return tiny_llama_builder(
        tmp_path_factory.mktemp("wide_llama"),
        corpus_dir=text_corpus,
        hidden=192,
        intermediate=384,
        heads=4,
        kv_heads=2,
    )


def make_config(model, corpus, out, **overrides) -> PruneConfig:
    settings = dict(
        model=str(model),
        corpus=str(corpus),
        out=str(out),
        calib_samples=8,
        seqlen=64,
        eval_windows=2,
        device="cpu",
        sparsity=SPARSITY,
    )
    settings.update(overrides)
    return PruneConfig(**settings)


# -- the reference, written out ---------------------------------------------------------------
def wanda_rule(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per row, the first int(in * s) indices of a stable ascending sort of |W| * ||x_j||."""
    x = x.reshape(-1, x.shape[-1])  # [tokens, in]
    # The statistic is summed with featgeo's numerics (float32 sums, float64 mean) so that the
    # scores are bitwise equal: the masks, not rounding, are under test.
    norm = (x.float().pow(2).sum(dim=0).double() / x.shape[0]).sqrt().float()
    scores = weight.abs() * norm.unsqueeze(0)  # [out, in]
    k = int(weight.shape[1] * SPARSITY)
    order = torch.sort(scores, dim=1, stable=True).indices[:, :k]
    return torch.zeros_like(scores, dtype=torch.bool).scatter(1, order, True)


def magnitude_reference_rule(weight: torch.Tensor, _x=None) -> torch.Tensor:
    """Every |W| <= the value at position int(numel * s) of the sorted |W| of the matrix."""
    scores = weight.abs()
    threshold = torch.sort(scores.flatten()).values[int(weight.numel() * SPARSITY)]
    return scores <= threshold


def direct_sparsegpt(weight, hessian, sparsity, ties, blocksize=128, percdamp=0.01):
    """SparseGPT written out from the paper's Algorithm 1 / the reference ``fasterprune``."""
    w = weight.float().clone()  # [out, in]
    h = hessian.clone()  # [in, in]
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    h += percdamp * torch.diag(h).mean() * torch.eye(h.shape[0])
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    for start in range(0, w.shape[1], blocksize):
        stop = min(start + blocksize, w.shape[1])
        wb, ub = w[:, start:stop].clone(), u[start:stop, start:stop]
        scores = wb.pow(2) / torch.diag(ub).pow(2)
        k = int(scores.numel() * sparsity)
        if ties == "reference":
            mask = scores <= torch.sort(scores.flatten()).values[k]
        else:
            flat_order = torch.sort(scores.flatten(), stable=True).indices[:k]
            mask = torch.zeros(scores.numel(), dtype=torch.bool)
            mask[flat_order] = True
            mask = mask.reshape(scores.shape)
        errors = torch.zeros_like(wb)
        for i in range(stop - start):
            q = wb[:, i].masked_fill(mask[:, i], 0)
            err = (wb[:, i] - q) / ub[i, i]
            wb[:, i:] -= err.unsqueeze(1) * ub[i, i:].unsqueeze(0)
            wb[:, i] = q
            errors[:, i] = err
        w[:, start:stop] = wb
        w[:, stop:] -= errors @ u[start:stop, stop:]
    return w


@torch.no_grad()
def one_pass_reference(model, ids, prune_fn) -> dict[tuple[int, str], torch.Tensor]:
    """The reference's loop: per decoder layer, one forward pass through the *dense* layer
    records all seven inputs, then every linear is pruned, then the pruned layer's output is
    recomputed and fed to the next layer. ``prune_fn(weight, x) -> pruned weight``."""
    inputs = capture_layer0_inputs(model, ids)
    hidden = inputs.hidden
    exported = {}
    for index, layer in enumerate(decoder_layers(model)):
        seen: dict[str, torch.Tensor] = {}
        handles = [
            get_component(layer, name).register_forward_pre_hook(
                lambda _m, args, name=name, seen=seen: seen.__setitem__(name, args[0])
            )
            for name in COMPONENTS
        ]
        layer(hidden, **inputs.kwargs)  # dense pass: outputs discarded
        for handle in handles:
            handle.remove()
        for name in COMPONENTS:
            linear = get_component(layer, name)
            linear.weight.copy_(prune_fn(linear.weight, seen[name]))
            exported[index, name] = linear.weight.clone()
        out = layer(hidden, **inputs.kwargs)
        hidden = out[0] if isinstance(out, tuple) else out
    return exported


def by_mask(rule):
    return lambda weight, x: weight.masked_fill(rule(weight, x), 0)


def sparsegpt_engine(weight, x):
    # The driver accumulates the Hessian one calibration window at a time (so that any
    # micro-batch size sums in the same order); the same order here keeps weights bit-equal.
    pruner = SparseGPTPruner(SPARSITY, ties="reference")
    for window in x:
        pruner.partial_fit(window)
    return pruner.prune(weight)


def load_exports(folder, model) -> dict[tuple[int, str], torch.Tensor]:
    return {
        (index, name): torch.load(folder / f"layer{index}-{name}.pt", weights_only=True)
        for index in range(len(decoder_layers(model)))
        for name in COMPONENTS
    }


# -- order + ties = reference reproduces the reference end to end ----------------------------
@pytest.fixture(scope="module")
def reference_runs(wide_llama, text_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference_runs")
    config = make_config(
        wide_llama,
        text_corpus,
        out,
        methods=["magnitude", "wanda", "sparsegpt"],
        order="reference",
        ties="reference",
    )
    results = {r.method: r for r in run_prune(config)}
    return config, results, prune_run.prepare(config).calib_ids


@pytest.mark.parametrize(
    "method,prune_fn",
    [
        ("wanda", by_mask(wanda_rule)),
        ("magnitude", by_mask(magnitude_reference_rule)),
        ("sparsegpt", sparsegpt_engine),
    ],
    ids=["wanda", "magnitude", "sparsegpt"],
)
def test_reference_settings_equal_one_pass_reference(reference_runs, wide_llama, method, prune_fn):
    _, results, calib_ids = reference_runs
    model = load_model(wide_llama)
    expected = one_pass_reference(model, calib_ids, prune_fn)
    exported = load_exports(results[method].out_dir, model)
    for key, weight in expected.items():
        assert torch.equal(exported[key] == 0, weight == 0), f"{method} mask differs at {key}"
        assert torch.equal(exported[key], weight), f"{method} weights differ at {key}"


def test_summary_records_order_and_ties(reference_runs):
    _, results, _ = reference_runs
    summary = prune_run.read_json(results["wanda"].out_dir / prune_run.SUMMARY)
    assert summary["settings"]["order"] == summary["config"]["order"] == "reference"
    assert summary["settings"]["ties"] == summary["config"]["ties"] == "reference"


def test_reference_ties_are_flagged_above_target(reference_runs):
    """magnitude under reference ties prunes k + 1 plus ties per matrix: said, with the reason;
    Wanda's rule is exact under both settings and stays at the target."""
    _, results, _ = reference_runs
    magnitude = results["magnitude"].above_target
    assert magnitude["matrices"] == magnitude["of"] == 2 * len(COMPONENTS)
    assert magnitude["reasons"] == {"reference_ties": 2 * len(COMPONENTS)}
    assert results["wanda"].above_target["matrices"] == 0


def test_finished_run_with_other_order_or_ties_is_not_reused(tiny_llama, text_corpus, tmp_path):
    settings = dict(methods=["wanda"], eval_windows=1)
    first = run_prune(make_config(tiny_llama, text_corpus, tmp_path, **settings))[0]
    for overrides in ({"order": "reference"}, {"ties": "reference"}):
        config = make_config(tiny_llama, text_corpus, tmp_path, **settings, **overrides)
        again = run_prune(config)[0]
        assert not again.reused
    assert first.out_dir == again.out_dir


# -- the order switch changes exactly what it should -------------------------------------------
@torch.no_grad()
def prune_layer0(model_dir, ids, order):
    model = load_model(model_dir)
    layer = decoder_layers(model)[0]
    inputs = capture_layer0_inputs(model, ids)
    _, pruned = prune_layer(layer, inputs, list(COMPONENTS), lambda: WandaPruner(SPARSITY), order)
    return {name: item.weight.clone() for name, item in pruned.items()}


def test_orders_agree_on_qkv_and_differ_downstream(wide_llama):
    ids = torch.randint(0, 300, (4, 48), generator=torch.Generator().manual_seed(3))
    sequential = prune_layer0(wide_llama, ids, "sequential")
    reference = prune_layer0(wide_llama, ids, "reference")
    for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
        assert torch.equal(sequential[name], reference[name])  # both read the layer input
    # o_proj reads the output of the (pruned or dense) q/k/v; gate/up read the residual after the
    # (pruned or dense) attention; down_proj reads the (pruned or dense) gate/up.
    for name in ("self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
        assert not torch.equal(sequential[name] == 0, reference[name] == 0), name


def test_unknown_order_is_refused():
    layer = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="--order must be one of sequential, reference"):
        prune_layer(layer, None, [], WandaPruner, "dense")


# -- tie rules on hand-built scores --------------------------------------------------------------
def test_matrix_mask_ties_by_hand():
    scores = torch.tensor([[1.0, 2.0, 2.0], [2.0, 3.0, 0.0]])  # k = int(6 * 0.5) = 3
    # exact: 0, 1, then the first of the three 2s in row-major order
    assert matrix_mask(scores, 0.5, "exact").tolist() == [[True, True, False], [False, False, True]]
    # reference: threshold = sorted[3] = 2, every score <= 2 goes: k + 2 = 5
    assert matrix_mask(scores, 0.5, "reference").tolist() == [
        [True, True, True],
        [True, False, True],
    ]


def test_reference_ties_prune_one_more_without_ties_and_something_at_zero():
    scores = torch.tensor([[4.0, 1.0], [3.0, 2.0]])
    assert matrix_mask(scores, 0.5, "exact").tolist() == [[False, True], [False, True]]
    assert matrix_mask(scores, 0.5, "reference").tolist() == [[False, True], [True, True]]
    assert matrix_mask(scores, 0.0, "exact").sum() == 0
    assert matrix_mask(scores, 0.0, "reference").tolist() == [[False, True], [False, False]]


def test_wanda_rule_is_the_same_under_both_tie_settings():
    """The reference's Wanda takes the first k of a stable sort per row: exactly k, ties to the
    lower column -- featgeo's exact rule."""
    w = torch.tensor([[1.0, 1.0, 1.0, 1.0], [2.0, 1.0, 1.0, 2.0], [3.0, -1.0, 2.0, 1.0]])
    x = torch.ones(5, 4)
    expected = [[0, 0, 1, 1], [2, 0, 0, 2], [3, 0, 2, 0]]
    for ties in ("exact", "reference"):
        pruned = WandaPruner(0.5, ties=ties).fit(x).prune(w)
        assert pruned.abs().tolist() == expected, ties


def test_magnitude_ties_by_hand():
    w = torch.tensor([[0.5, -0.5, 2.0], [0.5, 3.0, -1.0]])  # k = 3; |W| sorted .5 .5 .5 1 2 3
    assert MagnitudePruner(0.5).prune(w).tolist() == [[0.0, 0.0, 2.0], [0.0, 3.0, -1.0]]
    # reference: threshold = sorted[3] = 1.0, so the -1.0 goes too
    assert MagnitudePruner(0.5, ties="reference").prune(w).tolist() == [
        [0.0, 0.0, 2.0],
        [0.0, 3.0, 0.0],
    ]
    w = torch.tensor([[0.5, 0.5, 0.5, 2.0]])  # k = 1, three tied smallest
    assert (MagnitudePruner(0.25).prune(w) == 0).sum() == 1
    assert (MagnitudePruner(0.25, ties="reference").prune(w) == 0).sum() == 3


def test_unknown_ties_is_refused():
    with pytest.raises(ValueError, match="--ties must be one of exact, reference, got 'k'"):
        MagnitudePruner(0.5, ties="k").prune(torch.ones(2, 2))


# -- SparseGPT: the engine against a direct implementation -----------------------------------
@pytest.fixture(scope="module")
def wide_problem():
    """A 48 x 300 weight with Q4-like repeated values and correlated inputs, one input dead."""
    g = torch.Generator().manual_seed(5)
    w = torch.round(torch.randn(48, 300, generator=g) * 4) / 4  # few distinct values: ties
    x = torch.randn(600, 300, generator=g) @ (
        torch.eye(300) + 0.1 * torch.randn(300, 300, generator=g)
    )
    x[:, 7] = 0
    return w, x


@pytest.mark.parametrize("ties", ["exact", "reference"])
def test_sparsegpt_equals_direct_implementation(wide_problem, ties):
    w, x = wide_problem
    pruner = SparseGPTPruner(SPARSITY, ties=ties).fit(x)
    ours = pruner.prune(w)
    theirs = direct_sparsegpt(w, pruner.hessian_, SPARSITY, ties)
    assert torch.equal(ours == 0, theirs == 0)
    assert torch.equal(ours, theirs)  # same operations in the same order: bitwise equal


def test_sparsegpt_tie_settings_differ_by_at_least_one_weight_per_block(wide_problem):
    w, x = wide_problem
    exact = SparseGPTPruner(SPARSITY).fit(x).prune(w) == 0
    reference = SparseGPTPruner(SPARSITY, ties="reference").fit(x).prune(w) == 0
    for start, width in ((0, 128), (128, 128), (256, 44)):  # 300 = 128 + 128 + 44
        k = int(48 * width * SPARSITY)
        assert exact[:, start : start + width].sum() == k
        assert reference[:, start : start + width].sum() >= k + 1


def test_sparsegpt_with_identity_hessian_is_blockwise_magnitude():
    """X = I makes H diagonal, so no error is propagated and SparseGPT's mask is magnitude's
    rule applied to each 128-column block on its own: a hand-computable expectation."""
    g = torch.Generator().manual_seed(7)
    w = torch.round(torch.randn(16, 200, generator=g) * 2) / 2  # many ties
    for ties in ("exact", "reference"):
        pruned = SparseGPTPruner(SPARSITY, ties=ties).fit(torch.eye(200)).prune(w)
        expected = torch.cat(
            [
                matrix_mask(w[:, :128].abs(), SPARSITY, ties),
                matrix_mask(w[:, 128:].abs(), SPARSITY, ties),
            ],
            dim=1,
        )
        assert torch.equal(pruned == 0, expected | (w == 0)), ties
        torch.testing.assert_close(pruned[~expected], w[~expected])


def test_cli_reference_compat_sets_both_and_says_so(tiny_llama, text_corpus, tmp_path):
    from typer.testing import CliRunner

    from featgeo.cli import app

    args = ["prune", "--model", str(tiny_llama), "--corpus", str(text_corpus)]
    args += ["--method", "magnitude", "--reference-compat", "--calib-samples", "2"]
    args += ["--seqlen", "16", "--eval-windows", "1", "--device", "cpu", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    summary = prune_run.read_json(tmp_path / "magnitude" / prune_run.SUMMARY)
    assert (summary["config"]["order"], summary["config"]["ties"]) == ("reference", "reference")
    text = " ".join(result.output.split())  # the table title may wrap
    assert "order reference, ties reference" in text
    assert "magnitude: 14 of 14 matrices above the 50% target" in text
    assert "(reference_ties: 14)" in text
