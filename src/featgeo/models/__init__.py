"""Models: resolving ``embedded | PATH | HUB_ID``, the embedded model cache, the addressable
linear components of a decoder layer, and perplexity on a corpus split."""

from featgeo.models.components import (
    COMPONENTS,
    LLAMA_COMPONENTS,
    ModelInfo,
    check_component_inputs,
    decoder_layers,
    get_component,
    model_components,
    model_info,
    parse_components,
    parse_layers,
)
from featgeo.models.loading import (
    EMBEDDED,
    load_model,
    load_tokenizer,
    resolve_model,
)

__all__ = [
    "COMPONENTS",
    "EMBEDDED",
    "LLAMA_COMPONENTS",
    "ModelInfo",
    "check_component_inputs",
    "decoder_layers",
    "get_component",
    "load_model",
    "load_tokenizer",
    "model_components",
    "model_info",
    "parse_components",
    "parse_layers",
    "resolve_model",
]
