"""Whole-model scan: every exported matrix of every method, one CSV row each, plus heatmaps.

For each ``{matrices_dir}/{method}/layer{L}-{component}.pt`` (or its bit-packed mask
``layer{L}-{component}.mask.safetensors``; the ``.pt`` when both exist) the scan measures the
sparsity, the distribution of each feature's Hamming distance to its nearest other feature
(normalized by D), and MMM block coherence (SPEC §2) of all features cut into blocks of
``block_size`` in three orders: the original one, a seeded random permutation, and an order
built to group features whose zeros coincide (``order_by``).

The block orderings and how the default was chosen: :mod:`featgeo.sparsity.blocks`.
"""

from __future__ import annotations

import base64
import csv
import io
import logging
import os
import re
import shutil
import time
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch

from featgeo import __version__
from featgeo.files import (
    PACKED_MASK_SUFFIX,
    atomic_path,
    check_output_dir,
    partial_dir,
    read_json,
    staging_dir,
    write_json,
    write_text,
)
from featgeo.models.components import COMPONENTS
from featgeo.progress import progress_bar, workers_busy
from featgeo.sparsity.blocks import ORDERINGS
from featgeo.sparsity.hamming import nearest_neighbour_distances
from featgeo.sparsity.matrices import Axis, feature_masks, load_matrix, sparsity
from featgeo.sparsity.metrics import block_coherence

log = logging.getLogger(__name__)

OrderBy = Literal["greedy", "nearest", "kmeans"]
CSV_NAME = "scan.csv"
CONFIG_NAME = "scan_config.json"
COLUMNS = (
    "method",
    "layer",
    "component",
    "rows",
    "cols",
    "n_features",
    "d",
    "sparsity",
    "nn_hamming_min",
    "nn_hamming_mean",
    "nn_hamming_median",
    "nn_hamming_max",
    "coherence_original",
    "coherence_random",
    "coherence_clustered",
    "coherence_gain",
)
_INT_COLUMNS = {"layer", "rows", "cols", "n_features", "d"}
_STR_COLUMNS = {"method", "component"}
HEATMAP_METRICS = ("coherence_clustered", "coherence_original", "nn_hamming_mean")
# {method}/layer{L}-{component}.pt, or .mask.safetensors (featgeo prune --export masks)
_EXPORT_NAME = re.compile(r"^layer(\d+)-(.+?)(\.pt|\.mask\.safetensors)$")


# --- configuration and discovery -------------------------------------------------------------


@dataclass
class ScanConfig:
    """Scan every exported matrix of the given methods."""

    matrices_dir: str = "clustering_characterization"
    """Export root of ``featgeo prune``: {matrices_dir}/{method}/layer{L}-{component}.pt (or
    .mask.safetensors)."""
    methods: list[str] = field(default_factory=lambda: ["wanda", "sparsegpt"])
    """Method folders to scan (a comma string is accepted)."""
    out: str = "results/scan"
    """Output folder: scan.csv, heatmap_{method}_{metric}.png, scan_config.json."""
    block_size: int = 8
    """Features per MMM block."""
    axis: Axis = "columns"
    """Features are the matrix's columns (SPEC §2 default) or rows."""
    seed: int = 0
    """Seed of the random order (and of k-means for ``order_by='kmeans'``)."""
    device: str = "cpu"
    """Where nearest-neighbour distances are computed: auto, cpu or cuda (same integers)."""
    order_by: OrderBy = "greedy"
    """How features are grouped into blocks for ``coherence_clustered`` (see ORDERINGS)."""

    def __post_init__(self) -> None:
        if isinstance(self.methods, str):
            self.methods = self.methods.split(",")
        self.methods = [m.strip() for m in self.methods if m.strip()]
        if not self.methods:
            raise ValueError("--methods is empty; pass e.g. --methods wanda,sparsegpt")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"--methods lists a method twice: {','.join(self.methods)}")
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int):
            raise TypeError(f"--block-size must be an integer, got {self.block_size!r}")
        if self.block_size < 1:
            raise ValueError(f"--block-size must be >= 1, got {self.block_size}")
        if self.axis not in ("columns", "rows"):
            raise ValueError(f"--axis must be 'columns' or 'rows', got '{self.axis}'")
        if self.order_by not in ORDERINGS:
            raise ValueError(
                f"--order-by must be one of {', '.join(ORDERINGS)}, got '{self.order_by}'"
            )

    def settings(self) -> dict:
        """What determines the values of a row: partial results are resumed only if equal."""
        keys = ("matrices_dir", "block_size", "axis", "seed", "order_by")
        return {k: getattr(self, k) for k in keys}


class MatrixJob(NamedTuple):
    method: str
    layer: int
    component: str
    path: Path

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.method, self.layer, self.component)


def component_rank(component: str) -> tuple[int, str]:
    """Decoder order (q, k, v, o, gate, up, down), unknown names after, alphabetically."""
    rank = COMPONENTS.index(component) if component in COMPONENTS else len(COMPONENTS)
    return (rank, component)


def discover_matrices(matrices_dir: str | os.PathLike, methods: Sequence[str]) -> list[MatrixJob]:
    """Every ``{method}/layer{L}-{component}.pt`` or ``.mask.safetensors`` in method, layer,
    component order; fails with a clear error for a missing folder, an unknown method or a
    method without matrices.

    A matrix exported both ways (``featgeo prune --export dense,masks`` writes both) is read
    from the ``.pt``: it holds the mask too, and the numbers are the same.
    """
    root = Path(matrices_dir)
    if not root.exists():
        raise FileNotFoundError(
            f"--matrices-dir '{root}' does not exist; pass the export folder of `featgeo prune` "
            "(it holds one sub-folder per method)"
        )
    if not root.is_dir():
        raise NotADirectoryError(f"--matrices-dir '{root}' is a file, not a folder")
    available = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    jobs: list[MatrixJob] = []
    for method in methods:
        folder = root / method
        if not folder.is_dir():
            raise ValueError(
                f"unknown method '{method}': '{root}' has no folder '{method}'; "
                f"methods found there: {', '.join(available) or 'none'}"
            )
        found: dict[tuple[int, str], MatrixJob] = {}
        for path in sorted(folder.iterdir()):
            match = _EXPORT_NAME.match(path.name)
            if match and path.is_file():
                job = MatrixJob(method, int(match.group(1)), match.group(2), path)
                if job.path.suffix == ".pt" or (job.layer, job.component) not in found:
                    found[(job.layer, job.component)] = job  # the dense .pt wins
        if not found:
            raise ValueError(
                f"no matrix files found in '{folder}': expected layer{{L}}-{{component}}.pt "
                "(or bit-packed layer{L}-{component}.mask.safetensors) files exported by "
                "`featgeo prune`"
            )
        jobs.extend(sorted(found.values(), key=lambda j: (j.layer, component_rank(j.component))))
    return jobs


# --- per-matrix measurements -----------------------------------------------------------------


def _matrix_rng(seed: int, key: tuple[str, int, str]) -> np.random.Generator:
    """A generator that depends only on the seed and the matrix, so the random order of a matrix
    does not change with the set of methods scanned or with resuming."""
    return np.random.default_rng([seed, zlib.crc32("/".join(map(str, key)).encode())])


def scan_matrix(job: MatrixJob, config: ScanConfig, device: torch.device) -> dict:
    """One CSV row for one matrix (see COLUMNS)."""
    return measure_masks(read_masks(job, config), config, device)


class MatrixMasks(NamedTuple):
    """What the measurements need of one matrix: its features' masks, shape and sparsity (a
    scan unit; on Ray the driver reads the file and ships this)."""

    job: MatrixJob
    masks: np.ndarray
    """bool [N, D], True where the weight is kept (:func:`feature_masks`)."""
    shape: tuple[int, int]
    sparsity: float


def read_masks(job: MatrixJob, config: ScanConfig) -> MatrixMasks:
    matrix = load_matrix(job.path)
    masks = feature_masks(matrix, config.axis, name=str(job.path), warn_dense=False)
    return MatrixMasks(job, masks, tuple(matrix.shape), sparsity(matrix))


def measure_masks(unit: MatrixMasks, config: ScanConfig, device: torch.device | str) -> dict:
    """The CSV row of one matrix from its masks (the costly part of a scan)."""
    job, masks = unit.job, unit.masks
    device = torch.device(device)
    n, d = masks.shape
    nn = nearest_neighbour_distances(masks, device=device) / d
    bs = config.block_size
    original = block_coherence(masks, None, bs)
    random = block_coherence(masks, _matrix_rng(config.seed, job.key).permutation(n), bs)
    clustered = block_coherence(masks, ORDERINGS[config.order_by](masks, bs, config.seed), bs)
    values = (
        job.method,
        job.layer,
        job.component,
        *unit.shape,
        n,
        d,
        unit.sparsity,
        nn.min(),
        nn.mean(),
        np.median(nn),
        nn.max(),
        original,
        random,
        clustered,
        clustered - original,
    )
    return _typed(dict(zip(COLUMNS, values, strict=True)))


def _typed(row: dict) -> dict:
    return {
        k: str(v) if k in _STR_COLUMNS else int(v) if k in _INT_COLUMNS else float(v)
        for k, v in row.items()
    }


# --- CSV ---------------------------------------------------------------------------------------


def _sort_key(row: dict, methods: Sequence[str]) -> tuple:
    method_rank = methods.index(row["method"]) if row["method"] in methods else len(methods)
    return (method_rank, row["method"], row["layer"], component_rank(row["component"]))


def csv_text(rows: Sequence[dict]) -> str:
    """Rows as CSV; floats in ``repr`` form, which reads back to the identical value."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([repr(row[c]) if isinstance(row[c], float) else row[c] for c in COLUMNS])
    return buffer.getvalue()


def read_scan_csv(path: str | os.PathLike) -> list[dict]:
    """Typed rows of a scan CSV; a row that is incomplete or unreadable is dropped."""
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or tuple(reader.fieldnames) != COLUMNS:
            raise ValueError(
                f"'{path}' is not a scan CSV: expected the columns {', '.join(COLUMNS)}"
            )
        rows = []
        for raw in reader:
            try:
                rows.append(_typed({c: raw[c] for c in COLUMNS}))
            except (TypeError, ValueError):
                continue
    return rows


def _resumable_rows(staging: Path, settings: dict) -> dict[tuple, dict]:
    """Rows of an interrupted scan with the same settings; other partial folders are removed."""
    config_file, csv_file = staging / CONFIG_NAME, staging / CSV_NAME
    if config_file.is_file() and csv_file.is_file():
        try:
            same = read_json(config_file).get("settings") == settings
            rows = read_scan_csv(csv_file) if same else None
        except (ValueError, OSError):
            rows = None
        if rows is not None:
            return {(r["method"], r["layer"], r["component"]): r for r in rows}
    if staging.exists():
        shutil.rmtree(staging)
    return {}


# --- the scan --------------------------------------------------------------------------------


@dataclass
class ScanResult:
    """What ``run_scan`` produced."""

    out_dir: Path
    csv_path: Path
    config_path: Path
    heatmaps: list[Path]
    rows: list[dict]
    """Typed CSV rows, in CSV order."""
    computed: int
    """Matrices measured by this call."""
    resumed: int
    """Matrices taken from an interrupted earlier run."""
    seconds: float
    config: ScanConfig


def run_scan(
    matrices_dir: str | os.PathLike = "clustering_characterization",
    methods: Sequence[str] | str = ("wanda", "sparsegpt"),
    out: str | os.PathLike = "results/scan",
    block_size: int = 8,
    axis: Axis = "columns",
    seed: int = 0,
    device: str = "cpu",
    order_by: OrderBy = "greedy",
    executor: str = "local",
    ray_address: str | None = None,
) -> ScanResult:
    """Scan every exported matrix of ``methods``; write {out}/scan.csv, the heatmaps and
    scan_config.json atomically (through a staging folder that an interrupted run resumes).

    With ``executor="ray"`` each matrix is a task on the Ray cluster at ``ray_address``
    (:mod:`featgeo.executors`): the driver reads the file and ships the matrix's masks, so the
    nodes need no copy of ``matrices_dir``; the files written are the same.

    Raises:
        ValueError / FileNotFoundError / NotADirectoryError: bad options or inputs, no Ray or
        no Ray cluster for ``executor="ray"``; all before anything is written.
    """
    from featgeo.executors import check_executor, connect
    from featgeo.models.loading import resolve_device

    config = ScanConfig(
        matrices_dir=str(matrices_dir),
        methods=methods if isinstance(methods, str) else list(methods),
        out=str(out),
        block_size=block_size,
        axis=axis,
        seed=seed,
        device=device,
        order_by=order_by,
    )
    spec = check_executor(executor, ray_address)
    jobs = discover_matrices(config.matrices_dir, config.methods)  # validates before writing
    _check_packed_masks(jobs)
    with connect(spec) as pool:
        torch_device = pool.unit_device(config.device) if pool else resolve_device(config.device)
        return _run(config, jobs, torch_device, pool)


def _run(config: ScanConfig, jobs: list[MatrixJob], torch_device, pool) -> ScanResult:
    start = time.perf_counter()
    final = Path(config.out)
    check_output_dir(
        final, "--out", signature=(CSV_NAME, CONFIG_NAME),
        contents=(CSV_NAME, CONFIG_NAME, "heatmap_*.png"),
    )  # fmt: skip
    done = _resumable_rows(partial_dir(final), config.settings())
    rows = {job.key: done[job.key] for job in jobs if job.key in done}
    resumed = len(rows)
    if resumed:
        log.info("resuming the scan: %d of %d matrices already measured", resumed, len(jobs))
    with staging_dir(final, keep_on_error=True) as staging:
        write_json(staging / CONFIG_NAME, _config_json(config, len(jobs)))
        _measure(jobs, rows, config, torch_device, staging, pool)
        ordered = sorted(rows.values(), key=lambda r: _sort_key(r, config.methods))
        write_text(staging / CSV_NAME, csv_text(ordered))
        heatmaps = [p.name for p in write_heatmaps(ordered, staging)]
    _warn_dense(ordered)
    return ScanResult(
        out_dir=final,
        csv_path=final / CSV_NAME,
        config_path=final / CONFIG_NAME,
        heatmaps=[final / name for name in heatmaps],
        rows=ordered,
        computed=len(jobs) - resumed,
        resumed=resumed,
        seconds=time.perf_counter() - start,
        config=config,
    )


def _check_packed_masks(jobs: Sequence[MatrixJob]) -> None:
    """Read every packed mask once before the output folder is touched, so a damaged one is an
    error that writes nothing (a mask is 1/32 of its float32 weights: cheap next to the scan).

    Raises:
        ValueError: a ``.mask.safetensors`` file is malformed (see ``load_matrix``).
    """
    for job in jobs:
        if job.path.name.endswith(PACKED_MASK_SUFFIX):
            load_matrix(job.path)


def _measure(jobs, rows: dict, config: ScanConfig, device, staging: Path, pool=None) -> None:
    """Measure the jobs not in ``rows`` (here, or as Ray tasks when ``pool`` is given),
    rewriting the partial CSV after each (atomically, so an interruption loses at most the
    matrices in progress)."""
    todo = [job for job in jobs if job.key not in rows]
    with progress_bar() as bar:
        task = bar.add_task("hamming scan", total=len(jobs), completed=len(rows), status="")
        if pool is None:
            measured = _measure_here(todo, config, device, bar, task)
        else:
            busy = lambda n: bar.update(task, status=workers_busy(n))  # noqa: E731
            units = (read_masks(job, config) for job in todo)
            gpus = 1 if torch.device(device).type == "cuda" else 0
            measured = (row for _, row in pool.map_unordered(
                measure_masks, units, shared=(config, str(device)), num_gpus=gpus, on_busy=busy
            ))  # fmt: skip
        for row in measured:
            rows[(row["method"], row["layer"], row["component"])] = row
            ordered = sorted(rows.values(), key=lambda r: _sort_key(r, config.methods))
            write_text(staging / CSV_NAME, csv_text(ordered))
            bar.update(task, advance=1)


def _measure_here(todo, config, device, bar, task):
    for job in todo:
        bar.update(task, status=f"{job.method} layer{job.layer}-{job.component}")
        yield scan_matrix(job, config, device)


def _config_json(config: ScanConfig, n_matrices: int) -> dict:
    return {
        "featgeo_version": __version__,
        "config": asdict(config),
        "settings": config.settings(),
        "n_matrices": n_matrices,
        "columns": list(COLUMNS),
        "notes": {
            "nn_hamming_*": "per-feature Hamming distance to the nearest other feature / d",
            "coherence_*": "MMM block coherence: mean over blocks of block_size features of the "
            "fraction of the d positions where the whole block is zero",
            "coherence_random": "one permutation from default_rng([seed, crc32(method/layer/"
            "component)])",
            "coherence_clustered": f"blocks from order_by='{config.order_by}'",
        },
    }


def _warn_dense(rows: Sequence[dict]) -> None:
    dense = [r for r in rows if r["sparsity"] < 0.01]
    if dense:
        warnings.warn(
            f"{len(dense)} of {len(rows)} scanned matrices are dense (<1% zeros); their Hamming "
            "distances and coherence mean nothing: scan pruned exports",
            UserWarning,
            stacklevel=3,
        )


# --- heatmaps ---------------------------------------------------------------------------------


def _grid(rows: Sequence[dict], method: str, metric: str):
    """[layers, components] values of one method (NaN where a matrix is missing)."""
    mine = [r for r in rows if r["method"] == method]
    layers = sorted({r["layer"] for r in mine})
    components = sorted({r["component"] for r in mine}, key=component_rank)
    grid = np.full((len(layers), len(components)), np.nan)
    for r in mine:
        grid[layers.index(r["layer"]), components.index(r["component"])] = r[metric]
    return grid, layers, components


def write_heatmaps(rows: Sequence[dict], folder: Path) -> list[Path]:
    """heatmap_{method}_{metric}.png for every method and HEATMAP_METRICS; one colour scale per
    metric, shared by the methods so their maps compare."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    methods = list(dict.fromkeys(r["method"] for r in rows))
    paths = []
    for metric in HEATMAP_METRICS:
        values = np.array([r[metric] for r in rows], dtype=float)
        vmin, vmax = float(values.min()), float(values.max())
        for method in methods:
            grid, layers, components = _grid(rows, method, metric)
            fig = Figure(figsize=(1.1 * len(components) + 2.5, 0.28 * len(layers) + 2.0))
            FigureCanvasAgg(fig)
            ax = fig.subplots()
            image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax)
            ax.set_xticks(range(len(components)), components, rotation=40, ha="right")
            ax.set_yticks(range(len(layers)), [str(layer) for layer in layers])
            ax.set_xlabel("component")
            ax.set_ylabel("layer")
            ax.set_title(f"{method}: {metric}")
            for (i, j), value in np.ndenumerate(grid):
                if not np.isnan(value):
                    dark = value < vmin + 0.6 * (vmax - vmin)
                    color = "white" if dark else "black"
                    ax.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize=6, color=color)
            fig.colorbar(image, ax=ax, label=metric)
            fig.tight_layout()
            path = folder / f"heatmap_{method}_{metric}.png"
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})
            paths.append(path)
    return paths


# --- summaries and the report section --------------------------------------------------------

SUMMARY_METRICS = (
    "coherence_original",
    "coherence_random",
    "coherence_clustered",
    "nn_hamming_mean",
)


def summarize(rows: Sequence[dict]) -> list[dict]:
    """Per method x component: number of layers and the mean of SUMMARY_METRICS over layers."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    out = []
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        for component in sorted({r["component"] for r in mine}, key=component_rank):
            group = [r for r in mine if r["component"] == component]
            entry = {"method": method, "component": component, "layers": len(group)}
            entry.update({m: float(np.mean([r[m] for r in group])) for m in SUMMARY_METRICS})
            out.append(entry)
    return out


def scan_section(csv_path: str | os.PathLike, *, relative_to: str | os.PathLike | None = None):
    """A ``ReportSection`` of the comparative report: a per method x component summary table and
    the heatmaps found beside the CSV (base64 PNGs in the HTML; in the Markdown, image links
    relative to ``relative_to``, the folder the Markdown report is written to; default: the
    CSV's folder)."""
    from html import escape

    from featgeo.reports.comparative import ReportSection

    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"scan CSV '{csv_path}' does not exist; run `featgeo hamming scan`")
    rows = read_scan_csv(csv_path)
    if not rows:
        raise ValueError(f"scan CSV '{csv_path}' has no rows")
    summary = summarize(rows)
    base = Path(relative_to) if relative_to is not None else csv_path.parent
    headers = [
        "method",
        "component",
        "layers",
        "coherence original",
        "coherence random",
        "coherence clustered",
        "NN Hamming (mean, /D)",
    ]
    cells = [
        [s["method"], s["component"], str(s["layers"])] + [f"{s[m]:.4f}" for m in SUMMARY_METRICS]
        for s in summary
    ]
    intro = (
        f"{len(rows)} matrices. MMM block coherence (fraction of positions where a whole block of "
        "features is zero) in the export order, a random order and after grouping features into "
        "blocks; NN Hamming = distance from each feature to its nearest other feature, over D."
    )
    align = "|---|---|" + "---:|" * (len(headers) - 2)
    md = [intro, "", "| " + " | ".join(headers) + " |", align]
    md += ["| " + " | ".join(row) + " |" for row in cells]
    html = [f"<p>{escape(intro)}</p>", "<table>", "<tr>"]
    html += [f"<th>{escape(h)}</th>" for h in headers] + ["</tr>"]
    html += ["<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in cells]
    html.append("</table>")
    for method in dict.fromkeys(r["method"] for r in rows):
        for metric in HEATMAP_METRICS:
            png = csv_path.parent / f"heatmap_{method}_{metric}.png"
            if not png.is_file():
                continue
            title = f"{method}: {metric}"
            link = Path(os.path.relpath(png, base)).as_posix()
            md += ["", f"![{title}]({link})"]
            data = base64.b64encode(png.read_bytes()).decode("ascii")
            html.append(
                f'<figure><img alt="{escape(title)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{escape(title)}</figcaption></figure>"
            )
    return ReportSection(
        title="Block coherence and nearest-neighbour Hamming distance, all matrices",
        markdown="\n".join(md) + "\n",
        html="\n".join(html) + "\n",
    )
