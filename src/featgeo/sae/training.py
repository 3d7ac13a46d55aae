"""Train a TopK (or standard ReLU + L1) sparse autoencoder on a stream of activations.

The recipe follows Gao et al. 2024, "Scaling and evaluating sparse autoencoders" (the TopK SAE
paper), as implemented by EleutherAI/sparsify:

- ``b_dec`` starts at the geometric median (or mean) of the first batch (§A.1 of the paper);
- the loss is the fraction of variance unexplained, FVU = ||x - x_hat||^2 / ||x - mean(x)||^2,
  summed over the batch, so its scale does not depend on the activations' norm;
- decoder rows are kept unit-norm: before each Adam step the gradient component parallel to
  each row is removed, after it the rows are renormalised (§A.1);
- dead latents (not fired in the last ``dead_window`` tokens) get the AuxK loss: the top-
  ``aux_k`` dead latents reconstruct the main model's residual error (§A.2);
- the standard architecture replaces TopK by ReLU and adds an L1 penalty on codes weighted by
  decoder row norms (Bricken et al. 2023).

Checkpoints (SAE + optimizer state + counters + dead-latent tracker) are written through
:mod:`featgeo.files`, so an interrupted run resumes from the last complete one.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import torch

from featgeo.files import atomic_path, read_json, save_tensor, staging_dir, write_json
from featgeo.sae.architectures import SparseAutoencoder
from featgeo.sae.config import SAEConfig
from featgeo.sae.saelens_format import load_sae, save_sae
from featgeo.sae.sparse_ops import gathered_pre_activations, sparse_decode

TRAINABLE_ARCHITECTURES = ("topk", "standard", "jumprelu")
"""Architectures :class:`SAETrainer` can train."""

STATE_FILENAME = "trainer_state.json"
OPTIMIZER_FILENAME = "optimizer.pt"
TRACKER_FILENAME = "tokens_since_fired.pt"
SAE_SUBDIR = "sae"

_OPTION_NAMES = {"total_tokens": "--tokens"}
"""CLI spellings of config fields whose option name differs from the field name."""
RUNTIME_FIELDS = ("device", "progress", "log_every", "checkpoint_every")
"""Config fields that may differ between a checkpoint and the run resuming from it."""


@dataclass
class TrainConfig:
    """Hyper-parameters of one SAE training run (saved in every checkpoint)."""

    d_sae: int
    """Number of latents (dictionary size)."""
    total_tokens: int
    """Tokens to train on; the activation stream is read until this many have been used."""
    architecture: Literal["topk", "standard", "jumprelu"] = "topk"
    """``topk`` (Gao et al. 2024), ``standard`` (ReLU + L1, Bricken et al. 2023) or
    ``jumprelu`` (L0 penalty, Rajamanoharan et al. 2024)."""
    k: int = 32
    """Latents kept per token by TopK; for ``jumprelu`` the mean L0 the adaptive L0 weight
    steers to (see ``l0_coef``); ignored by ``standard``."""
    lr: float | None = None
    """Adam learning rate; ``None`` means 2e-4 / sqrt(d_sae / 16384), sparsify's scaling."""
    batch_size: int = 4096
    """Tokens per optimizer step (the stream is re-batched to this size)."""
    seed: int = 0
    """Seed of the weight initialisation; training itself draws no random numbers."""
    aux_k: int | None = None
    """Dead latents used by the AuxK loss; ``None`` means d_in // 2 (Gao et al. 2024, §A.2)."""
    aux_coef: float = 1 / 32
    """Weight of the AuxK loss (Gao et al. 2024 use 1/32); 0 turns it off."""
    dead_after_tokens: int = 10_000_000
    """A latent is dead once it has not fired for this many tokens (see :attr:`dead_window`)."""
    l1_coef: float = 0.05
    """``standard`` only: weight of the L1 penalty, sum_i |code_i| * ||W_dec[i]|| per token,
    divided by the RMS norm of the centred batch so that it is scale-free like the FVU."""
    l0_coef: float | None = None
    """``jumprelu`` only: weight of the L0 penalty (mean active latents per token). ``None``
    adapts it every step, multiplying by exp(0.01 (L0 - k) / k), so that L0 settles near k."""
    jumprelu_bandwidth: float = 0.001
    """``jumprelu`` only: width of the rectangle kernel of the threshold's straight-through
    gradient, in units of the first batch's per-element RMS (Rajamanoharan et al. use 0.001 on
    inputs normalised to unit RMS); initial thresholds are the same value."""
    b_dec_init: Literal["geometric_median", "mean"] = "geometric_median"
    """How ``b_dec`` is initialised from the first batch."""
    log_every: int = 10
    """Append a row to ``history_`` every this many steps (and at the last step)."""
    checkpoint_every: int = 1000
    """With a checkpoint folder, save every this many steps (and at the end)."""
    device: str = "cpu"
    """Torch device to train on."""
    progress: bool = True
    """Show a rich progress bar (loss, explained variance, L0) on stderr."""
    model_name: str = ""
    """Provenance written into the SAE's cfg.json: the model the activations come from."""
    hook_name: str = ""
    """Provenance written into the SAE's cfg.json: where the activations were read."""

    def __post_init__(self) -> None:
        if self.architecture not in TRAINABLE_ARCHITECTURES:
            raise ValueError(
                f"architecture '{self.architecture}' cannot be trained; choose from "
                f"{', '.join(TRAINABLE_ARCHITECTURES)}"
            )
        if self.b_dec_init not in ("geometric_median", "mean"):
            raise ValueError(
                f"b_dec_init must be 'geometric_median' or 'mean', got {self.b_dec_init!r}"
            )
        for name in ("d_sae", "total_tokens", "k", "batch_size", "dead_after_tokens"):
            _check_int(name, getattr(self, name), 1)
        for name in ("log_every", "checkpoint_every"):
            _check_int(name, getattr(self, name), 1)
        _check_int("seed", self.seed, 0)
        if self.aux_k is not None:
            _check_int("aux_k", self.aux_k, 1)
        if self.k > self.d_sae:
            raise ValueError(f"--k {self.k} is larger than --d-sae {self.d_sae}; choose k <= d_sae")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"--lr must be a positive number, got {self.lr}")
        if self.l0_coef is not None and not (math.isfinite(self.l0_coef) and self.l0_coef >= 0):
            raise ValueError(f"--l0-coef must be >= 0, got {self.l0_coef}")
        if not (math.isfinite(self.jumprelu_bandwidth) and self.jumprelu_bandwidth > 0):
            raise ValueError(f"jumprelu_bandwidth must be > 0, got {self.jumprelu_bandwidth}")
        for name in ("aux_coef", "l1_coef"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {value}")

    @property
    def learning_rate(self) -> float:
        """``lr``, or 2e-4 / sqrt(d_sae / 16384) when not given (sparsify's default)."""
        return self.lr if self.lr is not None else 2e-4 / math.sqrt(self.d_sae / 2**14)

    @property
    def dead_window(self) -> int:
        """Tokens without firing after which a latent counts as dead.

        ``dead_after_tokens`` (10M, as in sparsify) suits runs of hundreds of millions of tokens;
        a short run would never see a latent die. The window is therefore capped at a tenth of
        ``total_tokens`` (but at least one batch): min(dead_after_tokens,
        max(batch_size, total_tokens // 10)).
        """
        return min(self.dead_after_tokens, max(self.batch_size, self.total_tokens // 10))

    def aux_k_for(self, d_in: int) -> int:
        """``aux_k``, or d_in // 2 (at least 1) when not given."""
        return self.aux_k if self.aux_k is not None else max(1, d_in // 2)


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        option = _OPTION_NAMES.get(name, f"--{name.replace('_', '-')}")
        raise ValueError(f"{option} must be >= {minimum}, got {value}")
    return value


# -- data ------------------------------------------------------------------------------------
def _as_tensor(chunk: Any, d_in: int | None) -> torch.Tensor:
    """Validate one item of the activation stream: a [n, d_in] tensor (or an object with
    ``.acts``, such as :class:`featgeo.activations.collect.ActivationBatch`)."""
    acts = getattr(chunk, "acts", chunk)
    if not isinstance(acts, torch.Tensor):
        raise TypeError(
            f"activations must yield torch.Tensor [n, d_in] (or ActivationBatch), "
            f"got {type(acts).__name__}"
        )
    if acts.ndim != 2 or (d_in is not None and acts.shape[1] != d_in):
        expected = f"[n, {d_in}]" if d_in is not None else "[n, d_in]"
        raise ValueError(
            f"activations must be 2-D {expected} tensors, got shape {tuple(acts.shape)}; "
            f"flatten batch and position dimensions first"
        )
    if not acts.is_floating_point():
        raise TypeError(f"activations must be floating point, got dtype {acts.dtype}")
    if acts.dtype in (torch.float16, torch.bfloat16):  # train in float32 (the SAE's dtype)
        acts = acts.float()
    return acts


def token_batches(
    activations: Iterable[Any], batch_size: int, total_tokens: int, skip: int = 0
) -> Iterator[torch.Tensor]:
    """Re-batch a stream of [n, d_in] tensors into [batch_size, d_in] batches.

    The first ``skip`` tokens are dropped (resuming), at most ``total_tokens - skip`` are
    yielded, and the last batch is shorter when the stream or the budget ends mid-batch.
    """
    remaining_skip, budget = skip, total_tokens - skip
    pending: list[torch.Tensor] = []
    n_pending, d_in = 0, None
    for chunk in activations:
        if budget <= 0:
            break
        acts = _as_tensor(chunk, d_in)
        d_in = acts.shape[1]
        if remaining_skip:
            cut = min(remaining_skip, acts.shape[0])
            acts, remaining_skip = acts[cut:], remaining_skip - cut
        acts = acts[:budget]  # [m, d_in]
        pending.append(acts)
        n_pending += acts.shape[0]
        budget -= acts.shape[0]
        while n_pending >= batch_size:
            flat = torch.cat(pending)  # [n_pending, d_in]
            yield flat[:batch_size]
            pending, n_pending = [flat[batch_size:]], n_pending - batch_size
    if n_pending:
        yield torch.cat(pending)


def geometric_median(points: torch.Tensor, max_iter: int = 100, tol: float = 1e-6):
    """Geometric median [d] of ``points`` [n, d] by Weiszfeld's algorithm (float64)."""
    with torch.no_grad():  # not a decorator: mutmut skips decorated functions
        x = points.double()
        median = x.mean(0)
        for _ in range(max_iter):
            weights = 1.0 / (x - median).norm(dim=1).clamp_min(1e-12)  # [n]
            new = (weights[:, None] * x).sum(0) / weights.sum()
            if (new - median).norm() <= tol * (1.0 + median.norm()):
                return new.to(points.dtype)
            median = new
        return median.to(points.dtype)


# -- trainer ---------------------------------------------------------------------------------
class SAETrainer:
    """Fit a sparse autoencoder to activations (scikit-learn style).

    ``fit(activations)`` returns ``self`` with ``sae_`` (a :class:`SparseAutoencoder`),
    ``history_`` (one dict per logged step: step, tokens, loss, mse, fvu, explained_variance,
    l0, dead_fraction, aux_loss), ``tokens_seen_`` and ``n_steps_``.
    """

    def __init__(self, config: TrainConfig):
        self.config = config

    # -- public ----------------------------------------------------------------------------
    def fit(
        self,
        activations: Iterable[Any],
        *,
        checkpoint_dir: str | os.PathLike | None = None,
        init_sae: SparseAutoencoder | None = None,
    ) -> SAETrainer:
        """Train on ``activations``, an iterable of [n, d_in] float tensors (or
        ``ActivationBatch`` es), read until ``config.total_tokens`` tokens have been used.

        With ``checkpoint_dir`` the state is saved every ``checkpoint_every`` steps and at the
        end; if the folder already holds a checkpoint of the same config, training resumes
        from it and the tokens it consumed are skipped (the stream must be deterministic).
        ``init_sae`` starts from a copy of the given SAE instead of a fresh initialisation.
        """
        cfg = self.config
        if not isinstance(cfg, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(cfg).__name__}")
        checkpoint = Path(checkpoint_dir) if checkpoint_dir is not None else None
        resumed = checkpoint is not None and (checkpoint / STATE_FILENAME).exists()
        skip = 0
        if resumed:
            self._load_checkpoint(checkpoint)
            skip = self.tokens_seen_  # the stream is deterministic: drop what was used
        batches = token_batches(activations, cfg.batch_size, cfg.total_tokens, skip)
        if not resumed:
            first = next(batches, None)
            if first is None:
                raise ValueError("activations yielded no tokens; nothing to train on")
            self._init_state(first, init_sae)
            batches = _chain(first, batches)
        self._train(batches, checkpoint)
        if self.tokens_seen_ < cfg.total_tokens:
            warnings.warn(
                f"the activations ran out after {self.tokens_seen_} of --tokens "
                f"{cfg.total_tokens} tokens; the SAE is trained on fewer tokens",
                UserWarning,
                stacklevel=2,
            )
        return self

    # -- set-up ----------------------------------------------------------------------------
    def _init_state(self, first: torch.Tensor, init_sae: SparseAutoencoder | None) -> None:
        cfg = self.config
        d_in = first.shape[1]
        if init_sae is not None:
            if not isinstance(init_sae, SparseAutoencoder):
                raise TypeError(
                    f"init_sae must be a SparseAutoencoder, got {type(init_sae).__name__}"
                )
            if (init_sae.cfg.d_in, init_sae.cfg.d_sae) != (d_in, cfg.d_sae):
                raise ValueError(
                    f"init_sae has d_in={init_sae.cfg.d_in}, d_sae={init_sae.cfg.d_sae}; the "
                    f"run needs d_in={d_in} (the activations), d_sae={cfg.d_sae}"
                )
        sae_cfg = SAEConfig(
            d_in=d_in,
            d_sae=cfg.d_sae,
            architecture=cfg.architecture,
            k=cfg.k if cfg.architecture == "topk" else None,
            model_name=cfg.model_name,
            hook_name=cfg.hook_name,
        )
        sae = SparseAutoencoder.from_config(sae_cfg, seed=cfg.seed)
        with torch.no_grad():
            if init_sae is not None:
                for name, param in sae.named_parameters():
                    param.copy_(getattr(init_sae, name).detach().cpu())
            else:
                x = first.detach().to("cpu", torch.float32)
                init = geometric_median(x) if cfg.b_dec_init == "geometric_median" else x.mean(0)
                sae.b_dec.copy_(init)
        # Scale-free JumpReLU settings: fixed once from the first batch's per-element RMS.
        x = first.detach().to("cpu", torch.float64)
        rms = float((x - x.mean(0)).pow(2).mean().sqrt())
        self.bandwidth_ = cfg.jumprelu_bandwidth * max(rms, 1e-12)
        self.l0_coef_ = cfg.l0_coef if cfg.l0_coef is not None else 1e-3
        if cfg.architecture == "jumprelu" and init_sae is None:
            with torch.no_grad():
                sae.threshold.fill_(self.bandwidth_)
        self.sae_ = sae.to(cfg.device)
        self._optimizer = self._make_optimizer()
        self._tokens_since_fired = torch.zeros(cfg.d_sae, dtype=torch.long, device=cfg.device)
        self.history_: list[dict[str, float]] = []
        self.tokens_seen_ = 0
        self.n_steps_ = 0

    def _make_optimizer(self) -> torch.optim.Adam:
        return torch.optim.Adam(
            self.sae_.parameters(), lr=self.config.learning_rate, betas=(0.9, 0.999)
        )

    # -- loop ------------------------------------------------------------------------------
    def _train(self, batches: Iterator[torch.Tensor], checkpoint: Path | None) -> None:
        cfg = self.config
        from featgeo.progress import progress_bar

        bar = progress_bar(transient=True)
        bar.disable = not cfg.progress
        with bar:
            task = bar.add_task(
                "training SAE", total=cfg.total_tokens, completed=self.tokens_seen_, status=""
            )
            last = None
            for x in batches:
                metrics = self._step(x.to(cfg.device, torch.float32))
                last = metrics
                if self.n_steps_ % cfg.log_every == 0:
                    row = self._log(metrics)
                    bar.update(task, completed=self.tokens_seen_, status=_status(row))
                if checkpoint is not None and self.n_steps_ % cfg.checkpoint_every == 0:
                    self._save_checkpoint(checkpoint)
            if last is not None and self.n_steps_ % cfg.log_every != 0:
                self._log(last)
        if checkpoint is not None and last is not None:
            self._save_checkpoint(checkpoint)

    def _step(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """One Adam step on a batch ``x`` [n, d_in]; returns detached metric tensors."""
        cfg, sae = self.config, self.sae_
        sae_in = x - sae.b_dec if sae.cfg.apply_b_dec_to_input else x  # [n, d_in]
        if cfg.architecture == "topk":
            with torch.no_grad():  # selection only; gradients go through the k picked entries
                pre = torch.addmm(sae.b_enc, sae_in, sae.W_enc)  # [n, d_sae]
                top = pre.topk(cfg.k, dim=-1)  # [n, k]
            pre_k = gathered_pre_activations(sae_in, sae.W_enc, sae.b_enc, top.indices, pre)
            values = torch.relu(pre_k)  # [n, k]
            recon = sparse_decode(top.indices, values, sae.W_dec) + sae.b_dec  # [n, d_in]
            active = values > 0
            fired = top.indices[active]
        else:
            pre = sae_in @ sae.W_enc + sae.b_enc  # [n, d_sae]
            if cfg.architecture == "jumprelu":
                codes = _JumpReLU.apply(pre, sae.threshold, self.bandwidth_)
            else:
                codes = torch.relu(pre)
            recon = codes @ sae.W_dec + sae.b_dec
            active = codes > 0
            fired = active.any(0).nonzero().squeeze(1)
        err = x - recon  # [n, d_in]
        total_var = (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)
        sq_err = err.pow(2).sum()
        fvu = sq_err / total_var
        loss = fvu
        dead = self._tokens_since_fired >= cfg.dead_window  # [d_sae]
        aux = torch.zeros((), device=x.device)
        if cfg.architecture == "topk" and cfg.aux_coef > 0 and bool(dead.any()):
            aux = _aux_loss(sae, sae_in, pre, dead, err.detach(), cfg.aux_k_for(x.shape[1]))
            aux = aux / total_var
            loss = loss + cfg.aux_coef * aux
        if cfg.architecture == "standard":
            rms = (total_var / x.shape[0]).sqrt()
            l1 = (codes * sae.W_dec.norm(dim=-1)).sum(-1).mean() / rms
            loss = loss + cfg.l1_coef * l1
        if cfg.architecture == "jumprelu":
            l0 = _Step.apply(pre, sae.threshold, self.bandwidth_).sum(-1).mean()  # per token
            loss = loss + self.l0_coef_ * l0
            if cfg.l0_coef is None:
                self.l0_coef_ *= math.exp(0.01 * (float(l0.detach()) - cfg.k) / cfg.k)
        self._optimizer.zero_grad(set_to_none=True)
        loss.backward()
        _remove_parallel_grad(sae.W_dec)
        self._optimizer.step()
        sae.normalize_decoder_()
        with torch.no_grad():
            if cfg.architecture == "jumprelu":
                sae.threshold.clamp_(min=0.0)
            self._tokens_since_fired += x.shape[0]
            self._tokens_since_fired[fired] = 0
        self.n_steps_ += 1
        self.tokens_seen_ += x.shape[0]
        return {
            "loss": loss.detach(),
            "mse": sq_err.detach() / err.numel(),
            "fvu": fvu.detach(),
            "l0": active.sum(-1).double().mean(),
            "dead_fraction": dead.double().mean(),
            "aux_loss": aux.detach(),
        }

    def _log(self, metrics: dict[str, torch.Tensor]) -> dict[str, float]:
        """Append one ``history_`` row built from a step's metrics; returns it."""
        values = {name: float(value) for name, value in metrics.items()}
        row = {"step": self.n_steps_, "tokens": self.tokens_seen_, **values}
        row["explained_variance"] = 1.0 - values["fvu"]
        self.history_.append(row)
        return row

    # -- checkpoints -----------------------------------------------------------------------
    def _save_checkpoint(self, folder: Path) -> None:
        """Write the whole training state to ``folder``; it appears complete or not at all."""
        from featgeo import __version__

        with staging_dir(folder) as tmp:
            save_sae(self.sae_, tmp / SAE_SUBDIR)
            with atomic_path(tmp / OPTIMIZER_FILENAME) as opt_tmp:
                torch.save(self._optimizer.state_dict(), opt_tmp)
            save_tensor(tmp / TRACKER_FILENAME, self._tokens_since_fired)
            state = {
                "featgeo_version": __version__,
                "config": asdict(self.config),
                "n_steps": self.n_steps_,
                "tokens_seen": self.tokens_seen_,
                "bandwidth": self.bandwidth_,
                "l0_coef": self.l0_coef_,
                "history": self.history_,
            }
            write_json(tmp / STATE_FILENAME, state)

    def _load_checkpoint(self, folder: Path) -> None:
        """Restore the training state saved by :meth:`_save_checkpoint`."""
        cfg = self.config
        state = read_json(folder / STATE_FILENAME)
        _check_same_config(state.get("config", {}), cfg, folder)
        self.sae_ = load_sae(folder / SAE_SUBDIR, device=cfg.device)
        self._optimizer = self._make_optimizer()
        opt_state = torch.load(
            folder / OPTIMIZER_FILENAME, map_location=cfg.device, weights_only=True
        )
        self._optimizer.load_state_dict(opt_state)
        tracker = torch.load(folder / TRACKER_FILENAME, map_location=cfg.device, weights_only=True)
        self._tokens_since_fired = tracker.to(torch.long)
        self.history_ = list(state["history"])
        self.tokens_seen_ = int(state["tokens_seen"])
        self.n_steps_ = int(state["n_steps"])
        self.bandwidth_ = float(state["bandwidth"])
        self.l0_coef_ = float(state["l0_coef"])


def _check_same_config(saved: dict[str, Any], cfg: TrainConfig, folder: Path) -> None:
    for f in fields(TrainConfig):
        if f.name in RUNTIME_FIELDS:
            continue
        ours, theirs = getattr(cfg, f.name), saved.get(f.name)
        if ours != theirs:
            raise ValueError(
                f"the checkpoint in {folder} was written with {f.name}={theirs!r}, this run has "
                f"{f.name}={ours!r}; use the same config to resume or a new checkpoint folder"
            )


def _aux_loss(
    sae: SparseAutoencoder,
    sae_in: torch.Tensor,
    pre: torch.Tensor,
    dead: torch.Tensor,
    err: torch.Tensor,
    aux_k: int,
) -> torch.Tensor:
    """AuxK loss (Gao et al. 2024, §A.2): squared error of reconstructing the residual ``err``
    [n, d_in] from the top-``aux_k`` dead latents' (ReLU'd) pre-activations, scaled down by
    n_dead / aux_k when fewer than ``aux_k`` latents are dead (as sparsify does)."""
    n_dead = int(dead.sum())
    k = min(aux_k, n_dead)
    with torch.no_grad():
        masked = torch.where(dead, pre, torch.full_like(pre, -torch.inf))  # [n, d_sae]
        top = masked.topk(k, dim=-1)  # [n, k]
    pre_k = gathered_pre_activations(sae_in, sae.W_enc, sae.b_enc, top.indices, pre)
    e_hat = sparse_decode(top.indices, torch.relu(pre_k), sae.W_dec)  # no b_dec: models err
    return min(n_dead / aux_k, 1.0) * (e_hat - err).pow(2).sum()


def _rectangle(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """K((pre - threshold) / bandwidth) / bandwidth with K the unit rectangle [-1/2, 1/2]."""
    return ((pre - threshold).abs() < bandwidth / 2).to(pre.dtype) / bandwidth


class _JumpReLU(torch.autograd.Function):
    """pre * H(pre - threshold); the threshold gets the straight-through pseudo-derivative
    -threshold * K((pre - threshold) / eps) / eps (Rajamanoharan et al. 2024, eq. 11)."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):  # noqa: D102
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        pre, threshold = ctx.saved_tensors
        grad_pre = grad * (pre > threshold).to(grad.dtype)
        kernel = _rectangle(pre, threshold, ctx.bandwidth)
        grad_threshold = -(threshold * kernel * grad).sum(0)
        return grad_pre, grad_threshold, None


class _Step(torch.autograd.Function):
    """H(pre - threshold), the L0 count; only the threshold gets a (straight-through) gradient,
    -K((pre - threshold) / eps) / eps (Rajamanoharan et al. 2024, eq. 12)."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):  # noqa: D102
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        pre, threshold = ctx.saved_tensors
        return None, -(_rectangle(pre, threshold, ctx.bandwidth) * grad).sum(0), None


def _remove_parallel_grad(w_dec: torch.nn.Parameter) -> None:
    """Drop the gradient component along each (unit) decoder row, W_dec [d_sae, d_in]."""
    if w_dec.grad is None:
        return
    with torch.no_grad():  # not a decorator: mutmut skips decorated functions
        parallel = (w_dec.grad * w_dec).sum(-1, keepdim=True)  # [d_sae, 1]
        w_dec.grad.sub_(parallel * w_dec)


def _chain(first: torch.Tensor, rest: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
    yield first
    yield from rest


def _status(row: dict[str, float]) -> str:
    return f"loss {row['loss']:.4f}  EV {row['explained_variance']:.3f}  L0 {row['l0']:.1f}"


__all__ = [
    "SAETrainer",
    "TRAINABLE_ARCHITECTURES",
    "TrainConfig",
    "geometric_median",
    "token_batches",
]
