"""Tests written to kill the mutants that survived `make mutate MODULES=sparsity.blocks`
(docs/testing.md): the greedy ordering against a plain-Python statement of its rule, the
k-means ordering against sklearn called directly."""

import numpy as np
import pytest
from sklearn.cluster import KMeans

from featgeo.sparsity.blocks import greedy_union_order, kmeans_block_order


def greedy_by_hand(masks: np.ndarray, block_size: int) -> list[int]:
    """Start each block at the free feature with the fewest non-zeros (lowest index on ties),
    then add block_size - 1 times the free feature adding the fewest new non-zero positions to
    the block's union (lowest index on ties)."""
    masks = [set(np.flatnonzero(row).tolist()) for row in masks]
    free = list(range(len(masks)))
    order = []
    while free:
        first = min(free, key=lambda i: (len(masks[i]), i))
        free.remove(first)
        order.append(first)
        union = set(masks[first])
        for _ in range(block_size - 1):
            if not free:
                break
            chosen = min(free, key=lambda i: (len(masks[i] - union), i))
            free.remove(chosen)
            order.append(chosen)
            union |= masks[chosen]
    return order


@pytest.mark.parametrize("block_size", [2, 3, 4])
def test_greedy_union_order_follows_its_rule(block_size):
    # Density varies per row, so the union (not the last row alone) decides what is added.
    rng = np.random.default_rng(0)
    masks = rng.random((23, 70)) < rng.uniform(0.1, 0.6, size=(23, 1))
    assert greedy_union_order(masks, block_size).tolist() == greedy_by_hand(masks, block_size)


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
