"""Stage 1's engine on a planted activation store: simplices hidden in SAE codes, a cluster
too rare to train, stacking invariance, conversion to the estimator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from featgeo.activations.collect import ActivationBatch
from featgeo.activations.store import build_store
from featgeo.archetypes.config import AANetConfig
from featgeo.archetypes.data import MIN_POINTS_EXTRA, clusters_data
from featgeo.archetypes.engine import (
    STATUSES,
    check_ks,
    k_range,
    model_seed,
    to_aanet,
    train_cluster_aanets,
)
from featgeo.sae import SAEConfig, SparseAutoencoder
from featgeo.sae.saelens_format import sae_fingerprint

D_IN, D_SAE, N_TOKENS = 24, 16, 1200
CLUSTERS = {0: [0, 1, 2], 1: [3, 4, 5, 6], 2: [7, 8]}
RARE_TOKENS = MIN_POINTS_EXTRA + 3  # cluster 2 is active this often: enough for k=2, 3 only
CFG = AANetConfig(max_steps=400, early_stop_patience=100)


def _planted_codes(rng: np.random.Generator) -> np.ndarray:
    """Codes [N_TOKENS, D_SAE]: cluster 0 mixes its 3 latents with Dirichlet weights (a
    triangle in data space), cluster 1 its 4 (a tetrahedron), cluster 2 fires rarely."""
    codes = np.zeros((N_TOKENS, D_SAE), np.float32)
    half = N_TOKENS // 2
    codes[:half, 0:3] = rng.dirichlet(np.ones(3), size=half) * 2.0
    codes[half:, 3:7] = rng.dirichlet(np.ones(4), size=N_TOKENS - half) * 2.0
    codes[rng.choice(N_TOKENS, RARE_TOKENS, replace=False), 7] = 1.0
    return codes


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    rng = np.random.default_rng(0)
    cfg = SAEConfig(d_in=D_IN, d_sae=D_SAE, hook_name="blocks.0.hook_resid_post")
    sae = SparseAutoencoder.from_config(cfg, seed=0)
    codes = torch.from_numpy(_planted_codes(rng))
    batches = [
        ActivationBatch(
            acts=codes[s : s + 200],  # the planted codes travel as "activations" ...
            token_ids=np.zeros(200, np.int32),
            doc_index=np.zeros(200, np.int32),
            chunk_index=np.full(200, s // 200, np.int32),
            position=np.arange(1, 201, dtype=np.int32),
        )
        for s in range(0, N_TOKENS, 200)
    ]
    header = {"model": "planted", "layer": 0, "split": "sae_train", "corpus_fingerprint": "c",
              "encoder_fingerprint": sae_fingerprint(sae), "context_size": 201,
              "d_sae": D_SAE}  # fmt: skip
    folder = tmp_path_factory.mktemp("engine") / "store"
    store = build_store(folder, batches, lambda a: a, header, progress=False)  # ... and codes
    return sae, store, codes.numpy()


@pytest.fixture(scope="module")
def trained(planted):
    sae, store, _ = planted
    datas = clusters_data(sae, store, CLUSTERS)
    return datas, train_cluster_aanets(datas, store.n_tokens, ks=range(2, 6), config=CFG)


def test_every_cluster_and_k_has_a_result_in_order(trained):
    datas, results = trained
    assert [(r.cluster_id, r.k) for r in results] == [
        (c, k) for c in (0, 1, 2) for k in range(2, 6)
    ]
    by = {(r.cluster_id, r.k): r for r in results}
    assert all(by[(c, k)].status == "ok" for c in (0, 1) for k in range(2, 6))
    # RARE_TOKENS = 11 active tokens: k + 8 <= 11 holds for k = 2, 3 only.
    assert [by[(2, k)].status for k in range(2, 6)] == [
        "ok",
        "ok",
        "too_few_points",
        "too_few_points",
    ]
    assert by[(2, 4)].fit is None and np.isnan(by[(2, 4)].final["recon"])
    assert {r.status for r in results} <= set(STATUSES)
    assert by[(0, 3)].n_active == len(datas[0].token_rows) == N_TOKENS // 2


def test_recon_falls_until_the_planted_number_of_vertices(trained):
    _, results = trained
    recon = {(r.cluster_id, r.k): r.final["recon"] for r in results}
    # A triangle needs a 2-d bottleneck (k=3), a tetrahedron a 3-d one (k=4).
    assert recon[(0, 3)] < 0.2 * recon[(0, 2)]
    assert recon[(1, 4)] < 0.5 * recon[(1, 3)]


def test_a_model_is_the_same_trained_alone_or_in_any_stack(planted):
    sae, store, _ = planted
    datas = clusters_data(sae, store, CLUSTERS)
    f64 = dict(ks=range(2, 6), config=CFG, dtype=torch.float64)
    together = train_cluster_aanets(datas, store.n_tokens, **f64)
    alone = train_cluster_aanets(
        clusters_data(sae, store, {1: CLUSTERS[1]}),
        store.n_tokens,
        ks=[4],
        config=CFG,
        dtype=torch.float64,
    )[0]
    reference = next(r for r in together if (r.cluster_id, r.k) == (1, 4))
    np.testing.assert_allclose(alone.fit.curve, reference.fit.curve, rtol=1e-9, atol=1e-12)
    chunked = train_cluster_aanets(datas, store.n_tokens, models_per_stack=4, **f64)
    for a, b in zip(chunked, together, strict=True):
        assert (a.status, a.k) == (b.status, b.k)
        if a.fit is not None:
            np.testing.assert_allclose(a.fit.curve, b.fit.curve, rtol=1e-9, atol=1e-12)


def test_to_aanet_works_in_data_space(planted, trained):
    sae, store, codes = planted
    datas, results = trained
    result = next(r for r in results if (r.cluster_id, r.k) == (0, 3))
    net = to_aanet(result, datas[0], CFG)
    x = codes[: N_TOKENS // 2, 0:3] @ sae.W_dec[0:3].detach().numpy()  # [n, d_model]
    lam = net.transform(x)
    np.testing.assert_allclose(lam.sum(axis=1), 1.0, atol=1e-5)
    assert net.archetypes_.shape == (3, D_IN)
    with pytest.raises(ValueError, match="was not trained"):
        to_aanet(next(r for r in results if r.status == "too_few_points"), datas[2], CFG)


def test_seeds_are_per_model():
    seeds = {model_seed(0, c, k) for c in range(100) for k in range(2, 9)}
    assert len(seeds) == 700
    assert model_seed(1, 3, 4) != model_seed(0, 3, 4)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: k_range(1, 8), "k_min must be >= 2"),
        (lambda: k_range(6, 3), r"k_min \(6\) must be <= k_max \(3\)"),
        (lambda: check_ks([]), "every k must be >= 2"),
        (lambda: check_ks([2, "x"]), "ks must be integers"),
        (lambda: check_ks([2, 100]), "at most 64"),
    ],
    ids=["k<2", "kmin>kmax", "empty", "not-int", "too-big"],
)
def test_bad_k_ranges(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_the_default_criterion_finds_the_planted_vertices(trained):
    from featgeo.archetypes.engine import choose_k

    _, results = trained
    by_cluster = {c: [r for r in results if r.cluster_id == c] for c in CLUSTERS}
    assert choose_k(by_cluster[0]).k == 3  # the triangle
    assert choose_k(by_cluster[1]).k == 4  # the tetrahedron
    rare = choose_k(by_cluster[2])  # k = 4, 5 were not trained: no answer
    assert rare.k is None and np.isnan(rare.strength)
    assert all(0.0 <= r.inside_fraction <= 1.0 for r in by_cluster[0])


@pytest.mark.parametrize("value", [0, -5, 2.5, True])
def test_models_per_stack_must_be_positive(planted, value):
    sae, store, _ = planted
    datas = clusters_data(sae, store, {0: CLUSTERS[0]})
    with pytest.raises(ValueError, match="models_per_stack must be a positive int"):
        train_cluster_aanets(datas, store.n_tokens, ks=[2], config=CFG, models_per_stack=value)


def test_warmup_smaller_than_k_max_is_named(planted):
    sae, store, _ = planted
    datas = clusters_data(sae, store, {0: CLUSTERS[0]})
    with pytest.raises(ValueError, match=r"max_warmup must be an int >= 5 \(k_max=5\)"):
        train_cluster_aanets(datas, store.n_tokens, ks=range(2, 6), config=CFG, max_warmup=2)


def test_choose_k_refuses_mixed_clusters(trained):
    from featgeo.archetypes.engine import choose_k

    _, results = trained
    with pytest.raises(ValueError, match="strictly increasing"):
        choose_k([r for r in results if r.k == 3])
