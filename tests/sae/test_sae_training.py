"""SAE training: recovery of a known sparse dictionary, the TopK invariants, determinism,
checkpoint/resume, the AuxK loss on dead latents and the config checks."""

from __future__ import annotations

import pytest
import torch

from featgeo.files import read_json
from featgeo.sae import SAEConfig, SparseAutoencoder, load_sae
from featgeo.sae.training import (
    STATE_FILENAME,
    SAETrainer,
    TrainConfig,
    geometric_median,
    token_batches,
)

D_IN, N_TRUE, ACTIVE = 32, 64, 4


def make_data(n_tokens: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A random dictionary [64, 32] of unit directions and tokens [n, 32] that are non-negative
    combinations of 4 of them with exponential magnitudes (the known answer)."""
    gen = torch.Generator().manual_seed(seed)
    dictionary = torch.randn(N_TRUE, D_IN, generator=gen)
    dictionary /= dictionary.norm(dim=1, keepdim=True)
    idx = torch.rand(n_tokens, N_TRUE, generator=gen).argsort(dim=1)[:, :ACTIVE]  # [n, 4]
    mags = -torch.log(torch.rand(n_tokens, ACTIVE, generator=gen))  # Exp(1)
    codes = torch.zeros(n_tokens, N_TRUE).scatter_(1, idx, mags)  # [n, 64]
    return dictionary, codes @ dictionary


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return make_data(50_000)


def make_config(**overrides) -> TrainConfig:
    kwargs = {"d_sae": 64, "total_tokens": 8192, "k": 4, "batch_size": 256, "lr": 0.01}
    kwargs.update(progress=False)
    kwargs.update(overrides)
    return TrainConfig(**kwargs)


def stream(x: torch.Tensor, chunk: int = 1000):
    """A deterministic stream of [chunk, d] tensors, repeating ``x`` forever."""
    while True:
        yield from x.split(chunk)


def test_recovers_known_dictionary(data):
    dictionary, x = data
    cfg = make_config(d_sae=128, total_tokens=200_000, batch_size=512)
    trainer = SAETrainer(cfg).fit(stream(x))
    assert trainer.tokens_seen_ == 200_000
    assert trainer.history_[-1]["explained_variance"] > 0.9
    best_cos = (dictionary @ trainer.sae_.W_dec.detach().T).max(dim=1).values  # [64]
    assert (best_cos > 0.9).float().mean() >= 0.8
    norms = trainer.sae_.W_dec.detach().norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    for row in trainer.history_:
        assert row["l0"] == pytest.approx(4.0, abs=0.05)
        assert set(row) >= {"step", "tokens", "loss", "mse", "fvu", "explained_variance"}
        assert row["fvu"] == pytest.approx(1 - row["explained_variance"])


def test_topk_l0_is_k_and_history_fields(data):
    _, x = data
    trainer = SAETrainer(make_config(total_tokens=2560, log_every=2)).fit(stream(x))
    assert [row["step"] for row in trainer.history_] == [2, 4, 6, 8, 10]
    assert trainer.history_[0]["l0"] == 4.0  # a fresh SAE: every top-4 pre-activation is > 0
    assert all(row["l0"] <= 4.0 for row in trainer.history_)
    assert trainer.n_steps_ == 10 and trainer.history_[-1]["tokens"] == 2560


def test_standard_architecture_trains(data):
    _, x = data
    trainer = SAETrainer(
        make_config(architecture="standard", total_tokens=20_000, log_every=1)
    ).fit(stream(x))
    assert trainer.sae_.cfg.architecture == "standard"
    first, last = trainer.history_[0], trainer.history_[-1]
    assert last["loss"] < first["loss"]
    assert last["l0"] < 64


def test_jumprelu_recovers_known_dictionary(data):
    """JumpReLU with the L0 penalty steered to k = 4 finds the planted directions."""
    dictionary, x = data
    cfg = make_config(architecture="jumprelu", total_tokens=200_000, log_every=50)
    trainer = SAETrainer(cfg).fit(stream(x))
    sae = trainer.sae_
    assert sae.cfg.architecture == "jumprelu" and bool((sae.threshold >= 0).all())
    codes = sae.encode(x[:5000]).detach()
    recon = sae.decode(codes).detach()
    explained = 1 - (x[:5000] - recon).pow(2).sum() / (x[:5000] - x[:5000].mean(0)).pow(2).sum()
    assert explained > 0.8
    assert 1.0 < float((codes > 0).sum(1).float().mean()) < 8.0
    best_cos = (dictionary @ sae.W_dec.detach().T).max(dim=1).values
    assert (best_cos > 0.9).float().mean() >= 0.75


def test_jumprelu_threshold_pseudo_gradients():
    """Eq. 11-12 of Rajamanoharan et al. 2024 with a rectangle kernel of width eps = 0.002:
    only pre-activations within eps/2 of the threshold move it."""
    from featgeo.sae.training import _JumpReLU, _Step

    pre = torch.tensor([[0.5, 1.0005, 2.0], [0.9995, 3.0, 0.0]], dtype=torch.float64)
    threshold = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64, requires_grad=True)
    pre_grad = pre.clone().requires_grad_(True)
    _JumpReLU.apply(pre_grad, threshold, 0.002).sum().backward()
    torch.testing.assert_close(threshold.grad, torch.tensor([-500.0, -500.0, 0.0]).double())
    torch.testing.assert_close(pre_grad.grad, (pre > 1.0).double())
    threshold.grad = None
    _Step.apply(pre, threshold, 0.002).sum().backward()
    torch.testing.assert_close(threshold.grad, torch.tensor([-500.0, -500.0, 0.0]).double())


def test_same_seed_same_weights(data):
    _, x = data
    a = SAETrainer(make_config()).fit(stream(x)).sae_
    b = SAETrainer(make_config()).fit(stream(x)).sae_
    c = SAETrainer(make_config(seed=1)).fit(stream(x)).sae_
    for name, param in a.named_parameters():
        assert torch.equal(param, getattr(b, name)), name
    assert not torch.equal(a.W_dec, c.W_dec)


def test_b_dec_starts_at_geometric_median():
    """The geometric median of the corners of a convex quadrilateral is where its diagonals
    cross: (30/17, 24/17) for these corners, by hand; the mean (2.75, 1.5) and the
    coordinate-wise median are elsewhere. Training with the default init puts b_dec there (lr
    1e-12: the one Adam step moves it by about 1e-12)."""
    corners = torch.tensor([[0.0, 0.0], [6.0, 0.0], [5.0, 4.0], [0.0, 2.0]])
    crossing = torch.tensor([30 / 17, 24 / 17])
    torch.testing.assert_close(geometric_median(corners), crossing, atol=1e-5, rtol=0)
    assert (corners.mean(0) - crossing).norm() > 0.9
    assert (corners.median(0).values - crossing).norm() > 0.9
    cfg = make_config(d_sae=16, k=2, total_tokens=256, lr=1e-12)
    assert cfg.b_dec_init == "geometric_median"  # the default
    trainer = SAETrainer(cfg).fit([corners.repeat(64, 1)])  # [256, 2]
    torch.testing.assert_close(trainer.sae_.b_dec.detach(), crossing, atol=1e-5, rtol=0)


def test_token_batches_rebatches_and_skips():
    x = torch.arange(50.0).reshape(25, 2)
    chunks = [x[:7], x[7:8], x[8:20], x[20:]]
    batches = list(token_batches(chunks, batch_size=4, total_tokens=22, skip=3))
    assert [b.shape[0] for b in batches] == [4, 4, 4, 4, 3]
    torch.testing.assert_close(torch.cat(batches), x[3:22])


class Interrupted(RuntimeError):
    pass


def interrupting(x: torch.Tensor, batch_size: int, after_tokens: int):
    """The stream of ``x`` in batch-sized chunks that dies after ``after_tokens`` tokens."""
    served = 0
    for chunk in stream(x, batch_size):
        if served >= after_tokens:
            raise Interrupted("simulated crash")
        served += chunk.shape[0]
        yield chunk


@pytest.mark.parametrize("architecture", ["topk", "jumprelu"])
def test_resume_equals_uninterrupted_run(data, tmp_path, monkeypatch, architecture):
    _, x = data
    cfg = make_config(
        total_tokens=256 * 12, checkpoint_every=6, log_every=3, architecture=architecture
    )
    whole = SAETrainer(cfg).fit(stream(x))

    with pytest.raises(Interrupted):
        SAETrainer(cfg).fit(interrupting(x, 256, 256 * 7), checkpoint_dir=tmp_path / "ckpt")
    assert read_json(tmp_path / "ckpt" / STATE_FILENAME)["n_steps"] == 6
    assert load_sae(tmp_path / "ckpt" / "sae").cfg.d_sae == 64
    steps = []
    original_step = SAETrainer._step
    monkeypatch.setattr(
        SAETrainer, "_step", lambda self, batch: steps.append(1) or original_step(self, batch)
    )
    resumed = SAETrainer(cfg).fit(stream(x), checkpoint_dir=tmp_path / "ckpt")
    assert len(steps) == 6  # only the steps after the checkpoint ran

    assert resumed.tokens_seen_ == whole.tokens_seen_ == 256 * 12
    for name, param in whole.sae_.named_parameters():
        torch.testing.assert_close(getattr(resumed.sae_, name), param, atol=1e-6, rtol=0)
    assert [r["step"] for r in resumed.history_] == [r["step"] for r in whole.history_]
    # the final checkpoint is complete: fitting again trains nothing more
    again = SAETrainer(cfg).fit(stream(x), checkpoint_dir=tmp_path / "ckpt")
    assert again.n_steps_ == 12
    torch.testing.assert_close(again.sae_.W_dec, whole.sae_.W_dec, atol=1e-6, rtol=0)


def test_resume_refuses_a_different_config(data, tmp_path):
    _, x = data
    SAETrainer(make_config(total_tokens=512)).fit(stream(x), checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="written with lr=0.01, this run has lr=0.02"):
        SAETrainer(make_config(total_tokens=512, lr=0.02)).fit(stream(x), checkpoint_dir=tmp_path)


def half_dead_sae(x: torch.Tensor) -> SparseAutoencoder:
    """An SAE whose latents 32..63 have tiny encoder columns: never in the top-k, so dead."""
    sae = SparseAutoencoder.from_config(SAEConfig(d_in=D_IN, d_sae=64, architecture="topk", k=4))
    with torch.no_grad():
        sae.W_enc[:, 32:] *= 1e-3
        sae.b_dec.copy_(x.mean(0))
    return sae


@pytest.mark.parametrize("aux_coef", [0.0, 1 / 32], ids=["no-aux", "aux"])
def test_aux_loss_revives_dead_latents(data, aux_coef):
    _, x = data
    cfg = make_config(total_tokens=40_000, aux_coef=aux_coef, log_every=1)
    trainer = SAETrainer(cfg).fit(stream(x), init_sae=half_dead_sae(x))
    dead = [row["dead_fraction"] for row in trainer.history_]
    assert max(dead) >= 0.4  # the forced-dead latents were detected
    if aux_coef == 0:
        assert dead[-1] >= 0.4
        assert all(row["aux_loss"] == 0 for row in trainer.history_)
    else:
        assert dead[-1] < 0.2
        assert max(row["aux_loss"] for row in trainer.history_) > 0


def test_defaults():
    cfg = TrainConfig(d_sae=16384, total_tokens=10**9)
    assert cfg.learning_rate == pytest.approx(2e-4)
    assert TrainConfig(d_sae=65536, total_tokens=10**9).learning_rate == pytest.approx(1e-4)
    assert cfg.aux_k_for(768) == 384
    assert cfg.dead_window == 10_000_000
    assert TrainConfig(d_sae=64, total_tokens=100_000, k=4).dead_window == 10_000


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        ({"k": 65}, ValueError, "--k 65 is larger than --d-sae 64"),
        ({"d_sae": 0}, ValueError, "--d-sae must be >= 1, got 0"),
        ({"total_tokens": -5}, ValueError, "--tokens must be >= 1"),
        ({"batch_size": 0}, ValueError, "--batch-size must be >= 1"),
        ({"batch_size": 2.5}, TypeError, "batch_size must be an int"),
        ({"lr": -1.0}, ValueError, "--lr must be a positive number"),
        ({"aux_coef": -0.1}, ValueError, "--aux-coef must be >= 0"),
        ({"aux_k": 0}, ValueError, "--aux-k must be >= 1"),
        ({"architecture": "gated"}, ValueError, "cannot be trained; choose from topk"),
        ({"l0_coef": -1.0}, ValueError, "--l0-coef must be >= 0"),
        ({"jumprelu_bandwidth": 0.0}, ValueError, "jumprelu_bandwidth must be > 0"),
        ({"b_dec_init": "zeros"}, ValueError, "b_dec_init must be"),
    ],
    ids=[
        "k>d_sae",
        "d_sae=0",
        "neg-tokens",
        "batch=0",
        "float-batch",
        "neg-lr",
        "neg-aux",
        "aux_k=0",
        "gated",
        "neg-l0-coef",
        "zero-bandwidth",
        "bad-b_dec-init",
    ],
)
def test_bad_config(overrides, error, match):
    with pytest.raises(error, match=match):
        make_config(**overrides)


@pytest.mark.parametrize(
    ("activations", "error", "match"),
    [
        ([], ValueError, "yielded no tokens"),
        ([torch.zeros(4, 3, 2)], ValueError, r"must be 2-D \[n, d_in\] tensors, got shape"),
        ([[1.0, 2.0]], TypeError, "must yield torch.Tensor"),
        ([torch.zeros(4, 3, dtype=torch.long)], TypeError, "must be floating point"),
        ([torch.zeros(300, 3), torch.zeros(4, 5)], ValueError, r"\[n, 3\]"),
    ],
    ids=["empty", "3-D", "list", "int-dtype", "width-changes"],
)
def test_bad_activations(activations, error, match):
    with pytest.raises(error, match=match):
        SAETrainer(make_config()).fit(activations)


def test_short_stream_warns():
    with pytest.warns(UserWarning, match="ran out after 300 of --tokens 8192"):
        trainer = SAETrainer(make_config()).fit([torch.randn(300, 8)])
    assert trainer.tokens_seen_ == 300


def test_sparse_topk_step_has_the_dense_gradients():
    """The sparse kernels give the gradients of the dense TopK computation (float64)."""
    from featgeo.sae.sparse_ops import gathered_pre_activations, sparse_decode

    gen = torch.Generator().manual_seed(0)
    n, d_in, d_sae, k = 50, 12, 40, 5
    x = torch.randn(n, d_in, generator=gen, dtype=torch.float64)
    target = torch.randn(n, d_in, generator=gen, dtype=torch.float64)
    init = {
        "W_enc": torch.randn(d_in, d_sae, generator=gen, dtype=torch.float64),
        "b_enc": torch.randn(d_sae, generator=gen, dtype=torch.float64),
        "W_dec": torch.randn(d_sae, d_in, generator=gen, dtype=torch.float64),
        "b_dec": torch.randn(d_in, generator=gen, dtype=torch.float64),
    }

    def grads(sparse: bool):
        p = {name: t.clone().requires_grad_(True) for name, t in init.items()}
        sae_in = x - p["b_dec"]
        if sparse:
            with torch.no_grad():
                pre = torch.addmm(p["b_enc"], sae_in, p["W_enc"])
                idx = pre.topk(k, dim=-1).indices
            vals = gathered_pre_activations(sae_in, p["W_enc"], p["b_enc"], idx, pre)
            recon = sparse_decode(idx, torch.relu(vals), p["W_dec"])
        else:
            pre = sae_in @ p["W_enc"] + p["b_enc"]
            top = pre.topk(k, dim=-1)
            codes = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
            recon = codes @ p["W_dec"]
        loss = (recon + p["b_dec"] - target).pow(2).sum()
        loss.backward()
        return loss.detach(), {name: t.grad for name, t in p.items()}

    dense_loss, dense = grads(sparse=False)
    sparse_loss, sparse = grads(sparse=True)
    torch.testing.assert_close(sparse_loss, dense_loss)
    for name in init:
        assert dense[name].abs().sum() > 0
        torch.testing.assert_close(sparse[name], dense[name], msg=name)
