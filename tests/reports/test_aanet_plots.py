"""Stage 1 AANet plots: the data each figure shows, CSV-string inputs, empty and degenerate
inputs, and the five PNGs written atomically under their seed 002 names."""

from __future__ import annotations

import csv
import math

import matplotlib.image as mpimg
import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from featgeo.reports import aanet_plots as ap
from featgeo.reports.figures import figure_png, save_figure

N = 8
RECON = "aanet_recon_loss_elbow_strength"
ARCH = "aanet_archetypal_loss_elbow_strength"
NAMES = [
    f"pca_vs_geometric_rank_n{N}.png",
    f"decoder_rank_dist_n{N}.png",
    f"elbow_strength_dists_n{N}.png",
    f"recon_vs_arch_unzoomed_n{N}.png",
    f"recon_vs_arch_zoomed_n{N}.png",
]


def make_cluster(cid: int, **overrides):
    """One cluster row with valid defaults; ``overrides`` replace any column."""
    row = {
        "cluster_id": cid,
        "n_latents": 3,
        "decoder_dir_rank": 2,
        "activation_pca_rank": 2,
        RECON: 0.2,
        ARCH: 0.3,
        "passes_quality": False,
    }
    row.update(overrides)
    return row


# (geometric, pca, recon, arch, passes): cells (2,2) x3, (1,1) x2, (3,2) x1, (2,3) x1, and
# one cluster without ranks; two clusters with an undefined (NaN) curve.
TABLE = [
    (2, 2, 0.10, 0.20, True),
    (2, 2, 0.30, 0.25, True),
    (2, 2, 0.45, 0.50, True),
    (1, 1, 0.05, 0.05, False),
    (1, 1, math.nan, 0.40, False),
    (3, 2, 0.60, 0.10, True),
    (2, 3, 0.20, math.nan, True),
    (math.nan, math.nan, 0.35, 0.15, False),
]


@pytest.fixture
def clusters():
    return [
        make_cluster(
            i, decoder_dir_rank=g, activation_pca_rank=p, **{RECON: r, ARCH: a}, passes_quality=q
        )
        for i, (g, p, r, a, q) in enumerate(TABLE)
    ]


def as_csv_rows(rows, tmp_path):
    """Round-trip through a CSV file: every value comes back as a string ("nan", "True", "")."""
    path = tmp_path / "metrics.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def offsets(fig: Figure) -> set[tuple[float, float]]:
    """All scatter points of the first axes."""
    return {
        (round(float(x), 9), round(float(y), 9))
        for collection in fig.axes[0].collections
        for x, y in collection.get_offsets()
    }


def points(rows) -> set[tuple[float, float]]:
    return {(round(r, 9), round(a, 9)) for _, _, r, a, _ in rows}


def finite_rows(rows):
    return [row for row in rows if np.isfinite(row[2]) and np.isfinite(row[3])]


def texts(fig: Figure) -> str:
    parts = [t.get_text() for ax in fig.axes for t in ax.texts]
    parts += [ax.get_title() for ax in fig.axes]
    if fig._suptitle is not None:
        parts.append(fig._suptitle.get_text())
    return "\n".join(parts)


def assert_valid_png(path) -> None:
    assert path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
    pixels = mpimg.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 50 and pixels.shape[1] > 50
    assert pixels[..., :3].std() > 0.01, f"{path} is a single flat colour"


# --- selection thresholds -----------------------------------------------------------------


def test_selection_thresholds_by_hand():
    # mean 0.3; deviations -0.2, -0.1, 0, 0.3 -> population variance 0.14 / 4 = 0.035
    out = ap.selection_thresholds([0.1, 0.2, 0.3, 0.6])
    sigma = math.sqrt(0.035)
    assert out["mu"] == pytest.approx(0.3)
    assert out["sigma"] == pytest.approx(sigma)
    assert out["one_sigma"] == pytest.approx(0.3 + sigma)
    assert out["three_sigma"] == pytest.approx(0.3 + 3 * sigma)


def test_selection_thresholds_match_numpy_and_skip_undefined():
    values = np.random.default_rng(0).random(50)
    mixed = [*values.tolist(), math.nan, "", "nan", None]
    out = ap.selection_thresholds(mixed)
    assert out["mu"] == pytest.approx(values.mean())
    assert out["sigma"] == pytest.approx(values.std(ddof=0))
    assert out["three_sigma"] == pytest.approx(values.mean() + 3 * values.std())
    assert ap.selection_thresholds([str(v) for v in values]) == pytest.approx(out)


@pytest.mark.parametrize("values", [[], [math.nan, ""]], ids=["empty", "all-undefined"])
def test_selection_thresholds_undefined(values):
    out = ap.selection_thresholds(values)
    assert set(out) == {"mu", "sigma", "one_sigma", "three_sigma"}
    assert all(math.isnan(v) for v in out.values())


# --- what each figure shows ---------------------------------------------------------------


def test_rank_scatter_cells_sizes_and_counts(clusters):
    fig = ap.pca_vs_geometric_rank(clusters, N)
    ax = fig.axes[0]
    expected = {(2.0, 2.0): 3, (1.0, 1.0): 2, (3.0, 2.0): 1, (2.0, 3.0): 1}
    (scatter,) = ax.collections
    cells = [tuple(map(float, xy)) for xy in scatter.get_offsets()]
    assert sorted(cells) == sorted(expected)
    sizes = dict(zip(cells, scatter.get_sizes(), strict=True))
    assert sizes[(2.0, 2.0)] == pytest.approx(3 * sizes[(3.0, 2.0)])  # area proportional
    assert sizes[(1.0, 1.0)] == pytest.approx(2 * sizes[(2.0, 3.0)])
    annotations = {tuple(map(float, t.xy)): t.get_text() for t in ax.texts}
    assert annotations == {cell: str(count) for cell, count in expected.items()}
    (diagonal,) = ax.lines
    assert diagonal.get_linestyle() == "--"
    assert np.array_equal(diagonal.get_xdata(), diagonal.get_ydata())
    assert f"n_clusters = {N}" in ax.get_title()
    assert "7 clusters" in ax.get_title()
    assert ax.get_xlabel() and ax.get_ylabel()


def test_decoder_rank_histogram(clusters):
    fig = ap.decoder_rank_distribution(clusters, N)
    ax = fig.axes[0]
    bars = {round(p.get_x() + p.get_width() / 2): p.get_height() for p in ax.patches}
    assert bars == {1: 2, 2: 4, 3: 1}  # integer bins centred on the ranks
    assert all(p.get_width() == pytest.approx(1.0) for p in ax.patches)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    ranks = [1, 1, 2, 2, 2, 2, 3]
    assert labels == [f"mean = {np.mean(ranks):.2f}", "median = 2"]
    assert f"n_clusters = {N}" in ax.get_title()


def test_elbow_strength_histograms_count_undefined(clusters):
    fig = ap.elbow_strength_distributions(clusters, N)
    recon_ax, arch_ax = fig.axes
    recon_total = sum(p.get_height() for p in recon_ax.patches)
    arch_total = sum(p.get_height() for p in arch_ax.patches)
    assert (recon_total, arch_total) == (7, 7)
    assert "undefined (NaN): 1" in recon_ax.get_title()
    assert "undefined (NaN): 1" in arch_ax.get_title()
    assert recon_ax.get_xlim() == pytest.approx((0, 1 / math.sqrt(2)))
    assert f"n_clusters = {N}" in fig._suptitle.get_text()


def test_unzoomed_shows_every_finite_cluster_and_highlights_passing(clusters):
    fig = ap.recon_vs_arch(clusters, N, zoomed=False)
    ax = fig.axes[0]
    assert offsets(fig) == points(finite_rows(TABLE))
    other, passing = ax.collections
    assert passing.get_label() == ap.PASSING
    passing_points = {tuple(map(float, xy)) for xy in passing.get_offsets()}
    assert passing_points == points([row for row in finite_rows(TABLE) if row[4]])
    assert not np.allclose(other.get_facecolor()[0], passing.get_facecolor()[0])
    assert not ax.lines  # thresholds only on the zoomed view
    assert ax.get_xlim()[1] >= 1 / math.sqrt(2)


def test_zoomed_shows_only_passing_clusters_and_thresholds(clusters):
    fig = ap.recon_vs_arch(clusters, N, zoomed=True)
    ax = fig.axes[0]
    shown = [row for row in finite_rows(TABLE) if row[4]]
    assert offsets(fig) == points(shown)
    recon = ap.selection_thresholds([row[2] for row in shown])
    arch = ap.selection_thresholds([row[3] for row in shown])
    keys = ("mu", "one_sigma", "three_sigma")
    vertical = [line for line in ax.lines if line.get_xdata()[0] == line.get_xdata()[1]]
    horizontal = [line for line in ax.lines if line.get_ydata()[0] == line.get_ydata()[1]]
    assert len(ax.lines) == 6
    assert [line.get_xdata()[0] for line in vertical] == pytest.approx([recon[k] for k in keys])
    assert [line.get_ydata()[0] for line in horizontal] == pytest.approx([arch[k] for k in keys])
    assert all(line.get_label().startswith("recon") for line in vertical)
    assert all(line.get_label().startswith("arch") for line in horizontal)
    # axes fitted to the passing clusters (not the full theoretical range), lines included
    low, high = ax.get_xlim()
    assert 0 < low <= min(row[2] for row in shown) and high >= recon["three_sigma"]
    low, high = ax.get_ylim()
    assert 0 < low <= min(row[3] for row in shown) and high >= arch["three_sigma"]
    assert f"n_clusters = {N}" in ax.get_title()


def test_zoomed_single_passing_cluster():
    rows = [make_cluster(0, passes_quality=True), make_cluster(1, **{RECON: 0.6})]
    ax = ap.recon_vs_arch(rows, N, zoomed=True).axes[0]
    assert offsets(ax.figure) == {(0.2, 0.3)}
    assert [line.get_xdata()[0] for line in ax.lines[:3]] == pytest.approx([0.2] * 3)  # sigma 0
    assert [line.get_ydata()[0] for line in ax.lines[3:]] == pytest.approx([0.3] * 3)
    assert ax.get_xlim() == pytest.approx((0.19, 0.21))
    assert ax.get_ylim() == pytest.approx((0.29, 0.31))


def test_thresholds_use_population_std():
    strengths = [0.1, 0.2, 0.3, 0.6]
    rows = [make_cluster(i, **{RECON: r}, passes_quality=True) for i, r in enumerate(strengths)]
    ax = ap.recon_vs_arch(rows, N, zoomed=True).axes[0]
    xs = sorted(line.get_xdata()[0] for line in ax.lines if line.get_label().startswith("recon"))
    sigma = math.sqrt(0.035)
    assert xs == pytest.approx([0.3, 0.3 + sigma, 0.3 + 3 * sigma])


# --- robust inputs -------------------------------------------------------------------------


def test_csv_strings_give_the_same_figures(clusters, tmp_path):
    rows = as_csv_rows(clusters, tmp_path)
    assert rows[4][RECON] == "nan" and rows[0]["passes_quality"] == "True"
    rows[7]["decoder_dir_rank"] = ""  # an empty cell is undefined, like NaN
    for build in (
        lambda c: ap.pca_vs_geometric_rank(c, N),
        lambda c: ap.recon_vs_arch(c, N, zoomed=False),
        lambda c: ap.recon_vs_arch(c, N, zoomed=True),
    ):
        assert offsets(build(rows)) == offsets(build(clusters))
    fig_strings = ap.recon_vs_arch(rows, N, zoomed=True)
    fig_numbers = ap.recon_vs_arch(clusters, N, zoomed=True)
    assert [line.get_label() for line in fig_strings.axes[0].lines] == [
        line.get_label() for line in fig_numbers.axes[0].lines
    ]
    assert texts(ap.elbow_strength_distributions(rows, N)) == texts(
        ap.elbow_strength_distributions(clusters, N)
    )


@pytest.mark.parametrize(
    "value, passes",
    [("True", True), ("true", True), ("False", False), ("", False), ("nan", False),
     (True, True), (np.False_, False), (1, True), (math.nan, False), (None, False)],
)  # fmt: skip
def test_passes_quality_parsing(value, passes):
    rows = [make_cluster(0, passes_quality=value)]
    assert len(offsets(ap.recon_vs_arch(rows, N, zoomed=True))) == int(passes)


def test_zero_passing_clusters_still_render(clusters):
    rows = [{**row, "passes_quality": "False"} for row in clusters]
    fig = ap.recon_vs_arch(rows, N, zoomed=True)
    assert not fig.axes[0].collections and not fig.axes[0].lines
    assert ap.NO_PASSING in [t.get_text() for t in fig.axes[0].texts]
    assert len(figure_png(fig, dpi=30)) > 0
    unzoomed = ap.recon_vs_arch(rows, N, zoomed=False)
    assert offsets(unzoomed) == points(finite_rows(TABLE))


@pytest.mark.parametrize(
    "build",
    [
        lambda c: ap.pca_vs_geometric_rank(c, N),
        lambda c: ap.decoder_rank_distribution(c, N),
        lambda c: ap.elbow_strength_distributions(c, N),
        lambda c: ap.recon_vs_arch(c, N, zoomed=False),
        lambda c: ap.recon_vs_arch(c, N, zoomed=True),
    ],
    ids=["rank-scatter", "rank-hist", "strength-hists", "unzoomed", "zoomed"],
)
@pytest.mark.parametrize(
    "rows",
    [[], [make_cluster(0, **{RECON: "", ARCH: "nan"}, decoder_dir_rank="")]],
    ids=["empty", "all-undefined"],
)
def test_degenerate_inputs_render_a_note(build, rows):
    fig = build(rows)
    assert isinstance(fig, Figure)
    assert not any(ax.collections or ax.patches for ax in fig.axes)
    assert any(ax.texts for ax in fig.axes)  # the centred "nothing to plot" note
    assert len(figure_png(fig, dpi=30)) > 0


@pytest.mark.parametrize(
    "n, error",
    [(0, ValueError), (-3, ValueError), (2.0, TypeError), ("8", TypeError), (True, TypeError)],
)
def test_bad_n(clusters, n, error):
    with pytest.raises(error, match="n_clusters"):
        ap.recon_vs_arch(clusters, n, zoomed=False)


def test_row_must_be_a_mapping():
    with pytest.raises(TypeError, match=r"clusters\[1\]"):
        ap.decoder_rank_distribution([make_cluster(0), [1, 2]], N)


# --- files ---------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", ["numbers", "csv-strings", "zero-passing", "empty"])
def test_write_stage1_plots(clusters, tmp_path, scenario):
    rows = {
        "numbers": clusters,
        "csv-strings": as_csv_rows(clusters, tmp_path),
        "zero-passing": [{**row, "passes_quality": False} for row in clusters],
        "empty": [],
    }[scenario]
    plots_dir = tmp_path / "clusters_8" / "plots"  # created if needed
    paths = ap.write_stage1_plots(rows, N, plots_dir, dpi=40)
    assert paths == [plots_dir / name for name in NAMES]
    assert sorted(p.name for p in plots_dir.iterdir()) == sorted(NAMES)  # no temp files
    for path in paths:
        assert_valid_png(path)


def test_write_stage1_plots_accepts_a_generator_and_rewrites(clusters, tmp_path):
    first = ap.write_stage1_plots((row for row in clusters), N, tmp_path)
    second = ap.write_stage1_plots(clusters, N, tmp_path)
    assert first == second and sorted(p.name for p in tmp_path.iterdir()) == sorted(NAMES)


def test_save_figure_leaves_no_temp_files(clusters, tmp_path):
    path = save_figure(ap.decoder_rank_distribution(clusters, N), tmp_path / "ok.png", dpi=40)
    assert [p.name for p in tmp_path.iterdir()] == ["ok.png"]
    assert_valid_png(path)

    fig = ap.decoder_rank_distribution(clusters, N)

    def broken_savefig(*args, **kwargs):
        raise RuntimeError("disk full")

    fig.savefig = broken_savefig
    with pytest.raises(RuntimeError, match="disk full"):
        save_figure(fig, tmp_path / "broken.png")
    assert [p.name for p in tmp_path.iterdir()] == ["ok.png"]  # neither file nor temp file


def test_unzoomed_axes_grow_to_show_strengths_beyond_the_chord_bound():
    from featgeo.reports.aanet_plots import MAX_STRENGTH, recon_vs_arch

    clusters = [
        {"cluster_id": 0, "aanet_recon_loss_elbow_strength": 3.0,
         "aanet_archetypal_loss_elbow_strength": 0.2, "passes_quality": True},
        {"cluster_id": 1, "aanet_recon_loss_elbow_strength": 0.1,
         "aanet_archetypal_loss_elbow_strength": 5.0, "passes_quality": False},
    ]  # fmt: skip
    ax = recon_vs_arch(clusters, 8, zoomed=False).axes[0]
    assert ax.get_xlim()[1] >= 3.0 and ax.get_ylim()[1] >= 5.0
    inside = recon_vs_arch([{**c, "aanet_recon_loss_elbow_strength": 0.3,
                             "aanet_archetypal_loss_elbow_strength": 0.3} for c in clusters],
                           8, zoomed=False).axes[0]  # fmt: skip
    assert inside.get_xlim()[1] == pytest.approx(1.02 * MAX_STRENGTH)
