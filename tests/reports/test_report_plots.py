"""Figure functions return figures (no files); save_figure writes a valid PNG atomically."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from featgeo.reports import plots  # noqa: E402
from featgeo.reports.figures import figure_png, png_data_uri, save_figure  # noqa: E402
from featgeo.sparsity.analysis import analyze_feature  # noqa: E402


@pytest.fixture(scope="module")
def analysis():
    """Three planted groups of 8 features (D = 32): a small analysed set with k = 3."""
    rng = np.random.default_rng(0)
    bases = rng.random((3, 32)) < 0.5
    masks = np.array([bases[i % 3] ^ (rng.random(32) < 0.08) for i in range(24)])
    result = analyze_feature(masks, 0, n_features=11, n_clusters=3, seed=0)
    return masks, result


def assert_valid_png(path, *, min_std: float = 0.01) -> np.ndarray:
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[0] > 10 and image.shape[1] > 10
    assert image[..., :3].std() > min_std, f"{path} is a single flat colour"
    return image


def per_analysis_figures(masks, a):
    subset = masks[a.analysed]
    return {
        "spy": plots.spy_plot(subset, a.labels, feature_ids=a.analysed, title="spy"),
        "statistics": plots.cluster_statistics_plot(
            a.labels,
            a.hamming.within_per_cluster,
            mean_between=a.hamming.mean_between_hamming,
            summary={"ratio": a.centroid.centroid_separation_ratio, "band": "good"},
        ),
        "tsne": plots.tsne_plot(subset, a.labels, random_state=0),
        "heatmap": plots.distance_heatmap(
            a.distance_matrix / a.d, a.labels, a.hamming.between_matrix
        ),
    }


def test_figures_are_returned_and_saved(analysis, tmp_path):
    masks, a = analysis
    figures = per_analysis_figures(masks, a)
    assert all(isinstance(fig, Figure) for fig in figures.values())
    assert list(tmp_path.iterdir()) == []  # building figures writes nothing
    for name, fig in figures.items():
        path = save_figure(fig, tmp_path / f"{name}.png", dpi=40)
        assert path == tmp_path / f"{name}.png"
        assert_valid_png(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "heatmap.png",
        "spy.png",
        "statistics.png",
        "tsne.png",
    ]  # no temp files left behind


def test_save_figure_failure_leaves_nothing(tmp_path, monkeypatch):
    fig = Figure()
    fig.subplots().plot([0, 1], [1, 0])
    monkeypatch.setattr(fig, "savefig", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        save_figure(fig, tmp_path / "broken.png")
    assert list(tmp_path.iterdir()) == []


def test_tsne_is_deterministic_and_clips_perplexity():
    rng = np.random.default_rng(1)
    masks = rng.random((5, 20)) < 0.5  # perplexity clipped to 4
    first = plots.tsne_embedding(masks, random_state=3)
    assert first.shape == (5, 2) and np.isfinite(first).all()
    np.testing.assert_array_equal(first, plots.tsne_embedding(masks, random_state=3))
    assert plots.tsne_embedding(masks[:2]).shape == (2, 2)  # too few points for t-SNE


def test_many_clusters_and_summaries(tmp_path):
    rng = np.random.default_rng(2)
    masks = rng.random((60, 24)) < 0.5
    a = analyze_feature(masks, 0, n_features=40, n_clusters=20, seed=0)
    heatmap = plots.distance_heatmap(a.distance_matrix / a.d, a.labels, a.hamming.between_matrix)
    assert_valid_png(save_figure(heatmap, tmp_path / "h.png", dpi=30))
    metrics = [
        {
            "centroid_separation_ratio": r,
            "hamming_separation_ratio": float("inf") if r > 1.5 else r + 0.5,
            "mean_within_hamming": 0.1 * r,
            "mean_between_hamming": 0.2 * r,
            "mean_within_centroid_distance": 1.0,
            "mean_between_centroid_distance": r,
        }
        for r in (0.5, 1.0, 2.0)
    ]
    per_k = {4: metrics, 8: metrics[:2], 16: [metrics[2]]}
    for fig in (plots.summary_separation_ratios(per_k), plots.summary_distances(per_k)):
        assert_valid_png(save_figure(fig, tmp_path / "s.png", dpi=30))


def test_bars_and_data_uri():
    names = ["wanda L1 mlp.down_proj", "sparsegpt L1 mlp.down_proj"]
    fig = plots.separation_ratio_bars(names, [(0.8, 0.1), (0.6, float("nan"))], [(1.1, 0.0)] * 2)
    png = figure_png(fig, dpi=30)
    assert png.startswith(b"\x89PNG")
    assert png_data_uri(png).startswith("data:image/png;base64,iVBOR")
    fig = plots.block_coherence_bars(names, [(0.35, 0.02), (0.1, 0.01)])
    assert figure_png(fig, dpi=30).startswith(b"\x89PNG")


def test_mean_std_ignores_non_finite():
    assert plots.mean_std([1.0, 3.0, float("inf"), None]) == (2.0, 1.0)
    mean, std = plots.mean_std([float("inf")])
    assert np.isnan(mean) and np.isnan(std)


def test_labels_shape_is_checked(analysis):
    masks, a = analysis
    with pytest.raises(ValueError, match="labels must have shape"):
        plots.spy_plot(masks[a.analysed], a.labels[:-1])
