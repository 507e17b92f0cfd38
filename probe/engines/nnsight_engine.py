"""nnsight engine: trace the model with `nnsight.NNsight` and read the attention weights of every probed layer
(the LLM; LLaVA-Mini's pre-fusion layers too, in the order the forward runs them).

The language model runs with the reference attention (eager's output, fp32 probabilities, the mask each
layer was handed for visibility); the
`attn_weights` output of every text layer's attention module is turned into `LayerStats` inside the
trace, one layer at a time, so only one layer's [B, H, N, N] probabilities are alive at once.
nnsight wraps the model without replacing its modules, so the same loaded model serves every backend.
"""

from __future__ import annotations

import torch

from probe.adapters.base import Adapter, Prepared
from probe.engines import grid_unsupported, register_engine
from probe.engines.reference import REFERENCE, recording_visibility
from probe.errors import ProbeError
from probe.intermediate import LayerStats, concat_sequences, stats_from_probabilities

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

    n_tokens = int(prepared.inputs["input_ids"].shape[-1])
    if n_tokens > MAX_TOKENS:
        raise ProbeError(
            f"the nnsight backend reads eager attention probabilities (heads x N^2 per layer); {n_tokens} tokens "
            f"is more than it supports ({MAX_TOKENS}): use --backend native"
        )
    # every probed stage (LLaVA-Mini: pre-fusion too), read in the order the forward runs its layers
    layers = [
        (stage, layer, module, _module_path(adapter.model, module))
        for stage in adapter.forward_order
        for layer, module in enumerate(adapter.attention_modules(stage))
    ]
    inputs = {k: v.to(adapter.device) for k, v in prepared.inputs.items()}
    traced = NNsight(adapter.model)
    stats: list[LayerStats] = []
    with (
        adapter.attention_implementation(REFERENCE),
        recording_visibility() as masks,
        traced.trace(**inputs),
    ):
        for stage, layer, module, path in layers:
            weights = _envoy(traced, path).output[1]
            per_sequence = prepared.sequence_roles.get(stage)
            roles = per_sequence if per_sequence is not None else prepared.roles[stage]
            layer_stats = stats_from_probabilities(  # visibility from the mask the layer was handed
                stage, layer, weights.float().cpu(), roles, per_head=per_head, allowed=masks.by_module[module]
            )
            stats.append(concat_sequences(layer_stats) if per_sequence is not None else layer_stats)
    if len(stats) != len(layers):
        raise ProbeError("nnsight returned no attention weights: the model's attention does not expose them")
    return sorted(stats, key=lambda s: (adapter.stages.index(s.stage), s.layer))


register_engine("nnsight", run_nnsight)
