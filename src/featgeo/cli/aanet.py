"""``featgeo aanet stage1``: seed 002's Stage 1 on featgeo's batched AANet engine.

Every option also answers to the seed's underscore spelling (``--n_clusters``, ``--save_dir``,
``--aanet_early_stop_patience``, ...), so a ``run_real_data_analysis.sh`` keeps working.
"""

from __future__ import annotations

import typer
from rich.table import Table

from featgeo.progress import console

app = typer.Typer(help="Archetypal analysis networks of SAE latent clusters (seed 002).")


def _opt(default, name: str, *aliases: str, help: str):
    """An option ``--name`` that also accepts ``--name_with_underscores`` and ``aliases``."""
    spellings = [f"--{name}", f"--{name.replace('-', '_')}", *aliases]
    return typer.Option(default, *dict.fromkeys(spellings), help=help)


@app.command("stage1")
def stage1(
    sae: str = _opt(..., "sae", "--sae_path", help="SAE folder in SAELens format."),
    save_dir: str = _opt(
        "outputs/real_data_analysis_canonical",
        "save-dir",
        "--output_dir",
        help="Output root: clusters_{n}/ per n and stage1.json.",
    ),
    n_clusters: str = _opt(
        "128,256,512,768", "n-clusters", "--n_clusters_list", help="Comma list of cluster counts."
    ),
    clustering: str = _opt(
        "kmeans",
        "clustering",
        "--clustering-method",
        "--clustering_method",
        help="Latent clustering: kmeans, k-subspaces or spectral.",
    ),
    clusters_dir: str = _opt(
        None,
        "clusters-dir",
        help="Reuse the --out of `featgeo sae cluster` (default: cluster into "
        "SAVE_DIR/latent_clusters).",
    ),
    k_min: int = _opt(2, "k-min", "--aanet_k_min", help="Smallest number of archetypes."),
    k_max: int = _opt(8, "k-max", "--aanet_k_max", help="Largest number of archetypes."),
    max_steps: int = _opt(
        3000, "max-steps", "--aanet_max_steps", "--aanet_steps", help="Training steps at most."
    ),
    early_stop_patience: int = _opt(
        250,
        "early-stop-patience",
        "--aanet_early_stop_patience",
        help="Steps without a smoothed improvement before a model stops.",
    ),
    loss_smoothing_window: int = _opt(
        20,
        "loss-smoothing-window",
        "--aanet_loss_smoothing_window",
        help="Early stopping compares means of this many step losses.",
    ),
    lr: float = _opt(0.0025, "lr", "--aanet_lr", help="Adam learning rate."),
    batch_tokens: int = _opt(
        4096, "batch-tokens", help="Store tokens drawn per step (a cluster uses its active ones)."
    ),
    store_tokens: int = _opt(
        262_144, "store-tokens", help="Tokens of the SAE's activation store (0: the whole split)."
    ),
    models_per_unit: str = _opt(
        "auto", "models-per-unit", help="Models trained together (auto: 28 CPU, 4096 CUDA)."
    ),
    curve_every: int = _opt(10, "curve-every", help="Log training curves every this many steps."),
    criterion: str = _opt(
        None, "criterion", help="k criterion of the recommended_k column (default: featgeo's)."
    ),
    model: str = _opt(None, "model", help="Model the SAE reads (default: its metadata)."),
    layer: int = _opt(
        None,
        "layer",
        help="Block L the SAE reads at, replacing the number in its hook_name (needed when the "
        "hook_name has none).",
    ),
    corpus: str = _opt("embedded", "corpus", help="embedded or a corpus path."),
    split: str = _opt("sae_train", "split", help="Corpus split of the activation store."),
    context_size: int = _opt(256, "context-size", help="Tokens per chunk."),
    seed: int = _opt(0, "seed", help="Seed of the clustering and of every model."),
    device: str = _opt("auto", "device", help="auto, cpu or cuda."),
    workers: str = _opt(
        "auto",
        "workers",
        help="Processes training units side by side (auto: one per core on CPU, 1 on CUDA).",
    ),
    force: bool = typer.Option(False, "--force", help="Replace a run with other settings."),
) -> None:
    """Train an AANet for every (cluster, k) of every n_clusters; CSV, curves, models, plots."""
    from featgeo.archetypes.config import AANetConfig
    from featgeo.archetypes.criteria import DEFAULT_CRITERION
    from featgeo.archetypes.stage1 import Stage1Config, run_stage1
    from featgeo.latents.run import parse_n_clusters

    aanet = AANetConfig(
        lr=lr,
        max_steps=max_steps,
        early_stop_patience=early_stop_patience,
        smoothing_window=loss_smoothing_window,
        seed=seed,
    )
    config = Stage1Config(
        n_clusters=tuple(parse_n_clusters(n_clusters)),
        clustering=clustering,
        k_min=k_min,
        k_max=k_max,
        aanet=aanet,
        criterion=DEFAULT_CRITERION if criterion is None else criterion,
        batch_tokens=batch_tokens,
        models_per_unit=_positive_or_auto(models_per_unit, "--models-per-unit"),
        curve_every=curve_every,
        store_tokens=store_tokens,
        model=model,
        layer=layer,
        corpus=corpus,
        split=split,
        context_size=context_size,
    )
    result = run_stage1(
        sae,
        save_dir,
        config,
        clusters_dir=clusters_dir,
        device=device,
        workers=_positive_or_auto(workers, "--workers"),
        force=force,
    )
    _print_summary(result)


def _positive_or_auto(value: str, option: str) -> int | str:
    if value == "auto":
        return value
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise ValueError(f"{option} must be 'auto' or an int >= 1, got '{value}'")
    return number


def _print_summary(result) -> None:
    table = Table(title=f"Stage 1 in {result.save_dir}")
    columns = ("n_clusters", "clusters", "models", "ok / too few / diverged", "pass filters",
               "train s", "models/min", "total s")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="right")
    for r in result.per_n:
        counts, sec = r.status_counts, r.seconds
        training, trained = sec.get("training", 0.0), counts.get("ok", 0)
        statuses = " / ".join(str(counts.get(s, 0)) for s in ("ok", "too_few_points", "diverged"))
        table.add_row(
            f"{r.n_clusters}" + (" (reused)" if r.reused else ""),
            str(r.n_clusters_found),
            str(r.n_models),
            statuses,
            str(r.n_passing),
            f"{training:.1f}",
            f"{trained / training * 60:.0f}" if trained and training > 0 else "-",
            f"{sum(sec.values()):.1f}",
        )
    console.print(table)
    settings, aanet = result.info["settings"], result.info["settings"]["aanet"]
    console.print(
        f"k = {settings['k_min']}..{settings['k_max']}, at most {aanet['max_steps']} steps "
        f"(early stop after {aanet['early_stop_patience']}), {settings['batch_tokens']} tokens "
        f"drawn per step from a store of {result.info['store']['n_tokens']:,}; device "
        f"{result.info['device']}. Outputs in {result.save_dir}/clusters_{{n}}/, details in "
        f"{result.save_dir}/stage1.json",
        soft_wrap=True,
    )
