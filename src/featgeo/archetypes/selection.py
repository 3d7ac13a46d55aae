"""Stage 2 of seed 002: choose the latent clusters worth refitting and interpreting (SPEC §3).

    from featgeo.archetypes.selection import SelectionCriteria, select_clusters

    selection = select_clusters("outputs/real_data_analysis_canonical", [512, 768])
    selection.frame()          # pandas DataFrame, one row per selected cluster

For every n it reads Stage 1's ``consolidated_metrics_n{n}.csv`` (one row per (cluster, k)),
keeps the clusters passing the quality filters (:class:`~featgeo.archetypes.quality.
QualityFilters`), takes the mean mu and population std sigma of each elbow strength over those
clusters, and puts a cluster in

- **A** when both strengths exceed mu + ``sigma_a`` sigma (strong on both axes),
- **B** when the recon strength exceeds mu + ``sigma_bc`` sigma (reconstruction outlier),
- **C** when the archetypal strength exceeds mu + ``sigma_bc`` sigma (archetypal outlier),
- **D** when ``k_differential == 0`` and both strengths exceed mu (the elbows agree).

A cluster in several categories gets the first of the seed's priority A > D > B > C. Clusters
of the ``manual`` list come first, with category **M**, whether or not they pass the filters.
Each selected cluster is refit at its archetypal elbow k (``refit_k="arch"``, the seed's rule),
its recon elbow k (``"recon"``) or the k of a :mod:`featgeo.archetypes.criteria` criterion
read off its loss curves in the CSV.

In the seed these thresholds were constants in ``select_promising_clusters()``; here they are
the fields of :class:`SelectionCriteria` (and the options of ``featgeo aanet select``).
"""

from __future__ import annotations

import csv
import hashlib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featgeo.archetypes.consolidated import SEED_COLUMNS
from featgeo.archetypes.engine import STATUSES
from featgeo.archetypes.quality import QualityFilters, cell_flag, cell_number
from featgeo.errors import InputError

CATEGORY_PRIORITY = ("M", "A", "D", "B", "C")
"""Order of the selected list: the manual list, then the seed's A > D > B > C."""
REFIT_RULES = ("arch", "recon")
"""``refit_k`` values besides criterion names: the archetypal or the recon elbow k."""
FILTER_OPTIONS = {
    "min_latents": "--min-latents",
    "monotonic": "--no-require-monotonic",
    "pct_decrease": "--min-pct-decrease",
    "k_differential": "--max-k-differential",
}
"""The option that relaxes each quality filter (named in "no clusters selected")."""
_NOT_READ = ("n_clusters_total", "aanet_loss", "aanet_extrema_loss", "decoder_dir_rank",
             "activation_pca_rank", "cluster_recon_error", "sae_id", "average_l0")  # fmt: skip
REQUIRED_COLUMNS = tuple(c for c in SEED_COLUMNS if c not in _NOT_READ)
"""Columns of ``consolidated_metrics_n{n}.csv`` that selection reads."""
SELECTION_COLUMNS = [
    "n_clusters",
    "cluster_id",
    "category",
    "categories",
    "refit_k",
    "refit_k_source",
    "n_latents",
    "latent_indices",
    "aanet_recon_loss_elbow_k",
    "aanet_recon_loss_elbow_strength",
    "aanet_archetypal_loss_elbow_k",
    "aanet_archetypal_loss_elbow_strength",
    "k_differential",
    "passes_quality_filters",
]
"""Columns of the selection table (``featgeo aanet select --out``): one row per selected
cluster. ``category`` is the chosen one, ``categories`` every one it qualifies for (space
separated, priority order), ``refit_k_source`` the rule that gave ``refit_k``."""


def csv_name(n: int) -> str:
    return f"consolidated_metrics_n{n}.csv"


@dataclass(frozen=True)
class SelectionCriteria:
    """Every threshold of the selection (SPEC §3 defaults)."""

    filters: QualityFilters = field(default_factory=QualityFilters)
    sigma_a: float = 1.0
    """Category A: both strengths above mu + sigma_a * sigma."""
    sigma_bc: float = 3.0
    """Categories B and C: one strength above mu + sigma_bc * sigma."""
    manual: tuple[tuple[int, int], ...] = ()
    """(n_clusters, cluster_id) pairs selected first (category M), filters or not; repeats are
    dropped."""
    refit_k: str = "arch"
    """"arch", "recon" or a criterion name of :mod:`featgeo.archetypes.criteria`."""

    def __post_init__(self) -> None:
        from featgeo.archetypes.criteria import CRITERIA

        if not isinstance(self.filters, QualityFilters):
            raise TypeError(f"filters must be QualityFilters, got {type(self.filters).__name__}")
        for name in ("sigma_a", "sigma_bc"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
            ):
                option = "--" + name.replace("_", "-")
                raise ValueError(f"{option} must be a finite number, got {value!r}")
        if self.refit_k not in REFIT_RULES and self.refit_k not in CRITERIA:
            raise ValueError(
                f"--refit-k {self.refit_k!r} is not one of {[*REFIT_RULES, *sorted(CRITERIA)]}; "
                "use arch (the seed's rule), recon or a k criterion"
            )
        pairs = ((int(n), int(c)) for n, c in self.manual)
        object.__setattr__(self, "manual", tuple(dict.fromkeys(pairs)))  # repeats dropped

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["manual"] = [list(pair) for pair in self.manual]
        return out


def parse_manual(text: str | None, n_clusters: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """``--manual``: comma-separated ``N:ID`` (or plain ``ID`` when only one n is run).

    Raises:
        ValueError: a malformed entry, or a plain id with several n_clusters values.
    """
    if text is None or not text.strip():
        return ()
    out = []
    for item in (part.strip() for part in text.split(",")):
        match = re.fullmatch(r"(?:(\d+):)?(\d+)", item)
        if not match:
            raise ValueError(
                f"--manual entry {item!r} is not a cluster id; write IDs or N:ID, e.g. "
                "--manual 512:3,768:10"
            )
        if match[1] is None and len(n_clusters) != 1:
            raise ValueError(
                f"--manual {item} is ambiguous with several n_clusters {list(n_clusters)}; "
                f"write N:ID, e.g. --manual {n_clusters[0]}:{item}"
            )
        n = int(match[1]) if match[1] is not None else int(n_clusters[0])
        if n not in n_clusters:
            raise ValueError(
                f"--manual {item}: n_clusters {n} is not in --n-clusters-list {list(n_clusters)}"
            )
        pair = (n, int(match[2]))
        if pair not in out:
            out.append(pair)
    return tuple(out)


def selection_thresholds(values: Iterable[Any]) -> dict[str, float]:
    """SPEC §3 thresholds over the finite ``values`` (one elbow strength per cluster passing
    the quality filters): ``mu`` (mean), ``sigma`` (std), ``one_sigma`` (mu + sigma) and
    ``three_sigma`` (mu + 3 sigma); all NaN when no value is finite.

    sigma is the population std (``ddof=0``): SPEC §3 only says "mu/sigma over the filtered
    set", and featgeo reports population stds everywhere (pandas' ``Series.std`` would be
    ``ddof=1``).
    """
    array = np.array([cell_number(v) for v in values], dtype=np.float64)
    finite = array[np.isfinite(array)]
    if not finite.size:
        return dict.fromkeys(("mu", "sigma", "one_sigma", "three_sigma"), math.nan)
    peak = float(np.abs(finite).max())
    scale = peak if peak > 1e100 else 1.0  # huge strengths would overflow the squares
    mu = float((finite / scale).mean()) * scale
    sigma = float((finite / scale).std(ddof=0)) * scale
    return {"mu": mu, "sigma": sigma, "one_sigma": mu + sigma, "three_sigma": mu + 3 * sigma}


# -- reading Stage 1's CSV ----------------------------------------------------------------------
@dataclass
class Stage1Cluster:
    """One cluster of a Stage 1 CSV: its cluster-level cells and its loss curves over k."""

    n_clusters: int
    cluster_id: int
    cells: dict[str, str]
    """The cluster's first row (cluster-level columns repeat on every k row)."""
    ks: list[int]
    recon: list[float]
    archetypal: list[float]
    inside: list[float]

    @property
    def latent_indices(self) -> list[int]:
        return [int(v) for v in self.cells["latent_indices"].split()]


def find_csv(csv_dir: str | Path, n: int) -> Path:
    """``{csv_dir}/clusters_{n}/consolidated_metrics_n{n}.csv`` (Stage 1's layout) or the file
    directly in ``csv_dir``.

    Raises:
        FileNotFoundError: "CSV not found", naming the file and the folders searched.
    """
    csv_dir = Path(csv_dir)
    if not csv_dir.is_dir():
        raise FileNotFoundError(
            f"--csv-dir '{csv_dir}' is not a folder; pass the output folder of a finished "
            "`featgeo aanet stage1 --save-dir ...`"
        )
    places = [csv_dir / f"clusters_{n}", csv_dir]
    for place in places:
        if (place / csv_name(n)).is_file():
            return place / csv_name(n)
    raise FileNotFoundError(
        f"CSV not found: no {csv_name(n)} in {places[0]} or {places[1]}; point --csv-dir at the "
        f"output folder of a finished `featgeo aanet stage1 --save-dir ...` that ran "
        f"n_clusters={n}"
    )


def read_stage1_csv(path: str | Path, n: int) -> list[Stage1Cluster]:
    """The clusters of one Stage 1 CSV, by cluster id, each with its losses by k.

    Raises:
        ValueError: missing columns (e.g. no elbow metrics), a malformed cell, or rows of
            another n_clusters.
    """
    path = Path(path)
    rows = _read_csv(path, REQUIRED_COLUMNS, str(path), "selection reads the elbow metrics of "
                     "`featgeo aanet stage1`: rerun Stage 1 to write a complete CSV")  # fmt: skip
    if not rows:
        raise ValueError(f"{path} has no rows; rerun Stage 1 for n_clusters={n}")
    clusters: dict[int, Stage1Cluster] = {}
    for line, row in rows:
        try:
            cid, k = _check_row(row, n)
            cluster = clusters.setdefault(cid, Stage1Cluster(n, cid, dict(row), [], [], [], []))
            changed = [c for c in _CLUSTER_CELLS if row[c] != cluster.cells[c]]
            if changed:
                raise ValueError(f"cluster {cid}'s {changed[0]} differs from its first row")
            if k in cluster.ks:
                raise ValueError(f"cluster {cid} k={k} is repeated")
        except (ValueError, TypeError, AttributeError) as exc:
            raise ValueError(
                f"{path} line {line} is malformed ({exc}); rerun Stage 1 for n_clusters={n}"
            ) from None
        cluster.ks.append(k)
        ok = row["aanet_status"] == "ok"
        cluster.recon.append(cell_number(row["aanet_recon_loss"]) if ok else math.nan)
        cluster.archetypal.append(cell_number(row["aanet_archetypal_loss"]) if ok else math.nan)
        cluster.inside.append(cell_number(row.get("inside_fraction")))
    for cluster in clusters.values():
        order = np.argsort(cluster.ks)
        for name in ("ks", "recon", "archetypal", "inside"):
            setattr(cluster, name, [getattr(cluster, name)[i] for i in order])
    ks = sorted({k for cluster in clusters.values() for k in cluster.ks})
    for cluster in clusters.values():
        elbows = [cell_number(cluster.cells[c]) for c in _ELBOW_K_CELLS]
        if cluster.ks != ks or any(math.isfinite(e) and int(e) not in ks for e in elbows):
            raise ValueError(
                f"{path} is malformed: cluster {cluster.cluster_id} has models for k = "
                f"{cluster.ks} and elbows {elbows}, the file k = {ks}; rerun Stage 1"
            )
        if all(math.isfinite(e) for e in elbows):
            diff = cell_number(cluster.cells["k_differential"])
            if diff != abs(elbows[0] - elbows[1]):
                raise ValueError(
                    f"{path} is malformed: cluster {cluster.cluster_id} has k_differential "
                    f"{cluster.cells['k_differential']!r} but elbows {elbows}; rerun Stage 1"
                )
    return [clusters[c] for c in sorted(clusters)]


_CLUSTER_CELLS = [c for c in REQUIRED_COLUMNS
                  if c not in ("aanet_k", "aanet_status", "aanet_recon_loss",
                               "aanet_archetypal_loss")]  # fmt: skip
"""The cluster-level cells selection reads; they repeat on each of a cluster's rows."""
_ELBOW_K_CELLS = ("aanet_recon_loss_elbow_k", "aanet_archetypal_loss_elbow_k")
_NUMBER_CELLS = ("aanet_recon_loss", "aanet_archetypal_loss", "aanet_recon_loss_elbow_strength",
                 "aanet_archetypal_loss_elbow_strength", "recon_pct_decrease",
                 "arch_pct_decrease")  # fmt: skip
_INT_CELLS = (*_ELBOW_K_CELLS, "k_differential")
_LOSS_CELLS = ("aanet_recon_loss", "aanet_archetypal_loss")
_FLAG_CELLS = ("recon_is_monotonic", "arch_is_monotonic")


def _check_row(row: dict[str, str | None], n: int) -> tuple[int, int]:
    """(cluster id, k) of one Stage 1 CSV row whose cells all parse; ValueError naming the
    first cell that does not (a missing cell, text in a number, a non-integer k, ...)."""
    if None in row or any(v is None for v in row.values()):
        raise ValueError("wrong number of fields (a truncated or edited line?)")
    cid, k = int(row["cluster_id"]), int(row["aanet_k"])
    if cid < 0 or k < 2:
        raise ValueError(f"cluster_id {cid} / aanet_k {k} out of range")
    if row["aanet_status"] not in STATUSES:
        raise ValueError(f"aanet_status {row['aanet_status']!r} is not one of {STATUSES}")
    total = row.get("n_clusters_total")
    if total not in (None, "") and int(total) != n:
        raise ValueError(f"n_clusters_total {total} is not {n}")
    latents = [int(v) for v in row["latent_indices"].split()]
    if int(row["n_latents"]) != len(latents):
        raise ValueError(f"n_latents {row['n_latents']} but {len(latents)} latent_indices")
    if len(set(latents)) != len(latents) or min(latents, default=0) < 0:
        raise ValueError("latent_indices must be distinct ids >= 0")
    for column in (*_NUMBER_CELLS, *_INT_CELLS):  # empty: undefined (an untrained model)
        cell = row[column].strip()
        if cell and not math.isfinite(cell_number(cell)):
            raise ValueError(f"{column} {cell!r} is not a finite number")
        if cell and cell_number(cell) < 0:
            raise ValueError(f"{column} {cell!r} is negative")
        if not cell and row["aanet_status"] == "ok" and column in _LOSS_CELLS:
            raise ValueError(f"{column} is empty on a trained ('ok') model")
        if cell and column in _INT_CELLS and cell_number(cell) != int(cell_number(cell)):
            raise ValueError(f"{column} {cell!r} is not an integer")
    for column in _FLAG_CELLS:
        if row[column].strip() not in ("True", "False"):
            raise ValueError(f"{column} {row[column]!r} is not True or False")
    inside = (row.get("inside_fraction") or "").strip()
    if inside and not 0 <= cell_number(inside) <= 1:
        raise ValueError(f"inside_fraction {inside!r} is not a number in [0, 1]")
    return cid, k


def _read_csv(
    path: Path, required: Sequence[str], name: str, fix: str
) -> list[tuple[int, dict[str, str]]]:
    """(line number in the file, row) of a CSV that must have ``required`` columns; errors name
    the file and the fix."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            rows = [(reader.line_num, row) for row in reader]
            columns = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{name} is not a readable CSV ({exc}); {fix}") from None
    missing = [c for c in required if c not in columns]
    if missing:
        raise ValueError(f"{name} has no column(s) {', '.join(missing)}; {fix}")
    return rows


def csv_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# -- selecting ----------------------------------------------------------------------------------
@dataclass
class NSelection:
    """What selection found for one n_clusters value."""

    n_clusters: int
    csv: Path
    csv_sha256: str
    n_clusters_found: int
    filter_failures: dict[str, int]
    """Clusters failing each quality filter (a cluster may fail several)."""
    n_passing: int
    recon_thresholds: dict[str, float]
    arch_thresholds: dict[str, float]
    category_counts: dict[str, int]
    """Selected clusters per chosen category."""


@dataclass
class Selection:
    """The selected clusters (:data:`SELECTION_COLUMNS` rows) and how they were found."""

    rows: list[dict[str, Any]]
    per_n: list[NSelection]
    criteria: SelectionCriteria
    clusters: dict[tuple[int, int], Stage1Cluster] = field(repr=False, default_factory=dict)
    """Every cluster read, by (n_clusters, cluster_id)."""

    def frame(self):
        """The rows as a pandas DataFrame (columns :data:`SELECTION_COLUMNS`)."""
        import pandas as pd

        return pd.DataFrame(self.rows, columns=SELECTION_COLUMNS)

    def info(self) -> dict[str, Any]:
        """JSON summary: criteria and, per n, counts and thresholds."""
        return {
            "criteria": self.criteria.to_dict(),
            "per_n": [{**asdict(s), "csv": str(s.csv)} for s in self.per_n],
        }


class NoClustersSelected(InputError):
    """Selection kept nothing; the message gives each filter's removals."""


def select_clusters(
    csv_dir: str | Path,
    n_clusters: Sequence[int],
    criteria: SelectionCriteria | None = None,
) -> Selection:
    """Select clusters from Stage 1's CSVs (see the module docstring).

    Args:
        csv_dir: Stage 1's ``--save-dir`` (holding ``clusters_{n}/consolidated_metrics_n{n}.csv``).
        n_clusters: the n values to read.
        criteria: thresholds, manual list and refit rule (SPEC §3 defaults).

    Returns:
        :class:`Selection`, rows ordered by n, then category priority (manual first, in the
        list's order; then by the sum of both strengths, strongest first; then cluster id).

    Raises:
        FileNotFoundError: "CSV not found" for an n.
        ValueError: a CSV without elbow columns or malformed; a manual cluster that is not in
            its CSV or has no refit k.
        NoClustersSelected: nothing selected; the message counts what each filter removed.
    """
    from featgeo.latents.run import parse_n_clusters

    criteria = criteria or SelectionCriteria()
    if not isinstance(criteria, SelectionCriteria):
        raise TypeError(f"criteria must be SelectionCriteria, got {type(criteria).__name__}")
    n_values = sorted(parse_n_clusters(list(n_clusters)))
    stray = [pair for pair in criteria.manual if pair[0] not in n_values]
    if stray:
        raise ValueError(
            f"manual cluster {stray[0][0]}:{stray[0][1]} names n_clusters={stray[0][0]}, which is "
            f"not among {n_values}; add it to --n-clusters-list or drop it from --manual"
        )
    paths = {n: find_csv(csv_dir, n) for n in n_values}  # every missing CSV before any work
    rows, per_n, everything = [], [], {}
    for n in n_values:
        clusters = read_stage1_csv(paths[n], n)
        everything.update({(n, c.cluster_id): c for c in clusters})
        n_rows, summary = _select_n(n, clusters, criteria, paths[n])
        rows += n_rows
        per_n.append(summary)
    if not rows:
        raise NoClustersSelected(_nothing_selected(per_n, criteria))
    return Selection(rows, per_n, criteria, everything)


def _select_n(n, clusters, criteria, path) -> tuple[list[dict], NSelection]:
    filters = criteria.filters
    by_id = {c.cluster_id: c for c in clusters}
    for pair in criteria.manual:
        if pair[0] == n and pair[1] not in by_id:
            raise ValueError(
                f"--manual {n}:{pair[1]}: {path.name} has no cluster {pair[1]} (ids "
                f"{min(by_id)}..{max(by_id)}); fix the list"
            )
    failures = {name: 0 for name in FILTER_OPTIONS}
    passing = []
    for c in clusters:
        failed = filters.failures(c.cells)
        for name in failed:
            failures[name] += 1
        if not failed:
            passing.append(c)
    recon_t = selection_thresholds(c.cells["aanet_recon_loss_elbow_strength"] for c in passing)
    arch_t = selection_thresholds(c.cells["aanet_archetypal_loss_elbow_strength"] for c in passing)
    chosen: list[tuple[Stage1Cluster, list[str]]] = []
    manual_ids = [cid for m, cid in criteria.manual if m == n]
    for cid in manual_ids:  # categories are defined over the filtered set only
        cid_cats = cluster_categories(by_id[cid], recon_t, arch_t, criteria)
        cats = cid_cats if by_id[cid] in passing else []
        chosen.append((by_id[cid], ["M", *cats]))
    ranked = []
    for c in passing:
        if c.cluster_id in manual_ids:
            continue
        cats = cluster_categories(c, recon_t, arch_t, criteria)
        if cats:
            ranked.append((c, cats))
    ranked.sort(
        key=lambda item: (
            CATEGORY_PRIORITY.index(item[1][0]),
            -_strength_sum(item[0]),
            item[0].cluster_id,
        )
    )
    chosen += ranked
    rows = [_row(n, c, cats, criteria, passing) for c, cats in chosen]
    counts = {cat: sum(r["category"] == cat for r in rows) for cat in CATEGORY_PRIORITY}
    summary = NSelection(
        n, path, csv_sha256(path), len(clusters), failures, len(passing), recon_t, arch_t, counts
    )
    return rows, summary


def cluster_categories(
    c: Stage1Cluster, recon_t: Mapping[str, float], arch_t: Mapping[str, float], criteria
) -> list[str]:
    """Every category of SPEC §3 that cluster ``c`` meets, in priority order, given the
    :func:`selection_thresholds` of both strengths over the clusters passing the filters
    (whether ``c`` passes them is the caller's question)."""
    r = cell_number(c.cells["aanet_recon_loss_elbow_strength"])
    a = cell_number(c.cells["aanet_archetypal_loss_elbow_strength"])
    diff = cell_number(c.cells["k_differential"])
    mu_r, s_r, mu_a, s_a = recon_t["mu"], recon_t["sigma"], arch_t["mu"], arch_t["sigma"]
    found = []
    if r > mu_r + criteria.sigma_a * s_r and a > mu_a + criteria.sigma_a * s_a:
        found.append("A")
    if diff == 0 and r > mu_r and a > mu_a:
        found.append("D")
    if r > mu_r + criteria.sigma_bc * s_r:
        found.append("B")
    if a > mu_a + criteria.sigma_bc * s_a:
        found.append("C")
    return found  # comparisons with NaN are False: no category without thresholds


def _strength_sum(c: Stage1Cluster) -> float:
    # only clusters that pass the filters are ranked, and their strengths are finite
    return cell_number(c.cells["aanet_recon_loss_elbow_strength"]) + cell_number(
        c.cells["aanet_archetypal_loss_elbow_strength"]
    )


def refit_k(c: Stage1Cluster, rule: str) -> int | None:
    """The k a selected cluster is refit at by ``rule`` (None when undefined)."""
    from featgeo.archetypes.criteria import select_k

    if rule in REFIT_RULES:
        column = "aanet_archetypal_loss_elbow_k" if rule == "arch" else "aanet_recon_loss_elbow_k"
        value = cell_number(c.cells[column])
        return int(value) if math.isfinite(value) else None
    inside = c.inside if all(math.isfinite(v) for v in c.inside) else None
    try:
        return select_k(c.recon, c.archetypal, c.ks, rule, inside=inside).k
    except ValueError:  # e.g. a criterion that needs inside fractions the CSV lacks
        return None


def _row(n, c: Stage1Cluster, cats: list[str], criteria, passing) -> dict[str, Any]:
    k = refit_k(c, criteria.refit_k)
    if k is None:
        raise ValueError(
            f"cluster {c.cluster_id} of n_clusters={n} has no {criteria.refit_k} k (its models "
            f"were not all trained, see {csv_name(n)}); "
            + ("drop it from --manual or choose " if cats[0] == "M" else "choose ")
            + "another --refit-k"
        )
    cells = c.cells
    return {
        "n_clusters": n,
        "cluster_id": c.cluster_id,
        "category": cats[0],
        "categories": " ".join(cats),
        "refit_k": int(k),
        "refit_k_source": criteria.refit_k,
        "n_latents": int(cells["n_latents"]),
        "latent_indices": cells["latent_indices"],
        "aanet_recon_loss_elbow_k": _int_or_none(cells["aanet_recon_loss_elbow_k"]),
        "aanet_recon_loss_elbow_strength": cell_number(cells["aanet_recon_loss_elbow_strength"]),
        "aanet_archetypal_loss_elbow_k": _int_or_none(cells["aanet_archetypal_loss_elbow_k"]),
        "aanet_archetypal_loss_elbow_strength": cell_number(
            cells["aanet_archetypal_loss_elbow_strength"]
        ),
        "k_differential": _int_or_none(cells["k_differential"]),
        "passes_quality_filters": any(p is c for p in passing),
    }


def _int_or_none(cell: str) -> int | None:
    value = cell_number(cell)
    return int(value) if math.isfinite(value) else None


def _nothing_selected(per_n: Sequence[NSelection], criteria: SelectionCriteria) -> str:
    parts = []
    for s in per_n:
        removed = ", ".join(
            f"{name} removed {count} ({FILTER_OPTIONS[name]})"
            for name, count in s.filter_failures.items()
        )
        parts.append(
            f"n={s.n_clusters}: {s.n_clusters_found} clusters, {removed}; {s.n_passing} passed "
            "and none beat the category thresholds"
            if s.n_passing
            else f"n={s.n_clusters}: {s.n_clusters_found} clusters, {removed}; none passed"
        )
    return (
        "No clusters selected (" + "; ".join(parts) + "). Relax the filter that removes the "
        f"most, lower --sigma-a {criteria.sigma_a:g} / --sigma-bc {criteria.sigma_bc:g}, or name "
        "clusters with --manual"
    )


# -- the selection table as a file --------------------------------------------------------------
def selection_cells(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Rows as CSV text cells (floats in shortest round-trip form, empty for missing)."""
    from featgeo.archetypes.consolidated import csv_cell

    return [{c: csv_cell(row.get(c)) for c in SELECTION_COLUMNS} for row in rows]


def check_selection_out(path: str | Path | None) -> None:
    """Refuse, before any work, an ``--out`` that cannot be written or that holds something
    other than an earlier selection table (a Stage 1 CSV, say): only tables are replaced."""
    from featgeo.files import check_output_file, check_writable_dir

    if path is None:
        return
    path = Path(path)
    check_output_file(path, "--out")
    check_writable_dir(path.parent, "--out")
    run = next((p for p in (path.parent, path.parent.parent) if (p / "stage3.json").is_file()),
               None)  # fmt: skip
    if path.exists() and run is not None:
        raise FileExistsError(
            f"--out '{path}' belongs to the Stage 3 run in '{run}' (its record of what it "
            "selected); pass a path outside it"
        )
    if path.exists():
        with open(path, encoding="utf-8", errors="replace") as fh:
            header = fh.readline().strip()
        if header != ",".join(SELECTION_COLUMNS):
            raise FileExistsError(
                f"--out '{path}' exists and is not a selection table of `featgeo aanet select`; "
                "pass a new file path"
            )


def read_selection(path: str | Path, n_clusters: Sequence[int]) -> list[dict[str, Any]]:
    """Rows of a selection CSV written by ``featgeo aanet select --out`` for ``n_clusters``.

    Raises:
        FileNotFoundError / ValueError: no such file, missing columns, malformed cells.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(
            f"--selection '{path}' is a folder; pass the CSV of `featgeo aanet select --out`"
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"--selection '{path}' does not exist; write it with `featgeo aanet select --out`"
        )
    cells = _read_csv(path, SELECTION_COLUMNS, f"--selection '{path}'",
                      "write it with `featgeo aanet select --out`")  # fmt: skip
    rows = []
    for line, cell in cells:
        try:
            row = {
                "n_clusters": int(cell["n_clusters"]),
                "cluster_id": int(cell["cluster_id"]),
                "category": cell["category"],
                "categories": cell["categories"],
                "refit_k": int(cell["refit_k"]),
                "refit_k_source": cell["refit_k_source"],
                "n_latents": int(cell["n_latents"]),
                "latent_indices": cell["latent_indices"],
                "aanet_recon_loss_elbow_k": _int_or_none(cell["aanet_recon_loss_elbow_k"]),
                "aanet_recon_loss_elbow_strength": cell_number(
                    cell["aanet_recon_loss_elbow_strength"]
                ),
                "aanet_archetypal_loss_elbow_k": _int_or_none(
                    cell["aanet_archetypal_loss_elbow_k"]
                ),
                "aanet_archetypal_loss_elbow_strength": cell_number(
                    cell["aanet_archetypal_loss_elbow_strength"]
                ),
                "k_differential": _int_or_none(cell["k_differential"]),
                "passes_quality_filters": cell_flag(cell["passes_quality_filters"]),
            }
            [int(v) for v in row["latent_indices"].split()]
            if row["category"] not in CATEGORY_PRIORITY or row["refit_k"] < 2:
                raise ValueError(f"category {row['category']!r}, refit_k {row['refit_k']}")
        except (ValueError, TypeError, AttributeError) as exc:
            raise ValueError(
                f"--selection '{path}' line {line} is malformed ({exc}); write it with "
                "`featgeo aanet select --out`"
            ) from None
        if row["n_clusters"] in n_clusters:
            rows.append(row)
    keys = [(r["n_clusters"], r["cluster_id"]) for r in rows]
    if len(set(keys)) != len(keys):
        raise ValueError(
            f"--selection '{path}' lists a cluster twice; write it with "
            "`featgeo aanet select --out`"
        )
    if not rows:
        raise NoClustersSelected(
            f"No clusters selected: --selection '{path}' has no row for n_clusters "
            f"{list(n_clusters)}; check --n-clusters-list"
        )
    return rows


__all__ = [
    "CATEGORY_PRIORITY",
    "NSelection",
    "NoClustersSelected",
    "REQUIRED_COLUMNS",
    "SELECTION_COLUMNS",
    "Selection",
    "SelectionCriteria",
    "Stage1Cluster",
    "check_selection_out",
    "cluster_categories",
    "csv_sha256",
    "find_csv",
    "parse_manual",
    "read_selection",
    "read_stage1_csv",
    "refit_k",
    "select_clusters",
    "selection_cells",
    "selection_thresholds",
]
