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

import copy

import torch

from probe.adapters.base import Adapter, Prepared
from probe.engines import register_engine
from probe.errors import ProbeError
from probe.intermediate import LayerStats, stats_from_probabilities

MAX_TOKENS = 32768
SUPPORTED = {"llava", "llava_next"}


def bridge_for(adapter: Adapter):
    """The adapter's TransformerBridge (built once, over a copy of the model)."""
    bridge = getattr(adapter, "_lens_bridge", None)
    if bridge is None:
        from transformer_lens.model_bridge import TransformerBridge

        model = copy.deepcopy(adapter.model)
        if not getattr(
            model.config, "architectures", None
        ):  # models built from a config (not loaded) lack it
            model.config.architectures = [type(model).__name__]
        source = getattr(model.config, "_name_or_path", "") or adapter.family
        tokenizer = getattr(adapter.processor, "tokenizer", None)
        try:
            bridge = TransformerBridge.boot_transformers(
                source, hf_model=model, tokenizer=tokenizer, device=adapter.device
            )
        except Exception as exc:  # unsupported architecture, etc.
            raise ProbeError(f"TransformerLens cannot bridge this model: {exc}") from None
        bridge.eval()
        adapter._lens_bridge = bridge
    return bridge


@torch.no_grad()
def run_lens(adapter: Adapter, prepared: Prepared, per_head: bool = False, **_) -> list[LayerStats]:
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
