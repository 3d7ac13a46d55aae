"""Single and multi-execution Hamming cluster analyses of one pruned matrix (SPEC §2; seed 000's
``hamming_cluster_analysis.py`` and ``multi_execution_hamming_analysis.py``).

``run_single`` analyses one reference feature (given, or drawn from the seed); ``run_multi``
draws ``n_executions`` reference features and aggregates every scalar metric as mean ± std.
By default features and k-means seeds are drawn as the original scripts draw them, so the same
``--seed`` analyses the same features (``rng="legacy"``; see :mod:`featgeo.sparsity.references`).
Every input is validated before any analysis runs, so a bad flag fails fast and nothing is
written.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from featgeo.sparsity.analysis import ClusterOn, FeatureAnalysis, analyze_feature
from featgeo.sparsity.matrices import Axis, feature_masks, load_matrix, matrix_stem, sparsity
from featgeo.sparsity.metrics import SEPARATION_BANDS, separation_band
from featgeo.sparsity.references import (
    RngScheme,
    check_rng,
    kmeans_random_state,
    reference_for_seed,
    scheme_record,
)
from featgeo.sparsity.references import draw_references as _draw_references

# {method}/layer{L}-{component}.pt (SPEC §1) or .mask.safetensors, matched on matrix_stem
_EXPORT_NAME = re.compile(r"^layer(\d+)-(.+)$")

CONFIG_KEYS = (
    "feature_idx",
    "n_features",
    "n_clusters",
    "n_clusters_requested",
    "n_distinct_points",
    "seed",
    "kmeans_random_state",
    "cluster_on",
    "d",
    "block_size",
)
"""Keys of ``FeatureAnalysis.metrics()`` that are settings, not measurements."""


@dataclass(frozen=True)
class MatrixInfo:
    """Where a matrix came from and how it is read."""

    path: str
    """The path as given."""
    name: str
    """File stem, e.g. ``layer1-mlp.down_proj`` (``.pt`` or ``.mask.safetensors`` alike)."""
    shape: tuple[int, int]
    """Stored shape (nn.Linear layout: out x in)."""
    sparsity: float
    """Fraction of exact zeros."""
    axis: Axis
    n_features_total: int
    """Number of features (columns for ``axis="columns"``)."""
    d: int
    """Length of each feature (positions compared by Hamming)."""
    method: str | None
    """Pruning method parsed from ``{method}/layer{L}-{component}.pt``, else None."""
    layer: int | None
    component: str | None

    def to_dict(self) -> dict:
        out = asdict(self)
        out["shape"] = list(self.shape)
        return out


@dataclass(frozen=True)
class LoadedMatrix:
    info: MatrixInfo
    masks: np.ndarray  # [N, D] bool, feature-major
    weights: np.ndarray | None  # [N, D] float64, only for cluster_on="weights"


@dataclass(frozen=True)
class SingleResult:
    """One analysis of one reference feature of one matrix."""

    matrix: MatrixInfo
    analysis: FeatureAnalysis
    feature_drawn: bool
    """True when the reference feature was drawn with the seeded RNG (no ``feature_idx``)."""
    rng: RngScheme = "legacy"
    """How the reference feature (when drawn) and the k-means seed were chosen."""


@dataclass(frozen=True)
class MultiResult:
    """``n_executions`` analyses of randomly drawn reference features."""

    matrix: MatrixInfo
    config: dict
    """Every parameter of the run (n_executions, n_features, n_clusters, seed, ...)."""
    analyses: list[FeatureAnalysis]

    @property
    def feature_indices(self) -> list[int]:
        return [a.feature_idx for a in self.analyses]

    def aggregate(self) -> dict[str, dict]:
        return aggregate_metrics([a.metrics() for a in self.analyses])


def parse_export_path(path: str | os.PathLike) -> tuple[str | None, int | None, str | None]:
    """``.../{method}/layer{L}-{component}.pt`` (or ``.mask.safetensors``, any matrix suffix)
    -> (method, L, component); Nones otherwise."""
    path = Path(path)
    match = _EXPORT_NAME.match(matrix_stem(path))
    if match is None:
        return None, None, None
    method = path.absolute().parent.name or None
    return method, int(match.group(1)), match.group(2)


def load_features(
    matrix_path: str | os.PathLike, *, axis: Axis = "columns", with_weights: bool = False
) -> LoadedMatrix:
    """Load and validate a matrix (weights or a packed mask) and turn it into feature masks
    ([N, D] bool); ``with_weights`` also returns the weights [N, D] float64 and refuses a
    packed mask, which holds none (``--cluster-on weights``).

    A matrix with almost no zeros emits ``DenseMatrixWarning`` and is still returned.
    """
    if axis not in ("columns", "rows"):
        raise ValueError(f"--axis must be 'columns' or 'rows', got '{axis}'")
    needs = "--cluster-on weights" if with_weights else None
    matrix = load_matrix(matrix_path, values_needed_by=needs)
    masks = feature_masks(matrix, axis, name=str(matrix_path))
    weights = None
    if with_weights:
        dense = matrix.double().cpu().numpy()  # [rows, cols]
        weights = np.ascontiguousarray(dense.T if axis == "columns" else dense)  # [N, D]
    method, layer, component = parse_export_path(matrix_path)
    info = MatrixInfo(
        path=str(matrix_path),
        name=matrix_stem(matrix_path),
        shape=(int(matrix.shape[0]), int(matrix.shape[1])),
        sparsity=sparsity(matrix),
        axis=axis,
        n_features_total=int(masks.shape[0]),
        d=int(masks.shape[1]),
        method=method,
        layer=layer,
        component=component,
    )
    return LoadedMatrix(info, masks, weights)


def _check_choices(axis: str, cluster_on: str) -> None:
    if axis not in ("columns", "rows"):
        raise ValueError(f"--axis must be 'columns' or 'rows', got '{axis}'")
    if cluster_on not in ("masks", "weights"):
        raise ValueError(f"--cluster-on must be 'masks' or 'weights', got '{cluster_on}'")


def _check_sizes(n_features: int, n_clusters: int, block_size: int) -> None:
    """Checks that need no matrix (run before loading it)."""
    if n_features < 1:
        raise ValueError(f"--n-features must be >= 1, got {n_features}")
    if n_clusters < 1:
        raise ValueError(f"--n-clusters must be >= 1, got {n_clusters}")
    if block_size < 1:
        raise ValueError(f"--block-size must be >= 1, got {block_size}")
    if n_clusters > n_features + 1:
        raise ValueError(
            f"--n-clusters {n_clusters} is larger than the {n_features + 1} analysed features "
            f"(the reference and its {n_features} neighbours); lower --n-clusters to at most "
            f"{n_features + 1} or raise --n-features"
        )


def _check_against_matrix(info: MatrixInfo, n_features: int) -> None:
    total = info.n_features_total
    if n_features > total - 1:
        raise ValueError(
            f"--n-features {n_features} is impossible: this matrix has {total} features "
            f"({info.axis}), so only {total - 1} others; pass --n-features {total - 1} or less"
        )


def _check_feature_idx(feature_idx: int, info: MatrixInfo) -> None:
    total = info.n_features_total
    if not 0 <= feature_idx < total:
        raise ValueError(
            f"--feature-idx {feature_idx} is out of range; this matrix has {total} features "
            f"({info.axis}), so pass 0 <= --feature-idx <= {total - 1}"
        )


def run_single(
    matrix_path: str | os.PathLike,
    *,
    feature_idx: int | None = None,
    n_features: int = 128,
    n_clusters: int = 8,
    seed: int = 42,
    axis: Axis = "columns",
    cluster_on: ClusterOn = "masks",
    block_size: int = 8,
    rng: RngScheme = "legacy",
) -> SingleResult:
    """Analyse one reference feature of the matrix at ``matrix_path``.

    The reference is ``feature_idx`` or, when None, drawn from ``seed``: ``rng="legacy"``
    (default) as ``hamming_cluster_analysis.py`` does, ``np.random.seed(seed);
    np.random.randint(0, N)`` (seed 42, N = 1536 gives 1126); ``rng="generator"``:
    ``default_rng(seed).integers(N)``. Its ``n_features`` nearest features by Hamming (ties to
    the lower index) form the analysed set, clustered with k-means (``n_clusters``,
    ``random_state=seed``) on masks or weights.
    """
    _check_choices(axis, cluster_on)
    check_rng(rng)
    _check_sizes(n_features, n_clusters, block_size)
    loaded = load_features(matrix_path, axis=axis, with_weights=cluster_on == "weights")
    _check_against_matrix(loaded.info, n_features)
    drawn = feature_idx is None
    if drawn:
        feature_idx = reference_for_seed(loaded.info.n_features_total, seed, rng)
    _check_feature_idx(feature_idx, loaded.info)
    analysis = analyze_feature(
        loaded.masks,
        feature_idx,
        n_features=n_features,
        n_clusters=n_clusters,
        seed=kmeans_random_state(seed, 0, rng),
        cluster_on=cluster_on,
        weights=loaded.weights,
        block_size=block_size,
    )
    return SingleResult(loaded.info, analysis, drawn, rng)


def draw_references(
    n_total: int, n_executions: int, seed: int, rng: RngScheme = "legacy"
) -> list[int]:
    """Reference features of the executions (see :func:`featgeo.sparsity.references.
    draw_references`): legacy with replacement, generator without."""
    return _draw_references(n_total, n_executions, seed, rng)


def run_multi(
    matrix_path: str | os.PathLike,
    *,
    n_executions: int = 10,
    n_features: int = 128,
    n_clusters: int = 8,
    seed: int = 42,
    axis: Axis = "columns",
    cluster_on: ClusterOn = "masks",
    block_size: int = 8,
    progress: bool = True,
    rng: RngScheme = "legacy",
) -> MultiResult:
    """Run the single analysis on ``n_executions`` reference features.

    ``rng="legacy"`` (default, as ``multi_execution_hamming_analysis.py``): one
    ``np.random.seed(seed)``, then ``np.random.randint(0, N)`` per execution (with replacement),
    and execution i runs k-means with ``random_state = seed + i``. ``rng="generator"``:
    ``default_rng(seed)`` draws distinct features and every k-means uses ``random_state=seed``.
    """
    _check_choices(axis, cluster_on)
    check_rng(rng)
    _check_sizes(n_features, n_clusters, block_size)
    if n_executions < 1:
        raise ValueError(f"--n-executions must be >= 1, got {n_executions}")
    loaded = load_features(matrix_path, axis=axis, with_weights=cluster_on == "weights")
    info = loaded.info
    _check_against_matrix(info, n_features)
    references = draw_references(info.n_features_total, n_executions, seed, rng)
    config = {
        "n_executions": n_executions,
        "n_features": n_features,
        "n_clusters": n_clusters,
        "seed": seed,
        "axis": axis,
        "cluster_on": cluster_on,
        "block_size": block_size,
        **scheme_record(rng),
        "kmeans_random_states": [kmeans_random_state(seed, i, rng) for i in range(n_executions)],
    }
    analyses = _analyse_all(loaded, references, config, progress=progress)
    return MultiResult(info, config, analyses)


def _analyse_all(
    loaded: LoadedMatrix, references: list[int], config: dict, *, progress: bool
) -> list[FeatureAnalysis]:
    states = config["kmeans_random_states"]

    def one(execution: int) -> FeatureAnalysis:
        return analyze_feature(
            loaded.masks,
            references[execution],
            n_features=config["n_features"],
            n_clusters=config["n_clusters"],
            seed=states[execution],
            cluster_on=config["cluster_on"],
            weights=loaded.weights,
            block_size=config["block_size"],
        )

    if not progress:
        return [one(i) for i in range(len(references))]
    from featgeo.progress import progress_bar

    analyses = []
    with progress_bar() as bar:
        task = bar.add_task(f"executions on {loaded.info.name}", total=len(references), status="")
        for execution, feature_idx in enumerate(references):
            bar.update(task, status=f"feature {feature_idx}")
            analyses.append(one(execution))
            bar.advance(task)
        bar.update(task, status="done")
    return analyses


def aggregate_metrics(rows: list[dict]) -> dict[str, dict]:
    """Mean ± std (population, ``ddof=0``) of every numeric metric over executions, keys sorted.

    An undefined value (None, e.g. a separation ratio whose within distance is 0; or a
    non-finite number from an older JSON) is left out of mean and std and counted in
    ``n_undefined``; ``undefined_reasons`` maps each reason (from the ``{metric}_undefined``
    field) to how many executions gave it. With every value undefined, mean and std are None.
    """
    out: dict[str, dict] = {}
    keys = sorted({key for row in rows for key in row})
    for key in keys:
        values = [row.get(key) for row in rows]
        skip = key.endswith(("_undefined", "_band"))
        if key in CONFIG_KEYS or skip or not _numeric(values):
            continue
        array = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        finite = array[np.isfinite(array)]
        entry: dict = {
            "mean": float(finite.mean()) if finite.size else None,
            "std": float(finite.std()) if finite.size else None,
            "n_undefined": int(array.size - finite.size),
        }
        if entry["n_undefined"]:
            reasons: dict[str, int] = {}
            for row, value in zip(rows, array, strict=True):
                if not np.isfinite(value):
                    why = row.get(f"{key}_undefined") or "not a finite number"
                    reasons[why] = reasons.get(why, 0) + 1
            entry["undefined_reasons"] = reasons
        out[key] = entry
    return out


def _numeric(values: list) -> bool:
    """True when every value is a number or None (an undefined number)."""
    return all(
        v is None or (isinstance(v, (int, float, np.number)) and not isinstance(v, bool))
        for v in values
    )


def band_counts(analyses: list[FeatureAnalysis]) -> dict[str, int]:
    """How many executions fall in each centroid separation band (excellent ... poor), plus
    ``undefined`` for executions whose ratio is undefined."""
    counts = {band: 0 for _, band in SEPARATION_BANDS}
    counts["poor"] = 0
    counts["undefined"] = 0
    for analysis in analyses:
        counts[analysis.centroid.centroid_separation_band or "undefined"] += 1
    return counts


def _version() -> str:
    from featgeo import __version__

    return __version__


def single_to_json(result: SingleResult) -> dict:
    """JSON-ready dict: ``matrix``, ``config``, ``analysis`` (metrics, neighbours, labels)."""
    a = result.analysis
    config = {
        "feature_idx": a.feature_idx,
        "feature_drawn": result.feature_drawn,
        "n_features": a.n_features,
        "n_clusters_requested": a.n_clusters_requested,
        "n_clusters": a.n_clusters,
        "seed": a.seed,
        "axis": result.matrix.axis,
        "cluster_on": a.cluster_on,
        "block_size": a.block_size,
        **scheme_record(result.rng),
    }
    if not result.feature_drawn:
        config["reference_draw"] = "given (--feature-idx)"
    return {
        "featgeo_version": _version(),
        "matrix": result.matrix.to_dict(),
        "config": config,
        "analysis": a.to_dict(),
    }


def multi_to_json(result: MultiResult) -> dict:
    """JSON-ready dict with ``matrix`` (path, name, shape, sparsity, axis, method, layer,
    component, ...), ``config`` (with the reference-draw scheme and each execution's k-means
    ``random_state``), ``aggregate`` ({metric: {mean, std, n_undefined[, undefined_reasons]}}),
    ``separation_bands`` and ``executions`` (per-execution metrics, neighbours and labels).

    Deterministic: the same inputs and seed give the same dict (no timestamps)."""
    executions = [
        {"execution": i, **analysis.to_dict()} for i, analysis in enumerate(result.analyses)
    ]
    return {
        "featgeo_version": _version(),
        "matrix": result.matrix.to_dict(),
        "config": dict(result.config),
        "aggregate": result.aggregate(),
        "separation_bands": band_counts(result.analyses),
        "executions": executions,
    }


def aggregate_band(aggregate: dict[str, dict]) -> str | None:
    """Band of the mean centroid separation ratio; None when it is undefined."""
    return separation_band(aggregate["centroid_separation_ratio"]["mean"])
