"""TransformerLens engine: a TransformerLens 4.x `TransformerBridge` over the loaded HF model, reading
`blocks.{i}.attn.hook_pattern` (post-softmax attention, [B, H, N, N]).

TransformerLens ships bridge adapters for `LlavaForConditionalGeneration` and
`LlavaNextForConditionalGeneration`, so the whole multimodal forward (vision tower, projector, merge of
image features) runs through the bridge with `pixel_values` - no re-implementation on our side.
Booting a bridge replaces the HF model's submodules with bridge components and forces eager attention
in place, so the bridge is built over a deep copy of the model (2x weight memory; cached on the adapter
for later calls), leaving the loaded model untouched for the other backends. Statistics are computed in
the hook, one layer at a time; the pattern is not kept.
"""

from __future__ import annotations

import contextlib
import copy
from unittest import mock

import torch

from probe.adapters.base import Adapter, Prepared
from probe.engines import grid_unsupported, register_engine
from probe.errors import ProbeError
from probe.intermediate import LayerStats, stats_from_probabilities
from probe.notes import note

MAX_TOKENS = 32768
SUPPORTED = {"llava", "llava_next"}


@contextlib.contextmanager
def _no_processor_loading():
    """Skip TransformerLens' own processor loading while booting.

    After building the bridge, TransformerLens loads `AutoProcessor.from_pretrained(name)` and, when that
    fails (e.g. an image processor that needs torchvision), runs `pip install torchvision` into the
    current environment - which can reinstall torch. run_lens passes input_ids / pixel_values itself and
    never needs the bridge's processor, so that step is replaced by a no-op (the adapter's processor is
    attached instead).
    """
    try:
        from transformer_lens.model_bridge.sources.transformers import source
    except ImportError:  # other TransformerLens layout: nothing to patch
        yield
        return
    if not hasattr(source, "load_modality_processor"):
        yield
        return
    with mock.patch.object(source, "load_modality_processor", lambda *args, **kwargs: None):
        yield


def bridge_for(adapter: Adapter):
    """The adapter's TransformerBridge (built once, over a copy of the model)."""
    bridge = getattr(adapter, "_lens_bridge", None)
    if bridge is None:
        from transformer_lens.model_bridge import TransformerBridge

        weights = sum(t.numel() * t.element_size() for t in adapter.model.state_dict().values())
        note(
            f"transformer-lens builds its bridge over a copy of the model: {weights / 2**20:,.0f} MiB more "
            f"memory on {adapter.device} (--backend native needs none)"
        )
        model = copy.deepcopy(adapter.model)
        if not getattr(
            model.config, "architectures", None
        ):  # models built from a config (not loaded) lack it
            model.config.architectures = [type(model).__name__]
        source = getattr(model.config, "_name_or_path", "") or adapter.family
        tokenizer = getattr(adapter.processor, "tokenizer", None)
        try:
            with _no_processor_loading():
                bridge = TransformerBridge.boot_transformers(
                    source, hf_model=model, tokenizer=tokenizer, device=adapter.device
                )
        except Exception as exc:  # unsupported architecture, etc.
            raise ProbeError(f"TransformerLens cannot bridge this model: {exc}") from None
        bridge.processor = adapter.processor  # never used by run_lens (it passes tensors), kept for callers
        bridge.eval()
        adapter._lens_bridge = bridge
    return bridge


@torch.no_grad()
def run_lens(
    adapter: Adapter, prepared: Prepared, per_head: bool = False, grid_queries=None, **_
) -> list[LayerStats]:
    if grid_queries is not None:
        raise grid_unsupported("transformer-lens")
    if adapter.family not in SUPPORTED or adapter.stages != ("llm",):
        raise ProbeError(f"the transformer-lens backend supports {sorted(SUPPORTED)}, not '{adapter.family}'")
    n_tokens = int(prepared.inputs["input_ids"].shape[-1])
    if n_tokens > MAX_TOKENS:
        raise ProbeError(
            f"the transformer-lens backend materialises heads x N^2 attention per layer; {n_tokens} tokens is more "
            f"than it supports ({MAX_TOKENS}): use --backend native"
        )
    roles = prepared.roles["llm"]
    bridge = bridge_for(adapter)
    inputs = {k: v.to(adapter.device) for k, v in prepared.inputs.items()}
    input_ids = inputs.pop("input_ids")
    n_layers = adapter.num_layers("llm")
    stats: dict[int, LayerStats] = {}

    def hook_for(layer: int):
        def hook(pattern, hook):
            stats[layer] = stats_from_probabilities(
                "llm", layer, pattern.float().cpu(), roles, per_head=per_head
            )

        return hook

    hooks = [(f"blocks.{i}.attn.hook_pattern", hook_for(i)) for i in range(n_layers)]
    bridge.run_with_hooks(input_ids, return_type=None, fwd_hooks=hooks, **inputs)
    if len(stats) != n_layers:
        raise ProbeError(f"TransformerLens fired hook_pattern for {len(stats)} of {n_layers} layers")
    return [stats[i] for i in range(n_layers)]


register_engine("transformer-lens", run_lens)
