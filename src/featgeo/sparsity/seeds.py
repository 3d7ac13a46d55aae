"""Multi-seed clustering analysis (seed 000's ``multi_seed_clustering_analysis.py``).

For every seed s: draw a reference feature as the original script does (``np.random.seed(s);
np.random.randint(0, N)``, through a private ``RandomState``; ``rng="generator"`` uses
``numpy.random.default_rng(s).integers(N)``), take its ``n_similar`` nearest features by Hamming
distance, cluster the analysed set with k-means (``random_state=s``) for every k (a k above the
number of distinct points is reduced to it and recorded), and draw four figures per (seed, k).
Then summarise the metrics across seeds per k (mean ± std) in two figures and
``metrics_summary.json``::

    {output_dir}/seed_{s}/k_{k}/seed{s}_k{k}_feat{N}_{spy_plot,statistics,tsne,distance_heatmap}.png
    {output_dir}/summary/{summary_separation_ratios.png, summary_distances.png,
                          metrics_summary.json}

The tree is built in a hidden staging folder and swapped into place at the end, so a crash
never leaves a half-written tree. The staging folder survives a failure: the next run with the
same settings and matrix reuses every (seed, k) whose figures and metrics are already there.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from featgeo.files import PACKED_MASK_SUFFIX, check_output_dir, read_json, staging_dir, write_json
from featgeo.sparsity.analysis import ClusterOn, analyze_feature
from featgeo.sparsity.executions import LoadedMatrix, aggregate_metrics, load_features
from featgeo.sparsity.matrices import SUPPORTED_SUFFIXES, Axis, matrix_stem
from featgeo.sparsity.references import RNG_SCHEMES, RngScheme, reference_for_seed, scheme_record

log = logging.getLogger(__name__)

DEFAULT_OUTPUT_ROOT = Path("results/metrics/multi_seed_clustering")
PLOT_KINDS = ("spy_plot", "statistics", "tsne", "distance_heatmap")
SUMMARY_FILES = ("summary_separation_ratios.png", "summary_distances.png", "metrics_summary.json")
_RESUME = ".resume"
_COMPONENT_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
"""Per-(seed, k) metrics kept in the staging folder while the tree is built; removed before the
finished tree is swapped into place, so the output holds exactly seed 000's files."""


@dataclass(frozen=True)
class SeedsConfig:
    """Settings of one multi-seed clustering run (``featgeo hamming seeds``)."""

    method: str
    """Pruning method folder under ``matrices_dir`` (one of ``featgeo.pruning.PRUNERS``)."""
    component: str
    """Linear component, e.g. ``mlp.down_proj`` (one of ``featgeo.models.COMPONENTS``)."""
    layer: int = 1
    """Decoder layer index of the exported matrix."""
    seeds: int = 10
    """Number of seeds: 0, 1, ..., seeds - 1."""
    n_similar: int = 128
    """Nearest features (by Hamming) analysed with each reference feature."""
    k_values: tuple[int, ...] = (4, 8, 16)
    """k-means cluster counts (sorted, without duplicates)."""
    matrices_dir: str = "clustering_characterization"
    """Export root of ``featgeo prune``: ``{matrices_dir}/{method}/layer{L}-{component}.pt``
    (or the bit-packed mask ``.mask.safetensors``)."""
    output_dir: str | None = None
    """Where the tree goes [default: results/metrics/multi_seed_clustering/{method}/{component}]."""
    axis: Axis = "columns"
    """Features are the matrix's columns (SPEC §2) or rows."""
    cluster_on: ClusterOn = "masks"
    """k-means on the binary masks or on the weights of the analysed features."""
    block_size: int = 8
    """Features per block for MMM block coherence."""
    dpi: int = 100
    """Resolution of the PNG figures."""
    rng: RngScheme = "legacy"
    """Reference draw: ``legacy`` as the original script (``np.random.seed(s); randint(0, N)``)
    or ``generator`` (``default_rng(s).integers(N)``); k-means uses ``random_state=s`` in both."""

    def __post_init__(self) -> None:
        from featgeo.pruning import PRUNERS

        if self.method not in PRUNERS:
            raise ValueError(
                f"--method '{self.method}' is not a pruning method; choose from "
                f"{', '.join(sorted(PRUNERS))}"
            )
        # Components are discovered per model (Phi-3's qkv_proj, GPT-NeoX's query_key_value),
        # so any dotted module name is accepted; the matrix file decides whether it exists.
        if not isinstance(self.component, str) or not _COMPONENT_NAME.fullmatch(self.component):
            raise ValueError(
                f"--component must be a module name like 'mlp.down_proj', got '{self.component}'"
            )
        for name in ("layer", "seeds", "n_similar", "block_size", "dpi"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{_flag(name)} must be an integer, got {value!r}")
        if self.layer < 0:
            raise ValueError(f"--layer must be >= 0, got {self.layer}")
        if self.seeds < 1:
            raise ValueError(f"--seeds must be >= 1, got {self.seeds}")
        if self.n_similar < 1:
            raise ValueError(f"--n-similar must be >= 1, got {self.n_similar}")
        if self.block_size < 1:
            raise ValueError(f"--block-size must be >= 1, got {self.block_size}")
        if self.dpi < 10:
            raise ValueError(f"dpi must be >= 10, got {self.dpi}")
        if self.axis not in ("columns", "rows"):
            raise ValueError(f"--axis must be 'columns' or 'rows', got '{self.axis}'")
        if self.cluster_on not in ("masks", "weights"):
            raise ValueError(f"--cluster-on must be 'masks' or 'weights', got '{self.cluster_on}'")
        if self.rng not in RNG_SCHEMES:
            raise ValueError(
                f"--rng must be one of {', '.join(RNG_SCHEMES)}, got '{self.rng}'; 'legacy' "
                "reproduces the original script's draws"
            )
        object.__setattr__(self, "k_values", _check_k_values(self.k_values, self.n_similar))

    @property
    def matrix_path(self) -> Path:
        """The exported matrix: the first of ``.pt``, ``.pth``, ``.safetensors``, ``.npy``,
        ``.mask.safetensors`` that exists (weights before a packed mask: an export of both
        gives the same masks, and only the weights serve ``--cluster-on weights``); ``.pt``
        when none does."""
        stem = Path(self.matrices_dir) / self.method / f"layer{self.layer}-{self.component}"
        for suffix in (*SUPPORTED_SUFFIXES, PACKED_MASK_SUFFIX):
            candidate = stem.with_name(stem.name + suffix)
            if candidate.is_file():
                return candidate
        return stem.with_name(stem.name + ".pt")

    @property
    def out_dir(self) -> Path:
        if self.output_dir is not None:
            return Path(self.output_dir)
        return DEFAULT_OUTPUT_ROOT / self.method / self.component

    def to_dict(self) -> dict:
        """Every setting that changes the results (not where they are written)."""
        out = asdict(self)
        out.pop("output_dir")
        out["k_values"] = list(self.k_values)
        return out


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_k_values(k_values, n_similar: int) -> tuple[int, ...]:
    values = list(k_values) if not isinstance(k_values, (int, str)) else [k_values]
    if not values:
        raise ValueError("--k-values is empty; pass at least one k, e.g. --k-values 4,8,16")
    for k in values:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"--k-values must be integers, got {k!r}")
        if k < 2:
            raise ValueError(f"--k-values {k} is too small: separation needs at least 2 clusters")
        if k > n_similar + 1:
            raise ValueError(
                f"--k-values {k} is larger than the {n_similar + 1} analysed features (the "
                f"reference and its {n_similar} neighbours); use k <= {n_similar + 1} or raise "
                "--n-similar"
            )
    return tuple(sorted({int(k) for k in values}))


@dataclass(frozen=True)
class SeedsResult:
    """What ``run_seeds`` produced."""

    output_dir: Path
    config: SeedsConfig
    summary: dict
    """The content of ``summary/metrics_summary.json``."""
    files: list[str]
    """Every file of the tree, relative to ``output_dir``, sorted."""
    computed: list[tuple[int, int]] = field(default_factory=list)
    """(seed, k) pairs analysed by this call."""
    reused: list[tuple[int, int]] = field(default_factory=list)
    """(seed, k) pairs taken from an interrupted earlier run."""

    @property
    def feature_indices(self) -> dict[int, int]:
        """Reference feature of every seed."""
        return {int(s): v["feature_idx"] for s, v in self.summary["per_seed"].items()}


def reference_feature(n_features_total: int, seed: int, rng: RngScheme = "legacy") -> int:
    """The reference feature of ``seed``: legacy ``RandomState(seed).randint(0, N)`` (as
    ``np.random.seed(seed); np.random.randint(0, N)``), generator
    ``default_rng(seed).integers(N)``."""
    return reference_for_seed(n_features_total, seed, rng)


def plot_paths(seed: int, k: int, feature_idx: int) -> dict[str, str]:
    """{kind: path relative to the output folder} of the four figures of one (seed, k)."""
    folder = f"seed_{seed}/k_{k}"
    return {kind: f"{folder}/seed{seed}_k{k}_feat{feature_idx}_{kind}.png" for kind in PLOT_KINDS}


def run_seeds(
    matrices_dir: str | os.PathLike = "clustering_characterization",
    *,
    method: str,
    layer: int = 1,
    component: str,
    seeds: int = 10,
    n_similar: int = 128,
    k_values: tuple[int, ...] | list[int] = (4, 8, 16),
    output_dir: str | os.PathLike | None = None,
    axis: Axis = "columns",
    cluster_on: ClusterOn = "masks",
    block_size: int = 8,
    dpi: int = 100,
    progress: bool = True,
    rng: RngScheme = "legacy",
) -> SeedsResult:
    """Run the multi-seed clustering analysis of ``{matrices_dir}/{method}/layer{layer}-
    {component}.pt`` (or ``.mask.safetensors``, see ``SeedsConfig.matrix_path``) and write seed
    000's output tree (see the module docstring).

    Every input is checked before anything is written. Deterministic for a given set of seeds:
    the same inputs give a byte-identical ``metrics_summary.json``.
    """
    config = SeedsConfig(
        method=method,
        component=component,
        layer=layer,
        seeds=seeds,
        n_similar=n_similar,
        k_values=tuple(k_values) if not isinstance(k_values, (int, str)) else k_values,
        matrices_dir=str(matrices_dir),
        output_dir=None if output_dir is None else str(output_dir),
        axis=axis,
        cluster_on=cluster_on,
        block_size=block_size,
        dpi=dpi,
        rng=rng,
    )
    loaded = _load(config)
    out = config.out_dir
    _check_output_dir(out)
    total = loaded.info.n_features_total
    references = {s: reference_feature(total, s, config.rng) for s in range(seeds)}
    run_key = {"config": config.to_dict(), "mask_sha256": _mask_digest(loaded.masks)}

    computed: list[tuple[int, int]] = []
    reused: list[tuple[int, int]] = []
    with staging_dir(out, keep_on_error=True) as stage:
        _prepare_stage(stage, run_key)
        records = _analyse_all(stage, loaded, config, references, computed, reused, progress)
        summary = _write_summary(stage, loaded, config, references, records)
        shutil.rmtree(stage / _RESUME)
        files = sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file())
    return SeedsResult(out, config, summary, files, computed, reused)


def _load(config: SeedsConfig) -> LoadedMatrix:
    path = config.matrix_path
    matrices_dir = Path(config.matrices_dir)
    if matrices_dir.exists() and not matrices_dir.is_dir():
        raise NotADirectoryError(
            f"--matrices-dir '{matrices_dir}' is a file, not a folder; pass the folder "
            "`featgeo prune --out` exported to (it holds {method}/layer{L}-{component}.pt)"
        )
    if path.parent.exists() and not path.parent.is_dir():
        raise NotADirectoryError(
            f"'{path.parent}' is a file, not the folder of --method {config.method}'s "
            "matrices; pass the folder `featgeo prune --out` exported to as --matrices-dir"
        )
    if path.is_dir():
        raise IsADirectoryError(
            f"matrix file '{path}' is a folder; pass the folder `featgeo prune --out` "
            "exported to as --matrices-dir"
        )
    if not path.is_file():
        prefix = f"layer{config.layer}-"
        files = (p for p in path.parent.glob(f"{prefix}*") if p.is_file())
        exported = sorted({matrix_stem(p).removeprefix(prefix) for p in files})
        hint = f" (layer {config.layer} there has: {', '.join(exported)})" if exported else ""
        raise FileNotFoundError(
            f"matrix file '{path}' does not exist{hint}; export it first with `featgeo prune "
            f"--method {config.method} --layers {config.layer} --components {config.component} "
            f"--out {config.matrices_dir}` or pass --matrices-dir"
        )
    loaded = load_features(path, axis=config.axis, with_weights=config.cluster_on == "weights")
    total = loaded.info.n_features_total
    if config.n_similar > total - 1:
        raise ValueError(
            f"--n-similar {config.n_similar} is impossible: '{path}' has {total} features "
            f"({config.axis}), so only {total - 1} others; pass --n-similar {total - 1} or less"
        )
    return loaded


def _check_output_dir(out: Path) -> None:
    """Refuse to replace a folder that is not a finished tree of this command."""
    check_output_dir(
        out, "--output-dir", signature=("summary/metrics_summary.json",),
        contents=("summary", "seed_*"),
    )  # fmt: skip


def _mask_digest(masks: np.ndarray) -> str:
    packed = np.packbits(np.ascontiguousarray(masks), axis=1)
    return hashlib.sha256(str(masks.shape).encode() + packed.tobytes()).hexdigest()


def _prepare_stage(stage: Path, run_key: dict) -> None:
    """Keep an interrupted run's work only if it used the same settings and matrix."""
    key_path = stage / _RESUME / "run.json"
    if key_path.is_file() and read_json(key_path) == run_key:
        done = len(list((stage / _RESUME).glob("seed_*_k_*.json")))
        if done:
            log.info("resuming an interrupted run in %s (%d (seed, k) done)", stage, done)
        return
    if any(stage.iterdir()):
        log.info("discarding an interrupted run in %s made with other settings", stage)
        for child in stage.iterdir():
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()
    write_json(key_path, run_key)


def _record_path(stage: Path, seed: int, k: int) -> Path:
    return stage / _RESUME / f"seed_{seed}_k_{k}.json"


def _is_done(stage: Path, seed: int, k: int, feature_idx: int) -> bool:
    paths = plot_paths(seed, k, feature_idx).values()
    return _record_path(stage, seed, k).is_file() and all((stage / p).is_file() for p in paths)


def _analyse_all(
    stage: Path,
    loaded: LoadedMatrix,
    config: SeedsConfig,
    references: dict[int, int],
    computed: list[tuple[int, int]],
    reused: list[tuple[int, int]],
    progress: bool,
) -> dict[int, dict[int, dict]]:
    """{seed: {k: metrics}} for every (seed, k), analysing only those not already staged."""
    from featgeo.progress import progress_bar

    records: dict[int, dict[int, dict]] = {s: {} for s in references}
    jobs = [(s, k) for s in references for k in config.k_values]
    embeddings: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # seed -> (analysed, t-SNE)
    with progress_bar(transient=not progress) as bar:
        task = bar.add_task(
            f"seeds x k on {loaded.info.name}", total=len(jobs), status="", visible=progress
        )
        for seed, k in jobs:
            feature_idx = references[seed]
            bar.update(task, status=f"seed {seed}, k={k}, feature {feature_idx}")
            if _is_done(stage, seed, k, feature_idx):
                reused.append((seed, k))
            else:
                _analyse_one(stage, loaded, config, seed, k, feature_idx, embeddings)
                computed.append((seed, k))
            # Read back what was written, so fresh and resumed runs summarise identical values.
            records[seed][k] = read_json(_record_path(stage, seed, k))
            bar.advance(task)
        bar.update(task, status="done")
    return records


def _analyse_one(
    stage: Path,
    loaded: LoadedMatrix,
    config: SeedsConfig,
    seed: int,
    k: int,
    feature_idx: int,
    embeddings: dict[int, tuple[np.ndarray, np.ndarray]] | None = None,
) -> None:
    """Analyse one (seed, k), write its four figures, then its metrics (the completion mark).

    ``embeddings`` keeps each seed's t-SNE for its other k values: the embedding depends on the
    analysed masks and ``random_state=seed`` only, not on k (the labels just colour it), and
    t-SNE was about half the time of a (seed, k)."""
    from featgeo.reports import plots
    from featgeo.reports.figures import save_figure

    analysis = analyze_feature(
        loaded.masks,
        feature_idx,
        n_features=config.n_similar,
        n_clusters=k,
        seed=seed,
        cluster_on=config.cluster_on,
        weights=loaded.weights,
        block_size=config.block_size,
        k_option="--k-values",
    )
    masks = loaded.masks[analysis.analysed]  # [n_similar + 1, D], reference first
    labels = analysis.labels
    cached = (embeddings or {}).get(seed)
    if cached is not None and np.array_equal(cached[0], analysis.analysed):
        embedding = cached[1]
    else:
        embedding = plots.tsne_embedding(masks, random_state=seed)  # [n_similar + 1, 2]
        if embeddings is not None:
            embeddings[seed] = (analysis.analysed, embedding)
    title = (
        f"{config.method} layer {config.layer} {config.component}: seed {seed}, k={k}, "
        f"feature {feature_idx}"
    )
    metrics = analysis.metrics()
    summary = {
        "centroid separation": metrics["centroid_separation_ratio"],
        "Hamming separation": metrics["hamming_separation_ratio"],
        "MMM block coherence": metrics["mmm_block_coherence"],
    }
    figures = {
        "spy_plot": lambda: plots.spy_plot(
            masks, labels, feature_ids=analysis.analysed, title=title
        ),
        "statistics": lambda: plots.cluster_statistics_plot(
            labels,
            analysis.hamming.within_per_cluster,
            mean_between=analysis.hamming.mean_between_hamming,
            summary=summary,
            title=title,
        ),
        "tsne": lambda: plots.tsne_plot(
            masks, labels, random_state=seed, embedding=embedding, title=title
        ),
        "distance_heatmap": lambda: plots.distance_heatmap(
            analysis.distance_matrix / analysis.d,
            labels,
            analysis.hamming.between_matrix,
            title=title,
        ),
    }
    for kind, path in plot_paths(seed, k, feature_idx).items():
        save_figure(figures[kind](), stage / path, dpi=config.dpi)
    metrics["between_hamming_matrix"] = analysis.hamming.between_matrix
    metrics["labels"] = labels.tolist()
    record = {"analysed_features": analysis.analysed.tolist(), "metrics": metrics}
    write_json(_record_path(stage, seed, k), record)


def _write_summary(
    stage: Path,
    loaded: LoadedMatrix,
    config: SeedsConfig,
    references: dict[int, int],
    records: dict[int, dict[int, dict]],
) -> dict:
    from featgeo import __version__
    from featgeo.reports import plots
    from featgeo.reports.figures import save_figure

    per_k = {k: [records[s][k]["metrics"] for s in references] for k in config.k_values}
    matrix = loaded.info.to_dict()
    matrix.update(method=config.method, layer=config.layer, component=config.component)
    summary = {
        "featgeo_version": __version__,
        "config": {
            **config.to_dict(),
            **scheme_record(config.rng, per_seed=True),
            "kmeans": "sklearn KMeans(n_init=10, algorithm='lloyd', random_state=s); a k above "
            "the number of distinct points is reduced to it (n_clusters_requested, n_clusters)",
            "std": "population (ddof=0), over seeds",
        },
        "matrix": matrix,
        "per_seed": {
            str(s): {
                "feature_idx": references[s],
                # reference first, then its neighbours; the same for every k of a seed
                "analysed_features": records[s][config.k_values[0]]["analysed_features"],
                "per_k": {str(k): records[s][k]["metrics"] for k in config.k_values},
            }
            for s in references
        },
        "per_k": {str(k): aggregate_metrics(per_k[k]) for k in config.k_values},
    }
    folder = stage / "summary"
    name = f"{config.method} layer {config.layer} {config.component}, {config.seeds} seeds"
    save_figure(
        plots.summary_separation_ratios(per_k, title=f"separation ratios: {name}"),
        folder / "summary_separation_ratios.png",
        dpi=config.dpi,
    )
    save_figure(
        plots.summary_distances(per_k, title=f"within / between distances: {name}"),
        folder / "summary_distances.png",
        dpi=config.dpi,
    )
    write_json(folder / "metrics_summary.json", summary)
    return summary


def per_k_records(summary: dict) -> dict[int, list[dict]]:
    """{k: [metrics of each seed]} from a loaded ``metrics_summary.json`` (for re-plotting)."""
    out: dict[int, list[dict]] = {}
    for seed in summary["per_seed"].values():
        for k, metrics in seed["per_k"].items():
            out.setdefault(int(k), []).append(metrics)
    return dict(sorted(out.items()))
