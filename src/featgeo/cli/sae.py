"""``featgeo sae train | load | eval | store | cluster``."""

from __future__ import annotations

from dataclasses import asdict

import typer
from rich.table import Table

from featgeo.progress import console

app = typer.Typer(help="Sparse autoencoders: train, load, evaluate, store codes, cluster.")

ARCHITECTURE_NAMES = {"topk": "topk", "relu": "standard", "standard": "standard"}
MODEL_HELP = "embedded, a local model folder, or a hub id (default: the SAE's metadata.model_name)."
SAE_PATH = typer.Argument(..., help="SAE folder in SAELens format (cfg.json + sae_weights).")
SAE_MODEL = typer.Option(None, help=MODEL_HELP)
SAE_LAYER = typer.Option(
    None,
    help="Block L the SAE reads at, replacing the number in its hook_name (resid_pre stays the "
    "input of block L, resid_post its output); needed when the hook_name has none.",
)
CORPUS = typer.Option("embedded", help="embedded or a corpus path.")
CONTEXT_SIZE = typer.Option(256, "--context-size", help="Tokens per chunk.")
DEVICE = typer.Option("auto", help="auto, cpu or cuda.")


def _architecture(arch: str) -> str:
    if arch == "jumprelu":
        return arch
    if arch not in ARCHITECTURE_NAMES:
        raise ValueError(f"--arch must be topk, relu or jumprelu, got '{arch}'")
    return ARCHITECTURE_NAMES[arch]


def _model_for(sae, model: str | None) -> str:
    return model or sae.cfg.model_name or "embedded"


@app.command("train")
def train(
    layer: int = typer.Option(..., "--layer", help="Decoder block L the SAE reads at."),
    hook: str = typer.Option(
        "resid_post",
        "--hook",
        help="resid_post: the output of block L (blocks.L.hook_resid_post); resid_pre: its "
        "input, the output of block L-1 or the embeddings for L=0 (blocks.L.hook_resid_pre).",
    ),
    out: str = typer.Option(..., "--out", help="Output folder, e.g. saes/layer6."),
    model: str = typer.Option("embedded", help="embedded, a local model folder, or a hub id."),
    d_sae: int = typer.Option(4608, "--d-sae", help="Number of latents."),
    arch: str = typer.Option("topk", "--arch", help="topk, relu or jumprelu."),
    k: int = typer.Option(32, "--k", help="TopK: latents per token; JumpReLU: target L0."),
    tokens: int = typer.Option(2_000_000, "--tokens", help="Training tokens (epochs repeat)."),
    seed: int = typer.Option(0, help="Seed of the initialisation and of the data order."),
    batch_size: int = typer.Option(1024, "--batch-size", help="Tokens per optimizer step."),
    lr: float = typer.Option(None, "--lr", help="Adam learning rate (default: by d_sae)."),
    l0_coef: float = typer.Option(
        None, "--l0-coef", help="JumpReLU: L0 penalty weight (default: adapted so L0 ~ --k)."
    ),
    activation_tokens: int = typer.Option(
        None,
        "--activation-tokens",
        help="Collect at most this many tokens (default: --tokens, what training uses; a bigger "
        "collection of the same stream already cached is reused).",
    ),
    corpus: str = CORPUS,
    split: str = typer.Option("sae_train", help="Corpus split to train on."),
    context_size: int = CONTEXT_SIZE,
    device: str = DEVICE,
    force: bool = typer.Option(False, help="Replace --out if it was trained with other settings."),
) -> None:
    """Collect residual-stream activations of one block and train an SAE on them."""
    from featgeo.sae.train_run import train_sae
    from featgeo.sae.training import TrainConfig

    architecture = _architecture(arch)
    config = TrainConfig(
        d_sae=d_sae,
        total_tokens=tokens,
        architecture=architecture,
        k=k,
        lr=lr,
        l0_coef=l0_coef,
        batch_size=batch_size,
        seed=seed,
        checkpoint_every=100,
    )
    result = train_sae(
        out,
        config,
        layer=layer,
        hook=hook,
        model=model,
        corpus=corpus,
        split=split,
        context_size=context_size,
        activation_tokens=activation_tokens,
        device=device,
        force=force,
    )
    final, summary = result.summary["final"], result.summary
    reused = " (reused: same settings)" if result.reused else ""
    console.print(
        f"SAE saved to {result.out}{reused}: {summary['tokens_seen']:,} tokens "
        f"({summary['epochs']:.2f} epochs of {summary['n_activation_tokens']:,}), last step "
        f"EV {final['explained_variance']:.3f}, L0 {final['l0']:.1f}, "
        f"dead {final['dead_fraction']:.1%}; train "
        f"{summary['tokens_seen'] / max(summary['seconds']['train'], 1e-9):,.0f} tokens/s",
        soft_wrap=True,
    )


@app.command("load")
def load(path: str = SAE_PATH) -> None:
    """Load an SAELens-format SAE and describe it (and where in the model it reads)."""
    from featgeo.activations.hooks import HookNameError, parse_hook_name, sae_hook_point
    from featgeo.sae.saelens_format import load_sae

    sae = load_sae(path)
    cfg = sae.cfg
    parse_hook_name(cfg.hook_name)  # a hook featgeo does not read is refused here
    try:
        point = sae_hook_point(sae)
        same = cfg.hook_name == point.name
        hook = point.describe() if same else f"{cfg.hook_name} = {point.describe()}"
    except HookNameError:  # no layer in the name: eval / store / cluster need --layer
        recorded = cfg.hook_name or "(not recorded)"
        hook = f"{recorded}: names no layer (sae eval, store and cluster need --layer L)"
    table = Table(title=f"SAE {path}", show_header=False)
    norms = sae.W_dec.detach().norm(dim=1)
    rows = [
        ("architecture", cfg.architecture + (f" (k={cfg.k})" if cfg.k else "")),
        ("d_in x d_sae", f"{cfg.d_in} x {cfg.d_sae}"),
        ("dtype", cfg.dtype),
        ("model", cfg.model_name or "(not recorded)"),
        ("hook", hook),
        ("parameters", f"{sum(p.numel() for p in sae.parameters()):,}"),
        ("decoder row norms", f"{float(norms.min()):.4f} .. {float(norms.max()):.4f}"),
    ]
    for key, value in rows:
        table.add_row(key, str(value))
    console.print(table, soft_wrap=True)


@app.command("eval")
def evaluate(
    path: str = SAE_PATH,
    model: str = SAE_MODEL,
    layer: int = SAE_LAYER,
    corpus: str = CORPUS,
    split: str = typer.Option("eval", help="Corpus split to evaluate on."),
    tokens: int = typer.Option(16_384, "--tokens", help="Tokens to evaluate."),
    batch_size: int = typer.Option(8, "--batch-size", help="Chunks per forward pass."),
    context_size: int = CONTEXT_SIZE,
    dense_threshold: float = typer.Option(0.1, help="Firing rate above which a latent is dense."),
    json_out: str = typer.Option(None, "--json", help="Also write the numbers to this file."),
    device: str = DEVICE,
) -> None:
    """FVE, L0, dead/dense latents and CE loss recovered on held-out text."""
    from featgeo.corpus import load_corpus
    from featgeo.files import check_output_file, write_json
    from featgeo.models.loading import load_model, load_tokenizer, resolve_device
    from featgeo.sae.evaluate import evaluate_sae
    from featgeo.sae.saelens_format import load_sae

    check_output_file(json_out, "--json")  # before the evaluation, not after it
    sae = load_sae(path)
    model = _model_for(sae, model)
    torch_device = resolve_device(device)
    corpus_data = load_corpus(corpus)
    corpus_data.split(split, option="--split")
    result = evaluate_sae(
        sae,
        load_model(model, device=torch_device),
        load_tokenizer(model),
        corpus_data,
        layer=layer,
        split=split,
        context_size=context_size,
        batch_size=batch_size,
        max_tokens=tokens,
        dense_threshold=dense_threshold,
    )
    table = Table(title=f"SAE {path}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("hook", result.hook),
        (f"tokens of split '{split}'", f"{result.n_tokens:,}"),
        ("fraction of variance explained", f"{result.fve:.4f}"),
        ("mean L0", f"{result.l0:.2f}"),
        ("dead latents", f"{result.dead_fraction:.2%}"),
        (f"dense latents (> {result.dense_threshold:g})", f"{result.dense_fraction:.2%}"),
        ("CE loss clean", f"{result.ce_clean:.4f}"),
        ("CE loss with SAE", f"{result.ce_sae:.4f}"),
        ("CE loss zero-ablated", f"{result.ce_zero:.4f}"),
        ("CE loss recovered", f"{result.ce_recovered:.2%}"),
    ]
    for row in rows:
        table.add_row(*row)
    console.print(table)
    if json_out:
        write_json(json_out, {"sae": path, "model": model, **asdict(result)})


def _store(sae, model, corpus, split, layer, tokens, context_size, device):
    from featgeo.activations.store import build_sae_store

    return build_sae_store(
        sae,
        model=_model_for(sae, model),
        corpus=corpus,
        split=split,
        layer=layer,
        context_size=context_size,
        max_tokens=tokens or None,
        device=device,
    )


STORE_TOKENS = typer.Option(262_144, "--store-tokens", help="Tokens of codes to store (0: all).")


@app.command("store")
def store(
    path: str = SAE_PATH,
    model: str = SAE_MODEL,
    layer: int = SAE_LAYER,
    corpus: str = CORPUS,
    split: str = typer.Option("sae_train", help="Corpus split to encode."),
    tokens: int = STORE_TOKENS,
    context_size: int = CONTEXT_SIZE,
    device: str = DEVICE,
) -> None:
    """Encode a split with the SAE once and store the sparse codes (reused when present)."""
    from featgeo.latents.run import live_latents
    from featgeo.sae.saelens_format import load_sae

    sae = load_sae(path)
    built = _store(sae, model, corpus, split, layer, tokens, context_size, device)
    n_live = int(live_latents(built).sum())
    console.print(
        f"activation store {built.folder}: {built.n_tokens:,} tokens, {built.nnz:,} codes "
        f"(L0 {built.nnz / built.n_tokens:.1f}), {n_live:,} of {built.d_sae:,} latents fired",
        soft_wrap=True,
    )


@app.command("cluster")
def cluster(
    path: str = SAE_PATH,
    n_clusters: str = typer.Option("128,256,512,768", help="Comma list of cluster counts."),
    method: str = typer.Option("kmeans", help="kmeans, k-subspaces or spectral."),
    out: str = typer.Option("sae_clusters", "--out", help="Output folder."),
    seed: int = typer.Option(0, help="Clustering seed."),
    model: str = SAE_MODEL,
    layer: int = SAE_LAYER,
    corpus: str = CORPUS,
    split: str = typer.Option("sae_train", help="Split whose codes decide the live latents."),
    tokens: int = STORE_TOKENS,
    context_size: int = CONTEXT_SIZE,
    device: str = DEVICE,
) -> None:
    """Cluster live latents by their L2-normalised decoder directions; write per-cluster metrics."""
    from featgeo.latents.methods import get_cluster_method
    from featgeo.latents.run import check_cluster_out, cluster_sae, parse_n_clusters
    from featgeo.sae.saelens_format import load_sae

    counts = parse_n_clusters(n_clusters)
    get_cluster_method(method)
    check_cluster_out(out, counts)  # before the store is built
    sae = load_sae(path)
    too_many = [n for n in counts if n > sae.cfg.d_sae]
    if too_many:
        raise ValueError(
            f"--n-clusters {max(too_many)} is larger than the SAE's {sae.cfg.d_sae} latents; "
            f"use at most {sae.cfg.d_sae}"
        )
    built = _store(sae, model, corpus, split, layer, tokens, context_size, device)
    results = cluster_sae(sae, built, counts, out, method=method, seed=seed, sae_path=path)
    live = results[0].n_live
    table = Table(title=f"{method} clusters of the {live:,} live latents of {path}")
    columns = ("n_clusters", "sizes min/median/max", "mean decoder_dir_rank", "mean recon error")
    for column in (*columns, "s"):
        table.add_column(column, justify="right")
    table.add_column("output")
    for r in results:
        sizes = sorted(m["n_latents"] for m in r.metrics)
        ranks = [m["decoder_dir_rank"] for m in r.metrics]
        errors = [m["cluster_recon_error"] for m in r.metrics]
        table.add_row(
            str(r.n_clusters)
            if r.n_clusters == r.n_clusters_requested
            else f"{r.n_clusters} (of {r.n_clusters_requested} asked)",
            f"{sizes[0]}/{sizes[len(sizes) // 2]}/{sizes[-1]}",
            f"{sum(ranks) / len(ranks):.2f}",
            f"{sum(errors) / len(errors):.4f}",
            f"{r.seconds:.1f}",
            str(r.folder),
        )
    console.print(table)
