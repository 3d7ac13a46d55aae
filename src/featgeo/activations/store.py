"""An on-disk store of SAE codes, one row per token, written in one resumable pass.

Layout of a finished store folder (every array an ``.npy`` file, opened memory-mapped)::

    header.json      format_version, model, layer, hook (resid_pre | resid_post), split,
                     fingerprints, context_size, n_tokens, d_sae, featgeo_version, complete
    indptr.npy       int64 [n_tokens + 1]   CSR row pointers into latents/values
    latents.npy      int32 [nnz]            active latent ids, ascending within a row
    values.npy       float32 [nnz]          their activations (exactly what encode returned)
    token_ids.npy    int32 [n_tokens]
    doc_index.npy    int32 [n_tokens]       document index within the split
    chunk_index.npy  int32 [n_tokens]       window index within the document
    position.npy     int32 [n_tokens]       position in the window (>= 1; position 0 dropped)

Built resumably in shards by :mod:`featgeo.activations.sharded`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from featgeo.activations.sharded import (
    FORMAT_VERSION,
    TOKEN_ARRAYS,
    ShardedArrays,
    build_sharded,
    token_columns,
)
from featgeo.cache import cache_dir

if TYPE_CHECKING:
    from featgeo.activations.collect import ActivationBatch
    from featgeo.sae.architectures import SparseAutoencoder


REQUIRED_HEADER_KEYS: tuple[str, ...] = (
    "model",
    "layer",
    "split",
    "corpus_fingerprint",
    "encoder_fingerprint",
    "context_size",
)
"""What a caller must put in the header; they decide whether a store can be reused."""
_CODE_ARRAYS: dict[str, type] = {"latents": np.int32, "values": np.float32}
_SHARD_TOKENS = 65_536


def store_key(
    model_fingerprint: str,
    encoder_fingerprint: str,
    corpus_fingerprint: str,
    split: str,
    layer: int,
    context_size: int,
    max_tokens: int | None,
    hook: str = "resid_post",
) -> str:
    """sha256 hex[:16] of everything that decides a store's content (and the format version).

    ``hook`` is where in block ``layer`` the activations are read (``resid_pre``: its input,
    ``resid_post``: its output), so stores of the two are never confused.
    ``max_tokens`` (``--store-tokens`` of ``sae store`` / ``sae cluster``; ``None``: the whole
    split) is checked here, before the model loads.
    """
    max_tokens = check_store_tokens(max_tokens)
    fields = {
        "format_version": FORMAT_VERSION,
        "model": model_fingerprint,
        "encoder": encoder_fingerprint,
        "corpus": corpus_fingerprint,
        "split": split,
        "layer": int(layer),
        "hook": hook,
        "context_size": int(context_size),
        "max_tokens": None if max_tokens is None else int(max_tokens),
    }
    blob = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def check_store_tokens(max_tokens: int | None) -> int | None:
    """The token budget of a store: ``None`` (the whole split) or an int >= 1. The commands
    that build stores pass ``--store-tokens`` (0 there means the whole split, i.e. ``None``)."""
    if max_tokens is None:
        return None
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int | np.integer):
        raise TypeError(
            f"--store-tokens must be an int, got {type(max_tokens).__name__} {max_tokens!r}"
        )
    if max_tokens < 0:
        raise ValueError(
            f"--store-tokens must be >= 0 (0 stores the whole split), got {max_tokens}"
        )
    if max_tokens == 0:  # a library call: the CLI turns 0 into None
        raise ValueError("max_tokens must be >= 1, or None to store the whole split; got 0")
    return int(max_tokens)


def default_store_dir(key: str) -> Path:
    """``cache_dir()/activation_stores/{key}``."""
    return cache_dir() / "activation_stores" / key


class ActivationStore(ShardedArrays):
    """Read access to a finished store; use :meth:`open` (or :func:`build_store`)."""

    ARRAYS = ("indptr", *_CODE_ARRAYS, *TOKEN_ARRAYS)
    WHAT = "activation store"
    indptr: np.ndarray
    """int64 [n_tokens + 1]."""
    latents: np.ndarray
    """int32 [nnz]."""
    values: np.ndarray
    """float32 [nnz]."""

    @classmethod
    def open(cls, folder: str | Path) -> ActivationStore:
        store = super().open(folder)
        assert store.indptr.shape == (store.n_tokens + 1,), "indptr does not match n_tokens"
        return store

    @property
    def d_sae(self) -> int:
        return int(self.header["d_sae"])

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])

    def __repr__(self) -> str:
        return (
            f"ActivationStore('{self.folder.name}', n_tokens={self.n_tokens}, "
            f"d_sae={self.d_sae}, nnz={self.nnz})"
        )

    def _rows(self, rows: Sequence[int] | np.ndarray | slice | None) -> np.ndarray:
        if rows is None:
            return np.arange(self.n_tokens)
        if isinstance(rows, slice):
            return np.arange(self.n_tokens)[rows]
        rows = np.asarray(rows)
        if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer):
            raise TypeError(f"rows must be a 1-D array of ints or a slice, got {rows.dtype}")
        if rows.size and (rows.min() < 0 or rows.max() >= self.n_tokens):
            raise ValueError(f"rows must lie in 0..{self.n_tokens - 1}")
        return rows.astype(np.int64)

    def codes(self, rows=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """CSR codes of ``rows`` (default all): (indptr [len(rows)+1], latents, values)."""
        rows = self._rows(rows)
        starts, ends = self.indptr[rows], self.indptr[rows + 1]
        counts = ends - starts
        indptr = np.zeros(rows.size + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        # Flat positions of every stored entry of the selected rows, in row order.
        flat = np.repeat(starts - indptr[:-1], counts) + np.arange(indptr[-1])
        return indptr, np.asarray(self.latents[flat]), np.asarray(self.values[flat])

    def dense_codes(self, rows=None, latent_subset: Sequence[int] | None = None) -> np.ndarray:
        """Dense float32 codes [len(rows), k] (k = d_sae, or len(latent_subset) in its order)."""
        indptr, latents, values = self.codes(rows)
        column = self._column_map(latent_subset)
        k = int((column >= 0).sum())
        out = np.zeros((indptr.size - 1, k), dtype=np.float32)
        row_of = np.repeat(np.arange(indptr.size - 1), np.diff(indptr))
        cols = column[latents]
        hit = cols >= 0
        out[row_of[hit], cols[hit]] = values[hit]
        return out

    def _column_map(self, latent_ids: Sequence[int] | None) -> np.ndarray:
        """latent id -> output column (-1 = not requested), as an int64 array of size d_sae."""
        if latent_ids is None:
            return np.arange(self.d_sae)
        ids = np.asarray(latent_ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.d_sae):
            raise ValueError(f"latent ids must lie in 0..{self.d_sae - 1}, got {ids.tolist()}")
        if np.unique(ids).size != ids.size:
            raise ValueError(f"latent ids must be distinct, got {ids.tolist()}")
        column = np.full(self.d_sae, -1, dtype=np.int64)
        column[ids] = np.arange(ids.size)
        return column

    def latent_activations(
        self, latent_ids: Sequence[int], *, block: int = 1 << 24
    ) -> tuple[np.ndarray, np.ndarray]:
        """Tokens where any of ``latent_ids`` is active, and those latents' values there.

        Returns ``(token_rows int64 [n], values float32 [n, len(latent_ids)])``, rows ascending,
        columns in the order of ``latent_ids``. Scans the store ``block`` entries at a time.
        """
        column = self._column_map(latent_ids)
        n_cols = int((column >= 0).sum())
        found_rows, found_cols, found_vals = [], [], []
        for start in range(0, self.nnz, block):
            stop = min(start + block, self.nnz)
            cols = column[np.asarray(self.latents[start:stop])]
            (hit,) = np.nonzero(cols >= 0)
            if hit.size:
                # Entry position -> its token row: the last row whose start is <= position.
                found_rows.append(np.searchsorted(self.indptr, start + hit, side="right") - 1)
                found_cols.append(cols[hit])
                found_vals.append(np.asarray(self.values[start:stop])[hit])
        if not found_rows:
            return np.zeros(0, dtype=np.int64), np.zeros((0, n_cols), dtype=np.float32)
        rows = np.concatenate(found_rows)
        token_rows, inverse = np.unique(rows, return_inverse=True)
        out = np.zeros((token_rows.size, n_cols), dtype=np.float32)
        out[inverse, np.concatenate(found_cols)] = np.concatenate(found_vals)
        return token_rows.astype(np.int64), out


def _check_header(header: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(header, dict):
        raise TypeError(f"header must be a dict, got {type(header).__name__}")
    missing = [k for k in REQUIRED_HEADER_KEYS if k not in header]
    if missing:
        raise ValueError(f"header is missing {missing}; it needs {list(REQUIRED_HEADER_KEYS)}")
    try:
        return json.loads(json.dumps(header))
    except TypeError as exc:
        raise TypeError(f"header must hold only JSON values: {exc}") from None


def build_store(
    folder: str | Path,
    batches: Iterable[ActivationBatch] | Callable[[int], Iterable[ActivationBatch]],
    encode: Callable[[torch.Tensor], torch.Tensor],
    header: dict[str, Any],
    *,
    progress: bool = True,
    shard_tokens: int = _SHARD_TOKENS,
) -> ActivationStore:
    """Encode every batch and store the non-zero codes per token (resumable, reusable).

    Parameters
    ----------
    folder : path
        Final store folder (e.g. ``default_store_dir(store_key(...))``).
    batches : iterable of ActivationBatch, or a function ``skip -> iterable``
        Must be deterministic: a resumed build skips the batches already stored by count (a
        function, e.g. ``lambda skip: iter_activation_batches(..., skip_batches=skip)``,
        skips them without computing them).
    encode : callable
        ``acts [n, d_model] -> codes [n, d_sae]``; zeros are not stored.
    header : dict
        JSON values including :data:`REQUIRED_HEADER_KEYS` (and optionally ``d_sae``, checked
        against the encoder output). A finished store with an equal header is returned as is.
    shard_tokens : int
        A shard is flushed once it holds at least this many tokens (whole batches only).
    """
    return build_sharded(
        ActivationStore,
        Path(folder),
        batches,
        lambda batch, info: _encode_batch(batch, encode, info),
        _check_header(header),
        info={"d_sae": header.get("d_sae")},
        description="SAE codes",
        progress=progress,
        shard_tokens=shard_tokens,
    )


def _encode_batch(batch, encode, info) -> dict[str, np.ndarray]:
    """Encode one batch and extract its non-zeros row by row (CSR pieces)."""
    n = batch.n_tokens
    codes = encode(batch.acts)
    if not isinstance(codes, torch.Tensor) or codes.ndim != 2 or codes.shape[0] != n:
        shape = tuple(codes.shape) if hasattr(codes, "shape") else type(codes).__name__
        raise ValueError(f"encode must return a tensor [n_tokens={n}, d_sae], got {shape}")
    d_sae = info["d_sae"]
    if d_sae is None:
        info["d_sae"] = d_sae = int(codes.shape[1])
    if codes.shape[1] != d_sae:
        raise ValueError(
            f"encode returned {codes.shape[1]} latents per token, expected d_sae={d_sae}; "
            "check that the encoder matches the header"
        )
    codes = codes.detach().to("cpu", torch.float32)  # half-precision codes too: numpy has no bf16
    if not bool(torch.isfinite(codes).all()):
        raise ValueError("encode returned NaN or infinite codes; check the encoder and inputs")
    rows, cols = (codes != 0).nonzero(as_tuple=True)  # row-major: latents ascending per row
    counts = torch.bincount(rows, minlength=n)
    piece = {
        "counts": counts.numpy().astype(np.int64),
        "latents": cols.to(torch.int32).numpy(),
        "values": codes[rows, cols].numpy(),
    }
    return {**piece, **token_columns(batch)}


def build_sae_store(
    sae: SparseAutoencoder,
    *,
    model: str = "embedded",
    corpus: str = "embedded",
    split: str = "sae_train",
    layer: int | None = None,
    context_size: int = 256,
    batch_size: int = 8,
    max_tokens: int | None = 262_144,
    device: str = "auto",
    folder: str | Path | None = None,
    progress: bool = True,
) -> ActivationStore:
    """Build (or reuse) the store of ``sae``'s codes on ``split``; the default folder is
    ``cache_dir()/activation_stores/{key}``. The SAE reads where its hook name points
    (:mod:`featgeo.activations.hooks`; ``layer`` replaces the block number) and encodes in
    float32."""
    import torch

    from featgeo.activations.collect import check_layer, resumable_batches
    from featgeo.activations.hooks import sae_hook_point
    from featgeo.corpus import load_corpus
    from featgeo.models.loading import (
        load_model,
        load_tokenizer,
        model_fingerprint,
        resolve_device,
        resolve_model,
    )
    from featgeo.sae.saelens_format import check_sae_matches_model, sae_fingerprint

    point = sae_hook_point(sae, layer)
    layer = point.layer
    torch_device = resolve_device(device)
    resolved = resolve_model(model)
    corpus_data = load_corpus(corpus)
    corpus_data.split(split, option="--split")  # an unknown split fails before the model loads
    model_fp, sae_fp = model_fingerprint(resolved.source), sae_fingerprint(sae)
    key = store_key(
        model_fp,
        sae_fp,
        corpus_data.fingerprint,
        split,
        layer,
        context_size,
        max_tokens,
        hook=point.kind,
    )
    header = {
        "model": model_fp,
        "layer": layer,
        "hook": point.kind,
        "split": split,
        "corpus_fingerprint": corpus_data.fingerprint,
        "encoder_fingerprint": sae_fp,
        "context_size": context_size,
        "max_tokens": max_tokens,
        "d_sae": sae.cfg.d_sae,
    }
    folder = Path(folder) if folder is not None else default_store_dir(key)
    lm = load_model(model, device=torch_device)
    check_layer(lm, layer)
    check_sae_matches_model(sae, lm.config.hidden_size)
    sae = sae.for_compute(torch_device)  # float32 copy of a bfloat16 / float16 SAE

    batches = resumable_batches(
        lm,
        load_tokenizer(model),
        corpus_data,
        split,
        layer,
        context_size=context_size,
        batch_size=batch_size,
        max_tokens=max_tokens,
        hook=point.kind,
    )
    with torch.no_grad():
        return build_store(folder, batches, sae.encode, header, progress=progress)
