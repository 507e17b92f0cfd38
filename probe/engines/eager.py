"""Reference engine: the model's eager attention with `output_attentions=True`.

Exact and simple, but it changes the forward path (eager instead of SDPA / flash) and materialises
layers x heads x N^2 probabilities. Which roles a query can see comes from the mask each layer was
handed, as in the native engine. Every other engine is tested against this one. The language model
runs through `probe.engines.reference` (eager's output, fp32 probabilities), so the reference is exact
in bf16 / fp16 too.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from probe.adapters.base import Adapter, Prepared
from probe.engines import register_engine
from probe.engines.reference import REFERENCE, recording_visibility
from probe.errors import ProbeError
from probe.intermediate import LayerStats, concat_sequences, stats_from_probabilities


@torch.no_grad()
def eager_forward(adapter: Adapter, prepared: Prepared):
    """({stage: per-layer attention probabilities [B, heads, N, N]}, the masks each layer was handed) from
    one forward on the reference path."""
    inputs = {k: v.to(adapter.device) for k, v in prepared.inputs.items()}
    with adapter.attention_implementation(REFERENCE), recording_visibility() as masks:
        out = adapter.forward(inputs, output_attentions=True)
    return adapter.attention_stages(out), masks


def eager_attentions(adapter: Adapter, prepared: Prepared) -> dict[str, tuple[torch.Tensor, ...]]:
    """{stage: per-layer attention probabilities [B, heads, N, N]} from one forward on the reference path."""
    return eager_forward(adapter, prepared)[0]


@torch.no_grad()
def run_eager(
    adapter: Adapter,
    prepared: Prepared,
    per_head: bool = False,
    grid_queries: Sequence[int] | None = None,
) -> list[LayerStats]:
    """`grid_queries`: LLM query positions whose head-averaged rows are read on the image grids
    (`LayerStats.grid_rows`, as the native engine returns them)."""
    stages, masks = eager_forward(adapter, prepared)
    results: list[LayerStats] = []
    for stage, attentions in stages.items():
        if len(attentions) != adapter.num_layers(stage):
            raise ProbeError(
                f"the {stage} stage reported attention probabilities for {len(attentions)} of "
                f"{adapter.num_layers(stage)} layers: its attention modules do not follow the eager setting"
            )
        per_sequence = prepared.sequence_roles.get(stage)
        roles = per_sequence if per_sequence is not None else prepared.roles[stage]
        modules = adapter.attention_modules(stage)
        if any(module not in masks.by_module for module in modules):
            raise ProbeError(f"the {stage} stage's attention did not run through probe's reference attention")
        for layer, probs in enumerate(attentions):
            stats = stats_from_probabilities(
                stage,
                layer,
                probs.float().cpu(),
                roles,
                per_head=per_head,
                grid_queries=grid_queries if stage == "llm" else None,
                allowed=masks.by_module[modules[layer]],  # visibility from the mask the forward used
            )
            results.append(concat_sequences(stats) if per_sequence is not None else stats)
    return results


register_engine("eager", run_eager, grid_queries=True)
