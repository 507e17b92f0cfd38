"""FastV (Chen et al., ECCV 2024): at layer K keep the fraction R of the image tokens that the last
prompt token attends to most at layer K-1 (heads averaged), drop the rest from the sequence and the
KV cache for layers K..end. Text and system tokens are always kept; positions stay the original ones.

The ranking row is computed inside the real SDPA / flash forward by the native engine
(`attention_rows`), from the same query and key the layer uses: no eager attention is needed.
"""

from __future__ import annotations

import math

import torch

from probe.engines.streaming import attention_rows, query_offset
from probe.errors import ProbeError
from probe.interventions.base import Intervention, Tokens


def check_keep(keep: float) -> None:
    if not 0 < keep <= 1:
        raise ProbeError(f"--keep {keep} is outside (0, 1]: it is the fraction of image tokens kept")


class Prune(Intervention):
    reenter = False

    def __init__(self, layer: int, keep: float, n_layers: int) -> None:
        check_keep(keep)
        if not 1 <= layer < n_layers:
            raise ProbeError(
                f"--layer {layer}: FastV prunes at a layer K with 1 <= K < {n_layers} (it ranks by layer K-1)"
            )
        self.layer, self.keep = layer, keep
        self.layers = tuple(range(layer, n_layers))
        self.label = f"prune K={layer} keep={keep:g}"
        self.ranking: torch.Tensor | None = None

    def removes_tokens(self) -> bool:
        return True

    def columns(self) -> dict:
        return {**super().columns(), "prune_layer": self.layer, "keep": self.keep}

    def removed(self, tokens: Tokens) -> torch.Tensor | None:
        return None  # decided in the forward, at layer K-1 (see observe)

    def observe(
        self, layer, module, query, key, attention_mask, scaling, tokens: Tokens
    ) -> torch.Tensor | None:
        last = int(tokens.last_prompt_position()[0])
        if layer != self.layer - 1:
            return None
        offset = query_offset(module, attention_mask, query.shape[2], key.shape[2])
        if not offset <= last < offset + query.shape[2]:
            return None  # only at layer K-1 of the forward that holds the prompt (prefill)
        row = attention_rows(module, query, key, attention_mask, [last], scaling)[0, 0].cpu()
        image = tokens.select("vision", tokens.length)[0]
        positions = image.nonzero().flatten()
        n_keep = max(1, math.ceil(self.keep * len(positions))) if len(positions) else 0
        top = positions[torch.topk(row[positions], n_keep).indices] if n_keep else positions
        removed = image.clone()
        removed[top] = False
        return removed[None]
