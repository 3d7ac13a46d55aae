"""SAE speed: featgeo's TopK trainer vs SAELens' on the same activations, and store throughput.

1. Training. N residual-stream activations of layer 6 of the embedded model (``sae_train``
   split, from the featgeo activation cache, collected once) are shuffled with a fixed seed and
   written to one .npy; featgeo's ``SAETrainer`` and SAELens' ``SAETrainer`` (in its own venv,
   fed through its ``data_provider`` argument) read exactly those rows in that order, with the
   same d_sae, k, batch size, learning rate, Adam betas, AuxK weight and dead-latent window.
   Only construction + the training loop is timed (imports, model loading, activation
   collection and saving are not). Both SAEs are then scored by the same featgeo code on the
   same held-out activations (``eval`` split), so the speeds compare at comparable quality.
2. Activation store. Tokens/s of ``build_store`` (model up to layer 6 + SAE encode + writing
   the CSR codes, into a fresh temporary folder) against the forward-pass limits on the same
   chunks: (a) ``iter_activation_batches`` alone (forward stopped after layer 6, nothing
   written) and (b) the full model (30 layers + LM head).

    python benchmarks/sae.py                                          # featgeo only
    python benchmarks/sae.py --peer-python .bench/saelens/bin/python  # + SAELens

``make bench-sae`` builds the peer's virtual environment (.bench/saelens: torch==2.13.0 CPU and
sae-lens, pinned in the Makefile) and runs the second form.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _machine import machine_info
from rich.console import Console
from rich.table import Table

from featgeo.activations.cache import (
    build_activation_cache,
    default_cache_dir,
    find_activation_cache,
)
from featgeo.activations.collect import document_chunks, iter_activation_batches
from featgeo.activations.store import build_store
from featgeo.corpus import load_corpus
from featgeo.models.loading import (
    load_model,
    load_tokenizer,
    model_fingerprint,
    resolve_device,
    resolve_model,
)
from featgeo.sae import SAEConfig, SparseAutoencoder, load_sae
from featgeo.sae.training import SAETrainer, TrainConfig

PEER_SCRIPT = Path(__file__).with_name("_saelens_peer.py")
console = Console(width=160)


# -- activations -----------------------------------------------------------------------------
class Source:
    """The embedded model, tokenizer and corpus, loaded on first use."""

    def __init__(self, spec: str, device: torch.device):
        self.spec, self.device = spec, device
        self._model = self._tokenizer = self._corpus = None
        self.fingerprint = model_fingerprint(resolve_model(spec).source)

    @property
    def model(self):
        if self._model is None:
            self._model = load_model(self.spec, device=self.device)
        return self._model

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.spec)
        return self._tokenizer

    @property
    def corpus(self):
        if self._corpus is None:
            self._corpus = load_corpus("embedded")
        return self._corpus

    def header(self, split: str, args, max_tokens: int) -> dict:
        return {
            "model": self.fingerprint,
            "layer": args.layer,
            "hook": "resid_post",
            "split": split,
            "corpus_fingerprint": self.corpus.fingerprint,
            "context_size": args.context_size,
            "max_tokens": max_tokens,
        }


def cached_activations(source: Source, split: str, n_tokens: int, args) -> np.ndarray:
    """The first ``n_tokens`` activation rows of ``split`` (document order), [n, d] float32.

    A finished featgeo activation cache of the same model, corpus, split, layer and context
    size with at least that many tokens is reused (its first rows are exactly what a smaller
    collection would give); otherwise one of ``n_tokens`` is built.
    """
    header = source.header(split, args, n_tokens)
    cache = find_activation_cache(header)
    if cache is not None:
        console.print(
            f"reusing activation cache {cache.folder} ({cache.n_tokens} tokens) for {split}"
        )
    else:
        batches = iter_activation_batches(
            source.model,
            source.tokenizer,
            source.corpus,
            split,
            args.layer,
            context_size=args.context_size,
            max_tokens=n_tokens,
        )
        cache = build_activation_cache(default_cache_dir(header), batches, header)
    if cache.n_tokens < n_tokens:
        raise SystemExit(f"split {split!r} has only {cache.n_tokens} tokens; lower the request")
    return np.array(cache.acts[:n_tokens], dtype=np.float32)  # a writable copy in RAM


# -- training --------------------------------------------------------------------------------
def train_config(args, n_tokens: int) -> TrainConfig:
    return TrainConfig(
        d_sae=args.d_sae,
        total_tokens=n_tokens,
        architecture="topk",
        k=args.k,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        device=str(args.torch_device),
        progress=False,
    )


def train_featgeo(rows: np.ndarray, cfg: TrainConfig) -> dict:
    data = torch.from_numpy(rows)  # [n, d], in RAM before the clock starts
    batches = [data[i : i + cfg.batch_size] for i in range(0, data.shape[0], cfg.batch_size)]
    start = time.perf_counter()
    trainer = SAETrainer(cfg).fit(batches)
    if cfg.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    last = trainer.history_[-1]
    return {
        "seconds": seconds,
        "tokens": trainer.tokens_seen_,
        "steps": trainer.n_steps_,
        "explained_variance": last["explained_variance"],
        "l0": last["l0"],
        "dead_fraction": last["dead_fraction"],
        "sae": trainer.sae_,
    }


def train_peer(python: str, acts: Path, cfg: TrainConfig, args, work: Path) -> dict | None:
    # featgeo: dead once tokens_since_fired >= W; SAELens: dead once steps_since_fired > w.
    # Both count whole batches of B tokens, so w = ceil(W / B) - 1 marks the same latents dead.
    dead_steps = max(0, math.ceil(cfg.dead_window / cfg.batch_size) - 1)
    out = work / "saelens-sae"
    command = [
        python,
        str(PEER_SCRIPT),
        "--acts",
        str(acts),
        "--out",
        str(out),
        "--d-sae",
        str(cfg.d_sae),
        "--k",
        str(cfg.k),
        "--batch-size",
        str(cfg.batch_size),
        "--lr",
        repr(cfg.learning_rate),
        "--aux-coef",
        repr(cfg.aux_coef),
        "--dead-window-steps",
        str(dead_steps),
        "--b-dec-init",
        args.peer_b_dec_init,
        "--threads",
        str(torch.get_num_threads()),
        "--seed",
        str(cfg.seed),
        "--device",
        cfg.device,
    ]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        console.print(f"[red]peer failed[/red]:\n{proc.stderr[-3000:]}")
        return None
    line = next(x for x in reversed(proc.stdout.splitlines()) if x.startswith('{"peer"'))
    result = json.loads(line)
    result["sae"] = load_sae(out)
    norms = result["sae"].W_dec.norm(dim=-1)
    if not torch.allclose(norms, torch.ones_like(norms), atol=1e-4):
        console.print("[yellow]warning[/yellow]: the SAELens decoder rows are not unit-norm")
    return result


@torch.no_grad()
def held_out(sae: SparseAutoencoder, acts: np.ndarray, device, block: int = 4096) -> dict:
    """Explained variance 1 - sum ||x - x_hat||^2 / sum ||x - mean x||^2, mean L0 and the
    fraction of latents that never fire, over ``acts`` [n, d]."""
    sae = sae.to(device).eval()
    x_all = torch.from_numpy(acts)
    mean = x_all.double().mean(0)
    err = var = l0 = 0.0
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool, device=device)
    for start in range(0, x_all.shape[0], block):
        x = x_all[start : start + block].to(device)  # [b, d]
        codes = sae.encode(x)  # [b, d_sae]
        recon = sae.decode(codes)  # [b, d]
        err += float((x.double() - recon.double()).pow(2).sum())
        var += float((x.double() - mean.to(device)).pow(2).sum())
        l0 += float((codes != 0).sum())
        fired |= (codes != 0).any(0)
    return {
        "explained_variance": 1.0 - err / var,
        "l0": l0 / x_all.shape[0],
        "never_fired": float((~fired).double().mean()),
    }


def bench_training(source: Source, args, work: Path) -> list[dict]:
    n = (args.tokens // args.batch_size) * args.batch_size
    if n == 0:
        raise SystemExit(f"--tokens {args.tokens} is less than one batch ({args.batch_size})")
    rows = cached_activations(source, "sae_train", n, args)
    order = np.random.default_rng(args.seed).permutation(n)
    rows = np.ascontiguousarray(rows[order])  # [n, d], the fixed training order of both
    acts_path = work / "train_acts.npy"
    np.save(acts_path, rows)
    eval_rows = cached_activations(source, "eval", args.eval_tokens, args)
    cfg = train_config(args, n)
    torch.manual_seed(args.seed)
    results = [{"trainer": "featgeo", **train_featgeo(rows, cfg)}]
    del rows
    if args.peer_python:
        peer = train_peer(args.peer_python, acts_path, cfg, args, work)
        if peer is not None:
            results.append({"trainer": f"SAELens {peer['version']}", **peer})
    for r in results:
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
        r["held_out"] = held_out(r.pop("sae"), eval_rows, args.torch_device)
        console.print({k: v for k, v in r.items()})
    return results


# -- activation store ------------------------------------------------------------------------
def chunk_batches(source: Source, args):
    """The padded id batches iter_activation_batches runs, in the same order and grouping:
    ``batch_size`` chunks at a time, the last batch cut once ``store_tokens`` are covered."""
    emitted, pending = 0, []
    for chunk in document_chunks(
        source.corpus, args.store_split, source.tokenizer, args.context_size
    ):
        pending.append(chunk.token_ids)
        covered = emitted + sum(c.numel() - 1 for c in pending) >= args.store_tokens
        if len(pending) < args.store_batch_size and not covered:
            continue
        lengths = torch.tensor([c.numel() for c in pending])
        ids = torch.zeros(len(pending), int(lengths.max()), dtype=torch.long)  # [b, seq]
        for row, c in enumerate(pending):
            ids[row, : c.numel()] = c
        mask = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
        yield ids, None if bool(mask.all()) else mask
        emitted += int(lengths.sum()) - len(pending)
        pending = []
        if covered:
            return


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def bench_store(source: Source, args, work: Path) -> list[dict]:
    model, device = source.model, args.torch_device
    if args.sae:
        sae = load_sae(args.sae, device=device)
        encoder = f"sae:{Path(args.sae).resolve()}"
    else:
        cfg = SAEConfig(d_in=576, d_sae=args.d_sae, architecture="topk", k=args.k)
        sae = SparseAutoencoder.from_config(cfg, seed=args.seed).to(device)
        encoder = f"random-init:d_sae={args.d_sae},k={args.k},seed={args.seed}"
    sae.eval().requires_grad_(False)

    def batches():
        return iter_activation_batches(
            model,
            source.tokenizer,
            source.corpus,
            args.store_split,
            args.layer,
            context_size=args.context_size,
            batch_size=args.store_batch_size,
            max_tokens=args.store_tokens,
        )

    next(iter(batches()))  # warm-up: first-call allocations, tokenizer, thread pool

    start = time.perf_counter()
    n_tokens = sum(b.n_tokens for b in batches())
    _sync(device)
    forward = {"what": f"(a) forward to layer {args.layer}", "tokens": n_tokens}
    forward["seconds"] = time.perf_counter() - start

    header = {
        **source.header(args.store_split, args, args.store_tokens),
        "encoder_fingerprint": encoder,
    }
    folder = work / "store"  # fresh: the run measures building, not reuse
    start = time.perf_counter()
    with torch.no_grad():
        store = build_store(folder, batches(), sae.encode, header, progress=False)
    _sync(device)
    built = {"what": "build_store", "tokens": store.n_tokens}
    built["seconds"] = time.perf_counter() - start
    built["nnz_per_token"] = store.nnz / max(store.n_tokens, 1)
    shutil.rmtree(folder, ignore_errors=True)

    start = time.perf_counter()
    computed = 0
    with torch.no_grad():
        for ids, mask in chunk_batches(source, args):
            model(
                input_ids=ids.to(device),
                attention_mask=None if mask is None else mask.to(device),
                use_cache=False,
            )
            computed += int(ids.numel() if mask is None else mask.sum()) - ids.shape[0]
    _sync(device)
    # The same batches as (a), whose last one also runs whole before it is cut: count the
    # same tokens so that the rates compare the same work.
    assert computed >= n_tokens, "the full forward covered fewer tokens than (a)"
    full = {"what": "(b) full forward + LM head", "tokens": n_tokens}
    full["seconds"] = time.perf_counter() - start

    rows = [built, forward, full]
    for r in rows:
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
    for r in rows:
        r["store_vs_this"] = built["tokens_per_s"] / r["tokens_per_s"]
        console.print(r)
    return rows


# -- report ----------------------------------------------------------------------------------
def machine() -> str:
    info = machine_info()
    gpu = "CPU only" if info["gpu"] == "none" else info["gpu"]
    return f"{info['cpu']}, {info['torch_threads']} threads, torch {info['torch']}, {gpu}"


def report(train: list[dict], store: list[dict], args, where: str) -> None:
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    if train:
        table = Table(
            title=f"TopK SAE training, d_sae {args.d_sae}, k {args.k}, batch {args.batch_size}, "
            f"{train[0]['tokens']} tokens of layer {args.layer} ({where})"
        )
        for col in (
            "trainer",
            "train s",
            "tokens/s",
            "featgeo speed-up",
            "last-step EV",
            "last-step L0",
            "dead",
            f"held-out EV ({args.eval_tokens} eval tokens)",
            "held-out L0",
            "never fired",
        ):
            table.add_column(col, justify="left" if col == "trainer" else "right")
        base = train[0]["tokens_per_s"]
        for r in train:
            h = r["held_out"]
            table.add_row(
                r["trainer"],
                fmt(r["seconds"], ".1f"),
                fmt(r["tokens_per_s"], ",.0f"),
                fmt(base / r["tokens_per_s"], ".2f") + "x",
                fmt(r["explained_variance"], ".4f"),
                fmt(r["l0"], ".1f"),
                fmt(r["dead_fraction"], ".2%"),
                fmt(h["explained_variance"], ".4f"),
                fmt(h["l0"], ".1f"),
                fmt(h["never_fired"], ".2%"),
            )
        console.print(table)
    if store:
        table = Table(
            title=f"activation store, {args.store_tokens} tokens of {args.store_split}, "
            f"layer {args.layer}, batch {args.store_batch_size} x {args.context_size} ({where})"
        )
        for col in ("pass", "tokens", "seconds", "tokens/s", "build_store / this"):
            table.add_column(col, justify="left" if col == "pass" else "right")
        for r in store:
            table.add_row(
                r["what"],
                str(r["tokens"]),
                fmt(r["seconds"], ".2f"),
                fmt(r["tokens_per_s"], ",.0f"),
                fmt(r["store_vs_this"], ".2f"),
            )
        console.print(table)
    console.print(f"command: {' '.join(sys.argv)}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--model", default="embedded")
    add("--layer", type=int, default=6)
    add("--context-size", type=int, default=256)
    add("--tokens", type=int, default=204_800, help="training tokens (cut to whole batches)")
    add("--eval-tokens", type=int, default=16_384, help="held-out tokens of the eval split")
    add("--d-sae", type=int, default=4608)
    add("--k", type=int, default=32)
    add("--batch-size", type=int, default=4096)
    add("--lr", type=float, default=None, help="default: featgeo's 2e-4 / sqrt(d_sae / 16384)")
    add("--seed", type=int, default=0)
    add("--peer-python", default=None, help="python of the sae-lens venv (omit: featgeo only)")
    add(
        "--peer-b-dec-init",
        choices=("geometric_median", "zeros"),
        default="geometric_median",
        help="SAELens starts b_dec at zero; geometric_median sets it as featgeo does",
    )
    add("--store-tokens", type=int, default=32_768)
    add("--store-split", default="sae_train")
    add("--store-batch-size", type=int, default=8, help="chunks per forward pass")
    add("--sae", default=None, help="a trained SAE folder for the store (default: random init)")
    add("--threads", type=int, default=None, help="torch threads of both (default: torch's)")
    add("--device", default="auto")
    add("--skip-train", action="store_true")
    add("--skip-store", action="store_true")
    add("--json", default=None, help="also write the results to this JSON file")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.torch_device = resolve_device(args.device)
    where = machine()
    console.print(where)
    source = Source(args.model, args.torch_device)
    work = Path(tempfile.mkdtemp(prefix="featgeo-bench-sae-"))
    try:
        train = [] if args.skip_train else bench_training(source, args, work)
        store = [] if args.skip_store else bench_store(source, args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(train, store, args, where)
    if args.json:
        payload = {"machine": where, "args": sys.argv[1:], "train": train, "store": store}
        Path(args.json).write_text(json.dumps(payload, indent=2, default=str))


if __name__ == "__main__":
    main()
