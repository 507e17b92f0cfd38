"""The one place that knows which transformers release is installed, where its names differ.

transformers 5.24 renamed the KV cache from `past_key_values` to `cache` everywhere at once: model
`forward`s, decoder layers, `create_causal_mask`, the fields of every `ModelOutput`, and the keyword
`generate` passes to `forward` (5.0-5.23 say `past_key_values`; the old keyword still works in 5.24
with a warning, an old *field* name raises). Code that builds or reads a cache goes through
`CACHE_KWARG` / `cache_of` instead of spelling either name, so one source tree runs on every 5.x.
"""

from __future__ import annotations

import inspect
from typing import Any

from transformers.models.llama.modeling_llama import LlamaDecoderLayer
from transformers.utils import ModelOutput

#: The keyword (and `ModelOutput` field) naming the KV cache in the installed transformers.
CACHE_KWARG: str = (
    "cache" if "cache" in inspect.signature(LlamaDecoderLayer.forward).parameters else "past_key_values"
)


def cache_kwargs(cache: Any) -> dict[str, Any]:
    """`{CACHE_KWARG: cache}`, to splat into a transformers call or a `ModelOutput`."""
    return {CACHE_KWARG: cache}


def cache_of(mapping: Any) -> Any:
    """The cache held by a `ModelOutput` or a kwargs dict, under whichever name this release uses.

    A `ModelOutput` is a dict too, but asking it for the old name logs a deprecation warning on 5.24:
    it is read by attribute, under the current name only.
    """
    if isinstance(mapping, dict) and not isinstance(mapping, ModelOutput):
        return mapping[CACHE_KWARG] if CACHE_KWARG in mapping else mapping.get("past_key_values")
    return getattr(mapping, CACHE_KWARG, None)
