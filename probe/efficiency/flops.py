"""FLOPs per component, counted by running the real modules on the meta device (no weights, no memory).

Each stage (vision encoder, projector, compressor, pre-fusion, LLM, LM head) runs the model's own module
on meta tensors of the size that stage really sees, under `torch.utils.flop_counter.FlopCounterMode`.
Two conventions, both FLOPs = 2 x MACs:

- `dense`: matrix multiplies against weights (aten.mm / addmm: every linear layer) and the patch
  convolution, as the counter reports them;
- `dense+attention`: plus QK^T and AV, 2 x B x heads x (query, key) pairs x (head_dim + value_dim);
  `dense+attention-causal` counts only the pairs a causal mask leaves visible.

Why the attention terms are not taken from the counter: depending on torch version, device and kernel,
SDPA is counted as zero (CPU), as a fused op, as bmm (math fallback), or not at all (custom kernels), and
the counter cannot halve a causal mask. So every attention call is recorded where it happens (transformers'
AttentionInterface for HF modules, a forward pre-hook for `nn.MultiheadAttention`) and its FLOPs are
computed from the recorded shapes; whatever the counter saw on other ops (bmm, SDPA, rotary tables) is
kept apart as `counter_other` and never enters either convention.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from probe.efficiency.setups import Setup

COMPONENTS = ("vision_encoder", "projector", "compressor", "prefusion", "llm", "lm_head")
CONVENTIONS = ("dense", "dense+attention", "dense+attention-causal")
RECORDING = "probe_flops"
DENSE_OPS = ("aten.mm", "aten.addmm", "aten.convolution", "aten._convolution")


@dataclass(frozen=True)
class AttentionCall:
    """One attention call: `queries` x `keys` scores for each of batch x heads."""

    batch: int
    heads: int
    queries: int
    keys: int
    head_dim: int
    value_dim: int
    causal: bool

    def pairs(self, causal_halving: bool) -> int:
        """(query, key) pairs computed; with causal halving only those the mask leaves visible (the
        queries are the last `queries` of `keys` positions, as in a prefill or a decode step)."""
        if not (causal_halving and self.causal):
            return self.queries * self.keys
        q, k = self.queries, self.keys
        return q * (k - q) + q * (q + 1) // 2

    def flops(self, causal_halving: bool = False) -> int:
        return 2 * self.batch * self.heads * self.pairs(causal_halving) * (self.head_dim + self.value_dim)


@dataclass
class Count:
    """FLOPs of one stage: the counter's dense ops and the recorded attention calls."""

    dense: int = 0
    attention: list[AttentionCall] = field(default_factory=list)
    counter_other: int = 0  # what the counter saw on non-dense ops (attention bmm / SDPA, rotary tables)

    def total(self, convention: str) -> int:
        if convention == "dense":
            return self.dense
        causal = convention == "dense+attention-causal"
        return self.dense + sum(call.flops(causal) for call in self.attention)

    def __add__(self, other: Count) -> Count:
        return Count(
            self.dense + other.dense,
            self.attention + other.attention,
            self.counter_other + other.counter_other,
        )


_ACTIVE: list[list[AttentionCall]] = []


def _record(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, causal: bool) -> None:
    if _ACTIVE:
        batch, heads, queries, head_dim = query.shape
        _ACTIVE[-1].append(
            AttentionCall(batch, heads, queries, key.shape[-2], head_dim, value.shape[-1], causal)
        )


def recording_attention_forward(module, query, key, value, attention_mask, *args, **kwargs):
    """transformers attention function: record the call's shapes, then run SDPA (free on meta)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    _record(query, key, value, bool(getattr(module, "is_causal", False)))
    return sdpa_attention_forward(module, query, key, value, attention_mask, *args, **kwargs)


def _no_mask(*args, **kwargs):
    """No mask tensor: meta tensors hold no values to build one from; causality is the module's `is_causal`."""
    return None


def register_recording() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(RECORDING, recording_attention_forward)
    AttentionMaskInterface.register(RECORDING, _no_mask)


def _multihead_pre_hook(module: nn.Module, args: tuple) -> None:
    """`nn.MultiheadAttention` (the compressor) bypasses transformers' interface: record it here."""
    if not isinstance(module, nn.MultiheadAttention) or not _ACTIVE:
        return
    if len(args) < 2:
        raise RuntimeError("FLOP counting needs nn.MultiheadAttention called with positional query and key")
    query, key = args[0], args[1]
    if not module.batch_first and query.dim() == 3:
        query, key = query.transpose(0, 1), key.transpose(0, 1)
    batch = query.shape[0] if query.dim() == 3 else 1
    head_dim = module.embed_dim // module.num_heads
    _ACTIVE[-1].append(
        AttentionCall(batch, module.num_heads, query.shape[-2], key.shape[-2], head_dim, head_dim, False)
    )


@contextmanager
def counting() -> Iterator[Count]:
    """Count FLOPs of everything run inside the block (dense ops via FlopCounterMode, attention recorded)."""
    count = Count()
    calls: list[AttentionCall] = []
    _ACTIVE.append(calls)
    hook = nn.modules.module.register_module_forward_pre_hook(_multihead_pre_hook)
    try:
        with FlopCounterMode(display=False) as counter:
            yield count
    finally:
        hook.remove()
        _ACTIVE.pop()
    for op, flops in counter.get_flop_counts().get("Global", {}).items():
        if str(op) in DENSE_OPS:
            count.dense += flops
        else:
            count.counter_other += flops
    count.attention.extend(calls)


# --- the real modules on meta -------------------------------------------------------------------------
def build_meta_model(setup: Setup, attention: str = RECORDING) -> nn.Module:
    """The model of `setup` on meta (no weights), its attention routed through `attention` (by default the
    recording function)."""
    register_recording()
    config = setup.config
    for sub in (config, getattr(config, "text_config", None), getattr(config, "vision_config", None)):
        if sub is not None:
            sub._attn_implementation = attention
    if setup.family == "llava_mini":
        from llava_mini.modeling import LlavaMiniForConditionalGeneration as model_cls
    elif setup.family == "llava_next":
        from transformers import LlavaNextForConditionalGeneration as model_cls
    else:
        from transformers import LlavaForConditionalGeneration as model_cls
    with torch.device("meta"):
        return model_cls(config).eval()


@dataclass
class StageCounts:
    """Per-component counts for the prefill and for one decode step (context = prefill + 1 token)."""

    prefill: dict[str, Count]
    decode: dict[str, Count]
    prefill_tokens: int


def _empty(*shape: int) -> torch.Tensor:
    return torch.empty(*shape, device="meta")


def _llm_and_head(
    language_model: nn.Module, lm_head: nn.Module, width: int, tokens: int, out: StageCounts
) -> None:
    from llava_mini.compat import cache_kwargs, cache_of

    with counting() as count:
        result = language_model(inputs_embeds=_empty(1, tokens, width), use_cache=True)
    out.prefill["llm"] = count
    with counting() as count:  # generate() computes logits of the last position only
        lm_head(_empty(1, 1, width))
    out.prefill["lm_head"] = count
    with counting() as count:
        language_model(inputs_embeds=_empty(1, 1, width), use_cache=True, **cache_kwargs(cache_of(result)))
    out.decode["llm"] = count
    with counting() as count:
        lm_head(_empty(1, 1, width))
    out.decode["lm_head"] = count


def count_stages(setup: Setup, model: nn.Module | None = None) -> StageCounts:
    """Run every stage of `setup` on meta with the token counts it really sees."""
    model = model if model is not None else build_meta_model(setup)
    request, side = setup.request, setup.vision_config.image_size
    frames, views = request.frames, setup.views
    out = StageCounts({}, {}, setup.llm_tokens)
    width = setup.text_config.hidden_size
    body = model.model
    pixels = _empty(frames * views, 3, side, side)
    with torch.no_grad():
        if setup.family == "llava_mini":
            _count_llava_mini(setup, body, pixels, out)
            language_model = body
        else:
            layer = setup.config.vision_feature_layer
            with counting() as count:
                hidden = body.vision_tower(pixels, output_hidden_states=True).hidden_states[layer]
            out.prefill["vision_encoder"] = count
            features = hidden[:, 1:] if setup.config.vision_feature_select_strategy == "default" else hidden
            with counting() as count:
                body.multi_modal_projector(features)
            out.prefill["projector"] = count
            language_model = body.language_model
        _llm_and_head(language_model, model.lm_head, width, setup.llm_tokens, out)
    return out


def _count_llava_mini(setup: Setup, body: nn.Module, pixels: torch.Tensor, out: StageCounts) -> None:
    """CLIP on every view, compressor on the (stitched) grid, projector on crops + global + compressed,
    pre-fusion over [crops, global, compressed, text] once per frame (as `LlavaMiniModel.embed_multimodal`)."""
    config, frames = setup.config, setup.request.frames
    n, per_view, grid = config.resolution_ratio, setup.patches_per_view, setup.grid_side
    with counting() as count:
        features = body.vision_tower(pixels)
    out.prefill["vision_encoder"] = count
    keys = features.reshape(frames, -1, per_view, features.shape[-1])
    keys = keys[:, -1] if n == 1 else keys[:, :-1].reshape(frames, n * n * per_view, -1)
    with counting() as count:
        compressed, _ = body.compressor(keys, (n * grid, n * grid))
    out.prefill["compressor"] = count
    with counting() as count:
        parts = [
            body.mm_projector(features.reshape(frames, -1, features.shape[-1])),
            body.mm_projector(compressed),
        ]
    out.prefill["projector"] = count
    if config.prefusion_layer_num:
        width = config.hidden_size
        tokens = setup.prefusion_tokens
        assert sum(p.shape[1] for p in parts) + setup.request.prompt_tokens == tokens
        with counting() as count:
            body.prefuse(
                _empty(frames, tokens, width), torch.ones(frames, tokens, dtype=torch.bool, device="meta")
            )
        out.prefill["prefusion"] = count


def flops_rows(counts: StageCounts, setup: Setup) -> list[dict]:
    """Tidy rows: prefill and per-generated-token FLOPs per component and total, in every convention, plus
    the whole request (prefill + R - 1 decode steps, each step's attention over its own context)."""
    rows = []
    decode_steps = setup.request.response_tokens - 1
    for convention in CONVENTIONS:
        prefill_total = decode_total = response_total = 0
        for component in COMPONENTS:
            if component in counts.prefill:
                value = counts.prefill[component].total(convention)
                prefill_total += value
                rows.append(_row("flops_prefill", component, convention, value))
            if component in counts.decode:
                count = counts.decode[component]
                value = count.total(convention)
                decode_total += value
                rows.append(_row("flops_per_generated_token", component, convention, value))
                response_total += _decode_steps_total(count, convention, decode_steps)
        rows.append(_row("flops_prefill", "total", convention, prefill_total))
        rows.append(_row("flops_per_generated_token", "total", convention, decode_total))
        rows.append(_row("flops_request", "total", convention, prefill_total + response_total))
    return rows


def _decode_steps_total(step: Count, convention: str, steps: int) -> int:
    """FLOPs of `steps` decode steps; step t (t = 0, 1, ...) attends to t more keys than the counted one."""
    if steps <= 0:
        return 0
    total = step.total(convention) * steps
    if convention != "dense":
        per_key = sum(call.flops() // call.keys for call in step.attention)
        total += per_key * steps * (steps - 1) // 2
    return total


def _row(quantity: str, component: str, convention: str, value: int) -> dict:
    return {
        "quantity": quantity,
        "component": component,
        "convention": convention,
        "value": float(value),
        "unit": "FLOPs",
    }
