"""nnsight engine: trace the HF model with `nnsight.NNsight` and read each text layer's attention weights.

The language model runs with the reference attention (eager's output, fp32 probabilities); the
`attn_weights` output of every text layer's attention module is turned into `LayerStats` inside the
trace, one layer at a time, so only one layer's [B, H, N, N] probabilities are alive at once.
nnsight wraps the model without replacing its modules, so the same loaded model serves every backend.
"""

from __future__ import annotations

import torch

from probe.adapters.base import Adapter, Prepared
from probe.engines import grid_unsupported, register_engine
from probe.engines.reference import REFERENCE
from probe.errors import ProbeError
from probe.intermediate import LayerStats, stats_from_probabilities

MAX_TOKENS = 32768  # eager probabilities of one layer: heads x N^2 floats; beyond this use --backend native


def _module_path(model: torch.nn.Module, module: torch.nn.Module) -> str:
    for name, candidate in model.named_modules():
        if candidate is module:
            return name
    raise ProbeError("attention module not found inside the model")


def _envoy(root, path: str):
    for part in path.split("."):
        root = root[int(part)] if part.isdigit() else getattr(root, part)
    return root


@torch.no_grad()
def run_nnsight(
    adapter: Adapter, prepared: Prepared, per_head: bool = False, grid_queries=None, **_
) -> list[LayerStats]:
    if grid_queries is not None:
        raise grid_unsupported("nnsight")
    from nnsight import NNsight

    roles = prepared.roles["llm"]
    n_tokens = int(prepared.inputs["input_ids"].shape[-1])
    if n_tokens > MAX_TOKENS:
        raise ProbeError(
            f"the nnsight backend reads eager attention probabilities (heads x N^2 per layer); {n_tokens} tokens "
            f"is more than it supports ({MAX_TOKENS}): use --backend native"
        )
    paths = [_module_path(adapter.model, m) for m in adapter.attention_modules("llm")]
    inputs = {k: v.to(adapter.device) for k, v in prepared.inputs.items()}
    traced = NNsight(adapter.model)
    stats: list[LayerStats] = []
    with adapter.attention_implementation(REFERENCE), traced.trace(**inputs):
        for layer, path in enumerate(paths):
            weights = _envoy(traced, path).output[1]
            stats.append(
                stats_from_probabilities("llm", layer, weights.float().cpu(), roles, per_head=per_head)
            )
    if len(stats) != len(paths):
        raise ProbeError("nnsight returned no attention weights: the model's attention does not expose them")
    return stats


register_engine("nnsight", run_nnsight)
