"""The review site: one self-contained folder of HTML pages over both pipelines' results.

    from featgeo.reports.review import build_review

    build_review("review", stage1_dir="outputs/real_data_analysis_canonical",
                 stage3_dir="outputs/selected_clusters_canonical", sparsity_report="report")

Seed 002's Stage 2 is a manual review of a notebook and a folder of PNGs, and seed 000 ends in a
text report. The site replaces both with pages a researcher filters and clicks:

- ``index.html`` links the pages below and says what they were built from;
- ``aanet.html`` (with ``--stage1-dir``): per n_clusters, the recon-vs-archetypal elbow-strength
  scatter of Stage 1 (SPEC §3), coloured by category with the selection thresholds drawn;
  filters for n_clusters, category, quality filters, decoder rank and Stage 3; a click on a
  cluster shows its loss-vs-k curves with the elbows and the recommended k, its training
  curves, decoder rank vs PCA rank, its latents and, where Stage 3 ran (``--stage3-dir``),
  its vertex samples with the trigger tokens highlighted in their chunk;
- ``sparsity.html`` (with ``--sparsity-report``): the body of ``featgeo hamming report``'s
  ``report.html`` (tables, insights, figures and the scan heatmaps it embeds).

The pages open from disk with no server and no network: data lives in ``data/*.js`` files
(script tags work on ``file://``, ``fetch`` does not), the one JavaScript library (plotly.js)
is copied from the ``plotly`` package with its licence into ``vendor/``, and every piece of
corpus text reaches the page through ``textContent``, never as markup. The folder is built
aside and swapped in whole (:func:`featgeo.files.staging_dir`).
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featgeo.errors import InputError
from featgeo.files import (
    check_output_dir,
    check_writable_dir,
    copy_file,
    read_json,
    staging_dir,
    write_json,
    write_text,
)

MARKER = "review.json"
"""The file that marks a folder as a review site (a rerun may replace such a folder)."""
ASSETS = Path(__file__).with_name("review_assets")
CATEGORY_COLORS = {
    "A": "#d62728",
    "D": "#9467bd",
    "B": "#1f77b4",
    "C": "#2ca02c",
    "none": "#7f7f7f",
    "filtered": "#c7c7c7",
}
"""Scatter colours: categories by SPEC §3 priority, then clusters in no category and those
failing a quality filter."""
SITE_CONTENTS = (MARKER, "index.html", "aanet.html", "sparsity.html", "assets", "vendor", "data")
"""Everything a site holds: a rebuild refuses a site folder holding anything else."""
SAMPLES_SHOWN = 20
REPORT_TITLE = "# featgeo comparative report"
"""How the ``report.md`` of ``featgeo hamming report`` begins."""
_CSV = re.compile(r"consolidated_metrics_n(\d+)\.csv")


@dataclass
class ReviewResult:
    """What :func:`build_review` wrote."""

    out: Path
    pages: list[str]
    n_clusters: list[int] = field(default_factory=list)
    n_shown: dict[int, int] = field(default_factory=dict)
    """Clusters per n_clusters on the AANet page."""
    stage3_clusters: list[str] = field(default_factory=list)
    """``"n:cid"`` of the clusters with vertex samples."""


# -- Stage 1 -------------------------------------------------------------------------------------
def stage1_csvs(stage1_dir: str | os.PathLike) -> dict[int, Path]:
    """Stage 1's consolidated CSVs by n_clusters: ``clusters_{n}/consolidated_metrics_n{n}.csv``
    (Stage 1's layout) or the files directly in ``stage1_dir``.

    Raises:
        FileNotFoundError: the folder does not exist or holds no such CSV.
    """
    folder = Path(stage1_dir)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"--stage1-dir '{folder}' is not a folder; pass the folder of a finished "
            "`featgeo aanet stage1 --save-dir DIR`"
        )
    found: dict[int, Path] = {}
    for path in sorted(folder.glob("clusters_*/consolidated_metrics_n*.csv")) + sorted(
        folder.glob("consolidated_metrics_n*.csv")
    ):
        match = _CSV.fullmatch(path.name)
        if match and path.parent.name in (f"clusters_{match[1]}", folder.name):
            found.setdefault(int(match[1]), path)
    if not found:
        raise FileNotFoundError(
            f"--stage1-dir '{folder}' holds no Stage 1 CSV (clusters_N/consolidated_metrics_nN"
            ".csv); pass the folder of a finished `featgeo aanet stage1 --save-dir DIR`"
        )
    return dict(sorted(found.items()))


def _num(value: Any, digits: int = 6) -> float | None:
    """A CSV cell or number as a JSON number rounded to ``digits`` significant digits (None
    for empty, NaN or infinite)."""
    from featgeo.archetypes.quality import cell_number

    x = cell_number(value)
    if not math.isfinite(x):
        return None
    return float(f"{x:.{digits}g}")


def _int(value: Any) -> int | None:
    x = _num(value, 12)
    return None if x is None else int(x)


def _thresholds(t: Mapping[str, float], criteria) -> dict[str, float | None]:
    mu, sigma = t["mu"], t["sigma"]
    return {
        "mu": _num(mu),
        "sigma": _num(sigma),
        "a": _num(mu + criteria.sigma_a * sigma),
        "bc": _num(mu + criteria.sigma_bc * sigma),
    }


def aanet_summary(csv_path: Path, n: int, criteria) -> dict[str, Any]:
    """One n_clusters of the AANet page: thresholds and one entry per cluster.

    Categories are SPEC §3's over the clusters passing ``criteria.filters`` (the rule of
    :func:`featgeo.archetypes.selection.select_clusters`), computed here for every cluster,
    not only the selected ones.

    Raises:
        ValueError: a malformed CSV (:func:`~featgeo.archetypes.selection.read_stage1_csv`).
    """
    from featgeo.archetypes.selection import (
        CATEGORY_PRIORITY,
        cluster_categories,
        read_stage1_csv,
        selection_thresholds,
    )

    clusters = read_stage1_csv(csv_path, n)
    failures = {c.cluster_id: criteria.filters.failures(c.cells) for c in clusters}
    passing = [c for c in clusters if not failures[c.cluster_id]]
    recon_t = selection_thresholds(c.cells["aanet_recon_loss_elbow_strength"] for c in passing)
    arch_t = selection_thresholds(c.cells["aanet_archetypal_loss_elbow_strength"] for c in passing)
    entries = []
    for c in clusters:
        cells = c.cells
        cats = [] if failures[c.cluster_id] else cluster_categories(c, recon_t, arch_t, criteria)
        entries.append(
            {
                "id": c.cluster_id,
                "n_latents": _int(cells["n_latents"]),
                "latents": c.latent_indices,
                "recon_strength": _num(cells["aanet_recon_loss_elbow_strength"]),
                "arch_strength": _num(cells["aanet_archetypal_loss_elbow_strength"]),
                "recon_elbow_k": _int(cells["aanet_recon_loss_elbow_k"]),
                "arch_elbow_k": _int(cells["aanet_archetypal_loss_elbow_k"]),
                "k_differential": _int(cells["k_differential"]),
                "recommended_k": _int(cells.get("recommended_k")),
                "recommended_criterion": cells.get("recommended_k_criterion") or None,
                "decoder_rank": _int(cells.get("decoder_dir_rank")),
                "pca_rank": _int(cells.get("activation_pca_rank")),
                "cluster_recon_error": _num(cells.get("cluster_recon_error")),
                "recon_pct_decrease": _num(cells["recon_pct_decrease"], 4),
                "arch_pct_decrease": _num(cells["arch_pct_decrease"], 4),
                "failed_filters": failures[c.cluster_id],
                "categories": cats,
                "category": next((k for k in CATEGORY_PRIORITY if k in cats), None),
                "ks": c.ks,
                "recon": [_num(v) for v in c.recon],
                "archetypal": [_num(v) for v in c.archetypal],
                "inside": [_num(v, 4) for v in c.inside],
            }
        )
    return {
        "n_clusters": n,
        "csv": csv_path.name,
        "n_passing": len(passing),
        "thresholds": {
            "recon": _thresholds(recon_t, criteria),
            "arch": _thresholds(arch_t, criteria),
        },
        "clusters": entries,
    }


def training_curves(csv_path: Path, n: int) -> dict[int, dict[int, dict[str, list]]]:
    """Stage 1's ``training_curves_n{n}.jsonl`` (beside the CSV) by cluster id and k: steps and
    the total, recon and archetypal losses. Empty when the file is absent.

    Raises:
        ValueError: a line that is not a curve record.
    """
    from featgeo.archetypes.stage1_files import curves_name

    path = csv_path.with_name(curves_name(n))
    curves: dict[int, dict[int, dict[str, list]]] = {}
    if not path.is_file():
        return curves
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                cid, k = int(record["cluster_id"]), int(record["k"])
                curve = {
                    name: [_num(v, 5) for v in record.get(name) or []]
                    for name in ("loss", "recon", "archetypal")
                }
                curve["step"] = [int(s) for s in record.get("step") or []]
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(
                    f"line {number} of '{path}' is not a training-curve record ({exc}); rerun "
                    "`featgeo aanet stage1 ... --force`"
                ) from None
            curves.setdefault(cid, {})[k] = curve
    return curves


# -- Stage 3 -------------------------------------------------------------------------------------
def read_stage3(stage3_dir: str | os.PathLike, csvs: Mapping[int, Path]) -> dict[str, Any]:
    """A finished Stage 3 run made from the Stage 1 run whose CSVs are ``csvs``.

    Raises:
        FileNotFoundError: no ``stage3.json``, or a selected cluster's files are missing.
        InputError: the run is unfinished, or was made from another Stage 1 run (a CSV whose
            SHA-256 differs from the one Stage 3 recorded, or an n_clusters Stage 1 lacks).
    """
    from featgeo.archetypes.selection import csv_sha256
    from featgeo.archetypes.stage3_files import STAGE3_FILE, n_dir, stem

    folder = Path(stage3_dir)
    path = folder / STAGE3_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"--stage3-dir '{folder}' is not a Stage 3 run (no {STAGE3_FILE}); pass the "
            "folder of a finished `featgeo aanet stage3 --save-dir DIR`, or leave --stage3-dir out"
        )
    try:
        info = read_json(path)
        settings = info["settings"]
        rows = list(settings["rows"])
        shas = {int(n): str(sha) for n, sha in settings["stage1_csv_sha256"].items()}
    except KeyError as exc:
        raise InputError(
            f"--stage3-dir '{folder}': {STAGE3_FILE} lacks its {exc.args[0]!r} entry; rerun "
            "`featgeo aanet stage3 ... --force`"
        ) from None
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise InputError(
            f"--stage3-dir '{folder}': {STAGE3_FILE} is not readable ({exc}); rerun "
            "`featgeo aanet stage3 ... --force`"
        ) from None
    if info.get("status") != "complete":
        raise InputError(
            f"--stage3-dir '{folder}' holds an unfinished Stage 3 run; run the same "
            "`featgeo aanet stage3` command again to finish it"
        )
    for n, sha in sorted(shas.items()):
        if n not in csvs or csv_sha256(csvs[n]) != sha:
            what = f"has no n_clusters={n} CSV" if n not in csvs else f"{csvs[n].name} differs"
            raise InputError(
                f"--stage3-dir '{folder}' was made from another Stage 1 run (Stage 3 read "
                f"'{info.get('csv_dir')}'; here {what}); pass the --stage1-dir that Stage 3 "
                "was run on"
            )
    clusters = {}
    for row in rows:
        n, cid = int(row["n_clusters"]), int(row["cluster_id"])
        base = folder / n_dir(n) / stem(row)
        clusters[f"{n}:{cid}"] = {"row": row, "base": base}
    collected = bool(settings.get("collect_vertex_samples"))
    return {"info": info, "clusters": clusters, "collected": collected}


def _stage3_model(info: Mapping[str, Any], stage1_dir: Path) -> str:
    """The model whose tokenizer made the Stage 3 records: recorded by Stage 3, else Stage 1's
    setting, else the SAE's ``model_name``, else the embedded model."""
    if info.get("model"):
        return str(info["model"])
    stage1 = stage1_dir / "stage1.json"
    try:
        model = read_json(stage1)["settings"].get("model") if stage1.is_file() else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        model = None
    if model:
        return str(model)
    from featgeo.sae.config import SAEConfig

    cfg = Path(str(info.get("sae", ""))) / "cfg.json"
    try:
        model = SAEConfig.from_saelens_cfg(read_json(cfg)).model_name if cfg.is_file() else None
    except (OSError, ValueError, TypeError):
        model = None
    return str(model or "embedded")


class _Pieces:
    """A chunk's token ids -> one text piece per token (what a reader sees of each token), so
    that a trigger's position indexes its piece."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.vocab_size = len(tokenizer)
        self.cache: dict[int, str] = {}

    def __call__(self, ids: list[int]) -> list[str]:
        out = []
        for i in ids:
            if i not in self.cache:
                self.cache[i] = self.tokenizer.decode([i])
            out.append(self.cache[i])
        # A character split over several byte-level tokens decodes to U+FFFD token by token:
        # the run of tokens that completes it is decoded together, its text given to the
        # run's first token (the pieces still join to the chunk's text).
        i = 0
        while i < len(out):
            if "\ufffd" in out[i]:
                for j in range(i + 2, min(i + 4, len(out)) + 1):
                    text = self.tokenizer.decode(ids[i:j])
                    if "\ufffd" not in text:
                        out[i:j] = [text] + [""] * (j - i - 1)
                        i = j - 1
                        break
            i += 1
        return out


def vertex_samples(base: Path, pieces: _Pieces, shown: int) -> dict[str, Any]:
    """One Stage 3 cluster's vertex samples for the page: per vertex its counts, commonest
    trigger words and its ``shown`` records nearest the vertex (smallest trigger distance
    first; 0 = all), each chunk as token pieces with the trigger positions.

    Raises:
        FileNotFoundError: the cluster's ``_vertex_samples.jsonl`` or ``_vertex_stats.json``
            is missing.
        ValueError: a record that is not one of Stage 3's, a token id outside the tokenizer's
            vocabulary, or records that disagree with ``_vertex_stats.json``'s counts.
    """
    from featgeo.archetypes.stage3 import top_trigger_words

    samples = base.with_name(base.name + "_vertex_samples.jsonl")
    stats_path = base.with_name(base.name + "_vertex_stats.json")
    for path in (samples, stats_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"'{path}' is missing from the Stage 3 run; rerun "
                "`featgeo aanet stage3 ... --force`"
            )
    stats = read_json(stats_path)
    by_vertex: dict[int, list[dict[str, Any]]] = {}
    with open(samples, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                triggers = [
                    {"position": int(t["position"]), "distance": _num(t["distance"], 4)}
                    for t in record["triggers"]
                ]
                ids = [int(t) for t in record["token_ids"]]
                entry = {
                    "document": str(record["document"]),
                    "doc_index": int(record["doc_index"]),
                    "chunk_index": int(record["chunk_index"]),
                    "token_ids": ids,
                    "triggers": triggers,
                    "nearest": min(t["distance"] for t in triggers),
                }
                by_vertex.setdefault(int(record["vertex"]), []).append(entry)
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(
                    f"line {number} of '{samples}' is not a vertex-sample record ({exc}); rerun "
                    "`featgeo aanet stage3 ... --force`"
                ) from None
            bad = [t for t in ids if not 0 <= t < pieces.vocab_size]
            if bad:
                raise ValueError(
                    f"line {number} of '{samples}' has token id {bad[0]}, outside the "
                    f"vocabulary ({pieces.vocab_size} tokens) of the tokenizer that made the run; "
                    "rerun `featgeo aanet stage3 ... --force`"
                )
    words = top_trigger_words(samples)
    vertices = []
    for v in stats.get("vertices", []):
        index = int(v["vertex"])
        records = sorted(by_vertex.get(index, []), key=lambda r: r["nearest"])
        if len(records) != int(v.get("records", -1)):
            raise ValueError(
                f"'{samples}' holds {len(records)} records of vertex {index} but "
                f"'{stats_path.name}' counts {v.get('records')}; the run is damaged, rerun "
                "`featgeo aanet stage3 ... --force`"
            )
        kept = records[:shown] if shown else records
        for r in kept:
            r["pieces"] = pieces(r.pop("token_ids"))
        vertices.append(
            {
                "vertex": index,
                "triggers": int(v.get("triggers", 0)),
                "records": len(records),
                "record_triggers": sum(len(r["triggers"]) for r in records),
                "quota_met": bool(v.get("quota_met")),
                "top_words": [[w, int(c)] for w, c in words.get(index, [])],
                "samples": kept,
            }
        )
    keep = ("tokens_scanned", "active_tokens", "threshold", "samples_per_vertex", "stopped")
    return {"stats": {k: stats.get(k) for k in keep}, "vertices": vertices}


# -- sparsity report -----------------------------------------------------------------------------
def sparsity_body(report_dir: str | os.PathLike) -> str:
    """The body of a ``featgeo hamming report`` folder's ``report.html`` (its figures are
    already embedded as data URIs), without its title.

    Raises:
        FileNotFoundError: the folder or its ``report.html`` / ``report.md`` is missing.
    """
    folder = Path(report_dir)
    page = folder / "report.html"
    if not (page.is_file() and (folder / "report.md").is_file()):
        raise FileNotFoundError(
            f"--sparsity-report '{folder}' is not a featgeo report (no report.html and "
            "report.md); pass the folder of `featgeo hamming report --out DIR`"
        )
    if not (folder / "report.md").read_text(encoding="utf-8").startswith(REPORT_TITLE):
        raise InputError(
            f"--sparsity-report '{folder}': report.md is not one of `featgeo hamming report` "
            "(its title differs); pass the --out folder of `featgeo hamming report`"
        )
    text = page.read_text(encoding="utf-8")
    match = re.search(r"<body>(.*)</body>", text, re.S)
    if match is None:
        raise InputError(
            f"--sparsity-report '{folder}': report.html has no body; rebuild it with "
            "`featgeo hamming report`"
        )
    return re.sub(r"^\s*<h1>.*?</h1>", "", match[1], count=1, flags=re.S)


# -- writing -------------------------------------------------------------------------------------
def js_literal(value: Any) -> str:
    """``value`` as a JSON literal for a script, with ``<`` and the JS line separators
    escaped, so that no text of the corpus can end a script or be read as markup."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    for raw, escaped in (("<", "\\u003c"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(raw, escaped)
    return text


def to_js(name: str, value: Any) -> str:
    """``window.NAME = <JSON>;`` (see :func:`js_literal`)."""
    return f"window.{name} = {js_literal(value)};\n"


def _plotly_files() -> tuple[Path, Path]:
    """plotly.js and its licence, from the installed ``plotly`` package."""
    from importlib import metadata

    dist = metadata.distribution("plotly")
    script = Path(str(dist.locate_file("plotly/package_data/plotly.min.js")))
    licence = next(
        (Path(str(dist.locate_file(f))) for f in dist.files or [] if f.name.startswith("LICENSE")),
        None,
    )
    if not script.is_file() or licence is None:
        raise InputError(
            "the plotly package lacks plotly.min.js or its licence; reinstall it with "
            "`pip install --force-reinstall plotly`"
        )
    return script, licence


def _page(title: str, nav: str, body: str, scripts: Iterable[str] = ()) -> str:
    tags = "".join(f'<script src="{html.escape(s)}"></script>\n' for s in scripts)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n"
        '<link rel="stylesheet" href="assets/review.css">\n</head>\n<body>\n'
        f"<nav>{nav}</nav>\n<h1>{html.escape(title)}</h1>\n{body}\n{tags}</body>\n</html>\n"
    )


def _nav(pages: list[tuple[str, str]]) -> str:
    links = [("index.html", "Overview"), *pages]
    return " · ".join(f'<a href="{href}">{html.escape(name)}</a>' for href, name in links)


def build_review(
    out: str | os.PathLike = "review",
    *,
    stage1_dir: str | os.PathLike | None = None,
    stage3_dir: str | os.PathLike | None = None,
    sparsity_report: str | os.PathLike | None = None,
    criteria=None,
    samples_shown: int = SAMPLES_SHOWN,
) -> ReviewResult:
    """Write the review site into ``out`` (see the module docstring).

    Args:
        out: the site's folder: new, empty, or an earlier review site (replaced whole).
        stage1_dir: ``featgeo aanet stage1 --save-dir`` (the AANet page).
        stage3_dir: ``featgeo aanet stage3 --save-dir`` of that Stage 1 run (vertex samples).
        sparsity_report: ``featgeo hamming report --out`` (the sparsity page).
        criteria: :class:`~featgeo.archetypes.selection.SelectionCriteria` for the categories
            and thresholds (SPEC §3 defaults).
        samples_shown: vertex samples shown per vertex, nearest first (0 = all).

    Raises:
        ValueError: neither ``stage1_dir`` nor ``sparsity_report``; ``stage3_dir`` without
            ``stage1_dir``; a negative ``samples_shown``; a malformed input.
        FileNotFoundError: a missing input (see :func:`stage1_csvs`, :func:`read_stage3`,
            :func:`sparsity_body`).
        InputError: ``out`` cannot be written; a Stage 3 run of another Stage 1 run.
    """
    from featgeo.archetypes.selection import SelectionCriteria

    if stage3_dir is not None and stage1_dir is None:
        raise ValueError("--stage3-dir needs --stage1-dir (the Stage 1 run it was made from)")
    if stage1_dir is None and sparsity_report is None:
        raise ValueError(
            "nothing to review: pass --stage1-dir (the AANet page) and/or --sparsity-report "
            "(the sparsity page)"
        )
    given = {"--out": out, "--stage1-dir": stage1_dir, "--stage3-dir": stage3_dir,
             "--sparsity-report": sparsity_report}  # fmt: skip
    for option, value in given.items():
        if value is not None and not str(value).strip():
            raise ValueError(f"{option} is empty; pass a folder path")
    if isinstance(samples_shown, bool) or not isinstance(samples_shown, int) or samples_shown < 0:
        raise ValueError(f"--samples-shown must be an integer >= 0, got {samples_shown!r}")
    criteria = criteria or SelectionCriteria()
    out = Path(out)
    check_output_dir(out, "--out", signature=(MARKER,), contents=SITE_CONTENTS)
    check_writable_dir(out, "--out")
    # every input is found and checked before the first write (vertex samples are read while
    # writing: a broken file then fails the build, and staging_dir leaves no trace of it)
    csvs = stage1_csvs(stage1_dir) if stage1_dir is not None else {}
    stage3 = read_stage3(stage3_dir, csvs) if stage3_dir is not None else None
    report = sparsity_body(sparsity_report) if sparsity_report is not None else None
    summaries = {n: aanet_summary(path, n, criteria) for n, path in csvs.items()}
    plotly_js, plotly_licence = _plotly_files()
    pieces = None
    if stage3 is not None and stage3["collected"]:
        from featgeo.models.loading import load_tokenizer

        pieces = _Pieces(load_tokenizer(_stage3_model(stage3["info"], Path(stage1_dir))))
    stage3_keys = sorted(stage3["clusters"]) if stage3 is not None else []

    pages = ([("aanet.html", "AANet clusters")] if csvs else []) + (
        [("sparsity.html", "Sparsity patterns")] if report is not None else []
    )
    nav = _nav(pages)
    result = ReviewResult(out, [p for p, _ in pages], list(csvs))
    with staging_dir(out) as stage:
        copy_file(plotly_js, stage / "vendor" / "plotly.min.js")
        copy_file(plotly_licence, stage / "vendor" / "plotly-LICENSE.txt")
        for asset in ("review.css", "aanet.js"):
            copy_file(ASSETS / asset, stage / "assets" / asset)
        if csvs:
            _write_aanet(stage, nav, summaries, csvs, stage3, pieces, samples_shown, criteria)
            result.n_shown = {n: len(s["clusters"]) for n, s in summaries.items()}
            result.stage3_clusters = stage3_keys
        if report is not None:
            write_text(stage / "sparsity.html", _page("Sparsity patterns", nav, report))
        sources = {
            "stage1_dir": None if stage1_dir is None else str(stage1_dir),
            "stage3_dir": None if stage3_dir is None else str(stage3_dir),
            "sparsity_report": None if sparsity_report is None else str(sparsity_report),
        }
        write_text(stage / "index.html", _index(nav, pages, sources, summaries, stage3_keys))
        from featgeo.archetypes.stage1 import versions

        write_json(
            stage / MARKER,
            {
                **versions(),
                **sources,
                "pages": result.pages,
                "criteria": criteria.to_dict(),
                "n_clusters": list(csvs),
                "stage3_clusters": stage3_keys,
                "samples_shown": samples_shown,
            },
        )
    return result


def _write_aanet(stage, nav, summaries, csvs, stage3, pieces, shown, criteria) -> None:
    """``aanet.html``, ``data/review.js`` (the scatter data) and one ``data/clusters/n{n}/
    c{cid}.js`` per cluster (its training curves and vertex samples, loaded on click)."""
    s3 = stage3["clusters"] if stage3 is not None else {}
    for n, summary in summaries.items():
        curves = training_curves(csvs[n], n)
        for entry in summary["clusters"]:
            key = f"{n}:{entry['id']}"
            detail: dict[str, Any] = {"training": curves.get(entry["id"], {})}
            if key in s3:
                row = s3[key]["row"]
                entry["stage3"] = {
                    "category": row.get("category"),
                    "refit_k": row.get("refit_k"),
                    "samples": pieces is not None,
                }
                if pieces is not None:
                    detail["vertex_samples"] = vertex_samples(s3[key]["base"], pieces, shown)
            write_text(
                stage / "data" / "clusters" / f"n{n}" / f"c{entry['id']}.js",
                f"featgeoReview.clusterLoaded({n}, {entry['id']}, {js_literal(detail)});\n",
            )
    meta = {
        "criteria": criteria.to_dict(),
        "colors": CATEGORY_COLORS,
        "samples_shown": shown,
        "stage3": stage3 is not None,
        "n_clusters": list(summaries),
        "summaries": list(summaries.values()),
    }
    write_text(stage / "data" / "review.js", to_js("FEATGEO_REVIEW", meta))
    body = (ASSETS / "aanet_body.html").read_text(encoding="utf-8")
    write_text(
        stage / "aanet.html",
        _page(
            "AANet clusters",
            nav,
            body,
            ["vendor/plotly.min.js", "data/review.js", "assets/aanet.js"],
        ),
    )


def _index(nav, pages, sources, summaries, stage3_keys) -> str:
    items = []
    for href, name in pages:
        items.append(f'<li><a href="{href}">{html.escape(name)}</a></li>')
    facts = []
    for n, s in summaries.items():
        facts.append(
            f"<li>n_clusters = {n}: {len(s['clusters'])} clusters, {s['n_passing']} pass the "
            "quality filters</li>"
        )
    if stage3_keys:
        facts.append(f"<li>{len(stage3_keys)} clusters with Stage 3 results</li>")
    made = "".join(
        f"<li>{html.escape(k)}: <code>{html.escape(str(Path(v).resolve()))}</code></li>"
        for k, v in sources.items()
        if v is not None
    )
    contents = f'<h2>Contents</h2>\n<ul>{"".join(facts)}</ul>\n' if facts else ""
    body = (
        f'<ul class="pages">{"".join(items)}</ul>\n{contents}'
        f"<h2>Built from</h2>\n<ul>{made}</ul>\n"
        '<p class="note">Opens from disk: no server, no network. plotly.js is vendored in '
        "<code>vendor/</code> with its licence.</p>"
    )
    return _page("featgeo review", nav, body)


__all__ = [
    "CATEGORY_COLORS",
    "MARKER",
    "ReviewResult",
    "aanet_summary",
    "build_review",
    "read_stage3",
    "sparsity_body",
    "stage1_csvs",
    "js_literal",
    "to_js",
    "training_curves",
    "vertex_samples",
]
