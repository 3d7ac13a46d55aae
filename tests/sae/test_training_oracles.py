"""SAE training numbers against independent oracles (issue 10): the geometric median against a
direct minimisation with scipy, and one training step's reported losses (MSE, FVU, AuxK, L1,
L0) recomputed here from the batch and the weights before the step."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from featgeo.sae import SAEConfig, SparseAutoencoder
from featgeo.sae.training import SAETrainer, TrainConfig, geometric_median

D_IN, D_SAE, K, BATCH = 16, 64, 4, 256


def skewed_points(n: int = 300, d: int = 5, seed: int = 0) -> np.ndarray:
    """Exponential (skewed) coordinates of different scales plus 40 far outliers: the mean,
    the coordinate-wise median and the geometric median are all clearly apart."""
    rng = np.random.default_rng(seed)
    base = rng.exponential(1.0, (n, d)) * np.linspace(0.5, 3.0, d)
    return np.vstack([base, rng.normal(40.0, 5.0, (40, d))])


def direct_geometric_median(points: np.ndarray) -> np.ndarray:
    """argmin_m sum_i ||p_i - m||_2 by BFGS with the exact gradient, from the coordinate-wise
    median (the objective is convex, so any good start reaches the minimum)."""

    def objective(m):
        diff = points - m  # [n, d]
        dist = np.linalg.norm(diff, axis=1)
        return dist.sum(), -(diff / dist[:, None]).sum(0)

    start = np.median(points, axis=0)
    return minimize(objective, start, jac=True, method="BFGS", options={"gtol": 1e-10}).x


def distance_sum(points: np.ndarray, m: np.ndarray) -> float:
    return float(np.linalg.norm(points - m, axis=1).sum())


@pytest.mark.parametrize("d", [2, 5])
def test_geometric_median_is_the_direct_minimiser(d):
    points = skewed_points(d=d)
    expected = direct_geometric_median(points)
    # the three candidate centres are clearly apart on this data
    assert np.linalg.norm(expected - np.median(points, 0)) > 0.1
    assert np.linalg.norm(expected - points.mean(0)) > 5
    got = geometric_median(torch.from_numpy(points))
    assert got.dtype == torch.float64 and got.shape == (d,)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-4, rtol=0)
    assert distance_sum(points, got.numpy()) <= distance_sum(points, expected) * (1 + 1e-9)


@pytest.mark.parametrize("b_dec_init", ["geometric_median", "mean"])
def test_b_dec_init_from_the_first_batch(b_dec_init):
    """b_dec after one step with a negligible learning rate (an Adam step moves a parameter by
    about lr) is the chosen centre of the first batch, computed here independently."""
    points = skewed_points(n=BATCH - 40, d=8)  # one batch of 256 tokens
    expected = {"geometric_median": direct_geometric_median, "mean": lambda p: p.mean(0)}
    x = torch.from_numpy(points).float()
    cfg = TrainConfig(d_sae=16, total_tokens=BATCH, k=2, batch_size=BATCH, lr=1e-12,
                      b_dec_init=b_dec_init, progress=False)  # fmt: skip
    b_dec = SAETrainer(cfg).fit([x]).sae_.b_dec.detach().double().numpy()
    np.testing.assert_allclose(b_dec, expected[b_dec_init](points), atol=1e-4, rtol=0)


# -- one step's losses -----------------------------------------------------------------------
def batches(n_batches: int, seed: int = 0) -> list[torch.Tensor]:
    """Batches [256, 16] of sparse non-negative combinations of 32 random directions, offset
    from the origin (so centring matters)."""
    gen = torch.Generator().manual_seed(seed)
    dictionary = torch.randn(32, D_IN, generator=gen)
    out = []
    for _ in range(n_batches):
        mask = torch.rand(BATCH, 32, generator=gen) < 0.15
        mags = torch.rand(BATCH, 32, generator=gen) * 2
        out.append((mags * mask) @ dictionary + 1.5)
    return out


def params_of(sae: SparseAutoencoder) -> dict[str, torch.Tensor]:
    return {name: p.detach().double().clone() for name, p in sae.named_parameters()}


def topk_codes(pre: torch.Tensor, k: int) -> torch.Tensor:
    """ReLU of the pre-activations at or above the k-th largest of each row, 0 elsewhere."""
    kth = pre.sort(dim=-1, descending=True).values[:, k - 1 : k]
    return torch.where(pre >= kth, pre.clamp_min(0), torch.zeros_like(pre))


def fvu_terms(x: torch.Tensor, codes: torch.Tensor, p: dict[str, torch.Tensor]):
    """(squared error, total variance, residual x - x_hat) of a batch, in float64."""
    err = x - (codes @ p["W_dec"] + p["b_dec"])
    total_var = (x - x.mean(0)).pow(2).sum()  # per-dimension mean over the batch's tokens
    return err.pow(2).sum(), total_var, err


def half_dead_topk_sae() -> SparseAutoencoder:
    """TopK SAE whose latents 32.. have tiny encoder columns (never picked, so dead)."""
    sae = SparseAutoencoder.from_config(SAEConfig(d_in=D_IN, d_sae=D_SAE, architecture="topk",
                                                  k=K), seed=3)  # fmt: skip
    with torch.no_grad():
        sae.W_enc[:, 32:] *= 1e-3
        sae.b_dec.fill_(1.5)
    return sae


def test_topk_step_losses_with_auxk():
    """Step 2 of a TopK run, after a step that left latents unfired (dead window = one batch):
    mse, fvu, the AuxK loss (top-aux_k dead latents reconstructing the residual, scaled by
    n_dead / aux_k, divided by the total variance; Gao et al. 2024 §A.2), loss, l0, dead."""
    x1, x2 = batches(2)
    aux_k, aux_coef = 60, 0.25
    cfg = TrainConfig(d_sae=D_SAE, total_tokens=2 * BATCH, k=K, batch_size=BATCH, lr=1e-3,
                      aux_k=aux_k, aux_coef=aux_coef, dead_after_tokens=BATCH, log_every=1,
                      progress=False)  # fmt: skip
    init = half_dead_topk_sae()
    trainer = SAETrainer(cfg)
    before: dict[str, dict[str, torch.Tensor]] = {}

    def stream():
        yield x1
        before["step2"] = params_of(trainer.sae_)  # asked for only once step 1 is done
        yield x2

    trainer.fit(stream(), init_sae=init)
    row = trainer.history_[1]
    assert row["step"] == 2

    # dead before step 2 = the latents that did not fire on batch 1 under the initial weights
    p1 = params_of(init)
    codes1 = topk_codes((x1.double() - p1["b_dec"]) @ p1["W_enc"] + p1["b_enc"], K)
    dead = ~(codes1 != 0).any(0)  # [64]
    n_dead = int(dead.sum())
    assert 32 <= n_dead < aux_k  # the n_dead / aux_k scale is in play

    p = before["step2"]
    x = x2.double()
    pre = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]  # [256, 64]
    codes = topk_codes(pre, K)
    sq_err, total_var, err = fvu_terms(x, codes, p)
    dead_pre = torch.where(dead, pre, torch.full_like(pre, -torch.inf))
    aux_codes = topk_codes(dead_pre, n_dead).nan_to_num(0.0)  # all dead latents, ReLU'd
    assert bool((aux_codes[:, ~dead] == 0).all())
    e_hat = aux_codes @ p["W_dec"]  # no b_dec: it models the residual
    aux = (n_dead / aux_k) * (e_hat - err).pow(2).sum() / total_var
    fvu = sq_err / total_var
    assert float(aux) > 0.01 * float(fvu)  # large enough that a wrong AuxK shows in the loss
    expected = {
        "mse": sq_err / x.numel(),
        "fvu": fvu,
        "aux_loss": aux,
        "loss": fvu + aux_coef * aux,
        "l0": (codes != 0).sum(1).double().mean(),
        "dead_fraction": n_dead / D_SAE,
    }
    for name, value in expected.items():
        assert row[name] == pytest.approx(float(value), rel=1e-5), name
    assert row["explained_variance"] == pytest.approx(1 - float(fvu), rel=1e-5)


def test_standard_step_loss_with_l1():
    """Step 1 of a ReLU SAE: loss = FVU + l1_coef * L1, L1 = mean over tokens of
    sum_i code_i ||W_dec[i]|| divided by the RMS norm of the centred batch (decoder rows of
    unequal norms, so the weighting matters)."""
    (x1,) = batches(1)
    l1_coef = 0.3
    cfg = TrainConfig(d_sae=D_SAE, total_tokens=BATCH, architecture="standard", batch_size=BATCH,
                      lr=1e-3, l1_coef=l1_coef, log_every=1, progress=False)  # fmt: skip
    init = SparseAutoencoder.from_config(SAEConfig(d_in=D_IN, d_sae=D_SAE), seed=5)
    with torch.no_grad():
        init.W_dec.mul_(torch.linspace(0.3, 3.0, D_SAE)[:, None])
        init.b_enc.fill_(-0.5)
        init.b_dec.fill_(1.0)
    p = params_of(init)
    row = SAETrainer(cfg).fit([x1], init_sae=init).history_[0]

    x = x1.double()
    codes = ((x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]).clamp_min(0)
    sq_err, total_var, _ = fvu_terms(x, codes, p)
    rms = (total_var / x.shape[0]).sqrt()
    l1 = (codes * p["W_dec"].norm(dim=1)).sum(1).mean() / rms
    fvu = sq_err / total_var
    l0 = (codes != 0).sum(1).double().mean()
    assert 1 < float(l0) < D_SAE / 2 and float(l1_coef * l1) > 0.05 * float(fvu)
    assert row["loss"] == pytest.approx(float(fvu + l1_coef * l1), rel=1e-5)
    assert row["fvu"] == pytest.approx(float(fvu), rel=1e-5)
    assert row["mse"] == pytest.approx(float(sq_err / x.numel()), rel=1e-5)
    assert row["l0"] == pytest.approx(float(l0), rel=1e-9)
    assert row["aux_loss"] == 0 and row["dead_fraction"] == 0


def test_jumprelu_step_loss_with_l0():
    """Step 1 of a JumpReLU SAE: loss = FVU + l0_coef * L0 with the initial adaptive weight
    1e-3 (mean count of pre-activations above the threshold); codes = pre where pre > threshold."""
    (x1,) = batches(1)
    cfg = TrainConfig(d_sae=D_SAE, total_tokens=BATCH, architecture="jumprelu", k=8,
                      batch_size=BATCH, lr=1e-3, log_every=1, progress=False)  # fmt: skip
    init = SparseAutoencoder.from_config(
        SAEConfig(d_in=D_IN, d_sae=D_SAE, architecture="jumprelu"), seed=7
    )
    with torch.no_grad():
        init.threshold.copy_(torch.linspace(0.0, 2.0, D_SAE))
        init.b_dec.fill_(1.5)
    p = params_of(init)
    row = SAETrainer(cfg).fit([x1], init_sae=copy.deepcopy(init)).history_[0]

    x = x1.double()
    pre = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    on = pre > p["threshold"]
    codes = torch.where(on, pre, torch.zeros_like(pre))
    sq_err, total_var, _ = fvu_terms(x, codes, p)
    fvu = sq_err / total_var
    l0 = on.sum(1).double().mean()
    assert row["loss"] == pytest.approx(float(fvu + 1e-3 * l0), rel=1e-5)
    assert row["fvu"] == pytest.approx(float(fvu), rel=1e-5)
    assert row["l0"] == pytest.approx(float((codes > 0).sum(1).double().mean()), rel=1e-9)
