"""The registry of SAE architectures and the sparse autoencoder module.

All architectures share the SAELens encoder/decoder (SAELens ``sae_lens/saes/*_sae.py``)::

    pre   = (x - b_dec if apply_b_dec_to_input else x) @ W_enc + b_enc   # [..., d_sae]
    codes = activation(pre)                                              # [..., d_sae]
    recon = codes @ W_dec + b_dec                                        # [..., d_in]

and differ only in ``activation``: ReLU (standard), ReLU of the k largest pre-activations
(TopK: ``topk`` on ``pre`` first, then ReLU, as SAELens' ``TopK`` module does), or
``relu(pre) * (pre > threshold)`` (JumpReLU, Rajamanoharan et al. 2024, with a learned
per-latent ``threshold``).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

if TYPE_CHECKING:
    from featgeo.sae.config import SAEConfig

ARCHITECTURES: dict[str, type[Architecture]] = {}
"""Architecture name -> activation rule; CLI choices come from its keys."""


def register_architecture(cls: type[Architecture]) -> type[Architecture]:
    ARCHITECTURES[cls.name] = cls
    return cls


def get_architecture(name: str) -> type[Architecture]:
    """The activation rule called ``name``; an unknown name lists the valid ones."""
    try:
        return ARCHITECTURES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown SAE architecture '{name}'; choose from {', '.join(sorted(ARCHITECTURES))}"
        ) from None


class Architecture:
    """How pre-activations become codes. Subclasses set ``name`` and implement ``activate``."""

    name: ClassVar[str]
    extra_parameters: ClassVar[tuple[str, ...]] = ()
    """Per-latent [d_sae] parameters beyond W_enc, W_dec, b_enc, b_dec."""

    @staticmethod
    def activate(pre: torch.Tensor, sae: SparseAutoencoder) -> torch.Tensor:
        """Codes [..., d_sae] from pre-activations [..., d_sae]."""
        raise NotImplementedError


@register_architecture
class Standard(Architecture):
    """ReLU SAE (Bricken et al. 2023)."""

    name = "standard"

    @staticmethod
    def activate(pre: torch.Tensor, sae: SparseAutoencoder) -> torch.Tensor:
        return torch.relu(pre)


@register_architecture
class TopK(Architecture):
    """Keep the k largest pre-activations per token, ReLU them, zero the rest (Gao et al. 2024)."""

    name = "topk"

    @staticmethod
    def activate(pre: torch.Tensor, sae: SparseAutoencoder) -> torch.Tensor:
        # SAELens order: select on the raw pre-activation, then ReLU the selected values, so a
        # token can have fewer than k non-zeros when fewer than k pre-activations are positive.
        top = torch.topk(pre, k=sae.cfg.k, dim=-1)
        return torch.zeros_like(pre).scatter_(-1, top.indices, torch.relu(top.values))


@register_architecture
class JumpReLU(Architecture):
    """ReLU gated by a per-latent threshold: relu(pre) * (pre > threshold)."""

    name = "jumprelu"
    extra_parameters = ("threshold",)

    @staticmethod
    def activate(pre: torch.Tensor, sae: SparseAutoencoder) -> torch.Tensor:
        return torch.relu(pre) * (pre > sae.threshold).to(pre.dtype)


class SparseAutoencoder(nn.Module):
    """A sparse autoencoder in the SAELens parameter layout.

    Parameters: ``W_enc`` [d_in, d_sae], ``W_dec`` [d_sae, d_in], ``b_enc`` [d_sae],
    ``b_dec`` [d_in], plus ``threshold`` [d_sae] for JumpReLU. ``__init__`` makes zero
    parameters (to be filled by :func:`featgeo.sae.load_sae`); :meth:`from_config` gives the
    training initialisation.
    """

    W_enc: nn.Parameter
    W_dec: nn.Parameter
    b_enc: nn.Parameter
    b_dec: nn.Parameter

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        self.architecture = get_architecture(cfg.architecture)
        dtype = getattr(torch, cfg.dtype)
        for name, shape in self.parameter_shapes(cfg).items():
            self.register_parameter(name, nn.Parameter(torch.zeros(shape, dtype=dtype)))

    @staticmethod
    def parameter_shapes(cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
        """Name -> shape of every parameter of an SAE with config ``cfg`` (the safetensors keys)."""
        shapes = {
            "W_enc": (cfg.d_in, cfg.d_sae),
            "W_dec": (cfg.d_sae, cfg.d_in),
            "b_enc": (cfg.d_sae,),
            "b_dec": (cfg.d_in,),
        }
        for name in get_architecture(cfg.architecture).extra_parameters:
            shapes[name] = (cfg.d_sae,)
        return shapes

    @classmethod
    def from_config(cls, cfg: SAEConfig, seed: int = 0) -> SparseAutoencoder:
        """Training initialisation: random unit-norm decoder rows, ``W_enc = W_dec.T``, zero
        biases (and zero thresholds), as SAELens ``initialize_weights`` does."""
        sae = cls(cfg)
        gen = torch.Generator().manual_seed(seed)
        w_dec = torch.randn(cfg.d_sae, cfg.d_in, generator=gen, dtype=torch.float64)
        w_dec /= w_dec.norm(dim=-1, keepdim=True)
        with torch.no_grad():
            sae.W_dec.copy_(w_dec)
            sae.W_enc.copy_(w_dec.T)
        return sae

    # -- encode / decode -------------------------------------------------------------------
    def _check_last_dim(self, x: torch.Tensor, size: int, what: str) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim == 0 or x.shape[-1] != size:
            raise ValueError(
                f"{what} must have last dimension {size}, got shape {tuple(x.shape)}; "
                f"check that the SAE belongs to this model and hook"
            )

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activations [..., d_sae] of activations ``x`` [..., d_in]."""
        self._check_last_dim(x, self.cfg.d_in, "x")
        return self._pre_activations(x.to(self.W_enc.dtype))

    def _pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent codes [..., d_sae] of activations ``x`` [..., d_in]."""
        return self.architecture.activate(self.pre_activations(x), self)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Reconstruction [..., d_in] of latent codes [..., d_sae]."""
        self._check_last_dim(codes, self.cfg.d_sae, "codes")
        return codes.to(self.W_dec.dtype) @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction [..., d_in] of activations ``x`` [..., d_in]."""
        return self.decode(self.encode(x))

    def for_compute(self, device: str | torch.device = "cpu") -> SparseAutoencoder:
        """This SAE with float32 parameters on ``device``: ``self`` when it already is, else a
        copy (``cfg.dtype`` still names the stored dtype). featgeo encodes in float32 whatever
        the SAE is stored in: half-precision pre-activations lose the small differences that
        TopK and JumpReLU thresholds compare, and CPUs have no fast bfloat16 matmul."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if all(p.dtype == torch.float32 and p.device == device for p in self.parameters()):
            return self
        return copy.deepcopy(self).to(device=device, dtype=torch.float32)

    def normalize_decoder_(self, eps: float = 1e-12) -> SparseAutoencoder:
        """Rescale every decoder row ``W_dec[i]`` to unit L2 norm in place; returns ``self``."""
        with torch.no_grad():  # not a decorator: mutmut skips decorated functions
            norms = self.W_dec.norm(dim=-1, keepdim=True).clamp_min(eps)  # [d_sae, 1]
            self.W_dec.div_(norms)
        return self

    def extra_repr(self) -> str:
        cfg = self.cfg
        k = f", k={cfg.k}" if cfg.k is not None else ""
        return f"architecture={cfg.architecture}, d_in={cfg.d_in}, d_sae={cfg.d_sae}{k}"
