"""Peer side of benchmarks/sae.py: the same TopK SAE training run done by SAELens.

Runs in its own virtual environment (sae-lens pins its own transformer-lens and transformers),
so it is a separate script that benchmarks/sae.py starts as a subprocess; it never imports
featgeo:

    PEER_PYTHON _saelens_peer.py --acts ACTS.npy --out SAE_DIR [--d-sae ... --k ... ...]

It reads the exact activation rows featgeo trained on (float32 [n, d_in], already in training
order), feeds them to SAELens' ``SAETrainer`` through its ``data_provider`` argument (an
iterator of [batch, d_in] tensors; no transformer_lens model and no ActivationsStore are
involved), times construction + ``fit()``, saves the inference SAE in SAELens format to
``SAE_DIR`` and prints one JSON line starting with ``{"peer"``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bar on the benchmark's stderr
os.environ.setdefault("WANDB_MODE", "disabled")

import numpy as np  # noqa: E402
import torch  # noqa: E402


def weiszfeld_median(points: torch.Tensor, max_iter: int = 100, tol: float = 1e-6):
    """Geometric median [d] of ``points`` [n, d] (float64 Weiszfeld iterations), the b_dec
    initialisation of Gao et al. 2024 §A.1; same stopping rule as featgeo's trainer."""
    x = points.double()
    median = x.mean(0)
    for _ in range(max_iter):
        inv = 1.0 / (x - median).norm(dim=1).clamp_min(1e-12)  # [n]
        new = (inv[:, None] * x).sum(0) / inv.sum()
        if (new - median).norm() <= tol * (1.0 + median.norm()):
            return new.to(points.dtype)
        median = new
    return median.to(points.dtype)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--acts", required=True, help=".npy float32 [n, d_in], training order")
    parser.add_argument("--out", required=True, help="folder for the trained inference SAE")
    parser.add_argument("--d-sae", type=int, default=4608)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--aux-coef", type=float, default=1 / 32)
    parser.add_argument("--dead-window-steps", type=int, default=1000)
    parser.add_argument("--b-dec-init", choices=("geometric_median", "zeros"), default="zeros")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import sae_lens
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    rows = torch.from_numpy(np.load(args.acts))  # [n, d_in], read fully before timing
    n, d_in = rows.shape
    n_steps = n // args.batch_size
    total = n_steps * args.batch_size
    batches = [rows[i * args.batch_size : (i + 1) * args.batch_size] for i in range(n_steps)]
    cfg = TopKTrainingSAEConfig(
        d_in=d_in,
        d_sae=args.d_sae,
        k=args.k,
        dtype="float32",
        device=args.device,
        apply_b_dec_to_input=True,
        normalize_activations="none",
        # Unit-norm decoder rows at init, and TopK on pre * ||W_dec|| so that the decoder
        # behaves as unit-norm throughout (SAELens' counterpart of featgeo's renormalisation).
        decoder_init_norm=1.0,
        rescale_acts_by_decoder_norm=True,
        aux_loss_coefficient=args.aux_coef,
        use_sparse_activations=False,
    )
    trainer_cfg = SAETrainerConfig(
        total_training_samples=total,
        train_batch_size_samples=args.batch_size,
        lr=args.lr,
        lr_end=args.lr,  # unused by the constant schedule, but SAETrainer asserts it is set
        lr_scheduler_name="constant",
        lr_warm_up_steps=0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        device=args.device,
        autocast=False,
        dead_feature_window=args.dead_window_steps,
        n_checkpoints=0,
        checkpoint_path=None,
        save_final_checkpoint=False,
    )

    last: dict[str, object] = {}
    start = time.perf_counter()
    torch.manual_seed(args.seed)
    sae = TopKTrainingSAE(cfg)
    if args.b_dec_init == "geometric_median":
        with torch.no_grad():
            sae.b_dec.copy_(weiszfeld_median(batches[0]))
    trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=iter(batches))
    step = trainer.step

    def recording_step(batch: torch.Tensor):
        out = step(batch)
        last["out"] = out  # the step's own forward pass, before its Adam update
        return out

    trainer.step = recording_step  # fit() calls self.step(next(data_provider))
    trainer.fit()
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start

    out = last["out"]
    with torch.no_grad():
        x = out.sae_in.double()
        err = (out.sae_out.double() - x).pow(2).sum()
        var = (x - x.mean(0)).pow(2).sum()
        ev = float(1.0 - err / var)
        l0 = float((out.feature_acts != 0).sum(-1).double().mean())
    dead = float(trainer.dead_neurons.double().mean())
    sae.save_inference_model(args.out)  # folds the decoder norms into W_enc / b_enc
    print(
        json.dumps(
            {
                "peer": "sae-lens",
                "version": sae_lens.__version__,
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "seconds": seconds,
                "tokens": trainer.n_training_samples,
                "steps": trainer.n_training_steps,
                "explained_variance": ev,
                "l0": l0,
                "dead_fraction": dead,
                "sae_dir": args.out,
                "finite": math.isfinite(ev),
            }
        )
    )


if __name__ == "__main__":
    main()
