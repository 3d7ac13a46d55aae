"""The activation store: exact codes, resume without duplicates, reuse, latent queries, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from featgeo.activations.collect import iter_activation_batches
from featgeo.activations.store import (
    ActivationStore,
    build_store,
    default_store_dir,
    store_key,
)
from featgeo.corpus import Corpus, load_corpus
from featgeo.files import partial_dir

D_SAE, TOP_K, CONTEXT, BATCH = 96, 8, 32, 4


@pytest.fixture(scope="module")
def corpus(text_corpus):
    full = load_corpus(text_corpus)
    return Corpus("small", {"sae_train": full.split("sae_train")[:5]})


class TopKEncoder:
    """A real (seeded, random) ReLU encoder keeping the top 8 latents per token; counts calls."""

    def __init__(self, d_model: int, d_sae: int = D_SAE, seed: int = 0):
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(torch.nn.Linear(d_model, d_sae), torch.nn.ReLU())
        self.calls = 0

    @torch.no_grad()
    def __call__(self, acts: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        codes = self.net(acts)  # [n, d_sae]
        top = codes.topk(TOP_K, dim=-1)
        return torch.zeros_like(codes).scatter_(-1, top.indices, top.values)


def make_header(**overrides):
    header = {
        "model": "tiny",
        "layer": 1,
        "split": "sae_train",
        "corpus_fingerprint": "c0",
        "encoder_fingerprint": "e0",
        "context_size": CONTEXT,
        "max_tokens": None,
        "d_sae": D_SAE,
    }
    return {**header, **overrides}


def batches(model, tokenizer, corpus, layer=1, max_tokens=None):
    return iter_activation_batches(
        model,
        tokenizer,
        corpus,
        "sae_train",
        layer,
        context_size=CONTEXT,
        batch_size=BATCH,
        max_tokens=max_tokens,
    )


def interrupted(stream, after):
    """Yield ``after`` batches, then fail as a Ctrl-C would."""
    for i, batch in enumerate(stream):
        if i == after:
            raise KeyboardInterrupt("simulated interruption")
        yield batch


@pytest.fixture(scope="module")
def layer1_batches(model, tokenizer, corpus):
    """The deterministic batch stream, computed once (tests replay it)."""
    return list(batches(model, tokenizer, corpus))


@pytest.fixture(scope="module")
def reference(model, layer1_batches):
    """Dense codes computed directly, batch by batch, with the token metadata."""
    encoder = TopKEncoder(model.config.hidden_size)
    codes = torch.cat([encoder(b.acts) for b in layer1_batches]).numpy()
    meta = {
        k: np.concatenate([getattr(b, k) for b in layer1_batches])
        for k in ("token_ids", "doc_index", "chunk_index", "position")
    }
    return codes, meta


@pytest.fixture(scope="module")
def built(tmp_path_factory, model, layer1_batches):
    folder = tmp_path_factory.mktemp("stores") / "full"
    encoder = TopKEncoder(model.config.hidden_size)
    store = build_store(
        folder,
        layer1_batches,
        encoder,
        make_header(),
        progress=False,
        shard_tokens=200,
    )
    return store


def test_store_holds_exactly_the_direct_codes(built, reference):
    codes, meta = reference
    assert built.n_tokens == codes.shape[0] and built.d_sae == D_SAE
    dense = built.dense_codes()
    assert dense.dtype == np.float32
    np.testing.assert_array_equal(dense, codes)  # bit-identical
    assert np.all(np.diff(built.indptr) <= TOP_K)
    for key, values in meta.items():
        np.testing.assert_array_equal(getattr(built, key), values)
    assert built.position.min() == 1
    header = json.loads((built.folder / "header.json").read_text())
    assert header["complete"] is True and header["n_tokens"] == codes.shape[0]
    assert not partial_dir(built.folder).exists()


def test_codes_and_dense_subsets(built, reference):
    codes, _ = reference
    rows = np.array([5, 0, built.n_tokens - 1, 5])
    indptr, latents, values = built.codes(rows)
    for i, row in enumerate(rows):
        (expect,) = np.nonzero(codes[row])
        np.testing.assert_array_equal(latents[indptr[i] : indptr[i + 1]], expect)
        np.testing.assert_array_equal(values[indptr[i] : indptr[i + 1]], codes[row, expect])
    subset = [7, 3, 90]
    np.testing.assert_array_equal(built.dense_codes(rows, subset), codes[rows][:, subset])


@pytest.mark.parametrize(
    "latents", [[3], [0, 17, 95], list(range(D_SAE))], ids=["one", "three", "all"]
)
def test_latent_activations_match_dense(built, reference, latents):
    codes, _ = reference
    rows, values = built.latent_activations(latents, block=97)  # small blocks cross rows
    expect_rows = np.nonzero((codes[:, latents] != 0).any(axis=1))[0]
    np.testing.assert_array_equal(rows, expect_rows)
    np.testing.assert_array_equal(values, codes[expect_rows][:, latents])


def test_resume_after_interruption_gives_identical_files(tmp_path, model, layer1_batches, built):
    folder = tmp_path / "store"
    encoder = TopKEncoder(model.config.hidden_size)
    with pytest.raises(KeyboardInterrupt):
        build_store(
            folder,
            interrupted(layer1_batches, after=2),
            encoder,
            make_header(),
            progress=False,
            shard_tokens=1,  # one batch per shard
        )
    assert not folder.exists()
    progress = json.loads((partial_dir(folder) / "progress.json").read_text())
    assert progress["batches_done"] == 2 and len(progress["shards"]) == 2

    encoder.calls = 0
    store = build_store(
        folder,
        layer1_batches,
        encoder,
        make_header(),
        progress=False,
        shard_tokens=1,
    )
    n_batches = len(layer1_batches)
    assert encoder.calls == n_batches - 2  # the two stored batches were not encoded again
    assert store.n_tokens == built.n_tokens
    for name in (
        "indptr",
        "latents",
        "values",
        "token_ids",
        "doc_index",
        "chunk_index",
        "position",
    ):
        a, b = (folder / f"{name}.npy").read_bytes(), (built.folder / f"{name}.npy").read_bytes()
        assert a == b, name
    assert not partial_dir(folder).exists()


def test_same_header_is_reused_and_a_new_header_rebuilds(tmp_path, model, tokenizer, corpus):
    folder = tmp_path / "store"
    encoder = TopKEncoder(model.config.hidden_size)
    kw = {"progress": False}
    first = build_store(
        folder,
        batches(model, tokenizer, corpus, max_tokens=150),
        encoder,
        make_header(max_tokens=150),
        **kw,
    )
    calls = encoder.calls
    again = build_store(
        folder,
        batches(model, tokenizer, corpus, max_tokens=150),
        encoder,
        make_header(max_tokens=150),
        **kw,
    )
    assert encoder.calls == calls and again.n_tokens == first.n_tokens == 150

    other = build_store(
        folder,
        batches(model, tokenizer, corpus, layer=0, max_tokens=150),
        encoder,
        make_header(layer=0, max_tokens=150),
        **kw,
    )
    assert encoder.calls > calls
    assert other.header["layer"] == 0
    assert not np.array_equal(other.dense_codes(), again.dense_codes())


def test_store_key_and_default_dir(monkeypatch, tmp_path):
    args = ("m", "e", "c", "sae_train", 6, 256, None)
    key = store_key(*args)
    assert len(key) == 16 and key == store_key(*args)
    assert key != store_key("m", "e", "c", "sae_train", 7, 256, None)
    assert key != store_key("m", "e", "c", "sae_train", 6, 256, 1000)
    monkeypatch.setenv("FEATGEO_CACHE", str(tmp_path))
    assert default_store_dir(key) == tmp_path / "activation_stores" / key


def _wide(encoder):
    return lambda acts: torch.cat([encoder(acts), torch.zeros(acts.shape[0], 1)], dim=1)


@pytest.mark.parametrize(
    ("case", "match"),
    [
        pytest.param("layer", r"--layer 5 is out of range; this model has layers 0-1", id="layer"),
        pytest.param(
            "width", r"encode returned 97 latents per token, expected d_sae=96", id="width"
        ),
        pytest.param("rows", r"encode must return a tensor \[n_tokens=", id="rows"),
        pytest.param("empty", r"split 'sae_train' of corpus 'empty' is empty", id="empty-split"),
        pytest.param("nothing", r"split 'sae_train' gave no tokens", id="no-batches"),
        pytest.param("header", r"header is missing \['encoder_fingerprint'\]", id="header"),
    ],
)
def test_bad_inputs_leave_no_store(tmp_path, model, tokenizer, corpus, layer1_batches, case, match):
    folder = tmp_path / "store"
    encoder = TopKEncoder(model.config.hidden_size)
    header = make_header()
    with pytest.raises(ValueError, match=match):
        stream = iter(layer1_batches)
        if case == "layer":
            stream = batches(model, tokenizer, corpus, layer=5)
        elif case == "width":
            encoder = _wide(encoder)
        elif case == "rows":
            encoder = lambda acts: torch.zeros(3, D_SAE)  # noqa: E731
        elif case == "empty":
            empty = Corpus("empty", {"eval": corpus.split("sae_train")})
            stream = batches(model, tokenizer, empty)
        elif case == "nothing":
            stream = iter([])
        elif case == "header":
            del header["encoder_fingerprint"]
        build_store(folder, stream, encoder, header, progress=False)
    assert not folder.exists()
    assert not partial_dir(folder).exists()


def test_open_errors(tmp_path, built):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ActivationStore.open(tmp_path / "nope")
    with pytest.raises(ValueError, match=r"rows must lie in"):
        built.codes([built.n_tokens])
    with pytest.raises(ValueError, match=r"latent ids must lie in 0\.\.95"):
        built.latent_activations([96])
