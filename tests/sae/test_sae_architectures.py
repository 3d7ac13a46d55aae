"""SAE config checks, the architecture registry, initialisation and the encode formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from featgeo.sae import ARCHITECTURES, SAEConfig, SparseAutoencoder, get_architecture


def make_config(**overrides) -> SAEConfig:
    kwargs = {"d_in": 6, "d_sae": 10, "architecture": "standard"}
    kwargs.update(overrides)
    if kwargs["architecture"] == "topk":
        kwargs.setdefault("k", 3)
    return SAEConfig(**kwargs)


def make_sae(architecture: str = "standard", seed: int = 0, **overrides) -> SparseAutoencoder:
    """An SAE with random (non-zero) biases so every term of the formulas matters."""
    sae = SparseAutoencoder.from_config(make_config(architecture=architecture, **overrides), seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        sae.b_enc.copy_(0.3 * torch.randn(sae.cfg.d_sae, generator=gen))
        sae.b_dec.copy_(0.3 * torch.randn(sae.cfg.d_in, generator=gen))
        if architecture == "jumprelu":
            sae.threshold.copy_(0.2 * torch.rand(sae.cfg.d_sae, generator=gen))
    return sae


def numpy_pre(sae: SparseAutoencoder, x: np.ndarray) -> np.ndarray:
    W_enc, b_enc, b_dec = (getattr(sae, n).detach().numpy() for n in ("W_enc", "b_enc", "b_dec"))
    return (x - b_dec if sae.cfg.apply_b_dec_to_input else x) @ W_enc + b_enc


# -- registry and config ---------------------------------------------------------------------
def test_registry_names():
    assert sorted(ARCHITECTURES) == ["jumprelu", "standard", "topk"]
    assert get_architecture("topk").name == "topk"


def test_unknown_architecture_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown SAE architecture 'gated'.*jumprelu, standard"):
        get_architecture("gated")


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        ({"architecture": "topk", "k": 11}, ValueError, r"k=11 is larger than d_sae=10"),
        ({"architecture": "topk", "k": 0}, ValueError, r"^k must be >= 1"),
        ({"architecture": "standard", "k": 4}, ValueError, r"only used by architecture 'topk'"),
        ({"architecture": "gated"}, ValueError, r"unknown SAE architecture 'gated'"),
        ({"d_in": 0}, ValueError, r"d_in must be >= 1, got 0"),
        ({"d_sae": 2.5}, TypeError, r"d_sae must be an int"),
        ({"dtype": "int8"}, ValueError, r"dtype must be one of"),
        ({"normalize_activations": "layer_norm"}, ValueError, r"'layer_norm' is not supported"),
    ],
    ids=["k>d_sae", "k=0", "k-not-topk", "unknown-arch", "d_in=0", "float-d_sae", "dtype", "norm"],
)
def test_bad_config(overrides, error, match):
    with pytest.raises(error, match=match):
        make_config(**overrides)


def test_topk_needs_k():
    with pytest.raises(ValueError, match=r"'topk' needs k \(latents"):
        SAEConfig(d_in=4, d_sae=8, architecture="topk")


def test_layer_parsed_from_hook_name():
    assert make_config(hook_name="blocks.7.hook_resid_post").layer == 7
    assert make_config(hook_name="blocks.7.hook_resid_post", layer=3).layer == 3
    assert make_config(hook_name="embed").layer is None


# -- SAELens cfg dicts -----------------------------------------------------------------------
@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_saelens_cfg_round_trip(architecture):
    cfg = make_config(
        architecture=architecture, model_name="tiny", hook_name="blocks.1.hook_resid_post"
    )
    raw = cfg.to_saelens_cfg()
    assert raw["architecture"] == architecture
    assert raw["metadata"]["hook_name"] == "blocks.1.hook_resid_post"
    assert raw["metadata"]["model_name"] == "tiny"
    assert ("k" in raw) == (architecture == "topk")
    assert SAEConfig.from_saelens_cfg(raw) == cfg


def test_old_flat_saelens_cfg():
    raw = {
        "d_in": 6,
        "d_sae": 10,
        "dtype": "torch.float32",
        "model_name": "gpt2",
        "hook_point": "blocks.8.hook_resid_pre",
        "hook_point_layer": 8,
        "normalize_activations": False,
        "apply_b_dec_to_input": False,
    }
    cfg = SAEConfig.from_saelens_cfg(raw)
    assert cfg == SAEConfig(
        d_in=6,
        d_sae=10,
        architecture="standard",
        model_name="gpt2",
        hook_name="blocks.8.hook_resid_pre",
        layer=8,
        apply_b_dec_to_input=False,
    )


def test_old_topk_as_activation_fn():
    raw = {"d_in": 6, "d_sae": 10, "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 2}}
    cfg = SAEConfig.from_saelens_cfg(raw)
    assert (cfg.architecture, cfg.k) == ("topk", 2)


def test_cfg_missing_d_in():
    with pytest.raises(ValueError, match="no 'd_in' key"):
        SAEConfig.from_saelens_cfg({"d_sae": 4})


# -- initialisation --------------------------------------------------------------------------
@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_from_config_init(architecture):
    sae = SparseAutoencoder.from_config(make_config(architecture=architecture), seed=3)
    expected = {"W_enc": (6, 10), "W_dec": (10, 6), "b_enc": (10,), "b_dec": (6,)}
    if architecture == "jumprelu":
        expected["threshold"] = (10,)
    assert {n: tuple(p.shape) for n, p in sae.named_parameters()} == expected
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(10))
    assert torch.equal(sae.W_enc, sae.W_dec.T)
    assert not sae.b_enc.any() and not sae.b_dec.any()
    again = SparseAutoencoder.from_config(make_config(architecture=architecture), seed=3)
    other = SparseAutoencoder.from_config(make_config(architecture=architecture), seed=4)
    assert torch.equal(sae.W_dec, again.W_dec)
    assert not torch.equal(sae.W_dec, other.W_dec)


def test_normalize_decoder():
    sae = make_sae()
    with torch.no_grad():
        sae.W_dec.mul_(torch.arange(1, 11, dtype=torch.float32)[:, None])
    assert sae.normalize_decoder_() is sae
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(10))


def test_dtype_respected():
    sae = SparseAutoencoder.from_config(make_config(dtype="float64"))
    assert sae.W_enc.dtype == torch.float64
    assert sae.encode(torch.randn(2, 6)).dtype == torch.float64


# -- encode formulas -------------------------------------------------------------------------
@pytest.mark.parametrize("apply_b_dec", [True, False], ids=["b_dec-in", "no-b_dec-in"])
def test_standard_encode_matches_formula(apply_b_dec):
    sae = make_sae("standard", apply_b_dec_to_input=apply_b_dec)
    x = torch.randn(5, 6)
    expected = np.maximum(numpy_pre(sae, x.numpy()), 0)
    np.testing.assert_allclose(sae.encode(x).detach().numpy(), expected, rtol=1e-5, atol=1e-6)


def test_topk_keeps_k_largest():
    sae = make_sae("topk", k=3)
    with torch.no_grad():
        sae.b_enc.add_(10.0)  # every pre-activation positive -> exactly k non-zeros
    x = torch.randn(2, 7, 6)  # [batch, pos, d_in]
    codes = sae.encode(x)
    assert codes.shape == (2, 7, 10)
    assert ((codes != 0).sum(-1) == 3).all()
    pre = numpy_pre(sae, x.numpy())
    kth = np.sort(pre, axis=-1)[..., -3:-2]
    expected = np.where(pre >= kth, pre, 0)
    np.testing.assert_allclose(codes.detach().numpy(), expected, rtol=1e-5, atol=1e-6)


def test_topk_relu_after_selection():
    sae = make_sae("topk", k=3)
    with torch.no_grad():
        sae.b_enc.sub_(100.0)  # every pre-activation negative -> no active latent
    assert not sae.encode(torch.randn(4, 6)).any()


def test_jumprelu_zeroes_below_threshold():
    sae = make_sae("jumprelu")
    x = torch.randn(50, 6)
    pre = numpy_pre(sae, x.numpy())
    theta = sae.threshold.detach().numpy()
    codes = sae.encode(x).detach().numpy()
    expected = np.where(pre > theta, np.maximum(pre, 0), 0)
    np.testing.assert_allclose(codes, expected, rtol=1e-5, atol=1e-6)
    below = (pre > 0) & (pre <= theta)
    assert below.any(), "toy data should have positive pre-activations under the threshold"
    assert (codes[below] == 0).all()


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_decode_and_forward(architecture):
    sae = make_sae(architecture)
    x = torch.randn(3, 6)
    codes = sae.encode(x)
    W_dec, b_dec = sae.W_dec.detach().numpy(), sae.b_dec.detach().numpy()
    expected = codes.detach().numpy() @ W_dec + b_dec
    np.testing.assert_allclose(sae.decode(codes).detach().numpy(), expected, rtol=1e-5)
    torch.testing.assert_close(sae(x), sae.decode(codes))


def test_wrong_input_width():
    sae = make_sae()
    with pytest.raises(ValueError, match=r"x must have last dimension 6, got shape \(2, 5\)"):
        sae.encode(torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"codes must have last dimension 10"):
        sae.decode(torch.randn(2, 6))
