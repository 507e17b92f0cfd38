"""The reference attention: the model's eager output, with probabilities exact in every dtype.

transformers' eager attention returns `softmax(scores, dtype=float32).to(query.dtype)`: in bf16 the
probabilities it hands back carry 8 bits of mantissa (rows no longer sum to 1, masses off by ~1e-3),
so a reference read from `output_attentions` is only a reference in fp32. The engines that read
probabilities from the forward (eager, nnsight) route the language model through this function
instead: the forward's output is eager's own, unchanged, and the probabilities it returns are the
fp32 softmax of the fp32 scores of the same query and key, with the mask the model built.

Which keys a query can see is read from that same mask (`recording_visibility`), as the native engine
reads it from the mask it is handed: never re-derived from the roles, so a padding, fusion or
intervention mask is honoured in every engine alike.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.models.llama.modeling_llama import eager_attention_forward

from probe.engines.streaming import allowed_edges, query_offset
from probe.precision import full_fp32_matmul

REFERENCE = "probe_reference"

# The record of the forward being recorded (`recording_visibility`), if any.
_VISIBILITY: contextvars.ContextVar = contextvars.ContextVar("probe_visibility", default=None)


class VisibilityRecord:
    """What each attention module's mask let its queries see in the recorded forward(s). Layers that share
    one mask tensor share one bool tensor: the mask is evaluated once, not once per layer."""

    def __init__(self) -> None:
        self.by_module: dict[torch.nn.Module, torch.Tensor] = {}
        self._by_mask: dict[tuple, tuple] = {}

    def add(self, module, query: torch.Tensor, key: torch.Tensor, attention_mask) -> None:
        n_q, n_k = query.shape[2], key.shape[2]
        causal = getattr(module, "is_causal", True)
        slot = (id(attention_mask), n_q, n_k, causal)
        if slot not in self._by_mask:  # the mask is kept with its entry, so its id cannot be reused
            offset = query_offset(module, attention_mask, n_q, n_k)
            self._by_mask[slot] = (
                attention_mask,
                allowed_edges(attention_mask, n_q, n_k, offset, causal, query.device),
            )
        self.by_module[module] = self._by_mask[slot][1]


@contextmanager
def recording_visibility() -> Iterator[VisibilityRecord]:
    """Record, for the reference forwards run inside the block, what every attention module's mask allows."""
    record = VisibilityRecord()
    token = _VISIBILITY.set(record)
    try:
        yield record
    finally:
        _VISIBILITY.reset(token)
        record._by_mask.clear()


def reference_probabilities(
    query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None, scaling: float
) -> torch.Tensor:
    """softmax(q k^T * scaling + mask) in fp32, [B, H, Nq, Nk]; key heads shared by query groups (GQA)."""
    groups = query.shape[1] // key.shape[1]
    with full_fp32_matmul():
        scores = torch.matmul(query.float(), key.float().repeat_interleave(groups, dim=1).transpose(-1, -2))
    scores = scores * scaling
    if attention_mask is not None:
        mask = attention_mask[..., : key.shape[-2]]
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.float()
    return torch.softmax(scores, dim=-1).nan_to_num(0.0)  # fully masked (padding) rows: zeros


def reference_attention_forward(
    module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs
):
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    record = _VISIBILITY.get()
    if record is not None:
        record.add(module, query, key, attention_mask)
    output, _ = eager_attention_forward(
        module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
    )
    return output, reference_probabilities(query, key, attention_mask, scaling)


AttentionInterface.register(REFERENCE, reference_attention_forward)
AttentionMaskInterface.register(REFERENCE, eager_mask)
