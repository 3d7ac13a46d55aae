"""Tests written to kill the mutants that survived `make mutate MODULES=sparsity.blocks`
(docs/testing.md): the k-means ordering against sklearn called directly (the greedy ordering
is checked against its plain-Python statement in test_oracles.py)."""

import numpy as np
from sklearn.cluster import KMeans

from featgeo.sparsity.blocks import kmeans_block_order


def test_kmeans_block_order_is_sklearn_kmeans_with_seed_zero():
    rng = np.random.default_rng(1)
    masks = rng.random((40, 32)) < 0.4
    k = 5  # ceil(40 / 8)
    fitted = KMeans(n_clusters=k, n_init=1, random_state=0, algorithm="lloyd")
    labels = fitted.fit(masks.astype(np.float32)).labels_
    expected = sorted(range(40), key=lambda i: labels[i])  # stable: index order in a cluster
    assert kmeans_block_order(masks, 8).tolist() == expected
    other = KMeans(n_clusters=k, n_init=1, random_state=1, algorithm="lloyd")
    assert kmeans_block_order(masks, 8, seed=1).tolist() == sorted(
        range(40), key=lambda i: other.fit(masks.astype(np.float32)).labels_[i]
    )


def test_kmeans_blocks_of_one_keep_the_original_order():
    masks = np.random.default_rng(2).random((12, 16)) < 0.5
    assert kmeans_block_order(masks, 1).tolist() == list(range(12))
