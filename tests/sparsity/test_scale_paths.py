"""The faster paths taken for LLaMA-7B-sized matrices (benchmarks/sparsity_scale.py) give
exactly what the plain ones give: the greedy block ordering from one popcount pass per step
(with faiss and with the numpy fallback), ``hamming_to_code``, and the t-SNE of a seed computed
once and reused for every k of ``hamming seeds``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from featgeo.sparsity import hamming
from featgeo.sparsity.blocks import _packed, _sparsest, greedy_union_order
from featgeo.sparsity.hamming import hamming_to, hamming_to_code, pack_masks, pairwise_hamming


def counted_greedy_order(masks: np.ndarray, block_size: int) -> np.ndarray:
    """The greedy union ordering as it was written before (|c & ~u| counted over a copy of the
    free features' codes at every step): the reference the fast path must equal."""
    codes, density, free = _packed(masks)
    order: list[int] = []
    while free.any():
        first = _sparsest(density, free)
        free[first] = False
        order.append(first)
        union = codes[first].copy()
        for _ in range(block_size - 1):
            candidates = np.flatnonzero(free)
            if candidates.size == 0:
                break
            added = np.bitwise_count(codes[candidates] & ~union).sum(axis=1)
            chosen = int(candidates[np.argmin(added)])
            free[chosen] = False
            order.append(chosen)
            union |= codes[chosen]
    return np.asarray(order, dtype=np.int64)


def masks_with_ties(n: int, d: int, seed: int) -> np.ndarray:
    """[n, d] masks of mixed density with duplicated and all-zero features (ties everywhere)."""
    rng = np.random.default_rng(seed)
    masks = rng.random((n, d)) < rng.uniform(0.05, 0.9, size=(n, 1))
    masks[rng.choice(n, n // 4, replace=False)] = masks[0]
    masks[rng.choice(n, max(1, n // 8), replace=False)] = False
    return masks


@pytest.mark.parametrize("engine", ["faiss", "numpy fallback"])
@pytest.mark.parametrize(
    ("n", "d", "block_size"),
    [(1, 5, 8), (9, 64, 1), (40, 63, 8), (57, 200, 3), (80, 130, 9)],
    ids=["one feature", "blocks of one", "D below a word", "D padded", "last block short"],
)
def test_greedy_order_equals_the_counting_version(monkeypatch, engine, n, d, block_size):
    if engine == "numpy fallback":
        monkeypatch.setattr(hamming, "_faiss", lambda: None)
    masks = masks_with_ties(n, d, seed=n + d)
    got = greedy_union_order(masks, block_size)
    np.testing.assert_array_equal(got, counted_greedy_order(masks, block_size))
    assert got.dtype == np.int64


def test_hamming_to_code_is_a_row_of_the_pairwise_matrix():
    masks = masks_with_ties(30, 100, seed=3)
    codes = pack_masks(masks)
    full = pairwise_hamming(masks)
    for index in (0, 7, 29):
        got = hamming_to_code(codes[index], codes)
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, full[index])
        np.testing.assert_array_equal(hamming_to(masks, index), full[index])
    union = codes[3] | codes[11]  # a code that is no feature's: the union of two
    expected = [(np.unpackbits(union) != np.unpackbits(c)).sum() for c in codes]
    np.testing.assert_array_equal(hamming_to_code(union, codes), expected)


def test_seeds_compute_one_tsne_per_seed_and_the_same_figures(tmp_path, monkeypatch):
    from featgeo.reports import plots
    from featgeo.sparsity.seeds import run_seeds

    rng = np.random.default_rng(0)
    weights = rng.standard_normal((48, 40)) * (rng.random((48, 40)) < 0.5)  # [D, N]
    path = tmp_path / "m" / "wanda" / "layer1-mlp.down_proj.pt"
    path.parent.mkdir(parents=True)
    torch.save(torch.from_numpy(weights.astype(np.float32)), path)
    settings = {"seeds": 2, "k_values": (2, 3, 4), "n_similar": 12, "dpi": 30, "progress": False}

    def run(out: str):
        return run_seeds(
            tmp_path / "m", method="wanda", component="mlp.down_proj",
            output_dir=tmp_path / out, **settings,
        )  # fmt: skip

    calls = []
    real = plots.tsne_embedding
    monkeypatch.setattr(
        plots, "tsne_embedding", lambda m, **kw: calls.append(kw["random_state"]) or real(m, **kw)
    )
    reused = run("reused")
    assert calls == [0, 1]  # one t-SNE per seed, not per (seed, k)

    def tsne_per_k(masks, labels, *, random_state=0, embedding=None, title=None):
        return real_plot(masks, labels, random_state=random_state, title=title)  # recomputed

    real_plot = plots.tsne_plot
    monkeypatch.setattr(plots, "tsne_plot", tsne_per_k)
    recomputed = run("recomputed")
    assert reused.files == recomputed.files
    for name in reused.files:
        a, b = (tmp_path / out / name for out in ("reused", "recomputed"))
        assert a.read_bytes() == b.read_bytes(), name
