"""The tiny Llama and its tokenizer, loaded once per test module."""

import pytest

from featgeo.models import load_model, load_tokenizer


@pytest.fixture(scope="module")
def model(tiny_llama):
    return load_model(tiny_llama)


@pytest.fixture(scope="module")
def tokenizer(tiny_llama):
    return load_tokenizer(tiny_llama)
