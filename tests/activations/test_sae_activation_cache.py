"""The dense activation cache (SAE training data) and its shuffled reader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from featgeo.activations.cache import (
    ActivationCache,
    build_activation_cache,
    default_cache_dir,
    shuffled_batches,
)
from featgeo.activations.collect import iter_activation_batches
from featgeo.corpus import load_corpus
from featgeo.files import partial_dir

HEADER = {"model": "tiny", "layer": 1, "split": "sae_train", "corpus_fingerprint": "c",
          "context_size": 32, "max_tokens": 3000}  # fmt: skip


def batches(model, tokenizer, text_corpus, skip=0):
    corpus = load_corpus(text_corpus)
    return iter_activation_batches(
        model, tokenizer, corpus, "sae_train", 1, context_size=32, batch_size=4, max_tokens=3000,
        skip_batches=skip,
    )  # fmt: skip


def test_cache_holds_exactly_the_collected_activations(model, tokenizer, text_corpus, tmp_path):
    direct = list(batches(model, tokenizer, text_corpus))
    cache = build_activation_cache(
        tmp_path / "c", batches(model, tokenizer, text_corpus), HEADER, progress=False
    )
    assert cache.n_tokens == 3000 and cache.d_model == 64
    np.testing.assert_array_equal(cache.acts, torch.cat([b.acts for b in direct]).numpy())
    for name in ("token_ids", "doc_index", "chunk_index", "position"):
        expected = np.concatenate([getattr(b, name) for b in direct])
        np.testing.assert_array_equal(getattr(cache, name), expected)
    assert cache.header["d_model"] == 64 and cache.header["complete"] is True
    # A second build with the same header reuses the folder without reading the batches.
    again = build_activation_cache(tmp_path / "c", iter(()), HEADER, progress=False)
    np.testing.assert_array_equal(again.acts, cache.acts)
    assert not partial_dir(tmp_path / "c").exists()


def test_interrupted_build_resumes_without_duplicates(model, tokenizer, text_corpus, tmp_path):
    whole = build_activation_cache(
        tmp_path / "whole", batches(model, tokenizer, text_corpus), HEADER, progress=False
    )

    def interrupted():
        for i, batch in enumerate(batches(model, tokenizer, text_corpus)):
            if i == 12:
                raise KeyboardInterrupt
            yield batch

    small = {"progress": False, "shard_tokens": 500}
    with pytest.raises(KeyboardInterrupt):
        build_activation_cache(tmp_path / "cut", interrupted(), HEADER, **small)
    assert partial_dir(tmp_path / "cut").exists() and not (tmp_path / "cut").exists()
    from featgeo.activations import collect as activations

    runs = []
    run_batch = activations._run_batch
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(activations, "_run_batch", lambda *a: runs.append(1) or run_batch(*a))
        resumed = build_activation_cache(
            tmp_path / "cut",
            lambda skip: batches(model, tokenizer, text_corpus, skip),
            HEADER,
            **small,
        )
    n_batches = len(list(batches(model, tokenizer, text_corpus)))
    assert 0 < len(runs) < n_batches - 8  # the stored shards were not recomputed
    np.testing.assert_array_equal(resumed.acts, whole.acts)
    np.testing.assert_array_equal(resumed.position, whole.position)


def test_shuffled_batches_are_seeded_epochs():
    acts = np.arange(50, dtype=np.float32).reshape(25, 2)
    stream = shuffled_batches(acts, 4, seed=3)
    first_epoch = [next(stream) for _ in range(6)]  # 25 // 4 = 6 whole batches per epoch
    rows = torch.cat(first_epoch)[:, 0] / 2
    assert rows.unique().numel() == 24  # no row twice within an epoch, one left out
    second_epoch = torch.cat([next(stream) for _ in range(6)])
    assert not torch.equal(second_epoch, torch.cat(first_epoch))  # a new permutation
    replay = shuffled_batches(acts, 4, seed=3)
    for batch in first_epoch:
        assert torch.equal(next(replay), batch)
    other = torch.cat(
        [b for _, b in zip(range(6), shuffled_batches(acts, 4, seed=4), strict=False)]
    )
    assert not torch.equal(other, torch.cat(first_epoch))
    with pytest.raises(ValueError, match="only 25 activation rows for a batch size of 64"):
        next(shuffled_batches(acts, 64, seed=0))


def test_default_dir_and_open_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATGEO_CACHE", str(tmp_path))
    folder = default_cache_dir(HEADER)
    assert folder.parent == tmp_path / "activations"
    assert default_cache_dir({**HEADER, "layer": 2}) != folder
    with pytest.raises(FileNotFoundError, match="activation cache .* does not exist"):
        ActivationCache.open(folder)
