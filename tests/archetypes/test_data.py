"""AANet training data from the activation store (SPEC §3): x = a_c @ W_dec[c] over active
tokens, the decoder-subspace coordinates, one-pass extraction, step batches, cluster files.

Stores are built by the real builder from a tiny randomly initialised SAE and random
activations (no model, no hub). Oracles are computed here with numpy from ``dense_codes`` or
from the activations themselves.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from featgeo.activations.collect import ActivationBatch
from featgeo.activations.store import ActivationStore, build_store
from featgeo.archetypes.data import (
    MIN_POINTS_EXTRA,
    ClusterData,
    StepBatches,
    check_store_matches_sae,
    cluster_data,
    clusters_data,
    has_enough_points,
    read_clusters,
)
from featgeo.latents.run import cluster_sae
from featgeo.sae import SAEConfig, SparseAutoencoder
from featgeo.sae.saelens_format import sae_fingerprint

D_IN, D_SAE, TOP_K, N_TOKENS, BATCH = 16, 40, 5, 600, 100
CLUSTERS = {0: [0, 1, 2, 3, 4], 3: [10, 2, 7], 7: [20], 9: [30, 31, 32, 33, 34, 35], 11: [2, 21]}
"""Cluster 3 lists its latents out of order; latent 2 is in three clusters; cluster 9's decoder
rows have rank 5 (row 32 is a combination of rows 30 and 31)."""


def make_batches(acts: np.ndarray) -> list:
    n = acts.shape[0]
    return [
        ActivationBatch(
            acts=torch.from_numpy(acts[s : s + BATCH]),
            token_ids=np.zeros(min(BATCH, n - s), np.int32),
            doc_index=np.zeros(min(BATCH, n - s), np.int32),
            chunk_index=np.full(min(BATCH, n - s), s // BATCH, np.int32),
            position=np.arange(1, min(BATCH, n - s) + 1, dtype=np.int32),
        )
        for s in range(0, n, BATCH)
    ]


def store_of(sae: SparseAutoencoder, acts: np.ndarray, folder) -> ActivationStore:
    header = {"model": "synthetic", "layer": 0, "split": "sae_train", "corpus_fingerprint": "c",
              "encoder_fingerprint": sae_fingerprint(sae), "context_size": BATCH + 1,
              "d_sae": sae.cfg.d_sae}  # fmt: skip
    return build_store(folder, make_batches(acts), sae.encode, header, progress=False,
                       shard_tokens=250)  # fmt: skip


def topk_sae(seed: int = 0, d_sae: int = D_SAE) -> SparseAutoencoder:
    cfg = SAEConfig(d_in=D_IN, d_sae=d_sae, architecture="topk", k=TOP_K,
                    hook_name="blocks.0.hook_resid_post")  # fmt: skip
    sae = SparseAutoencoder.from_config(cfg, seed=seed)
    with torch.no_grad():  # a rank-deficient cluster: row 32 in the span of rows 30 and 31
        sae.W_dec[32] = 0.5 * sae.W_dec[30] - 2.0 * sae.W_dec[31]
    return sae


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(sae, store, acts) of a random TopK SAE over 600 random tokens."""
    sae = topk_sae()
    acts = np.random.default_rng(0).standard_normal((N_TOKENS, D_IN)).astype(np.float32)
    return sae, store_of(sae, acts, tmp_path_factory.mktemp("data") / "store"), acts


@pytest.fixture(scope="module")
def full(setup):
    sae, store, _ = setup
    return clusters_data(sae, store, CLUSTERS, space="full")


@pytest.fixture(scope="module")
def sub(setup):
    sae, store, _ = setup
    return clusters_data(sae, store, CLUSTERS, space="subspace")


def w_dec64(sae) -> np.ndarray:
    return sae.W_dec.detach().double().numpy()


# -- the points -----------------------------------------------------------------------------
def test_points_equal_the_dense_oracle(setup, full):
    sae, store, acts = setup
    direct = sae.encode(torch.from_numpy(acts)).detach().numpy()  # [n, d_sae], not via the store
    for data, (cid, latents) in zip(full, CLUSTERS.items(), strict=True):
        dense = store.dense_codes(latent_subset=latents)  # [n_tokens, n_latents]
        active = np.abs(dense.astype(np.float64)).sum(axis=1) > 1e-6
        expect_x = dense[active].astype(np.float64) @ w_dec64(sae)[latents]  # [n_active, d]
        assert data.cluster_id == cid and data.space == "full" and data.basis is None
        np.testing.assert_array_equal(data.latent_indices, latents)
        np.testing.assert_array_equal(data.token_rows, np.flatnonzero(active))
        np.testing.assert_array_equal(data.codes, dense[active])
        np.testing.assert_allclose(data.codes, direct[active][:, latents], rtol=1e-5, atol=1e-6)
        x = data.points()
        assert x.dtype == np.float32 and x.shape == (active.sum(), D_IN) == (
            data.n_active,
            data.dim,
        )
        np.testing.assert_allclose(x, expect_x, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(data.points([2, 0]), expect_x[[2, 0]], rtol=1e-5, atol=1e-6)
        assert data.token_rows.dtype == np.int64 and data.codes.dtype == np.float32
    assert 0 < full[0].n_active < N_TOKENS and full[2].n_latents == 1


def test_subspace_coordinates_are_a_rotation_of_the_points(setup, full, sub):
    sae, _, _ = setup
    for f, s in zip(full, sub, strict=True):
        q = s.basis.astype(np.float64)  # [d_model, r]
        r = np.linalg.matrix_rank(w_dec64(sae)[f.latent_indices], rtol=1e-6)  # RANK_RTOL
        assert s.space == "subspace" and s.dim == r == q.shape[1] <= f.n_latents
        np.testing.assert_allclose(q.T @ q, np.eye(r), atol=1e-6)
        np.testing.assert_array_equal(s.token_rows, f.token_rows)
        x, y = f.points().astype(np.float64), s.points().astype(np.float64)
        err = np.linalg.norm(x - y @ q.T, axis=1)  # ||x - Q y|| per token
        assert err.max() <= 1e-5 * max(1.0, np.linalg.norm(x, axis=1).max())
        np.testing.assert_allclose(s.to_model_space(s.points()), f.points(), atol=1e-5)
    assert sub[3].dim == 5 and sub[2].dim == 1  # the planted rank deficiency; a single latent


def test_one_pass_equals_one_cluster_at_a_time_and_latent_activations(setup, sub):
    sae, store, _ = setup
    for data, (cid, latents) in zip(sub, CLUSTERS.items(), strict=True):
        alone = cluster_data(sae, store, latents, cluster_id=cid)
        for name in ("latent_indices", "token_rows", "codes", "projection", "basis"):
            np.testing.assert_array_equal(getattr(alone, name), getattr(data, name), err_msg=name)
        rows, values = store.latent_activations(latents)  # the store's own per-latent scan
        keep = np.abs(values.astype(np.float64)).sum(axis=1) > 1e-6
        np.testing.assert_array_equal(data.token_rows, rows[keep])
        np.testing.assert_array_equal(data.codes, values[keep])
    as_list = clusters_data(sae, store, [CLUSTERS[0], CLUSTERS[3]], block=37)  # blocks cross rows
    assert [d.cluster_id for d in as_list] == [0, 1]
    np.testing.assert_array_equal(as_list[1].codes, sub[1].codes)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """An identity-encoder SAE (codes = relu(acts), exactly) over planted activations."""
    d = 8
    sae = SparseAutoencoder.from_config(SAEConfig(d_in=d, d_sae=d), seed=1)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d))
    rng = np.random.default_rng(1)
    acts = -np.ones((200, d), dtype=np.float32)  # relu gives exact zeros
    at = np.float32(1e-6)
    acts[0, 0] = at  # sum exactly the float32 nearest 1e-6: out
    acts[1, 0] = np.nextafter(at, np.float32(1))  # just above: in
    acts[2, 0:2] = np.float32(4e-7)  # sum 8e-7: out
    acts[3, 0:2] = np.float32(6e-7)  # each below, sum 1.2e-6: in
    acts[4, 1] = 0.5
    acts[5, 5] = 1.0  # another cluster's latent only
    on = np.flatnonzero(rng.random(200) < 0.5)
    on = on[on >= 8]
    acts[on, 0:3] = rng.uniform(-0.5, 1.0, size=(on.size, 3))
    return sae, store_of(sae, acts, tmp_path_factory.mktemp("planted") / "store"), acts


def test_active_rule_uses_the_sum_of_codes_strictly_above_the_threshold(planted):
    sae, store, acts = planted
    data = cluster_data(sae, store, [0, 1, 2], cluster_id=5, space="full")
    codes = np.maximum(acts[:, :3], 0).astype(np.float64)  # the codes, computed here
    expect = np.flatnonzero(codes.sum(axis=1) > 1e-6)
    np.testing.assert_array_equal(data.token_rows, expect)
    assert {1, 3, 4} <= set(data.token_rows) and not {0, 2, 5, 6, 7} & set(data.token_rows)
    np.testing.assert_array_equal(data.codes, codes[expect].astype(np.float32))
    np.testing.assert_allclose(data.points(), codes[expect] @ w_dec64(sae)[:3], atol=1e-6)
    loose = cluster_data(sae, store, [0, 1, 2], cluster_id=5, active_threshold=0.0)
    np.testing.assert_array_equal(loose.token_rows, np.flatnonzero(codes.sum(axis=1) > 0))
    assert {0, 2} <= set(loose.token_rows)
    at = float(np.float32(1e-6))  # row 0's sum, exactly: equal is not above
    exact = cluster_data(sae, store, [0, 1, 2], cluster_id=5, active_threshold=at)
    assert 0 not in exact.token_rows and 1 in exact.token_rows


def test_has_enough_points():
    assert MIN_POINTS_EXTRA == 8
    assert has_enough_points(10, 2) and not has_enough_points(9, 2)
    data = ClusterData(0, [1], np.arange(12), np.ones((12, 1)), np.ones((1, 3)), None, 3)
    assert data.has_enough_points(4) and not data.has_enough_points(5)


# -- step batches ---------------------------------------------------------------------------
def test_step_rows_are_the_active_tokens_among_the_drawn_positions(sub):
    batches = StepBatches(sub, N_TOKENS, batch_tokens=150, seed=3)
    for step in range(6):
        pos = batches.positions(step)
        assert pos.size == 150 and np.all(np.diff(pos) > 0) and 0 <= pos[0] and pos[-1] < N_TOKENS
        rows = batches.rows(step)
        flat, counts = batches.flat_rows(step)
        assert counts.dtype == np.int64 and flat.dtype == np.int64 and counts.sum() == flat.size
        np.testing.assert_array_equal(np.concatenate(rows), flat)
        for data, got in zip(sub, rows, strict=True):
            np.testing.assert_array_equal(got, np.flatnonzero(np.isin(data.token_rows, pos)))
            np.testing.assert_array_equal(
                data.token_rows[got], np.intersect1d(data.token_rows, pos)
            )


def test_step_rows_are_deterministic_and_do_not_depend_on_the_other_clusters(sub):
    a = StepBatches(sub, N_TOKENS, batch_tokens=100, seed=0)
    b = StepBatches(sub, N_TOKENS, batch_tokens=100, seed=0)
    alone = StepBatches([sub[1]], N_TOKENS, batch_tokens=100, seed=0)
    reordered = StepBatches([sub[4], sub[1], sub[0]], N_TOKENS, batch_tokens=100, seed=0)
    for step in (7, 0, 3):  # any order: a step's draw is a function of (seed, step)
        expect = a.rows(step)
        for got, want in zip(b.rows(step), expect, strict=True):
            np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(alone.rows(step)[0], expect[1])
        np.testing.assert_array_equal(reordered.rows(step)[1], expect[1])
    other = StepBatches(sub, N_TOKENS, batch_tokens=100, seed=1)
    assert not np.array_equal(other.positions(0), a.positions(0))
    assert not np.array_equal(a.positions(1), a.positions(0))


def test_step_draws_are_uniform_and_capped_at_the_store(sub):
    batches = StepBatches(sub, N_TOKENS, batch_tokens=100, seed=0)
    hits = np.bincount(np.concatenate([batches.positions(s) for s in range(300)]), minlength=600)
    assert 25 < hits.min() and hits.max() < 80  # Binomial(300, 1/6): mean 50, sd 6.5
    everything = StepBatches(sub, N_TOKENS, batch_tokens=10_000)
    np.testing.assert_array_equal(everything.positions(0), np.arange(N_TOKENS))
    np.testing.assert_array_equal(everything.rows(0)[0], np.arange(sub[0].n_active))
    assert StepBatches([], N_TOKENS).rows(0) == []


# -- files ----------------------------------------------------------------------------------
def test_read_clusters_round_trips_the_cluster_sae_csv(setup, tmp_path):
    sae, store, _ = setup
    (result,) = cluster_sae(sae, store, [4], tmp_path / "out", method="kmeans", seed=0)
    clusters = read_clusters(tmp_path / "out" / "clusters_4")
    assert clusters == read_clusters(tmp_path / "out" / "clusters_4" / "cluster_metrics.csv")
    assert sorted(clusters) == sorted(np.unique(result.labels[result.labels >= 0]).tolist())
    for cid, latents in clusters.items():
        assert sorted(latents) == np.flatnonzero(result.labels == cid).tolist()
    datas = clusters_data(sae, store, clusters)
    assert [d.cluster_id for d in datas] == list(clusters)


HEADER = "n_clusters_total,cluster_id,n_latents,latent_indices\n"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        pytest.param("cluster_id,n_latents\n0,1\n", r"missing columns \['latent_indices'\]",
                     id="no-column"),
        pytest.param(HEADER + "2,0,2,1 x\n", r"line 2: cluster_id must be an int", id="not-int"),
        pytest.param(HEADER + "2,0,1,1\n2,0,1,2\n", r"line 3: cluster_id 0 appears twice",
                     id="duplicate-id"),
        pytest.param(HEADER + "2,0,3,1 2\n", r"n_latents=3 but latent_indices lists 2",
                     id="count"),
        pytest.param(HEADER + "2,0,0,\n", r"cluster 0 needs distinct latent indices", id="empty"),
        pytest.param(HEADER + "2,0,2,4 4\n", r"needs distinct latent indices", id="repeat"),
        pytest.param(HEADER, r"lists no clusters", id="no-rows"),
    ],
)  # fmt: skip
def test_read_clusters_rejects_malformed_files(tmp_path, text, match):
    (tmp_path / "cluster_metrics.csv").write_text(text)
    with pytest.raises(ValueError, match=match):
        read_clusters(tmp_path)


def test_read_clusters_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no cluster_metrics.csv"):
        read_clusters(tmp_path)


# -- errors ---------------------------------------------------------------------------------
def test_a_store_of_another_sae_is_refused(setup):
    _, store, _ = setup
    other = topk_sae(seed=1)
    with pytest.raises(ValueError, match=r"^the activation store .* was built for another SAE"):
        check_store_matches_sae(store, other)
    with pytest.raises(ValueError, match=r"rebuild it with `featgeo sae store"):
        clusters_data(other, store, CLUSTERS)
    wider = topk_sae(d_sae=48)
    with pytest.raises(ValueError, match=r"holds codes of 40 latents but the SAE has 48"):
        clusters_data(wider, store, CLUSTERS, check_fingerprint=False)
    check_store_matches_sae(store, setup[0])  # its own SAE passes


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"clusters": {0: [40]}}, ValueError, r"cluster 0 must lie in 0\.\.39.*got \[40\]"),
        ({"clusters": {0: [-1, 3]}}, ValueError, r"must lie in 0\.\.39.*got \[-1\]"),
        ({"clusters": {4: []}}, ValueError, r"cluster 4 is empty"),
        ({"clusters": {0: [1, 1]}}, ValueError, r"must be distinct"),
        ({"clusters": {0: [1.5]}}, TypeError, r"1-D sequence of ints"),
        ({"clusters": {"a": [1]}}, TypeError, r"cluster ids must be ints"),
        ({"clusters": "0 1"}, TypeError, r"clusters must be a dict"),
        ({"space": "pca"}, ValueError, r"space must be one of full, subspace"),
        ({"active_threshold": -1.0}, ValueError, r"active_threshold must be a finite"),
        ({"active_threshold": float("nan")}, ValueError, r"active_threshold must be a finite"),
        ({"rank_rtol": "1e-6"}, TypeError, r"rank_rtol must be a float"),
    ],
    ids=["too-big", "negative", "empty", "repeat", "float", "cid", "str", "space", "thr",
         "thr-nan", "rtol"],
)  # fmt: skip
def test_bad_arguments(setup, kwargs, error, match):
    sae, store, _ = setup
    kwargs = {"clusters": CLUSTERS, **kwargs}
    with pytest.raises(error, match=match):
        clusters_data(sae, store, **kwargs)


def test_non_finite_decoder_rows_codes_and_zero_decoders(setup, tmp_path):
    sae, store, _ = setup
    broken = topk_sae()
    with torch.no_grad():
        broken.W_dec[3, 0] = float("nan")
        broken.W_dec[20] = 0.0
    with pytest.raises(ValueError, match=r"W_dec rows \[3\] of the SAE hold NaN"):
        clusters_data(broken, store, CLUSTERS, check_fingerprint=False)
    with pytest.raises(ValueError, match=r"decoder rows of cluster 7 are all zero"):
        clusters_data(broken, store, {7: [20]}, check_fingerprint=False)
    assert clusters_data(broken, store, {7: [20]}, check_fingerprint=False, space="full")
    shutil.copytree(store.folder, tmp_path / "store")
    values = np.load(tmp_path / "store" / "values.npy")
    values[np.flatnonzero(np.load(tmp_path / "store" / "latents.npy") == 20)[0]] = np.inf
    np.save(tmp_path / "store" / "values.npy", values)
    corrupt = ActivationStore.open(tmp_path / "store")
    with pytest.raises(ValueError, match=r"NaN or infinite codes for cluster 7; rebuild"):
        clusters_data(sae, corrupt, {0: [0, 1], 7: [20]})


def test_cluster_data_checks_its_arrays():
    with pytest.raises(ValueError, match=r"codes must be \[n_active=2, n_latents=1\]"):
        ClusterData(0, [1], [0, 1], np.ones((3, 1)), np.ones((1, 4)), None, 4)
    with pytest.raises(ValueError, match=r"must have d_model=5 columns"):
        ClusterData(0, [1], [0, 1], np.ones((2, 1)), np.ones((1, 4)), None, 5)
    with pytest.raises(ValueError, match=r"token_rows must be strictly ascending"):
        ClusterData(0, [1], [1, 0], np.ones((2, 1)), np.ones((1, 4)), None, 4)
    with pytest.raises(ValueError, match=r"token_rows must lie in 0\.\.9"):
        StepBatches([ClusterData(0, [1], [3, 12], np.ones((2, 1)), np.ones((1, 2)), None, 2)], 10)
    with pytest.raises(ValueError, match=r"step must be >= 0, got -1"):
        StepBatches([], 10).positions(-1)
    with pytest.raises(TypeError, match=r"step must be an int, got float"):
        StepBatches([], 10).positions(1.0)
    with pytest.raises(ValueError, match=r"batch_tokens must be >= 1"):
        StepBatches([], 10, batch_tokens=0)
