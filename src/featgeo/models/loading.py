"""Turn a model spec (``embedded``, a local folder, or a hub id) into a loaded model.

Local paths always work. A hub id is tried from the local Hugging Face cache first; only if it
is not there do we ask the hub, and when no hub is reachable we fail at once with a message
that says to pass a local folder instead of hanging on network timeouts.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

import torch

from featgeo.errors import HubUnreachableError
from featgeo.models.embedded import ensure_embedded_cache

log = logging.getLogger(__name__)

EMBEDDED = "embedded"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's files come from."""

    spec: str
    """What the user typed."""
    source: str
    """A local folder, or a hub id for ``from_pretrained``."""
    kind: Literal["embedded", "local", "hub"]


def resolve_model(spec: str | os.PathLike = EMBEDDED) -> ResolvedModel:
    """Validate a model spec and find its files, building the embedded cache if needed."""
    spec = str(spec)
    if spec == EMBEDDED:
        return ResolvedModel(spec, str(ensure_embedded_cache()), "embedded")
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"model path '{spec}' is not a Hugging Face model folder (no config.json); "
                "pass a folder saved with save_pretrained, or --model embedded"
            )
        _check_config_json(path / "config.json", spec)
        return ResolvedModel(spec, str(path), "local")
    if not _HUB_ID.match(spec) or spec.startswith((".", "~")):
        raise FileNotFoundError(
            f"model path '{spec}' does not exist; pass an existing local model folder, "
            "a hub id like 'org/name', or --model embedded"
        )
    return ResolvedModel(spec, _hub_source(spec), "hub")


def local_model_folder(resolved: ResolvedModel) -> Path | None:
    """The local folder holding a resolved model's files: the folder itself, or a hub id's
    snapshot in the local Hugging Face cache; None when there is none (download first)."""
    if resolved.kind != "hub":
        return Path(resolved.source)
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(resolved.source, "config.json")
    return Path(config).parent if isinstance(config, str) else None


def _check_config_json(path: Path, spec: str) -> None:
    """A local model's config.json must be a JSON object (transformers would raise OSError)."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(
            f"model path '{spec}': {path.name} is not valid JSON ({exc}); restore the file "
            "written by save_pretrained"
        ) from None
    if not isinstance(config, dict):
        raise ValueError(
            f"model path '{spec}': {path.name} holds a {type(config).__name__}, not a JSON "
            "object; restore the file written by save_pretrained"
        )
    model_type = config.get("model_type")
    if isinstance(model_type, str) and model_type:
        import transformers
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING

        # Without this check transformers' own error ends in a truncated "pip install
        # --upgrade transformers" that the CLI cannot act on.
        if model_type not in CONFIG_MAPPING:
            raise ValueError(
                f"model '{spec}': transformers does not know model_type '{model_type}'; "
                f"featgeo needs a model transformers {transformers.__version__} can load"
            )


def _hub_source(hub_id: str) -> str:
    """Return ``hub_id`` if it can be loaded: from the local HF cache, or a reachable hub."""
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(hub_id, "config.json"), str):
        return hub_id
    if not hub_reachable():
        raise HubUnreachableError(
            f"model '{hub_id}' is not a local path and no model hub is reachable from this "
            "machine; download it elsewhere and pass its local folder with --model PATH"
        )
    return hub_id


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check of the configured hub endpoint (honours ``HF_HUB_OFFLINE``)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}:
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def load_model(
    spec: str | os.PathLike = EMBEDDED,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.nn.Module:
    """Load a causal LM in eval mode on ``device``.

    Returns a ``transformers`` ``*ForCausalLM`` whose decoder layers sit at ``model.model.layers``.
    """
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    resolved = resolve_model(spec)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            resolved.source, dtype=dtype, local_files_only=resolved.kind != "hub"
        )
    except OSError as exc:  # missing or unreadable weights: transformers says which file
        raise FileNotFoundError(f"model '{spec}' could not be loaded: {exc}") from None
    model.eval().requires_grad_(False)
    return model.to(device)


def load_tokenizer(spec: str | os.PathLike = EMBEDDED):
    """The tokenizer that belongs to ``spec`` (a ``transformers`` tokenizer)."""
    from transformers import AutoTokenizer

    resolved = resolve_model(spec)
    try:
        return AutoTokenizer.from_pretrained(
            resolved.source, local_files_only=resolved.kind != "hub"
        )
    except OSError as exc:  # no tokenizer files in the folder, or unreadable ones
        raise FileNotFoundError(
            f"the tokenizer of model '{spec}' could not be loaded: {exc}"
        ) from None


def model_fingerprint(source: str | os.PathLike) -> str:
    """Name, size and mtime of a local model folder's files (a hub id stands for itself)."""
    folder = Path(source)
    if not folder.is_dir():
        return str(source)
    stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.iterdir())]
    return json.dumps([str(folder.resolve()), stats])


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when available; an explicit ``cuda`` without a GPU is an input error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"--device {device} was requested but no CUDA device is available; "
            "use --device cpu or --device auto"
        )
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"--device must be auto, cpu or cuda[:N], got '{device}'") from exc
