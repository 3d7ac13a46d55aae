"""A causal LM whose decoder layers are read from its safetensors files one at a time.

Pruning a 7B model layer by layer needs one decoder layer on the device at a time. A
:class:`StreamedModel` builds the model's skeleton with its parameters on the ``meta`` device
(no memory), loads what lies outside the decoder stack (embedding, final norm, LM head; rotary
buffers are computed at construction as usual) onto the compute device, and materialises one
decoder layer on demand (:meth:`StreamedModel.layer`) straight from the checkpoint's shards,
converted to the compute dtype; :meth:`StreamedModel.release` gives its memory back. The host
never holds the whole model, in any dtype.

The same forward code runs as with a fully loaded model, so a streamed run computes exactly
what the in-memory run computes (tests/pruning/test_offload.py).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from featgeo.models.components import decoder_layers, decoder_layers_path

log = logging.getLogger(__name__)

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
"""``--dtype`` names (besides ``auto``) -> torch dtypes."""


def parse_dtype(name: str) -> str:
    """Validate a ``--dtype`` value (``auto`` or a key of :data:`DTYPES`); return it."""
    if name != "auto" and name not in DTYPES:
        raise ValueError(f"--dtype must be one of auto, {', '.join(DTYPES)}, got '{name}'")
    return name


def resolve_dtype(name: str, checkpoint_dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """``auto``: the checkpoint's dtype on CUDA, float32 on CPU (where half precision matmuls are
    slow and gain nothing); otherwise the named dtype."""
    parse_dtype(name)
    if name == "auto":
        return checkpoint_dtype if device.type == "cuda" else torch.float32
    return DTYPES[name]


class StreamingUnsupportedError(ValueError):
    """The checkpoint's tensors cannot be mapped onto the model by name (see :func:`_renamed`)."""


@dataclass
class SafetensorsCheckpoint:
    """The safetensors files of a Hugging Face model folder: which file holds which tensor.

    Raises (from :meth:`open`) FileNotFoundError when the index names a shard that is missing,
    ValueError when the index or a shard's header cannot be read.
    """

    folder: Path
    weight_map: dict[str, str]
    """Tensor name -> file name inside ``folder``."""
    dtypes: dict[str, str]
    """Tensor name -> safetensors dtype code (``BF16``, ``F32``, ...)."""

    @classmethod
    def open(cls, folder: str | os.PathLike, spec: str) -> SafetensorsCheckpoint | None:
        """Read the index (or the single ``model.safetensors``) and every shard's header; None
        when the folder has no safetensors weights (a ``pytorch_model.bin`` checkpoint)."""
        folder = Path(folder)
        index = folder / INDEX
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
                if not isinstance(weight_map, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
                ):
                    raise TypeError
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                raise ValueError(
                    f"model '{spec}': {INDEX} is not a safetensors index (a JSON object with a "
                    "'weight_map' of tensor name -> shard file); restore the file written by "
                    "save_pretrained"
                ) from None
            files = sorted(set(weight_map.values()))
            missing = [name for name in files if not (folder / name).is_file()]
            if missing:
                raise FileNotFoundError(
                    f"model '{spec}': {INDEX} names {len(missing)} shard file"
                    f"{'s' if len(missing) > 1 else ''} missing from the folder "
                    f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); copy the "
                    "complete model folder (every shard the index lists)"
                )
        elif (folder / SINGLE).is_file():
            files, weight_map = [SINGLE], None
        else:
            return None
        dtypes: dict[str, str] = {}
        held: dict[str, str] = {}
        for name in files:
            header = _read_header(folder / name, spec)
            for key, entry in header.items():
                if key != "__metadata__":
                    dtypes[key] = entry["dtype"]
                    held[key] = name
        if weight_map is None:
            weight_map = held
        absent = [key for key, name in weight_map.items() if held.get(key) != name]
        if absent:
            raise ValueError(
                f"model '{spec}': {INDEX} places {len(absent)} tensors in shards that do not "
                f"hold them (e.g. '{absent[0]}' in {weight_map[absent[0]]}); restore the "
                "model folder written by save_pretrained"
            )
        return cls(folder, weight_map, dtypes)

    def dtype(self) -> torch.dtype:
        """The dtype of the checkpoint's floating-point weights (the commonest one)."""
        codes = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
        counts: dict[str, int] = {}
        for code in self.dtypes.values():
            if code in codes:
                counts[code] = counts.get(code, 0) + 1
        return codes[max(counts, key=counts.get)] if counts else torch.float32

    def read(
        self, names: list[str], *, device: torch.device, dtype: torch.dtype
    ) -> dict[str, torch.Tensor]:
        """The tensors ``names``, floating-point ones converted to ``dtype``, on ``device``.

        Each shard is opened only for the tensors it holds and closed again, so no mapping of
        the file outlives the call (the host's resident memory stays at what was read).
        """
        from safetensors import safe_open

        by_file: dict[str, list[str]] = {}
        for name in names:
            by_file.setdefault(self.weight_map[name], []).append(name)
        out: dict[str, torch.Tensor] = {}
        target = "cpu" if device.type == "cpu" else str(device)
        for file, keys in by_file.items():
            with safe_open(self.folder / file, framework="pt", device=target) as handle:
                for key in keys:
                    tensor = handle.get_tensor(key)
                    out[key] = tensor.to(dtype) if tensor.is_floating_point() else tensor
        return out


def _renamed(model: nn.Module, weight_map: dict[str, str]) -> dict[str, str]:
    """Checkpoint names as the model calls them -> names in the checkpoint.

    transformers renames some legacy checkpoint keys when it loads them (GPT-NeoX's
    ``embed_out`` is the model's ``lm_head``); plain renames are applied here too. Conversions
    that reshape tensors are not, so such a checkpoint lacks names and cannot be streamed.
    """
    import re

    names = {key: key for key in weight_map}
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming

        transforms = get_model_conversion_mapping(model)
    except (ImportError, AttributeError, TypeError) as exc:  # another transformers version
        log.debug("no checkpoint renames: %s", exc)
        return names
    for transform in transforms:
        if not isinstance(transform, WeightRenaming) or isinstance(transform, WeightConverter):
            continue
        source, target = transform._original_source_patterns, transform._original_target_patterns
        if len(source) != 1 or len(target) != 1:
            continue
        renamed = {}
        for key, original in names.items():
            renamed[re.sub(source[0], target[0], key)] = original
        names = renamed
    return names


def tensor_names(path: str | os.PathLike) -> list[str]:
    """The names of the tensors in one safetensors file (from its header)."""
    return [k for k in _read_header(Path(path), str(path)) if k != "__metadata__"]


def _read_header(path: Path, spec: str) -> dict:
    """A safetensors file's JSON header (8-byte little-endian length, then JSON), after checking
    that every tensor it lists lies within the file, so that a shard cut short is refused
    before any work rather than when its layer is reached."""
    try:
        with open(path, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            if not 2 <= size <= 100_000_000:
                raise ValueError
            header = json.loads(handle.read(size))
        if not isinstance(header, dict):
            raise ValueError
        tensors = [v for k, v in header.items() if k != "__metadata__"]
        end = max((int(t["data_offsets"][1]) for t in tensors), default=0)
        if 8 + size + end > path.stat().st_size:
            raise ValueError
        return header
    except (OSError, ValueError, UnicodeDecodeError, KeyError, TypeError, IndexError):
        raise ValueError(
            f"model '{spec}': {path.name} is not a readable safetensors file (empty, truncated "
            "or not written by safetensors); restore it from the original model folder"
        ) from None


class StreamedModel:
    """A causal LM with everything but its decoder layers on ``device`` (see module docstring).

    model: the ``*ForCausalLM``; its decoder layers hold ``meta`` parameters until
    :meth:`layer` loads them. Raises ValueError when the checkpoint lacks a tensor the model
    needs (a layout that transformers converts on load, which featgeo does not stream).
    """

    def __init__(
        self,
        source: str | os.PathLike,
        checkpoint: SafetensorsCheckpoint,
        *,
        spec: str,
        dtype: torch.dtype,
        device: torch.device,
    ):
        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoModelForCausalLM

        self.checkpoint, self.dtype, self.device = checkpoint, dtype, device
        config = AutoConfig.from_pretrained(source, local_files_only=True)
        # Parameters on meta (no memory, no random init); buffers real, so the rotary
        # embedding's inv_freq is computed by the model's own constructor.
        with init_empty_weights(include_buffers=False):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        model.tie_weights()  # from_pretrained ties lm_head to the embedding; from_config not
        self.model = model.eval().requires_grad_(False)
        self.layers_path = decoder_layers_path(model)
        self._names = self._checkpoint_names(spec)
        outside = [n for n in self._names if not n.startswith(self.layers_path + ".")]
        self._load(outside)
        for module in self.model.modules():  # the constructor's buffers (rotary) to the device
            for key, buffer in module._buffers.items():
                if buffer is not None and buffer.device.type != "meta":
                    module._buffers[key] = buffer.to(device)

    @property
    def n_layers(self) -> int:
        return len(decoder_layers(self.model))

    def _checkpoint_names(self, spec: str) -> dict[str, str]:
        """Model state name -> checkpoint tensor name, one per group of tied tensors (the
        group's first name found in the checkpoint); ``self._groups`` keeps every group."""
        prefix = getattr(self.model, "base_model_prefix", "") or ""
        held = _renamed(self.model, self.checkpoint.weight_map)
        groups: dict[int, list[str]] = {}
        for key, tensor in self.model.state_dict(keep_vars=True).items():
            groups.setdefault(id(tensor), []).append(key)
        self._groups = list(groups.values())
        names: dict[str, str] = {}
        missing: list[str] = []
        for group in self._groups:
            found = next(
                (
                    (key, name)
                    for key in group
                    for name in (key, key.removeprefix(prefix + "."), f"{prefix}.{key}")
                    if name in held
                ),
                None,
            )
            if found is None:
                missing.append(group[0])
            else:
                names[found[0]] = held[found[1]]
        if missing:
            raise StreamingUnsupportedError(
                f"model '{spec}': its safetensors files lack {len(missing)} tensors the model "
                f"needs (e.g. '{missing[0]}'); featgeo streams checkpoints saved by "
                "save_pretrained; use --offload none for this model"
            )
        return names

    def _load(self, keys: list[str]) -> None:
        """Load ``keys`` (names of :meth:`_checkpoint_names`); tied names share the tensor."""
        tensors = self.checkpoint.read(
            sorted({self._names[k] for k in keys}), device=self.device, dtype=self.dtype
        )
        wanted = set(keys)
        for group in self._groups:
            key = next((k for k in group if k in wanted), None)
            if key is None:
                continue
            shared = self._set(key, tensors[self._names[key]])
            for other in group:
                if other != key:
                    self._set(other, shared, share=True)

    def _set(self, key: str, tensor: torch.Tensor, share: bool = False) -> torch.Tensor:
        owner, _, attr = key.rpartition(".")
        module = self.model.get_submodule(owner)
        if attr in module._parameters:
            param = tensor if share else nn.Parameter(tensor, requires_grad=False)
            module._parameters[attr] = param
            return param
        module._buffers[attr] = tensor
        return tensor

    def layer(self, index: int) -> nn.Module:
        """Decoder layer ``index`` with its weights read from the checkpoint onto the device."""
        prefix = f"{self.layers_path}.{index}."
        self._load([n for n in self._names if n.startswith(prefix)])
        layer = decoder_layers(self.model)[index]
        return layer.to(self.device)  # buffers the constructor made on the host

    def release(self, index: int) -> None:
        """Give layer ``index``'s parameters back (they return to ``meta``)."""
        layer = decoder_layers(self.model)[index]
        for module in layer.modules():
            for attr, param in module._parameters.items():
                if param is not None:
                    module._parameters[attr] = nn.Parameter(
                        torch.empty_like(param, device="meta"), requires_grad=False
                    )
        if self.device.type == "cpu":
            _return_freed_memory()


def _return_freed_memory() -> None:
    """Hand the memory of freed layers back to the OS. glibc keeps freed blocks of a few MB in
    its heap, so without this the host's resident memory grows by about a layer's size per
    layer streamed, as if the whole model were loaded (measured: 9 MB per 12.6 MB layer)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        pass
