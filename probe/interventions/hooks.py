"""Applying an intervention inside the real forward: one mechanism for every backend.

Mask edits go through the native engine's attention function (`probe.engines.streaming`): its context
gets an `edit` that, in the layers an intervention acts in, turns the mask the model passed (None =
causal, a 2-D padding mask for flash, a 4-D bool / additive mask) into a 4-D mask with the cut edges
removed, and runs the layer through SDPA (flash kernels take no arbitrary mask) or, on the reference
path, through eager attention with the same edited mask as an additive bias. Layers without an edit
run the model's own implementation untouched, so an empty intervention is the plain forward bit for
bit. With the KV cache the queries are the new tokens (the last positions of the keys).

Sequence edits (skip-mode dropping, FastV pruning) shorten the hidden states with forward hooks on the
stage's decoder layers: at the window's first layer the removed positions leave (hidden states,
rotary embeddings and position ids are gathered, so the kept tokens keep their original positions), at
its last layer they re-enter with the hidden states they had when they left (skip), or never (FastV:
the KV cache of those layers holds the kept tokens only). The attention function gathers the model's
mask onto the kept positions in those layers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.models.llama.modeling_llama import eager_attention_forward

from llava_mini.compat import cache_of
from probe.adapters.base import Adapter
from probe.engines.streaming import (
    StreamingContext,
    allowed_edges,
    collecting,
    fronted,
    instrumented_attention,
    query_offset,
)
from probe.errors import ProbeError
from probe.intermediate import LayerStats, concat_sequences
from probe.interventions.base import Intervention, Tokens

# The reference path: eager attention fronted by the streaming function (eager masks: additive floats).
EAGER_REFERENCE = "probe_intervened_eager"
AttentionInterface.register(EAGER_REFERENCE, fronted(eager_attention_forward))
AttentionMaskInterface.register(EAGER_REFERENCE, eager_mask)


def as_mask(allowed: torch.Tensor, reference: bool, dtype: torch.dtype) -> torch.Tensor:
    """Bool for SDPA; an additive bias (0 / dtype min) for eager attention."""
    if not reference:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(
        ~allowed, torch.finfo(dtype).min
    )


class EditState:
    """One intervention applied to one sample, across the forwards of a run (prefill + decoding steps)."""

    def __init__(self, intervention: Intervention, tokens: Tokens, reference: bool, device) -> None:
        self.intervention = intervention
        self.tokens = tokens
        self.reference = reference
        self.device = device
        self.removed: torch.Tensor | None = intervention.removed(tokens)  # FastV: decided at layer K-1
        self.tokens_processed = 0  # query tokens x layers of the stage (what the attention layers computed)
        self.segment_start = 0  # absolute position of this forward's first query (KV cache)
        self.segment_kept: torch.Tensor | None = None  # kept indices within this forward's queries
        self.stash: torch.Tensor | None = None
        self.output_kept: torch.Tensor | None = None  # positions the shortened output holds (no re-entry)
        self.context: StreamingContext | None = None

    def layer_stats(self) -> list[LayerStats]:
        """Statistics observed in the intervened stage (with `intervening(..., observe=True)`)."""
        stats = self.context.layer_stats(self.intervention.stage)
        return [concat_sequences(s) for s in stats] if self.tokens.roles.role_ids.shape[0] > 1 else stats

    # --- the attention function's edit -----------------------------------------------------------
    def edit(self, module, query, key, attention_mask, inner, **kwargs):
        layer = int(module.layer_idx)
        if attention_mask is not None and not isinstance(attention_mask, torch.Tensor):
            raise ProbeError(
                "interventions edit tensor masks (sdpa, eager, flash); this model's attention passes a "
                f"{type(attention_mask).__name__} (flex attention): load it with sdpa"
            )
        self.tokens_processed += int(query.shape[0] * query.shape[2])
        if self.removed is None:
            with torch.no_grad():
                self.removed = self.intervention.observe(
                    layer, module, query, key, attention_mask, kwargs.get("scaling"), self.tokens
                )
        plain = eager_attention_forward if self.reference else sdpa_attention_forward
        if self.shortened(layer):
            causal = getattr(module, "is_causal", True)
            return self.gathered_mask(module, attention_mask, query, key, causal), plain
        n_q, n_k = query.shape[2], key.shape[2]
        offset = query_offset(module, attention_mask, n_q, n_k)
        blocked = self.intervention.blocked(layer, self.tokens, n_q, n_k, offset)
        if blocked is None:
            return attention_mask, inner
        causal = getattr(module, "is_causal", True)
        allowed = allowed_edges(attention_mask, n_q, n_k, offset, causal, query.device)
        cut = allowed & ~blocked[:, None].to(query.device)
        emptied = ~cut.any(-1) & allowed.any(-1)  # [B, 1|H, Nq]
        if bool(emptied.any()):
            q_roles = self.tokens.role_ids(n_k)[:, offset : offset + n_q].to(query.device)
            if bool((emptied & (q_roles[:, None] >= 0)).any()):
                position = int(emptied.nonzero()[0, -1]) + offset
                raise ProbeError(
                    f"{self.intervention.label}: token {position} would have nothing left to attend to in "
                    f"{self.intervention.stage} layer {layer}"
                )
            cut = torch.where(emptied[..., None], allowed, cut)  # padding rows: left as they were
        return as_mask(cut, self.reference, query.dtype), plain

    # --- sequence edits ----------------------------------------------------------------------------
    def shortened(self, layer: int) -> bool:
        inter = self.intervention
        if not inter.removes_tokens() or self.removed is None:
            return False
        if inter.reenter:
            return layer in inter.layers
        return layer >= min(inter.layers)

    def kept_positions(self, length: int) -> torch.Tensor:
        """Absolute positions < length that stay in the sequence (positions past the prompt always do)."""
        removed = self.removed
        if removed.shape[0] > 1 and not bool((removed == removed[:1]).all()):
            raise ProbeError("token removal needs the same positions removed in every sequence of a batch")
        gone = torch.zeros(length, dtype=torch.bool)
        n = min(length, removed.shape[1])
        gone[:n] = removed[0, :n]
        return (~gone).nonzero().flatten()

    def begin_segment(self, n_queries: int, cache) -> None:
        self.segment_start = int(cache.get_seq_length()) if cache is not None else 0
        self.stash = None
        self.segment_kept = None
        self._n_queries = n_queries

    def segment_indices(self) -> torch.Tensor:
        if self.segment_kept is None:
            end = self.segment_start + self._n_queries
            kept = self.kept_positions(end)
            self.segment_kept = (kept[kept >= self.segment_start] - self.segment_start).to(self.device)
        return self.segment_kept

    def gathered_mask(self, module, mask, query, key, causal: bool):
        n_q, n_k = query.shape[2], key.shape[2]
        if mask is not None and mask.dim() == 4:
            cols = self.kept_positions(mask.shape[-1]).to(mask.device)
            rows = self.segment_indices() if mask.shape[-2] > 1 else torch.zeros(1, dtype=torch.long)
            gathered = mask.index_select(-2, rows.to(mask.device)).index_select(-1, cols)
            if gathered.shape[-1] != n_k:
                raise ProbeError(f"internal: {gathered.shape[-1]} kept keys for {n_k} cached keys")
            return gathered
        if mask is not None:  # 2-D padding mask
            mask = mask.index_select(-1, self.kept_positions(mask.shape[-1]).to(mask.device))
        offset = query_offset(module, mask, n_q, n_k)
        return as_mask(
            allowed_edges(mask, n_q, n_k, offset, causal, query.device), self.reference, query.dtype
        )


def decoder_layers(adapter: Adapter, stage: str) -> list[torch.nn.Module]:
    """The decoder layers (the parents of the stage's attention modules), in layer order."""
    wanted = {id(m): k for k, m in enumerate(adapter.attention_modules(stage))}
    found: dict[int, torch.nn.Module] = {}
    for module in adapter.model.modules():
        attn = getattr(module, "self_attn", None)
        if attn is not None and id(attn) in wanted:
            found[wanted[id(attn)]] = module
    return [found[k] for k in sorted(found)]


def _sequence_hooks(state: EditState, layers: list[torch.nn.Module]) -> list:
    inter = state.intervention
    window = sorted(inter.layers)
    first, last = window[0], (window[-1] if inter.reenter else len(layers) - 1)
    if inter.reenter and window != list(range(first, last + 1)):
        raise ProbeError(f"{inter.label}: removing tokens needs a contiguous window of layers")

    def pre(index: int):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            if index == 0:
                state.begin_segment(hidden.shape[1], cache_of(kwargs))
            if not (first <= index <= last) or state.removed is None:
                return None
            kept = state.segment_indices()
            if index == first:
                state.stash = hidden
                hidden = hidden.index_select(1, kept)
            cos, sin = kwargs["position_embeddings"]
            kwargs["position_embeddings"] = (cos.index_select(1, kept), sin.index_select(1, kept))
            if kwargs.get("position_ids") is not None:
                kwargs["position_ids"] = kwargs["position_ids"].index_select(-1, kept)
            if args:
                return (hidden, *args[1:]), kwargs
            kwargs["hidden_states"] = hidden
            return args, kwargs

        return hook

    def post(module, args, kwargs, output):
        if state.removed is None or state.stash is None:
            return None
        kept = state.segment_indices()
        hidden = output[0] if isinstance(output, tuple) else output
        if not inter.reenter:
            state.output_kept = kept + state.segment_start
            return None
        full = state.stash.clone()
        full[:, kept] = hidden.to(full.dtype)
        return (full, *output[1:]) if isinstance(output, tuple) else full

    handles = [layer.register_forward_pre_hook(pre(k), with_kwargs=True) for k, layer in enumerate(layers)]
    handles.append(layers[last].register_forward_hook(post, with_kwargs=True))
    return handles


@contextmanager
def intervening(
    adapter: Adapter,
    intervention: Intervention,
    tokens: Tokens,
    reference: bool = False,
    observe: bool = False,
) -> Iterator[EditState]:
    """Every forward inside runs with `intervention` applied to its stage (roles `tokens`).

    `reference=True`: eager attention with the same edits (the path every backend is compared with).
    `observe=True`: the native engine's statistics of the intervened stage from the same forward
    (`state.layer_stats()`); mask edits only (a shortened sequence has no fixed roles per position)."""
    if observe and intervention.removes_tokens():
        raise ProbeError(f"{intervention.label}: statistics are observed with mask edits only")
    state = EditState(intervention, tokens, reference, adapter.device)
    by_module: dict[torch.nn.Module, StreamingContext] = {}
    for stage in adapter.stages:
        context = StreamingContext(
            roles=tokens.roles,
            device=adapter.device,
            edit=state.edit if stage == intervention.stage else None,
            observe=observe and stage == intervention.stage,
        )
        if stage == intervention.stage:
            state.context = context
        for module in adapter.attention_modules(stage):
            by_module[module] = context
    handles = []
    if intervention.removes_tokens():
        handles = _sequence_hooks(state, decoder_layers(adapter, intervention.stage))
    try:
        route = (
            adapter.attention_implementation(EAGER_REFERENCE)
            if reference
            else instrumented_attention(adapter)
        )
        with route, collecting(by_module):
            yield state
    finally:
        for handle in handles:
            handle.remove()
