"""Save and load SAEs as SAELens folders: ``cfg.json`` + ``sae_weights.safetensors``.

featgeo adds ``featgeo_sae.json`` (the featgeo version that wrote the folder); SAELens ignores
it. Loading checks everything a broken or mismatched folder can get wrong and says which file,
which tensor and what to do, in one line.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from featgeo.files import atomic_path, read_json, staging_dir, write_json
from featgeo.sae.architectures import SparseAutoencoder
from featgeo.sae.config import SAEConfig

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
FEATGEO_FILENAME = "featgeo_sae.json"


def save_sae(
    sae: SparseAutoencoder,
    folder: str | os.PathLike,
    *,
    extra_json: dict[str, Any] | None = None,
) -> Path:
    """Write ``sae`` to ``folder`` in SAELens format; the folder appears complete or not at all.

    ``extra_json`` maps file names to JSON objects written into the same folder (e.g. a
    training summary), atomically with the weights. An existing folder at that path is
    replaced. Returns the folder.
    """
    from safetensors.torch import save_file

    from featgeo import __version__

    if not isinstance(sae, SparseAutoencoder):
        raise TypeError(f"sae must be a SparseAutoencoder, got {type(sae).__name__}")
    folder = Path(folder)
    tensors = {
        name: param.detach().to("cpu").contiguous().clone()
        for name, param in sae.named_parameters()
    }
    with staging_dir(folder) as tmp:
        write_json(tmp / CFG_FILENAME, sae.cfg.to_saelens_cfg())
        with atomic_path(tmp / WEIGHTS_FILENAME) as weights_tmp:
            save_file(tensors, str(weights_tmp), metadata={"format": "pt"})
        write_json(
            tmp / FEATGEO_FILENAME,
            {"featgeo_version": __version__, "format": "saelens", "kind": "sae"},
        )
        for name, payload in (extra_json or {}).items():
            write_json(tmp / name, payload)
    return folder


def load_sae(folder: str | os.PathLike, *, device: str | torch.device = "cpu") -> SparseAutoencoder:
    """Load an SAE folder in SAELens format (written by featgeo or by SAELens).

    Raises ``FileNotFoundError`` / ``ValueError`` with a one-line message naming the path and the
    fix for: a missing folder or file, bad JSON, an unknown architecture, missing or unexpected
    tensors, tensor shapes that disagree with ``cfg.json``, and NaN/inf weights.
    """
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(
            f"SAE folder {folder} does not exist; pass a folder holding {CFG_FILENAME} and "
            f"{WEIGHTS_FILENAME} (train one with featgeo or save one with SAELens)"
        )
    if not folder.is_dir():
        raise NotADirectoryError(
            f"SAE path {folder} is a file; pass the folder that holds {CFG_FILENAME} and "
            f"{WEIGHTS_FILENAME}"
        )
    cfg, raw = _read_cfg(folder)
    tensors = _read_weights(folder / WEIGHTS_FILENAME, cfg)
    if raw.get("rescale_acts_by_decoder_norm"):
        _fold_decoder_norms(tensors)
    sae = SparseAutoencoder(cfg)
    dtype = getattr(torch, cfg.dtype)
    with torch.no_grad():
        for name, param in sae.named_parameters():
            param.copy_(tensors[name].to(dtype))
    return sae.to(device)


def _fold_decoder_norms(tensors: dict[str, torch.Tensor]) -> None:
    """SAELens >= 6 TopK training checkpoints with ``rescale_acts_by_decoder_norm`` scale the
    pre-activations by ||W_dec[i]|| and divide the codes by it before decoding. Folding the
    norms into the encoder (and unit-norm decoder rows) gives the same codes and
    reconstructions with featgeo's plain formulas."""
    norms = tensors["W_dec"].norm(dim=1)  # [d_sae]
    tensors["W_enc"] = tensors["W_enc"] * norms
    tensors["b_enc"] = tensors["b_enc"] * norms
    tensors["W_dec"] = tensors["W_dec"] / norms[:, None].clamp_min(1e-12)
    if "threshold" in tensors:
        tensors["threshold"] = tensors["threshold"] * norms


def _read_cfg(folder: Path) -> tuple[SAEConfig, dict]:
    path = folder / CFG_FILENAME
    if not path.is_file():
        raise FileNotFoundError(
            f"no {CFG_FILENAME} in SAE folder {folder}; an SAELens SAE folder holds "
            f"{CFG_FILENAME} and {WEIGHTS_FILENAME}: point at that folder"
        )
    try:
        raw = read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(
            f"{path} is not valid JSON ({exc}); re-save the SAE or repair the file"
        ) from None
    try:
        return SAEConfig.from_saelens_cfg(raw), raw
    except (ValueError, TypeError) as exc:
        raise type(exc)(f"{path}: {exc}") from None


def _read_weights(path: Path, cfg: SAEConfig) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(
            f"no {WEIGHTS_FILENAME} in SAE folder {path.parent}; copy the weights file next to "
            f"{CFG_FILENAME} or re-save the SAE"
        )
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise ValueError(
            f"{path} is not a readable safetensors file ({exc}); re-save the SAE"
        ) from None
    shapes = SparseAutoencoder.parameter_shapes(cfg)
    expected = ", ".join(shapes)
    missing = [name for name in shapes if name not in tensors]
    if missing:
        raise ValueError(
            f"{path} is missing tensor(s) {', '.join(missing)}; an SAE of architecture "
            f"'{cfg.architecture}' needs {expected}"
        )
    extra = sorted(set(tensors) - set(shapes))
    if extra:
        raise ValueError(
            f"{path} has unexpected tensor(s) {', '.join(extra)}; an SAE of architecture "
            f"'{cfg.architecture}' has exactly {expected}: check 'architecture' in {CFG_FILENAME}"
        )
    for name, shape in shapes.items():
        got = tuple(tensors[name].shape)
        if got != shape:
            raise ValueError(
                f"{path}: tensor {name} has shape {list(got)} but {CFG_FILENAME} "
                f"(d_in={cfg.d_in}, d_sae={cfg.d_sae}) implies {list(shape)}; "
                f"fix d_in/d_sae in {CFG_FILENAME} or re-save the SAE"
            )
        if not tensors[name].is_floating_point():
            raise TypeError(
                f"{path}: tensor {name} has dtype {tensors[name].dtype}, expected a float dtype"
            )
        if not bool(torch.isfinite(tensors[name]).all()):
            raise ValueError(
                f"{path}: tensor {name} contains NaN or inf; the SAE is corrupt, "
                f"re-train or re-save it"
            )
    return tensors


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The raw bytes of ``tensor`` (C order, on the CPU), for hashing.

    Read through torch as uint8, never through numpy, which has no bfloat16 ("Got unsupported
    ScalarType BFloat16"); for float32 the bytes equal ``tensor.numpy().tobytes()``.
    """
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)  # [numel]
    return flat.view(torch.uint8).numpy().tobytes()


def sae_fingerprint(sae: SparseAutoencoder) -> str:
    """sha256 hex[:16] of the SAE's config and weights (as stored: bfloat16 / float16 bytes
    are hashed as they are): equal SAEs give equal stores."""
    digest = hashlib.sha256(json.dumps(sae.cfg.to_saelens_cfg(), sort_keys=True).encode())
    for name, param in sorted(sae.named_parameters()):
        digest.update(name.encode())
        digest.update(tensor_bytes(param))
    return digest.hexdigest()[:16]


def check_sae_matches_model(sae: SparseAutoencoder, hidden_size: int) -> None:
    """Raise ``ValueError`` when the SAE's input width differs from the model's hidden size."""
    if sae.cfg.d_in != hidden_size:
        raise ValueError(
            f"SAE d_in={sae.cfg.d_in} does not match the model's hidden size {hidden_size}; "
            f"use an SAE trained on this model"
            + (f" (this one was trained on '{sae.cfg.model_name}')" if sae.cfg.model_name else "")
        )
