"""``AANet``: one archetypal analysis network as a scikit-learn-style estimator.

    from featgeo.archetypes import AANet

    net = AANet(k=4).fit(X)            # X [n, d]
    lam = net.transform(X)             # [n, 4] barycentric coordinates (rows sum to 1)
    net.archetypes_                    # [4, d] the simplex vertices decoded into data space
    net.save("aanet_cluster_3_k4.pt")  # torch.load(..., weights_only=True) reads it

van Dijk et al. 2019, "Finding archetypal spaces using neural networks"; SPEC §3 for the losses,
weights, optimiser and early stopping. Training goes through the batched trainer
(:func:`featgeo.archetypes.batched.train_stack`) with a stack of one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from featgeo.archetypes.batched import LOSS_NAMES, ModelSpec, check_device, train_stack
from featgeo.archetypes.config import AANetConfig
from featgeo.archetypes.network import decode, encode
from featgeo.archetypes.simplex import barycentric, simplex_vertices
from featgeo.archetypes.sources import ArrayBatches

FORMAT = "featgeo.aanet"
FORMAT_VERSION = 1
SUBSPACE_RTOL = 1e-5
"""Singular values below this fraction of the largest do not count towards the span's rank."""


_KEYS = ("k", "n_features_in", "space", "config", "params", "basis", "extrema", "loss_curve",
         "stop_reason")  # fmt: skip


class NotFittedError(ValueError, AttributeError):
    """Raised when an unfitted AANet is used."""


def span_basis(X: np.ndarray, rtol: float = SUBSPACE_RTOL) -> np.ndarray:
    """Orthonormal basis ``[d, r]`` of the row span of ``X [n, d]`` (SVD; r = numerical rank)."""
    _, s, vt = np.linalg.svd(np.asarray(X, dtype=np.float64), full_matrices=False)
    rank = max(1, int((s > rtol * s[0]).sum())) if s.size and s[0] > 0 else 1
    return np.ascontiguousarray(vt[:rank].T, dtype=np.float32)


def _check_X(X, name: str = "X") -> np.ndarray:
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    try:
        arr = np.asarray(X, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a numeric array [n, d]: {exc}") from None
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array [n, d], got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds NaN or infinite values; drop or fix those rows first")
    return arr


class AANet:
    """Archetypal analysis network with ``k`` archetypes (SPEC §3).

    Parameters: ``k`` (>= 2); ``config`` (:class:`AANetConfig`, the seed's Stage 1 defaults);
    ``space``: ``"subspace"`` trains on coordinates in an orthonormal basis of the span of X
    (exact for data that lies in a low-rank span, like a cluster's x = a_c @ W_dec[c]; the recon
    term stays an MSE over the d input dimensions), ``"full"`` on X itself; ``batch_size`` rows
    drawn per step; ``extrema``: indices of the k anchor points in X (default: diffusion extrema,
    :func:`featgeo.archetypes.extrema.diffusion_extrema`); ``device``.

    Learned attributes: ``archetypes_ [k, d]``, ``loss_curve_ [steps, 4]`` (total, recon,
    archetypal, extrema per step), ``final_losses_``, ``n_steps_``, ``stop_reason_``,
    ``basis_ [d, r]`` or None, ``extrema_ [k, d]``.
    """

    def __init__(
        self,
        k: int = 4,
        *,
        config: AANetConfig | None = None,
        space: Literal["subspace", "full"] = "subspace",
        batch_size: int | None = 512,
        extrema: np.ndarray | None = None,
        knn: int = 150,
        max_warmup: int = 1000,
        device: str = "cpu",
    ):
        self.k = k
        self.config = config
        self.space = space
        self.batch_size = batch_size
        self.extrema = extrema
        self.knn = knn
        self.max_warmup = max_warmup
        self.device = device

    # fitting ---------------------------------------------------------------------------------
    def fit(self, X, y=None) -> AANet:
        """Train on ``X [n, d]`` (float; n >= k + 8). Raises ValueError / TypeError on bad input."""
        from featgeo.archetypes.data import MIN_POINTS_EXTRA

        k = self.k
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
            raise ValueError(f"k must be an int >= 2 (an AANet needs two archetypes), got {k!r}")
        k = self.k = int(k)
        if self.space not in ("subspace", "full"):
            raise ValueError(f"space must be 'subspace' or 'full', got {self.space!r}")
        if self.config is not None and not isinstance(self.config, AANetConfig):
            raise TypeError(f"config must be an AANetConfig, got {type(self.config).__name__}")
        config = self.config or AANetConfig()
        for name, value, low in (("knn", self.knn, 1), ("max_warmup", self.max_warmup, k)):
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
                raise ValueError(f"{name} must be an int >= {low} (k={k}), got {value!r}")
        if self.batch_size is not None and (
            isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int | np.integer)
        ):
            raise ValueError(f"batch_size must be a positive int or None, got {self.batch_size!r}")
        device = check_device(self.device)
        X = _check_X(X)
        if X.shape[0] < k + MIN_POINTS_EXTRA:
            raise ValueError(
                f"X has {X.shape[0]} rows; an AANet with k={k} needs at least "
                f"{k + MIN_POINTS_EXTRA} (k + {MIN_POINTS_EXTRA}): use more points or a smaller k"
            )
        if self.extrema is None:
            from featgeo.archetypes.extrema import diffusion_extrema

            warm = np.random.default_rng(config.seed).permutation(X.shape[0])[: self.max_warmup]
            idx = warm[diffusion_extrema(X[warm], k, knn=self.knn, seed=config.seed)]
        else:
            idx = np.asarray(self.extrema).reshape(-1)
            if (
                not np.issubdtype(idx.dtype, np.integer)
                or idx.size < k
                or idx.min() < 0
                or idx.max() >= X.shape[0]
                or np.unique(idx[:k]).size < k
            ):
                raise ValueError(
                    f"extrema must be at least {k} distinct row indices of X (0..{X.shape[0] - 1}),"
                    f" got {idx.tolist()}"
                )
            idx = idx[:k].astype(np.int64)
        basis = span_basis(X) if self.space == "subspace" else None
        Y = X @ basis if basis is not None else X
        source = ArrayBatches(
            [Y], [Y[idx]], batch_size=self.batch_size, seed=config.seed, d_model=[X.shape[1]]
        )
        fit = train_stack([ModelSpec(k, 0, config.seed)], source, config, device=device)[0]
        if not np.isfinite(fit.curve).all():
            raise ValueError(
                "AANet training diverged (a loss became NaN or infinite): lower config.lr or "
                "rescale X"
            )
        self._set_fitted(fit.params, basis, X[idx], fit.curve, fit.stop_reason, config, X.shape[1])
        return self

    def _set_fitted(self, params, basis, extrema, curve, stop_reason, config, d) -> None:
        self.config_ = config
        self.params_ = [torch.as_tensor(p, dtype=torch.float32) for p in params]
        self.basis_ = None if basis is None else np.asarray(basis, dtype=np.float32)
        self.extrema_ = np.asarray(extrema, dtype=np.float32)
        self.loss_curve_ = np.asarray(curve, dtype=np.float32)
        self.n_steps_ = int(self.loss_curve_.shape[0])
        self.stop_reason_ = stop_reason
        self.n_features_in_ = int(d)
        tail = self.loss_curve_[-config.final_window :].astype(np.float64)
        self.final_losses_ = {n: float(np.median(tail[:, i])) for i, n in enumerate(LOSS_NAMES)}
        vertices = simplex_vertices(self.k, dtype=torch.float32)
        with torch.no_grad():
            arche = decode(self.params_, vertices, config.hidden).numpy()
        self.archetypes_ = arche @ self.basis_.T if self.basis_ is not None else arche

    # using -----------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "params_"):
            raise NotFittedError("this AANet is not fitted yet; call fit(X) or AANet.load(path)")

    def _coords(self, X) -> torch.Tensor:
        self._check_fitted()
        X = _check_X(X)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {X.shape[1]} columns but this AANet was fitted on {self.n_features_in_}"
            )
        Y = X @ self.basis_ if self.basis_ is not None else X
        return torch.from_numpy(np.ascontiguousarray(Y))

    def embed(self, X) -> np.ndarray:
        """Bottleneck embeddings ``[n, k-1]`` of ``X [n, d]`` (no noise)."""
        coords = self._coords(X)
        with torch.no_grad():
            return encode(self.params_, coords, self.config_.hidden).numpy()

    def transform(self, X) -> np.ndarray:
        """Barycentric coordinates ``[n, k]`` of ``X [n, d]`` (rows sum to 1; all >= 0 inside)."""
        z = torch.from_numpy(self.embed(X))
        return barycentric(z.double(), self.k).float().numpy()

    def reconstruct(self, X) -> np.ndarray:
        """Decoded embeddings ``[n, d]`` (no noise)."""
        coords = self._coords(X)
        with torch.no_grad():
            z = encode(self.params_, coords, self.config_.hidden)
            out = decode(self.params_, z, self.config_.hidden).numpy()
        return out @ self.basis_.T if self.basis_ is not None else out

    # saving ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Tensors and JSON values only, so ``torch.load(weights_only=True)`` reads it back."""
        import json

        self._check_fitted()
        # The JSON part goes through one json round trip: pickle writes a string again or
        # refers back to it depending on object identity, which depends on the process that
        # made the model; fresh objects make the file's bytes a function of its values.
        values = json.loads(json.dumps({
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "k": int(self.k),
            "n_features_in": int(self.n_features_in_),
            "space": self.space,
            "config": self.config_.to_dict(),
            "stop_reason": self.stop_reason_,
            "final_losses": {k: float(v) for k, v in self.final_losses_.items()},
        }))  # fmt: skip
        tensors = {
            "params": [p.clone() for p in self.params_],
            "basis": None if self.basis_ is None else torch.from_numpy(self.basis_.copy()),
            "extrema": torch.from_numpy(self.extrema_.copy()),
            "loss_curve": torch.from_numpy(self.loss_curve_.copy()),
        }
        return {**values, **tensors}

    def save(self, path: str | os.PathLike) -> Path:
        from featgeo.files import save_torch_dict

        return save_torch_dict(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AANet:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError("not a featgeo AANet file (no 'format': 'featgeo.aanet' entry)")
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"AANet file format version {data.get('format_version')} is not supported "
                f"(this featgeo reads version {FORMAT_VERSION}); refit the model"
            )
        missing = sorted(set(_KEYS) - set(data))
        if missing:
            raise ValueError(f"AANet file is missing {missing}; save models with AANet.save")
        config = AANetConfig.from_dict(data["config"])
        net = cls(k=int(data["k"]), config=config, space=data["space"])
        basis = data["basis"]
        net._set_fitted(
            data["params"],
            None if basis is None else basis.numpy(),
            data["extrema"].numpy(),
            data["loss_curve"].numpy(),
            data["stop_reason"],
            config,
            int(data["n_features_in"]),
        )
        return net

    @classmethod
    def load(cls, path: str | os.PathLike) -> AANet:
        """Read a file written by :meth:`save` (``weights_only=True``: no code runs)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no AANet file at {path}")
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is one message
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(
                f"{path} is not an AANet file written by featgeo ({first[:120]}); "
                "save models with AANet.save"
            ) from None
        return cls.from_dict(data)

    def __repr__(self) -> str:
        return f"AANet(k={self.k}, space={self.space!r})"


__all__ = ["AANet", "NotFittedError", "span_basis"]
