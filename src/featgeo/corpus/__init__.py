"""The text corpora featgeo runs models on.

The embedded corpus (built once from registry packages, see :mod:`featgeo.corpus.build`)
holds English Wikipedia articles and Jane Austen's novels; user corpora come from local
``.txt``/``.jsonl``/``.parquet`` files. Both are divided into the same four disjoint splits
(:data:`SPLITS`) by a hash of each document id.
"""

from featgeo.corpus.build import (
    CORPUS_VERSION,
    DEFAULT_SOURCES,
    FORMAT_VERSION,
    SOURCES,
    build_corpus,
    build_from_files,
    default_corpus_dir,
)
from featgeo.corpus.documents import (
    SPLIT_FRACTIONS,
    SPLITS,
    Corpus,
    Document,
    SourceInfo,
    SourceUnavailableError,
    assign_splits,
    split_of,
)
from featgeo.corpus.info import SplitInfo, corpus_info, totals
from featgeo.corpus.loading import load_corpus, read_corpus_dir
from featgeo.corpus.user import SUPPORTED_SUFFIXES, load_user_documents, user_corpus

__all__ = [
    "CORPUS_VERSION",
    "DEFAULT_SOURCES",
    "FORMAT_VERSION",
    "SOURCES",
    "SPLITS",
    "SPLIT_FRACTIONS",
    "SUPPORTED_SUFFIXES",
    "Corpus",
    "Document",
    "SourceInfo",
    "SourceUnavailableError",
    "SplitInfo",
    "assign_splits",
    "build_corpus",
    "build_from_files",
    "corpus_info",
    "default_corpus_dir",
    "load_corpus",
    "load_user_documents",
    "read_corpus_dir",
    "split_of",
    "totals",
    "user_corpus",
]
