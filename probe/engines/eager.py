"""Reference engine: the model's eager attention with `output_attentions=True`.

Exact and simple, but it changes the forward path (eager instead of SDPA / flash) and materialises
layers x heads x N^2 probabilities. Every other engine is tested against this one.
"""

from __future__ import annotations

import torch

from probe.adapters.base import Adapter, Prepared
from probe.engines import register_engine
from probe.intermediate import LayerStats, stats_from_probabilities


@torch.no_grad()
def run_eager(adapter: Adapter, prepared: Prepared, per_head: bool = False) -> list[LayerStats]:
    inputs = {k: v.to(adapter.device) for k, v in prepared.inputs.items()}
    with adapter.attention_implementation("eager"):
        out = adapter.forward(inputs, output_attentions=True)
    roles = prepared.roles["llm"]
    return [
        stats_from_probabilities("llm", layer, probs.float().cpu(), roles, per_head=per_head)
        for layer, probs in enumerate(out.attentions)
    ]


register_engine("eager", run_eager)
