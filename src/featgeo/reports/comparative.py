"""Comparative report across matrices (seed 000's ``generate_comparative_report.py``).

Reads every JSON written by ``featgeo hamming multi`` in a results folder (top-level keys
``matrix``, ``config``, ``aggregate`` {metric: {mean, std}}, ``executions``), tabulates the key
metrics per matrix (mean ± std over executions), derives written insights from those numbers
(which projection types and which pruning method cluster better, whether MMM block skipping is
viable), and writes ``{out}/report.md`` (figures beside it) and a self-contained
``{out}/report.html`` (inline CSS, figures as base64 data URIs). Multi-seed trees
(``metrics_summary.json`` of ``featgeo hamming seeds``) and sections from other tools
(:class:`ReportSection`) are added when given.

An undefined metric (a separation ratio whose within-cluster distance is 0, written as null
with a reason by ``featgeo hamming``; or a non-finite number in an older JSON) is shown as
"undefined (reason)", never as a number or a band, and the insights leave it out.
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

from featgeo.files import atomic_path, staging_dir, write_text

log = logging.getLogger(__name__)

KEY_METRICS = (
    "hamming_mean_normalized",
    "centroid_separation_ratio",
    "hamming_separation_ratio",
    "mean_within_hamming",
    "mean_between_hamming",
    "mmm_block_coherence",
)
PRIMARY = "centroid_separation_ratio"
"""The metric that decides "clusters better" (seed 000's separation ratio); the Hamming
separation ratio is reported beside it as a second opinion."""
SECONDARY = "hamming_separation_ratio"
MMM_VIABLE = 0.3
"""MMM block coherence above which a block-skipping sparse kernel is a good fit (SPEC §2)."""
FAMILIES = {"self_attn": "attention (q/k/v/o)", "mlp": "MLP (gate/up/down)"}


class ReportSection(NamedTuple):
    """A block another tool adds to the report, in both output formats."""

    title: str
    markdown: str
    html: str
    """An HTML fragment (no ``<html>``/``<body>``); it must not load external resources."""


MeanStd = tuple[float | None, float | None]


@dataclass(frozen=True)
class MatrixRow:
    """One analysed matrix: where it came from and its aggregated metrics."""

    label: str
    source: str
    """File name of the JSON inside the results folder."""
    method: str
    component: str
    layer: int | None
    shape: tuple[int, ...]
    sparsity: float | None
    n_executions: int
    block_size: int | None
    """Features per MMM block of the run (``config.block_size``)."""
    metrics: dict[str, MeanStd]
    undefined: dict[str, str] = field(default_factory=dict)
    """{metric: why some or all executions have no value}, e.g. "3 of 3 executions: ..."."""

    def mean(self, metric: str) -> float | None:
        value = self.metrics.get(metric, (None, None))[0]
        return value if value is not None and math.isfinite(value) else None

    @property
    def family(self) -> str:
        return self.component.split(".", 1)[0] if "." in self.component else self.component


@dataclass(frozen=True)
class ReportResult:
    out_dir: Path
    markdown_path: Path
    html_path: Path
    rows: list[MatrixRow]
    insights: list[str]
    """The insight sentences (markdown), in report order."""
    figures: list[str] = field(default_factory=list)
    """Figure files written beside the markdown, relative to ``out_dir``."""


# ----------------------------------------------------------------------------- loading


def load_results(results_dir: str | os.PathLike) -> list[MatrixRow]:
    """One row per ``featgeo hamming multi`` JSON in ``results_dir`` (sorted by file name);
    JSON files of another kind are skipped with a log line."""
    folder = Path(results_dir)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(
            f"--results-dir '{folder}' is a file, not a folder; pass the folder that holds "
            "the `featgeo hamming multi --output-json` results"
        )
    if not folder.is_dir():
        raise FileNotFoundError(
            f"--results-dir '{folder}' does not exist; write results there first with "
            f"`featgeo hamming multi MATRIX --output-json {folder}/NAME.json`"
        )
    rows, skipped = [], []
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            skipped.append(f"{path.name}: not readable JSON ({exc})")
            continue
        if not _is_multi_result(data):
            skipped.append(f"{path.name}: not a `featgeo hamming multi` result")
            continue
        rows.append(_row(path.name, data))
    if not rows:  # one error that names what was skipped, not warnings and then an error
        seen = f" (skipped {len(skipped)} JSON file(s), e.g. {skipped[0]})" if skipped else ""
        raise ValueError(
            f"--results-dir '{folder}' holds no `featgeo hamming multi` JSON results{seen}; "
            f"run `featgeo hamming multi MATRIX --output-json {folder}/NAME.json` first"
        )
    for reason in skipped:
        log.warning("skipping %s/%s", folder, reason)
    return _unique_labels(rows)


def _is_multi_result(data) -> bool:
    return (
        isinstance(data, dict)
        and isinstance(data.get("matrix"), dict)
        and isinstance(data.get("aggregate"), dict)
        and isinstance(data.get("executions"), list)
    )


def _row(source: str, data: dict) -> MatrixRow:
    matrix = data["matrix"]
    method = matrix.get("method") or "unknown"
    component = matrix.get("component") or matrix.get("name") or Path(source).stem
    layer = matrix.get("layer")
    metrics, undefined = {}, {}
    n_executions = len(data["executions"])
    for metric in KEY_METRICS:
        entry = data["aggregate"].get(metric)
        if isinstance(entry, dict):
            metrics[metric] = (_number(entry.get("mean")), _number(entry.get("std")))
            note = _undefined_note(entry, n_executions)
            if note:
                undefined[metric] = note
    where = f" L{layer}" if layer is not None else ""
    return MatrixRow(
        label=f"{method}{where} {component}",
        source=source,
        method=method,
        component=component,
        layer=layer,
        shape=tuple(matrix.get("shape") or ()),
        sparsity=_number(matrix.get("sparsity")),
        n_executions=len(data["executions"]),
        block_size=(data.get("config") or {}).get("block_size"),
        metrics=metrics,
        undefined=undefined,
    )


def _undefined_note(entry: dict, n_executions: int, unit: str = "executions") -> str | None:
    """Why an aggregated metric lacks some or all values: "2 of 3 executions: reason"."""
    count = entry.get("n_undefined", entry.get("n_infinite")) or 0
    mean = entry.get("mean")
    if not count and (mean is None or _number(mean) is not None):
        return None
    reasons = entry.get("undefined_reasons") or {}
    why = "; ".join(reasons) if isinstance(reasons, dict) and reasons else None
    if why is None:
        why = "not a finite number in the results JSON (written by an older featgeo)"
    return f"{count or n_executions} of {n_executions} {unit}: {why}"


def _number(value) -> float | None:
    """A finite float, or None (missing, not a number, NaN or infinite)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _unique_labels(rows: list[MatrixRow]) -> list[MatrixRow]:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.label] = counts.get(row.label, 0) + 1
    return [
        row
        if counts[row.label] == 1
        else replace(row, label=f"{row.label} ({Path(row.source).stem})")
        for row in rows
    ]


# ----------------------------------------------------------------------------- insights


def _group_means(rows: Sequence[MatrixRow], key, metric: str) -> dict[str, tuple[float, int]]:
    """{group: (mean over matrices of the metric's mean, number of matrices)}."""
    groups: dict[str, list[float]] = {}
    for row in rows:
        value = row.mean(metric)
        if value is not None:
            groups.setdefault(key(row), []).append(value)
    return {g: (sum(v) / len(v), len(v)) for g, v in groups.items()}


def _ranked(groups: dict[str, tuple[float, int]]) -> list[tuple[str, float, int]]:
    return sorted(((g, m, n) for g, (m, n) in groups.items()), key=lambda t: (-t[1], t[0]))


def _compare(rows, key, names: dict[str, str], what: str) -> str | None:
    """ "A cluster better than B: primary a vs b over n and m matrices (secondary ...)"."""
    primary = _ranked(_group_means(rows, key, PRIMARY))
    if len(primary) < 2:
        return None
    secondary = _group_means(rows, key, SECONDARY)
    (best, best_mean, best_n), (worst, worst_mean, worst_n) = primary[0], primary[-1]
    name = lambda g: names.get(g, g)  # noqa: E731
    text = (
        f"{name(best)} {what} cluster better than {name(worst)}: mean centroid separation ratio "
        f"{best_mean:.3f} vs {worst_mean:.3f} (over {best_n} and {worst_n} matrices)"
    )
    if best in secondary and worst in secondary:
        b, w = secondary[best][0], secondary[worst][0]
        verdict = "agrees" if b > w else "disagrees" if b < w else "ties"
        text += f"; the Hamming separation ratio {verdict} ({b:.3f} vs {w:.3f})"
    if len(primary) > 2:
        text += "; ranking: " + " > ".join(f"{name(g)} {m:.3f}" for g, m, _ in primary)
    return text + "."


def _paired_methods(rows: Sequence[MatrixRow], best: str, worst: str) -> str | None:
    """How often ``best`` beats ``worst`` on the same (layer, component)."""
    by_key: dict[tuple, dict[str, float]] = {}
    for row in rows:
        value = row.mean(PRIMARY)
        if value is not None:
            by_key.setdefault((row.layer, row.component), {})[row.method] = value
    pairs = [v for v in by_key.values() if best in v and worst in v]
    if not pairs:
        return None
    wins = sum(v[best] > v[worst] for v in pairs)
    return (
        f"On the {len(pairs)} layer/component pair(s) pruned by both, {best} has the higher "
        f"centroid separation ratio in {wins}."
    )


def projection_insight(rows: Sequence[MatrixRow]) -> str:
    """Attention vs MLP projections, then the per-component ranking."""
    parts = []
    family = _compare(rows, lambda r: r.family, FAMILIES, "projections")
    if family:
        parts.append(family[0].upper() + family[1:])
    else:
        present = sorted({FAMILIES.get(r.family, r.family) for r in rows})
        parts.append(f"Only {', '.join(present)} projections were analysed.")
    components = _ranked(_group_means(rows, lambda r: r.component, PRIMARY))
    if len(components) >= 2:
        ranking = ", ".join(f"{c} {m:.3f} ({n})" for c, m, n in components)
        parts.append(
            f"Per component (mean centroid separation ratio, matrices): {ranking}; "
            f"{components[0][0]} clusters best and {components[-1][0]} worst."
        )
    return "**Projection types.** " + " ".join(parts)


def method_insight(rows: Sequence[MatrixRow]) -> str:
    """Which pruning method leaves masks that cluster better."""
    ranked = _ranked(_group_means(rows, lambda r: r.method, PRIMARY))
    if len(ranked) < 2:
        if len({r.method for r in rows}) > len(ranked):  # the others have undefined ratios
            have = f"only {ranked[0][0]} matrices have" if ranked else "no matrix has"
            return (
                f"**Pruning methods.** Nothing to compare: {have} a defined centroid separation "
                "ratio (see the undefined ratios below)."
            )
        only = ranked[0][0] if ranked else "one method"
        return f"**Pruning methods.** Only {only} matrices were analysed; nothing to compare."
    text = _compare(rows, lambda r: r.method, {}, "masks")
    paired = _paired_methods(rows, ranked[0][0], ranked[-1][0])
    return "**Pruning methods.** " + text + (f" {paired}" if paired else "")


def mmm_insight(rows: Sequence[MatrixRow]) -> str:
    """Whether MMM block skipping is viable (block coherence > 0.3)."""
    values = [(r.label, r.mean("mmm_block_coherence")) for r in rows]
    values = sorted(((n, v) for n, v in values if v is not None), key=lambda t: (-t[1], t[0]))
    if not values:
        return "**MMM block skipping.** No matrix reports MMM block coherence."
    viable = [(n, v) for n, v in values if v > MMM_VIABLE]
    (top, top_v), (low, low_v) = values[0], values[-1]
    if viable:
        listed = ", ".join(f"{n} {v:.3f}" for n, v in viable)
        verdict = (
            f"viable for {len(viable)} of {len(values)} matrices (block coherence > "
            f"{MMM_VIABLE}): {listed}"
        )
    else:
        verdict = (
            f"not viable for any of the {len(values)} matrices: the highest block coherence is "
            f"{top_v:.3f} ({top}), below {MMM_VIABLE}"
        )
    sizes = {r.block_size for r in rows}
    block = f"block of {sizes.pop()} features" if len(sizes) == 1 and None not in sizes else "block"
    return (
        f"**MMM block skipping.** Block skipping is {verdict}. Block coherence ranges from "
        f"{low_v:.3f} ({low}) to {top_v:.3f} ({top}); it is the mean fraction of positions where "
        f"every feature of a {block} (features grouped by cluster) is zero, i.e. the share of "
        "work a block-skipping kernel saves."
    )


def undefined_insight(rows: Sequence[MatrixRow]) -> str | None:
    """Which matrices were left out of the ratio comparisons because a ratio is undefined."""
    parts = []
    for metric in (PRIMARY, SECONDARY):
        left_out = [r.label for r in rows if r.mean(metric) is None]
        if left_out:
            reasons = sorted({r.undefined[metric] for r in rows if metric in r.undefined})
            why = f" ({'; '.join(reasons)})" if reasons else ""
            parts.append(
                f"the {metric.replace('_', ' ')} is undefined for {', '.join(left_out)}{why}"
            )
    if not parts:
        return None
    return (
        "**Undefined ratios.** "
        + "; ".join(parts)
        + ". Those matrices are left out of the comparisons above: a ratio of ~0 / ~0 says "
        "nothing about separation."
    )


def insights(rows: Sequence[MatrixRow]) -> list[str]:
    """The written insights (markdown sentences), computed from the table; undefined ratios
    are skipped by every comparison and listed in a last sentence."""
    found = [projection_insight(rows), method_insight(rows), mmm_insight(rows)]
    undefined = undefined_insight(rows)
    return found + ([undefined] if undefined else [])


# ----------------------------------------------------------------------------- tables


COLUMNS = ("matrix", "method", "component", "layer", "shape", "sparsity", "executions")


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}" if math.isfinite(value) else str(value)


def table_cells(rows: Sequence[MatrixRow]) -> tuple[list[str], list[list[str]]]:
    """Header and body cells of the comparative table (plain text)."""
    header = [*COLUMNS, *KEY_METRICS]
    body = []
    for row in rows:
        cells = [
            row.label,
            row.method,
            row.component,
            "" if row.layer is None else str(row.layer),
            " x ".join(str(s) for s in row.shape),
            "n/a" if row.sparsity is None else f"{row.sparsity:.2%}",
            str(row.n_executions),
        ]
        for metric in KEY_METRICS:
            mean, std = row.metrics.get(metric, (None, None))
            note = row.undefined.get(metric)
            if mean is None:
                cells.append(f"undefined ({note})" if note else "n/a")
            else:
                cell = f"{_fmt(mean)} ± {_fmt(std)}"
                cells.append(f"{cell} ({note.split(':', 1)[0]} undefined)" if note else cell)
        body.append(cells)
    return header, body


def markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    escape = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(escape(h) for h in header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(escape(c) for c in cells) + " |" for cells in body]
    return "\n".join(lines)


def html_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>" for cells in body
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def markdown_to_html_inline(text: str) -> str:
    """Escape a sentence and turn its ``**bold**`` and `` `code` `` spans into HTML."""
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))
    parts = escaped.split("**")
    return "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(parts))


# ----------------------------------------------------------------------------- building


class _Document:
    """The report assembled in both formats at once; figures go to ``figures/``."""

    def __init__(self, stage: Path, dpi: int):
        self.stage, self.dpi = stage, dpi
        self.md: list[str] = []
        self.html: list[str] = []
        self.figures: list[str] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.md.append(f"{'#' * level} {text}\n")
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def paragraph(self, text: str) -> None:
        self.md.append(text + "\n")
        self.html.append(f"<p>{markdown_to_html_inline(text)}</p>")

    def bullets(self, items: Iterable[str]) -> None:
        items = list(items)
        self.md.append("\n".join(f"- {item}" for item in items) + "\n")
        self.html.append(
            "<ul>" + "".join(f"<li>{markdown_to_html_inline(i)}</li>" for i in items) + "</ul>"
        )

    def table(self, header: Sequence[str], body: Sequence[Sequence[str]]) -> None:
        self.md.append(markdown_table(header, body) + "\n")
        self.html.append(f'<div class="scroll">{html_table(header, body)}</div>')

    def figure(self, fig, name: str, caption: str) -> None:
        from featgeo.reports.figures import figure_png, png_data_uri

        png = figure_png(fig, dpi=self.dpi)
        relative = f"figures/{name}.png"
        with atomic_path(self.stage / relative) as tmp:
            tmp.write_bytes(png)
        self.figures.append(relative)
        self.md.append(f"![{caption}]({relative})\n")
        self.html.append(
            f'<figure><img alt="{html.escape(caption)}" src="{png_data_uri(png)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )

    def section(self, section: ReportSection) -> None:
        self.heading(section.title)
        self.md.append(section.markdown.rstrip() + "\n")
        self.html.append(f"<section>{section.html}</section>")


def _matrices_part(doc: _Document, rows: list[MatrixRow], notes: list[str]) -> list[str]:
    from featgeo.reports import plots

    found = insights(rows)
    doc.heading("Insights")
    doc.bullets(found)
    doc.heading("Comparative table")
    doc.paragraph(
        "One row per matrix; metrics are mean ± std (population) over the executions of "
        "`featgeo hamming multi`. Centroid separation ratio bands: > 2 excellent, > 1 good, "
        "> 0.5 moderate, else poor. A ratio is undefined (no number, no band) when the "
        "within-cluster distance is 0 or fewer than two clusters exist; undefined executions are "
        "left out of the mean."
    )
    doc.table(*table_cells(rows))
    if notes:
        doc.paragraph("Sources: " + ", ".join(f"`{n}`" for n in notes) + ".")
    names = [r.label for r in rows]
    pick = lambda metric: [r.metrics.get(metric, (None, None)) for r in rows]  # noqa: E731
    clean = lambda pairs: [(_nan(m), _nan(s)) for m, s in pairs]  # noqa: E731
    doc.figure(
        plots.separation_ratio_bars(names, clean(pick(PRIMARY)), clean(pick(SECONDARY))),
        "separation_ratios",
        "Separation ratios per matrix (mean ± std over executions)",
    )
    doc.figure(
        plots.block_coherence_bars(names, clean(pick("mmm_block_coherence")), threshold=MMM_VIABLE),
        "mmm_block_coherence",
        "MMM block coherence per matrix (viable above 0.3)",
    )
    return found


def _nan(value: float | None) -> float:
    return float("nan") if value is None else value


def find_seed_summaries(seeds_dir: str | os.PathLike) -> list[Path]:
    """Every finished ``summary/metrics_summary.json`` under ``seeds_dir`` (hidden staging
    folders of unfinished runs are skipped)."""
    root = Path(seeds_dir)
    found = sorted(root.rglob("metrics_summary.json"))
    return [p for p in found if not any(part.startswith(".") for part in p.relative_to(root).parts)]


def _seeds_part(doc: _Document, seeds_dir: Path) -> int:
    from featgeo.reports import plots
    from featgeo.sparsity.seeds import per_k_records

    summaries = find_seed_summaries(seeds_dir)
    if not summaries:
        log.info("no metrics_summary.json under %s: no multi-seed section", seeds_dir)
        return 0
    doc.heading("Multi-seed clustering")
    for i, path in enumerate(summaries):
        summary = json.loads(path.read_text(encoding="utf-8"))
        matrix, config = summary.get("matrix", {}), summary.get("config", {})
        title = (
            f"{matrix.get('method')} layer {matrix.get('layer')} {matrix.get('component')}: "
            f"{config.get('seeds')} seeds, {config.get('n_similar')} similar features"
        )
        doc.heading(title, 3)
        header = ["k", PRIMARY, SECONDARY, "mmm_block_coherence"]
        body = []
        for k, agg in summary.get("per_k", {}).items():
            cells = [str(k)]
            for metric in header[1:]:
                entry = agg.get(metric, {})
                mean, std = _number(entry.get("mean")), _number(entry.get("std"))
                note = _undefined_note(entry, int(config.get("seeds") or 0), "seeds")
                if mean is None:
                    cells.append(f"undefined ({note})" if note else "n/a")
                else:
                    cell = f"{_fmt(mean)} ± {_fmt(std)}"
                    cells.append(f"{cell} ({note.split(':', 1)[0]} undefined)" if note else cell)
            body.append(cells)
        doc.table(header, body)
        per_k = per_k_records(summary)
        doc.figure(plots.summary_separation_ratios(per_k), f"seeds_{i}_separation", title)
        doc.figure(plots.summary_distances(per_k), f"seeds_{i}_distances", title)
    return len(summaries)


CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2rem auto;max-width:1200px;
color:#222;line-height:1.45;padding:0 1rem}
h1{border-bottom:2px solid #444}h2{margin-top:2rem;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:.85rem}th,td{border:1px solid #ccc;padding:.3rem .5rem;
text-align:right;white-space:nowrap}th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}
tbody tr:nth-child(even){background:#fafafa}.scroll{overflow-x:auto}
figure{margin:1rem 0}img{max-width:100%;height:auto}figcaption{color:#555;font-size:.85rem}
code{background:#f4f4f4;padding:0 .2rem}
"""


def _html_page(title: str, body: list[str]) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )


def _check_out(out: Path) -> None:
    """Refuse to replace a folder that is not a report of this function, or a report folder
    holding files of someone else's (they would be deleted)."""
    from featgeo.files import check_output_dir

    check_output_dir(
        out, "--out", signature=("report.md",), contents=("report.md", "report.html", "figures")
    )


def build_report(
    results_dir: str | os.PathLike = "analysis_results",
    out: str | os.PathLike = "report",
    extra_sections: Sequence[ReportSection] = (),
    *,
    seeds_dir: str | os.PathLike | None = None,
    dpi: int = 100,
) -> ReportResult:
    """Build the comparative report of every ``featgeo hamming multi`` JSON in ``results_dir``.

    Writes ``{out}/report.md`` (+ ``{out}/figures/*.png``) and the self-contained
    ``{out}/report.html``; the folder is built aside and swapped in whole. ``seeds_dir``: a
    folder searched for ``metrics_summary.json`` trees of ``featgeo hamming seeds``.
    """
    extra_sections = list(extra_sections)
    for section in extra_sections:
        if not isinstance(section, ReportSection):
            raise TypeError(
                f"extra_sections must hold ReportSection(title, markdown, html), got "
                f"{type(section).__name__}"
            )
    rows = load_results(results_dir)
    if seeds_dir is not None and Path(seeds_dir).exists() and not Path(seeds_dir).is_dir():
        raise NotADirectoryError(
            f"--seeds-dir '{seeds_dir}' is a file, not a folder; pass the folder written by "
            "`featgeo hamming seeds --output-dir DIR`, or leave --seeds-dir out"
        )
    if seeds_dir is not None and not Path(seeds_dir).is_dir():
        raise FileNotFoundError(f"--seeds-dir '{seeds_dir}' does not exist")
    if seeds_dir is not None and not find_seed_summaries(seeds_dir):
        raise FileNotFoundError(
            f"--seeds-dir '{seeds_dir}' holds no finished multi-seed run "
            "(no summary/metrics_summary.json); run `featgeo hamming seeds --output-dir DIR` "
            "first, or leave --seeds-dir out"
        )
    out = Path(out)
    _check_out(out)
    title = "featgeo comparative report: sparsity-pattern clustering"
    with staging_dir(out) as stage:
        doc = _Document(stage, dpi)
        doc.paragraph(
            f"{len(rows)} matrices from `{Path(results_dir).as_posix()}`: "
            + ", ".join(r.label for r in rows)
            + "."
        )
        found = _matrices_part(doc, rows, [r.source for r in rows])
        if seeds_dir is not None:
            _seeds_part(doc, Path(seeds_dir))
        for section in extra_sections:
            doc.section(section)
        markdown = f"# {title}\n\n" + "\n".join(doc.md)
        write_text(stage / "report.md", markdown)
        write_text(stage / "report.html", _html_page(title, doc.html))
        figures = list(doc.figures)
    return ReportResult(out, out / "report.md", out / "report.html", rows, found, figures)
