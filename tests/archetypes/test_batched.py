"""The batched trainer against torch's own one-model-at-a-time loop, and its invariances."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from featgeo.archetypes.batched import STOP_REASONS, ModelSpec, train_stack
from featgeo.archetypes.config import AANetConfig
from featgeo.archetypes.reference import train_one
from featgeo.archetypes.sources import ArrayBatches

# Short runs with small patiences so that every stopping rule fires within 300 steps.
FAST = AANetConfig(max_steps=300, early_stop_patience=60, lr_patience=10)


def _source(seed: int = 0) -> ArrayBatches:
    rng = np.random.default_rng(seed)
    vertices = rng.normal(size=(4, 16))
    simplex = rng.dirichlet(np.ones(4), size=600) @ vertices + 0.01 * rng.normal(size=(600, 16))
    blob = rng.normal(size=(300, 5))
    return ArrayBatches(
        [simplex, blob],
        [np.vstack([vertices, simplex[:4]]), blob[:8]],
        batch_size=96,
        d_model=[16, 40],  # the blob as if in 5 subspace coordinates of a 40-dim space
    )


SPECS = [ModelSpec(k, k % 2, 11 * k) for k in range(2, 9)]


def test_stack_equals_torch_loop_in_float64():
    """Same seeds, batches and noise: the stacked Adam / ReduceLROnPlateau / clipping / early
    stopping give torch's numbers for every model, whatever k and data dimension sit beside it."""
    source = _source()
    fits = train_stack(SPECS, source, FAST, dtype=torch.float64)
    refs = [train_one(spec, source, FAST, dtype=torch.float64) for spec in SPECS]
    assert {f.stop_reason for f in fits} == set(STOP_REASONS)  # every stopping rule fired
    for fit, ref in zip(fits, refs, strict=True):
        assert (fit.steps, fit.stop_reason, fit.lr) == (ref.steps, ref.stop_reason, ref.lr)
        np.testing.assert_array_equal(fit.lr_curve, ref.lr_curve)  # every halving, same step
        np.testing.assert_allclose(fit.curve, ref.curve, rtol=1e-6, atol=1e-9)
        for a, b in zip(fit.params, ref.params, strict=True):
            assert a.shape == b.shape
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7)
        assert fit.final == pytest.approx(ref.final, rel=1e-6)


def test_stack_close_to_torch_loop_in_float32():
    source = _source(1)
    specs = SPECS[:4]
    cfg = AANetConfig(max_steps=120, early_stop_patience=60)
    fits = train_stack(specs, source, cfg)
    refs = [train_one(spec, source, cfg) for spec in specs]
    for fit, ref in zip(fits, refs, strict=True):
        n = min(fit.steps, ref.steps)
        np.testing.assert_allclose(fit.curve[:n, 0], ref.curve[:n, 0], rtol=1e-3, atol=1e-6)


def test_model_does_not_depend_on_its_stack_mates():
    source = _source()
    alone = train_stack([SPECS[3]], source, FAST, dtype=torch.float64)[0]
    together = train_stack(SPECS, source, FAST, dtype=torch.float64)[3]
    assert alone.steps == together.steps
    np.testing.assert_allclose(alone.curve, together.curve, rtol=1e-9, atol=1e-12)


def test_same_seed_is_byte_identical_and_other_seed_differs():
    source = _source()
    a = train_stack(SPECS[:3], source, FAST)
    b = train_stack(SPECS[:3], source, FAST)
    for x, y in zip(a, b, strict=True):
        assert x.curve.tobytes() == y.curve.tobytes()
        for p, q in zip(x.params, y.params, strict=True):
            assert p.numpy().tobytes() == q.numpy().tobytes()
    c = train_stack([ModelSpec(s.k, s.data, s.seed + 1) for s in SPECS[:3]], source, FAST)
    assert not np.array_equal(a[0].curve, c[0].curve)


def test_padded_parameters_stay_zero_and_shapes_are_unpadded():
    source = _source()
    fits = train_stack(SPECS, source, FAST)
    for fit in fits:
        d = int(source.dims[fit.spec.data])
        assert fit.params[0].shape == (d, 64)
        assert fit.params[4].shape == (32, fit.spec.k - 1)
        assert fit.params[-2].shape == (64, d)


def test_final_losses_are_medians_of_the_last_steps():
    fit = train_stack([SPECS[0]], _source(), FAST)[0]
    tail = fit.curve[-FAST.final_window :].astype(np.float64)
    assert fit.final["loss"] == pytest.approx(float(np.median(tail[:, 0])))
    assert fit.final["recon"] == pytest.approx(float(np.median(tail[:, 1])))
    # total = 1 recon + 4 archetypal + 2 extrema at every step
    np.testing.assert_allclose(
        fit.curve[:, 0],
        fit.curve[:, 1] + 4 * fit.curve[:, 2] + 2 * fit.curve[:, 3],
        rtol=1e-5,
        atol=1e-8,
    )


@pytest.mark.parametrize("k", [1, 0, 65])
def test_bad_k_is_refused(k):
    with pytest.raises(ValueError, match="k must lie in 2..64"):
        train_stack([ModelSpec(k, 0, 0)], _source(), FAST)


def test_too_few_extrema_is_refused():
    source = _source()
    with pytest.raises(ValueError, match="needs 9"):
        train_stack([ModelSpec(9, 1, 0)], source, FAST)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_stack_matches_cpu():
    source = _source()
    cpu = train_stack(SPECS, source, FAST, dtype=torch.float64)
    gpu = train_stack(SPECS, source, FAST, device="cuda", dtype=torch.float64)
    for a, b in zip(cpu, gpu, strict=True):
        assert a.steps == b.steps
        np.testing.assert_allclose(a.curve, b.curve, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    ("spec", "error", "match"),
    [
        (ModelSpec(3, 5, 0), ValueError, r"ModelSpec.data must lie in 0..1"),
        (ModelSpec(3, -1, 0), ValueError, r"ModelSpec.data must lie in 0..1"),
        (ModelSpec(2.5, 0, 0), TypeError, "ModelSpec.k must be an int"),
        (ModelSpec(3, 0, -1), ValueError, "ModelSpec.seed must lie in"),
    ],
    ids=["data-missing", "data-negative", "k-float", "seed-negative"],
)
def test_bad_specs_are_refused(spec, error, match):
    with pytest.raises(error, match=match):
        train_stack([spec], _source(), FAST)
