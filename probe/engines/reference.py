"""The reference attention: the model's eager output, with probabilities exact in every dtype.

transformers' eager attention returns `softmax(scores, dtype=float32).to(query.dtype)`: in bf16 the
probabilities it hands back carry 8 bits of mantissa (rows no longer sum to 1, masses off by ~1e-3),
so a reference read from `output_attentions` is only a reference in fp32. The engines that read
probabilities from the forward (eager, nnsight) route the language model through this function
instead: the forward's output is eager's own, unchanged, and the probabilities it returns are the
fp32 softmax of the fp32 scores of the same query and key, with the mask the model built.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.models.llama.modeling_llama import eager_attention_forward

from probe.precision import full_fp32_matmul

REFERENCE = "probe_reference"


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
    output, _ = eager_attention_forward(
        module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
    )
    return output, reference_probabilities(query, key, attention_mask, scaling)


AttentionInterface.register(REFERENCE, reference_attention_forward)
AttentionMaskInterface.register(REFERENCE, eager_mask)
