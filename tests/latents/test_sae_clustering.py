"""Latent clustering of SAE decoder directions and the per-cluster metrics (SPEC §3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError
from sklearn.metrics import adjusted_rand_score

from featgeo.latents.clustering import (
    CLUSTER_METHODS,
    KSubspacesClusterer,
    activation_pca_rank,
    cluster_latents,
    cluster_recon_error,
    cluster_table,
    decoder_dir_rank,
    deduplicate_rows,
    make_clusterer,
    normalized_directions,
)
from featgeo.sparsity.metrics import ClusterCountWarning


def planted_subspaces(
    n_sub: int = 6, dim: int = 3, per: int = 40, d: int = 64, noise: float = 0.05, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Unit directions drawn from ``n_sub`` random ``dim``-dim subspaces of R^d, plus noise.

    Returns (directions [n_sub * per, d], true labels [n_sub * per]).
    """
    rng = np.random.default_rng(seed)
    rows, truth = [], []
    for s in range(n_sub):
        basis = np.linalg.qr(rng.standard_normal((d, dim)))[0]  # [d, dim]
        x = normalized_directions(rng.standard_normal((per, dim)) @ basis.T)
        rows.append(x + noise * rng.standard_normal((per, d)) / np.sqrt(d))
        truth += [s] * per
    return normalized_directions(np.vstack(rows)), np.asarray(truth)


def orthonormal(d: int, r: int, seed: int = 0) -> np.ndarray:
    return np.linalg.qr(np.random.default_rng(seed).standard_normal((d, r)))[0]  # [d, r]


# -- inputs ---------------------------------------------------------------------------------
def test_normalized_directions_numpy_and_torch():
    w = np.array([[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]])
    expected = np.array([[0.6, 0.8], [0.0, 0.0], [0.0, -1.0]])
    np.testing.assert_allclose(normalized_directions(w), expected)
    np.testing.assert_allclose(
        normalized_directions(torch.tensor(w, dtype=torch.float32)), expected
    )


def test_registry_lists_the_three_methods():
    assert set(CLUSTER_METHODS) == {"kmeans", "k-subspaces", "spectral"}


# -- methods --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def planted():
    return planted_subspaces()


def test_k_subspaces_recovers_planted_subspaces_and_beats_kmeans(planted):
    x, truth = planted
    ari_ks = adjusted_rand_score(truth, cluster_latents(x, "k-subspaces", 6))
    ari_km = adjusted_rand_score(truth, cluster_latents(x, "kmeans", 6))
    assert ari_ks > 0.95
    assert ari_ks >= ari_km


def test_k_subspaces_keeps_the_restart_with_lowest_residual():
    x, _ = planted_subspaces(noise=0.2, seed=1)
    one = KSubspacesClusterer(n_clusters=6, n_restarts=1).fit(x)
    ten = KSubspacesClusterer(n_clusters=6, n_restarts=10).fit(x)  # same first seed
    assert ten.residual_ <= one.residual_


def test_spectral_cosine_recovers_planted_subspaces(planted):
    x, truth = planted
    assert adjusted_rand_score(truth, cluster_latents(x, "spectral", 6)) > 0.95


def test_spectral_cooccurrence_follows_the_given_blocks(planted):
    x, truth = planted
    co = (truth[:, None] == truth[None, :]).astype(float) + 0.01  # [n, n] block affinity
    labels = cluster_latents(x, "spectral", 6, affinity="cooccurrence", cooccurrence=co)
    assert adjusted_rand_score(truth, labels) == pytest.approx(1.0)


@pytest.mark.parametrize("method", sorted(CLUSTER_METHODS))
def test_dead_latents_get_minus_one(planted, method):
    x, truth = planted
    live = np.ones(len(x), dtype=bool)
    live[::7] = False
    x = x.copy()
    x[::7] = np.nan if method == "kmeans" else 0.0  # dead rows are never read
    labels = cluster_latents(x, method, 6, live=live)
    assert (labels[~live] == -1).all()
    assert set(labels[live]) == set(range(6))
    assert adjusted_rand_score(truth[live], labels[live]) > (0.95 if method != "kmeans" else 0)


@pytest.mark.parametrize("method", sorted(CLUSTER_METHODS))
def test_same_seed_same_labels(planted, method):
    x, _ = planted
    a = cluster_latents(x, method, 5, random_state=3)
    b = cluster_latents(torch.tensor(x), method, 5, random_state=3)
    np.testing.assert_array_equal(a, b)


def test_near_duplicates_share_the_label_of_their_original(planted):
    x, _ = planted
    rng = np.random.default_rng(1)
    src = np.array([0, 45, 100, 170])
    dups = x[src] + 0.01 * rng.standard_normal((4, x.shape[1])) / np.sqrt(x.shape[1])
    dups[1::2] *= -1  # |cos| counts: an antipodal copy is a duplicate too
    xd = np.vstack([x, dups])
    assert (np.abs(normalized_directions(dups) @ x[src].T).diagonal() > 0.995).all()
    est = KSubspacesClusterer(n_clusters=6).fit(xd)
    np.testing.assert_array_equal(est.labels_[len(x) :], est.labels_[src])
    assert est.n_unique_ == (deduplicate_rows(x) == np.arange(len(x))).sum()


def test_deduplicate_rows_is_greedy_over_kept_rows():
    e = np.eye(3)
    x = normalized_directions(np.vstack([e[0], e[1], -e[0], e[0] + 1e-3 * e[1], e[2]]))
    np.testing.assert_array_equal(deduplicate_rows(x), [0, 1, 0, 0, 4])
    np.testing.assert_array_equal(deduplicate_rows(x, block=2), [0, 1, 0, 0, 4])


def test_clusters_before_fit_raises():
    with pytest.raises(NotFittedError, match="not fitted yet"):
        make_clusterer("kmeans", n_clusters=2).clusters()


def test_clusters_after_fit_lists_indices(planted):
    x, _ = planted
    est = make_clusterer("kmeans", n_clusters=3).fit(x)
    parts = est.clusters()
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(x)))


# -- bad inputs -----------------------------------------------------------------------------
def _nan_row() -> np.ndarray:
    x = np.random.default_rng(0).standard_normal((10, 4))
    x[3, 1] = np.nan
    return x


X10 = np.random.default_rng(0).standard_normal((10, 4))
BAD = [
    ("too-many-clusters", dict(W_dec=X10, n_clusters=11), ValueError,
     "n_clusters 11 is larger than the 10 live latents"),
    ("too-many-for-live", dict(W_dec=X10, n_clusters=4, live=np.arange(10) < 3), ValueError,
     "n_clusters 4 is larger than the 3 live latents"),
    ("zero-clusters", dict(W_dec=X10, n_clusters=0), ValueError, "positive integer"),
    ("unknown-method", dict(W_dec=X10, method="dbscan"), ValueError,
     "unknown clustering method 'dbscan'; choose from k-subspaces, kmeans, spectral"),
    ("unknown-affinity", dict(W_dec=X10, method="spectral", affinity="rbf"), ValueError,
     "unknown affinity 'rbf'.*cosine, cooccurrence"),
    ("cooc-missing", dict(W_dec=X10, method="spectral", affinity="cooccurrence"), ValueError,
     "needs fit"),
    ("cooc-shape", dict(W_dec=X10, method="spectral", affinity="cooccurrence",
                        cooccurrence=np.ones((9, 9))), ValueError,
     r"cooccurrence must have shape \(10, 10\)"),
    ("cooc-negative", dict(W_dec=X10, method="spectral", affinity="cooccurrence",
                           cooccurrence=-np.ones((10, 10))), ValueError, "non-negative"),
    ("cooc-unused", dict(W_dec=X10, cooccurrence=np.ones((10, 10))), ValueError,
     "only used by method 'spectral'"),
    ("cooc-with-cosine", dict(W_dec=X10, method="spectral", cooccurrence=np.ones((10, 10))),
     ValueError, "affinity='cosine' ignores it"),
    ("not-2d", dict(W_dec=np.ones(10)), ValueError, r"W_dec must be 2-D"),
    ("not-array", dict(W_dec=[[1.0, 2.0]]), TypeError, "numpy array or torch tensor"),
    ("nan-row", dict(W_dec=_nan_row()), ValueError, r"NaN or inf in live rows \[3\]"),
    ("zero-row", dict(W_dec=np.vstack([X10, np.zeros(4)])), ValueError,
     r"all-zero live rows \[10\]"),
    ("live-dtype", dict(W_dec=X10, live=np.ones(10)), TypeError, "boolean mask"),
    ("live-shape", dict(W_dec=X10, live=np.ones(9, bool)), ValueError,
     r"live must have shape \(10,\)"),
    ("subspace-dim", dict(W_dec=X10, method="k-subspaces", subspace_dim=0), ValueError,
     "subspace_dim must be a positive integer"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "error", "match"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_bad_inputs(kwargs, error, match):
    kwargs = {"n_clusters": 2, **kwargs}
    with pytest.raises(error, match=match):
        cluster_latents(**kwargs)


@pytest.mark.parametrize("method", ["kmeans", "k-subspaces", "spectral"])
def test_more_clusters_than_distinct_directions_is_reduced_and_recorded(method):
    x = np.vstack([np.eye(4), 3 * np.eye(4)])  # 8 rows, 4 distinct directions
    est = make_clusterer(method, n_clusters=6, random_state=0)
    with pytest.warns(ClusterCountWarning, match="n_clusters 6 is more than the 4 "):
        est.fit(x)
    assert est.n_clusters_ == 4 and est.n_distinct_ == 4
    assert sorted(set(est.labels_.tolist())) == [0, 1, 2, 3]  # no label names an empty cluster
    assert (est.labels_[:4] == est.labels_[4:]).all()  # copies share their cluster
    assert len(est.clusters()) == 4


def test_no_reduction_without_duplicates():
    import warnings

    x = np.random.default_rng(0).standard_normal((12, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ClusterCountWarning)
        est = make_clusterer("kmeans", n_clusters=4).fit(x)
    assert est.n_clusters_ == 4 and est.n_distinct_ == 12


def duplicate_direction_sae(d_in: int = 64, d_sae: int = 32, n_directions: int = 2):
    """A standard SAE (featgeo's own classes) whose decoder rows take only ``n_directions``
    distinct unit directions, with W_enc = W_dec.T and b_enc = 0, so copies fire together."""
    from featgeo.sae import SAEConfig, SparseAutoencoder

    cfg = SAEConfig(
        d_in=d_in, d_sae=d_sae, architecture="standard", hook_name="blocks.1.hook_resid_post"
    )
    sae = SparseAutoencoder.from_config(cfg, seed=0)
    g = torch.Generator().manual_seed(1)
    dirs = torch.randn(n_directions, d_in, generator=g)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    with torch.no_grad():
        sae.W_dec.copy_(dirs[torch.arange(d_sae) % n_directions])
        sae.W_enc.copy_(sae.W_dec.T)
        sae.b_enc.zero_()
    return sae


def strict_json(path):
    """Parse as RFC 8259 JSON: NaN / Infinity are errors."""
    import json

    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant} in {path}")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.parametrize("method", ["kmeans", "k-subspaces"])
def test_sae_cluster_on_duplicate_latents_records_what_exists(
    method, tiny_llama, text_corpus, tmp_path, monkeypatch
):
    from typer.testing import CliRunner

    from featgeo.cli import app
    from featgeo.sae import save_sae

    monkeypatch.setenv("FEATGEO_CACHE", str(tmp_path / "cache"))
    folder = save_sae(duplicate_direction_sae(), tmp_path / "sae")
    out = tmp_path / "clusters"
    result = CliRunner().invoke(
        app,
        ["sae", "cluster", str(folder), "--n-clusters", "4,8", "--method", method,
         "--out", str(out), "--model", str(tiny_llama), "--corpus", str(text_corpus),
         "--context-size", "64", "--store-tokens", "1000", "--device", "cpu"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "n_clusters_requested=4, n_clusters=2" in " ".join(result.output.split())
    assert "2 (of 4 asked)" in result.output and "2 (of 8 asked)" in result.output
    for n in (4, 8):
        info = strict_json(out / f"clusters_{n}" / "clustering.json")
        assert info["n_live"] == 32
        assert (info["n_clusters_requested"], info["n_clusters"]) == (n, 2)
        assert info["n_clusters_reduced"] and info["n_distinct_directions"] == 2
        rows = (out / f"clusters_{n}" / "cluster_metrics.csv").read_text().splitlines()[1:]
        assert len(rows) == 2 and {r.split(",")[0] for r in rows} == {"2"}  # n_clusters_total
        assignments = np.loadtxt(
            out / f"clusters_{n}" / "cluster_assignments.csv", delimiter=",", skiprows=1
        ).astype(int)
        # latents i and i + 2 share a direction, so they share a cluster
        assert (assignments[::2, 1] == assignments[0, 1]).all()
        assert (assignments[1::2, 1] == assignments[1, 1]).all()
        assert assignments[0, 1] != assignments[1, 1]


# -- metrics --------------------------------------------------------------------------------
def test_decoder_dir_rank_of_exact_2d_span():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 2)) @ orthonormal(16, 2).T  # [20, 16], rank 2
    assert decoder_dir_rank(x) == 2
    assert cluster_recon_error(x) == pytest.approx(0.0, abs=1e-20)


def _rows_with_counts(counts: list[int], d: int = 12) -> np.ndarray:
    """``counts[j]`` copies of the unit vector e_j: unit rows with sigma_j = sqrt(counts[j])."""
    return np.repeat(np.eye(d)[: len(counts)], counts, axis=0)  # [sum(counts), d]


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ([1], 1),  # one row
        ([5, 5, 5, 5], 4),  # flat spectrum: 95% needs all four, no gap
        ([9, 1, 1], 1),  # sigma_1 / sigma_2 = 3 >= 2: gap after the first
        ([10, 10, 1, 1, 1], 2),  # sigma_2 / sigma_3 = sqrt(10) >= 2
        ([6, 5, 4, 3, 2, 1], 5),  # no ratio >= 2; five give 20/21 = 95.2% of sum sigma^2
        ([4, 4, 4, 1], 3),  # sigma_3 / sigma_4 = 2 exactly (>=); energy alone would say 4
    ],
    ids=["single", "flat", "gap-at-1", "gap-at-2", "energy-5", "gap-equals-2"],
)
def test_decoder_dir_rank_on_hand_built_spectra(counts, expected):
    x = _rows_with_counts(counts)
    sigma = np.linalg.svd(x, compute_uv=False)
    np.testing.assert_allclose(sigma[: len(counts)], np.sqrt(sorted(counts, reverse=True)))
    assert decoder_dir_rank(x) == expected
    # the residual is the dropped sigma^2 spread over the rows
    dropped = sum(sorted(counts, reverse=True)[expected:])
    assert cluster_recon_error(x) == pytest.approx(dropped / sum(counts))


def test_decoder_dir_rank_energy_rule_on_unit_rows():
    # Two orthogonal groups: 18 rows along e0 (plus tiny jitter) and 2 rows along e1.
    # sigma^2 ~ [18, 2]: ratio 3 >= 2 gives rank 1 by the gap rule; 18/20 = 90% < 95% alone.
    e = np.eye(8)
    x = np.vstack([np.repeat(e[:1], 18, axis=0), np.repeat(e[1:2], 2, axis=0)])
    assert decoder_dir_rank(x) == 1
    assert cluster_recon_error(x) == pytest.approx(2 / 20)
    # Without the gap (ratio sqrt(12/8) < 2) the energy rule needs both directions.
    y = np.vstack([np.repeat(e[:1], 12, axis=0), np.repeat(e[1:2], 8, axis=0)])
    assert decoder_dir_rank(y) == 2
    assert cluster_recon_error(y) == pytest.approx(0.0, abs=1e-20)


def test_cluster_recon_error_is_finite_for_noisy_clusters(planted):
    x, truth = planted
    err = cluster_recon_error(x[truth == 0])
    assert np.isfinite(err) and 0 < err < 0.1
    assert cluster_recon_error(x[:1]) == pytest.approx(0.0, abs=1e-20)


def test_activation_pca_rank_known_ranks():
    rng = np.random.default_rng(0)
    acts = rng.standard_normal((500, 3)) @ rng.standard_normal((3, 10))  # rank 3
    acts = np.vstack([acts, np.zeros((50, 10))])  # inactive tokens are left out
    assert activation_pca_rank(acts) == 3
    assert activation_pca_rank(torch.tensor(acts)) == 3
    assert activation_pca_rank(rng.standard_normal((200, 1))) == 1  # single latent


def test_activation_pca_rank_dominant_direction():
    rng = np.random.default_rng(0)
    acts = np.outer(rng.standard_normal(400), np.ones(5)) + 1e-3 * rng.standard_normal((400, 5))
    assert activation_pca_rank(acts) == 1
    assert activation_pca_rank(np.zeros((30, 4))) == 0  # no active tokens


def test_cluster_table_rows(planted):
    x, truth = planted
    labels = truth.copy()
    labels[:3] = -1  # dead latents are skipped
    table = cluster_table(labels, x)
    assert [row["cluster_id"] for row in table] == list(range(6))
    assert table[0]["n_latents"] == 37 and table[0]["latent_indices"][0] == 3
    assert set(table[0]) == {
        "cluster_id", "n_latents", "latent_indices", "decoder_dir_rank", "cluster_recon_error"
    }  # fmt: skip
    for row in table:
        assert 1 <= row["decoder_dir_rank"] <= 3
        assert np.isfinite(row["cluster_recon_error"])
    with pytest.raises(ValueError, match=r"labels must have shape \(240,\)"):
        cluster_table(labels[:-1], x)
