"""``featgeo aanet stage1``: seed 002's Stage 1 on featgeo's batched AANet engine.

Every option also answers to the seed's underscore spelling (``--n_clusters``, ``--save_dir``,
``--aanet_early_stop_patience``, ...), so a ``run_real_data_analysis.sh`` keeps working.
"""

from __future__ import annotations

import typer
from rich.table import Table

from featgeo.cli.executor_options import EXECUTOR, RAY_ADDRESS
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
    executor: str = EXECUTOR,
    ray_address: str = RAY_ADDRESS,
    force: bool = typer.Option(False, "--force", help="Replace a run with other settings."),
) -> None:
    """Train an AANet for every (cluster, k) of every n_clusters; CSV, curves, models, plots."""
    from featgeo.archetypes.config import config_from_options
    from featgeo.archetypes.criteria import DEFAULT_CRITERION
    from featgeo.archetypes.stage1 import Stage1Config, run_stage1
    from featgeo.latents.run import parse_n_clusters

    aanet = config_from_options(
        {"lr": lr, "max_steps": max_steps, "early_stop_patience": early_stop_patience,
         "smoothing_window": loss_smoothing_window, "seed": seed}
    )  # fmt: skip
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
        executor=executor,
        ray_address=ray_address,
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


# -- Stage 2: selection ---------------------------------------------------------------------------
# The selection options, shared by `select` and `stage3` (SPEC §3 defaults).
_CSV_DIR = _opt(..., "csv-dir", help="Stage 1's --save-dir (holding its consolidated CSVs).")
_N_LIST = _opt("512,768", "n-clusters-list", "--n-clusters", help="Comma list of cluster counts.")
_MIN_LATENTS = _opt(2, "min-latents", help="Quality filter: clusters need this many latents.")
_MIN_PCT = _opt(
    20.0, "min-pct-decrease", help="Quality filter: both loss curves fall by this many percent."
)
_MAX_KDIFF = _opt(
    1, "max-k-differential", help="Quality filter: |recon elbow k - arch elbow k| at most this."
)
_MONOTONIC = typer.Option(
    True,
    "--require-monotonic/--no-require-monotonic",
    "--require_monotonic/--no_require_monotonic",
    help="Quality filter: both curves non-increasing up to their elbow.",
)
_SIGMA_A = _opt(1.0, "sigma-a", help="Category A: both strengths above mu + this many sigma.")
_SIGMA_BC = _opt(3.0, "sigma-bc", help="Categories B / C: a strength above mu + this many sigma.")
_MANUAL = _opt(
    None, "manual", help="Clusters selected first, as N:ID (or ID with one n), comma-separated."
)
_REFIT_K = _opt(
    "arch", "refit-k", help="Refit k: arch (archetypal elbow, the seed's), recon, or a k criterion."
)


def quality_filters(min_latents, min_pct, max_kdiff, monotonic):
    """:class:`QualityFilters` from the options (errors name the option, not the field)."""
    from featgeo.archetypes.quality import QualityFilters

    try:
        return QualityFilters(
            min_latents=min_latents,
            min_pct_decrease=min_pct,
            max_k_differential=max_kdiff,
            require_monotonic=monotonic,
        )
    except ValueError as exc:
        name = str(exc).split()[0]
        raise ValueError(str(exc).replace(name, "--" + name.replace("_", "-"), 1)) from None


def _criteria(
    n_clusters, min_latents, min_pct, max_kdiff, monotonic, sigma_a, sigma_bc, manual, refit_k
):
    from featgeo.archetypes.selection import SelectionCriteria, parse_manual
    from featgeo.latents.run import parse_n_clusters

    n_values = tuple(parse_n_clusters(n_clusters))
    criteria = SelectionCriteria(
        filters=quality_filters(min_latents, min_pct, max_kdiff, monotonic),
        sigma_a=sigma_a,
        sigma_bc=sigma_bc,
        manual=parse_manual(manual, n_values),
        refit_k=refit_k,
    )
    return n_values, criteria


@app.command("select")
def select(
    csv_dir: str = _CSV_DIR,
    n_clusters_list: str = _N_LIST,
    min_latents: int = _MIN_LATENTS,
    min_pct_decrease: float = _MIN_PCT,
    max_k_differential: int = _MAX_KDIFF,
    require_monotonic: bool = _MONOTONIC,
    sigma_a: float = _SIGMA_A,
    sigma_bc: float = _SIGMA_BC,
    manual: str = _MANUAL,
    refit_k: str = _REFIT_K,
    out: str = _opt(None, "out", help="Write the selected clusters as CSV here."),
) -> None:
    """Stage 2: the quality filters and categories A/B/C/D of SPEC §3 on Stage 1's CSVs."""
    from featgeo.archetypes.selection import (
        SELECTION_COLUMNS,
        check_selection_out,
        select_clusters,
        selection_cells,
    )
    from featgeo.files import write_csv

    n_values, criteria = _criteria(
        n_clusters_list,
        min_latents,
        min_pct_decrease,
        max_k_differential,
        require_monotonic,
        sigma_a,
        sigma_bc,
        manual,
        refit_k,
    )
    check_selection_out(out)
    selection = select_clusters(csv_dir, n_values, criteria)
    _print_selection(selection)
    if out:
        write_csv(out, selection_cells(selection.rows), SELECTION_COLUMNS)
        console.print(f"Wrote {len(selection.rows)} rows to {out}")


def _print_selection(selection) -> None:
    c = selection.criteria
    for s in selection.per_n:
        removed = ", ".join(f"{name} {count}" for name, count in s.filter_failures.items())
        r, a = s.recon_thresholds, s.arch_thresholds
        console.print(
            f"n={s.n_clusters}: {s.n_clusters_found} clusters, {s.n_passing} pass the filters "
            f"(failing each, a cluster may fail several: {removed}); recon strength mu "
            f"{r['mu']:.3f} sigma {r['sigma']:.3f}, arch strength mu {a['mu']:.3f} sigma "
            f"{a['sigma']:.3f}. A: recon > {r['mu'] + c.sigma_a * r['sigma']:.3f} and arch > "
            f"{a['mu'] + c.sigma_a * a['sigma']:.3f}; B: recon > "
            f"{r['mu'] + c.sigma_bc * r['sigma']:.3f}; C: arch > "
            f"{a['mu'] + c.sigma_bc * a['sigma']:.3f}; D: k_differential 0, recon > "
            f"{r['mu']:.3f} and arch > {a['mu']:.3f}",
            soft_wrap=True,
        )
    table = Table(title=f"{len(selection.rows)} selected clusters")
    for column in (
        "n_clusters",
        "cluster",
        "category",
        "also",
        "refit k",
        "recon strength",
        "arch strength",
        "k diff",
        "latents",
    ):
        table.add_column(column, justify="right")
    for row in selection.rows:
        table.add_row(
            str(row["n_clusters"]),
            str(row["cluster_id"]),
            row["category"],
            " ".join(row["categories"].split()[1:]),
            f"{row['refit_k']} ({row['refit_k_source']})",
            _fmt(row["aanet_recon_loss_elbow_strength"]),
            _fmt(row["aanet_archetypal_loss_elbow_strength"]),
            "" if row["k_differential"] is None else str(row["k_differential"]),
            str(row["n_latents"]),
        )
    console.print(table)


def _fmt(value: float) -> str:
    return "" if value != value else f"{value:.3f}"


# -- Stage 3 --------------------------------------------------------------------------------------
@app.command("stage3")
def stage3(
    csv_dir: str = _CSV_DIR,
    save_dir: str = _opt(
        "outputs/selected_clusters_canonical", "save-dir", help="Output root: n{n}/ per n."
    ),
    n_clusters_list: str = _N_LIST,
    selection: str = _opt(
        None, "selection", help="Use this table of `featgeo aanet select --out` instead."
    ),
    skip_training: bool = typer.Option(
        False, "--skip-training", "--skip_training", help="MODE 2: reuse Stage 1's models."
    ),
    stage1_models_dir: str = _opt(
        None, "stage1-models-dir", help="MODE 2: Stage 1's --save-dir (default: --csv-dir)."
    ),
    collect_vertex_samples: bool = typer.Option(
        True,
        "--collect-vertex-samples/--no-collect-vertex-samples",
        "--collect_vertex_samples/--no_collect_vertex_samples",
        help="Collect text examples near each vertex.",
    ),
    samples_per_vertex: int = _opt(1000, "samples-per-vertex", help="Records kept per vertex."),
    vertex_threshold: float = _opt(
        0.1, "vertex-threshold", help="Near vertex i: ||lambda - e_i|| below this; in (0, sqrt 2]."
    ),
    max_tokens: int = _opt(0, "max-tokens", help="Token budget of the scan (0: the whole store)."),
    vertex_skip_docs: int = _opt(
        0,
        "vertex-skip-docs",
        help="Leave out the store's first this-many documents (the vertex split needs none).",
    ),
    split: str = _opt("vertex", "split", help="Held-out corpus split of the vertex samples."),
    store_tokens: int = _opt(
        0, "store-tokens", help="Tokens of that split's activation store (0: the whole split)."
    ),
    min_latents: int = _MIN_LATENTS,
    min_pct_decrease: float = _MIN_PCT,
    max_k_differential: int = _MAX_KDIFF,
    require_monotonic: bool = _MONOTONIC,
    sigma_a: float = _SIGMA_A,
    sigma_bc: float = _SIGMA_BC,
    manual: str = _MANUAL,
    refit_k: str = _REFIT_K,
    max_steps: int = _opt(
        None, "max-steps", "--aanet_max_steps", help="MODE 1: training steps (default Stage 1's)."
    ),
    early_stop_patience: int = _opt(
        None, "early-stop-patience", "--aanet_early_stop_patience", help="MODE 1 (Stage 1's)."
    ),
    loss_smoothing_window: int = _opt(
        None,
        "loss-smoothing-window",
        "--aanet_loss_smoothing_window",
        help="MODE 1 (default Stage 1's).",
    ),
    lr: float = _opt(None, "lr", "--aanet_lr", help="MODE 1 learning rate (default Stage 1's)."),
    seed: int = _opt(None, "seed", help="MODE 1 seed (default Stage 1's)."),
    models_per_unit: str = _opt("auto", "models-per-unit", help="MODE 1: models trained together."),
    sae: str = _opt(None, "sae", "--sae_path", help="SAE folder (default: Stage 1's)."),
    device: str = _opt("auto", "device", help="auto, cpu or cuda."),
    workers: str = _opt("auto", "workers", help="MODE 1: processes training side by side."),
    executor: str = EXECUTOR,
    ray_address: str = RAY_ADDRESS,
    force: bool = typer.Option(False, "--force", help="Replace a run with other settings."),
) -> None:
    """Stage 3: refit (or reuse) the selected clusters and collect vertex samples in one pass."""
    from featgeo.archetypes.stage3 import Stage3Config, run_stage3
    from featgeo.archetypes.vertices import VertexSettings

    n_values, criteria = _criteria(
        n_clusters_list,
        min_latents,
        min_pct_decrease,
        max_k_differential,
        require_monotonic,
        sigma_a,
        sigma_bc,
        manual,
        refit_k,
    )
    if max_tokens < 0:
        raise ValueError(f"--max-tokens must be >= 0 (0: the whole store), got {max_tokens}")
    vertex = VertexSettings(
        threshold=vertex_threshold,
        samples_per_vertex=samples_per_vertex,
        max_tokens=max_tokens or None,
        skip_docs=vertex_skip_docs,
    )
    training = {
        name: value
        for name, value in (
            ("max_steps", max_steps),
            ("early_stop_patience", early_stop_patience),
            ("smoothing_window", loss_smoothing_window),
            ("lr", lr),
            ("seed", seed),
        )
        if value is not None
    }
    config = Stage3Config(
        n_clusters=n_values,
        criteria=criteria,
        skip_training=skip_training,
        collect_vertex_samples=collect_vertex_samples,
        vertex=vertex,
        split=split,
        store_tokens=store_tokens,
        training=training,
        models_per_unit=_positive_or_auto(models_per_unit, "--models-per-unit"),
    )
    result = run_stage3(
        csv_dir,
        save_dir,
        config,
        selection=selection,
        stage1_models_dir=stage1_models_dir,
        sae=sae,
        device=device,
        workers=_positive_or_auto(workers, "--workers"),
        executor=executor,
        ray_address=ray_address,
        force=force,
    )
    _print_stage3(result)


def _print_stage3(result) -> None:
    from featgeo.archetypes.stage3 import top_trigger_words

    table = Table(title=f"Stage 3 in {result.save_dir}" + (" (reused)" if result.reused else ""))
    for column in (
        "n_clusters",
        "cluster",
        "category",
        "k",
        "tokens scanned",
        "records per vertex",
        "quota met",
    ):
        table.add_column(column, justify="right")
    for row in result.rows:
        stats = row.get("stats")
        table.add_row(
            str(row["n_clusters"]),
            str(row["cluster_id"]),
            row["category"],
            str(row["refit_k"]),
            f"{stats['tokens_scanned']:,}" if stats else "-",
            " ".join(str(v["records"]) for v in stats["vertices"]) if stats else "-",
            ("yes" if stats["quota_met"] else "no") if stats else "-",
        )
    console.print(table)
    shown = next(
        (
            r
            for r in result.rows
            if r.get("stats") and any(v["records"] for v in r["stats"]["vertices"])
        ),
        None,
    )
    if shown is not None:
        samples = next(p for p in shown["files"] if p.name.endswith("_vertex_samples.jsonl"))
        words = top_trigger_words(samples, top=6)
        console.print(
            f"Trigger words per vertex of cluster {shown['cluster_id']} (n_clusters="
            f"{shown['n_clusters']}, category {shown['category']}, k={shown['refit_k']}):"
        )
        for vertex in range(shown["refit_k"]):
            found = ", ".join(f"{w!r} ({c})" for w, c in words.get(vertex, []))
            console.print(f"  vertex {vertex}: {found or '(none found)'}", soft_wrap=True)
    console.print(
        f"Outputs in {result.save_dir}/n{{n}}/, details in {result.save_dir}/stage3.json",
        soft_wrap=True,
    )
