"""SAELens folder format: round trips, hand-written folders, bad inputs, sae-lens parity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from featgeo import __version__
from featgeo.sae import (
    ARCHITECTURES,
    SAEConfig,
    SparseAutoencoder,
    check_sae_matches_model,
    load_sae,
    save_sae,
)

# Small known matrices: d_in = 3, d_sae = 4.
W_ENC = np.array(
    [[1.0, 0.0, -1.0, 0.5], [0.0, 2.0, 1.0, -0.5], [1.0, -1.0, 0.0, 1.0]], dtype=np.float32
)
W_DEC = np.array(
    [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.6, 0.8, 0.0]], dtype=np.float32
)
B_ENC = np.array([0.1, -0.2, 0.0, 0.3], dtype=np.float32)
B_DEC = np.array([0.5, -0.5, 0.25], dtype=np.float32)
THRESHOLD = np.array([0.5, 0.5, 1.0, 0.0], dtype=np.float32)
X = np.array(
    [[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0], [0.2, -0.3, 0.9], [2.0, 1.0, -1.0]], dtype=np.float32
)


def write_saelens_folder(folder: Path, cfg: dict, tensors: dict[str, np.ndarray]) -> Path:
    """A folder as SAELens writes it, made by hand (no featgeo code involved)."""
    folder.mkdir(parents=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file(
        {k: torch.from_numpy(v) for k, v in tensors.items()}, folder / "sae_weights.safetensors"
    )
    return folder


def saelens_cfg(architecture: str | None, **extra) -> dict:
    cfg = {
        "d_in": 3,
        "d_sae": 4,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "metadata": {"model_name": "toy", "hook_name": "blocks.0.hook_resid_post"},
        **extra,
    }
    if architecture is not None:
        cfg["architecture"] = architecture
    return cfg


def known_tensors(architecture: str) -> dict[str, np.ndarray]:
    tensors = {"W_enc": W_ENC, "W_dec": W_DEC, "b_enc": B_ENC, "b_dec": B_DEC}
    if architecture == "jumprelu":
        tensors["threshold"] = THRESHOLD
    return tensors


def expected_codes(architecture: str, k: int | None = None) -> np.ndarray:
    pre = (X - B_DEC) @ W_ENC + B_ENC  # [4 tokens, 4 latents]
    if architecture == "standard":
        return np.maximum(pre, 0)
    if architecture == "jumprelu":
        return np.where(pre > THRESHOLD, np.maximum(pre, 0), 0)
    order = np.argsort(-pre, axis=-1)[:, :k]  # topk on pre, then ReLU
    out = np.zeros_like(pre)
    np.put_along_axis(out, order, np.maximum(np.take_along_axis(pre, order, -1), 0), -1)
    return out


def make_sae(architecture: str, seed: int = 0) -> SparseAutoencoder:
    cfg = SAEConfig(
        d_in=6,
        d_sae=12,
        architecture=architecture,
        k=4 if architecture == "topk" else None,
        model_name="tiny-llama",
        hook_name="blocks.1.hook_resid_post",
    )
    sae = SparseAutoencoder.from_config(cfg, seed)
    with torch.no_grad():  # non-trivial values in every tensor
        for param in sae.parameters():
            param.add_(0.1 * torch.randn_like(param))
        if architecture == "jumprelu":
            sae.threshold.abs_()
    return sae


# -- round trip ------------------------------------------------------------------------------
@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_round_trip_is_bit_identical(tmp_path, architecture):
    sae = make_sae(architecture)
    folder = save_sae(sae, tmp_path / "sae")
    assert sorted(p.name for p in folder.iterdir()) == [
        "cfg.json",
        "featgeo_sae.json",
        "sae_weights.safetensors",
    ]
    assert json.loads((folder / "featgeo_sae.json").read_text())["featgeo_version"] == __version__
    expected_keys = {"W_enc", "W_dec", "b_enc", "b_dec"} | (
        {"threshold"} if architecture == "jumprelu" else set()
    )
    assert set(load_file(folder / "sae_weights.safetensors")) == expected_keys
    loaded = load_sae(folder)
    assert loaded.cfg == sae.cfg
    for name, param in sae.named_parameters():
        assert torch.equal(getattr(loaded, name), param), name
    x = torch.randn(5, 6)
    assert torch.equal(loaded.encode(x), sae.encode(x))
    assert not list(tmp_path.glob(".*")), "no staging leftovers"


def test_round_trip_bfloat16(tmp_path):
    cfg = SAEConfig(d_in=4, d_sae=8, dtype="bfloat16")
    sae = SparseAutoencoder.from_config(cfg)
    loaded = load_sae(save_sae(sae, tmp_path / "sae"))
    assert loaded.W_enc.dtype == torch.bfloat16
    assert torch.equal(loaded.W_dec, sae.W_dec)


def test_save_replaces_existing_folder(tmp_path):
    save_sae(make_sae("standard", seed=0), tmp_path / "sae")
    second = make_sae("topk", seed=1)
    loaded = load_sae(save_sae(second, tmp_path / "sae"))
    assert loaded.cfg.architecture == "topk"
    assert torch.equal(loaded.W_enc, second.W_enc)


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    import featgeo.sae.saelens_format as fmt

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(fmt, "write_json", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        save_sae(make_sae("standard"), tmp_path / "sae")
    assert list(tmp_path.iterdir()) == []


# -- hand-written SAELens folders ------------------------------------------------------------
@pytest.mark.parametrize(
    ("architecture", "extra"),
    [("standard", {}), ("jumprelu", {}), ("topk", {"k": 2}), (None, {})],
    ids=["standard", "jumprelu", "topk", "no-architecture-key"],
)
def test_hand_written_folder_encodes_as_formula(tmp_path, architecture, extra):
    arch = architecture or "standard"
    folder = write_saelens_folder(
        tmp_path / "sae", saelens_cfg(architecture, **extra), known_tensors(arch)
    )
    sae = load_sae(folder)
    assert sae.cfg.architecture == arch
    assert (sae.cfg.model_name, sae.cfg.hook_name, sae.cfg.layer) == (
        "toy",
        "blocks.0.hook_resid_post",
        0,
    )
    codes = sae.encode(torch.from_numpy(X)).detach().numpy()
    expected = expected_codes(arch, extra.get("k"))
    np.testing.assert_allclose(codes, expected, rtol=1e-6, atol=1e-6)
    recon = sae.decode(torch.from_numpy(expected)).detach().numpy()
    np.testing.assert_allclose(recon, expected @ W_DEC + B_DEC, rtol=1e-6, atol=1e-6)


def test_topk_checkpoint_with_decoder_norm_rescaling(tmp_path):
    """SAELens >= 6 TopK training checkpoints keep non-unit decoder rows and set
    ``rescale_acts_by_decoder_norm``: pre-activations are scaled by ||W_dec[i]|| before TopK and
    codes divided by it before decoding. Loading must reproduce that (norms folded in)."""
    norms = np.array([2.0, 0.5, 1.0, 4.0], dtype=np.float32)
    tensors = {**known_tensors("topk"), "W_dec": W_DEC * norms[:, None]}
    cfg = saelens_cfg("topk", k=2, rescale_acts_by_decoder_norm=True)
    sae = load_sae(write_saelens_folder(tmp_path / "sae", cfg, tensors))
    pre = ((X - B_DEC) @ W_ENC + B_ENC) * norms
    order = np.argsort(-pre, axis=-1)[:, :2]
    expected = np.zeros_like(pre)
    np.put_along_axis(expected, order, np.maximum(np.take_along_axis(pre, order, -1), 0), -1)
    codes = sae.encode(torch.from_numpy(X)).detach().numpy()
    np.testing.assert_allclose(codes, expected, rtol=1e-6, atol=1e-6)
    recon = sae.decode(torch.from_numpy(codes)).detach().numpy()
    np.testing.assert_allclose(
        recon, (expected / norms) @ tensors["W_dec"] + B_DEC, rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(4))


def test_hand_written_values_by_hand(tmp_path):
    """One token worked out on paper: x = [1, 2, 3], x - b_dec = [0.5, 2.5, 2.75]."""
    folder = write_saelens_folder(
        tmp_path / "sae", saelens_cfg("jumprelu"), known_tensors("jumprelu")
    )
    codes = load_sae(folder).encode(torch.tensor([[1.0, 2.0, 3.0]]))
    # pre = [0.5+2.75+0.1, 5-2.75-0.2, -0.5+2.5+0, 0.25-1.25+2.75+0.3] = [3.35, 2.05, 2.0, 2.05]
    # thresholds [0.5, 0.5, 1.0, 0.0] are all below -> codes = pre
    torch.testing.assert_close(codes, torch.tensor([[3.35, 2.05, 2.0, 2.05]]))


def test_old_flat_layout_folder(tmp_path):
    cfg = {
        "d_in": 3,
        "d_sae": 4,
        "dtype": "float32",
        "model_name": "gpt2",
        "hook_name": "blocks.5.hook_resid_pre",
        "hook_layer": 5,
    }
    sae = load_sae(write_saelens_folder(tmp_path / "sae", cfg, known_tensors("standard")))
    assert (sae.cfg.architecture, sae.cfg.model_name, sae.cfg.layer) == ("standard", "gpt2", 5)


# -- bad inputs ------------------------------------------------------------------------------
def _no_cfg(folder):
    (folder / "cfg.json").unlink()


def _bad_json(folder):
    (folder / "cfg.json").write_text("{not json")


def _unknown_arch(folder):
    (folder / "cfg.json").write_text(json.dumps(saelens_cfg("gated")))


def _k_too_big(folder):
    (folder / "cfg.json").write_text(json.dumps(saelens_cfg("topk", k=9)))


def _no_weights(folder):
    (folder / "sae_weights.safetensors").unlink()


def _rewrite_tensors(change):
    def edit(folder):
        tensors = {k: torch.from_numpy(v) for k, v in known_tensors("standard").items()}
        change(tensors)
        save_file(tensors, folder / "sae_weights.safetensors")

    return edit


def _shape(tensors):
    tensors["W_dec"] = torch.zeros(4, 5)


def _missing(tensors):
    del tensors["b_enc"]


def _extra(tensors):
    tensors["threshold"] = torch.zeros(4)


def _nan(tensors):
    tensors["W_enc"][0, 0] = float("nan")


def _corrupt(folder):
    (folder / "sae_weights.safetensors").write_bytes(b"\x00\x01garbage")


@pytest.mark.parametrize(
    ("edit", "error", "match"),
    [
        (_no_cfg, FileNotFoundError, r"no cfg.json in SAE folder .*sae"),
        (_bad_json, ValueError, r"cfg.json is not valid JSON"),
        (_unknown_arch, ValueError, r"unknown SAE architecture 'gated'; choose from jumprelu"),
        (_k_too_big, ValueError, r"k=9 is larger than d_sae=4"),
        (_no_weights, FileNotFoundError, r"no sae_weights.safetensors in SAE folder"),
        (_corrupt, ValueError, r"not a readable safetensors file"),
        (
            _rewrite_tensors(_shape),
            ValueError,
            r"tensor W_dec has shape \[4, 5\] but cfg.json \(d_in=3, d_sae=4\) implies \[4, 3\]",
        ),
        (_rewrite_tensors(_missing), ValueError, r"missing tensor\(s\) b_enc"),
        (_rewrite_tensors(_extra), ValueError, r"unexpected tensor\(s\) threshold"),
        (_rewrite_tensors(_nan), ValueError, r"tensor W_enc contains NaN or inf"),
    ],
    ids=[
        "no-cfg",
        "bad-json",
        "unknown-arch",
        "k>d_sae",
        "no-weights",
        "corrupt-weights",
        "shape",
        "missing-tensor",
        "extra-tensor",
        "nan",
    ],
)
def test_load_bad_folder(tmp_path, edit, error, match):
    folder = write_saelens_folder(
        tmp_path / "sae", saelens_cfg("standard"), known_tensors("standard")
    )
    edit(folder)
    with pytest.raises(error, match=match) as info:
        load_sae(folder)
    assert "\n" not in str(info.value)


def test_load_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"SAE folder .*nowhere does not exist"):
        load_sae(tmp_path / "nowhere")


def test_load_file_not_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file; pass the folder"):
        load_sae(tmp_path / "file")


def test_check_sae_matches_model():
    sae = make_sae("standard")
    check_sae_matches_model(sae, 6)
    with pytest.raises(ValueError, match="SAE d_in=6 does not match the model's hidden size 64"):
        check_sae_matches_model(sae, 64)


# -- parity with SAELens ---------------------------------------------------------------------
@pytest.mark.saelens
@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_saelens_loads_our_folder(tmp_path, architecture, sae_lens):
    ours = make_sae(architecture)
    folder = save_sae(ours, tmp_path / "sae")
    theirs = sae_lens.SAE.load_from_disk(str(folder), device="cpu")
    x = torch.randn(7, 6)
    with torch.no_grad():
        torch.testing.assert_close(theirs.encode(x), ours.encode(x))
        torch.testing.assert_close(theirs.decode(ours.encode(x)), ours.decode(ours.encode(x)))


@pytest.mark.saelens
@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_we_load_a_folder_saelens_wrote(tmp_path, architecture, sae_lens):
    """SAELens' own writer (``save_model``) -> featgeo's reader: same encodings and decodings."""
    theirs = sae_lens.SAE.load_from_disk(
        str(save_sae(make_sae(architecture), tmp_path / "ours")), device="cpu"
    )
    theirs.save_model(str(tmp_path / "theirs"))
    ours = load_sae(tmp_path / "theirs")
    assert ours.cfg.architecture == architecture
    x = torch.randn(7, 6)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x), theirs.encode(x))
        torch.testing.assert_close(ours.decode(ours.encode(x)), theirs.decode(theirs.encode(x)))
