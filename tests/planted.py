"""A tiny LLaVA whose attention looks like a trained 7B's: peaked rows and a sink on the first token.

Random tiny models attend almost uniformly (largest head-averaged probability ~1.1x uniform at 600
tokens), where a wrong mask, a dropped scale or bf16 rounding barely moves a mass. Here, in every LLM
layer:
- q_proj and k_proj are scaled so that logits have the spread of a real model (rows peaked);
- every token carries a constant feature (embedding column 1 for text, the projector's output bias for
  image tokens) that q_proj maps onto the slowest RoPE frequency pair of each head, and the first
  token (BOS) carries a large feature (embedding column 0) that k_proj maps onto the same pair: every
  query then gives a large share of its attention to position 0, the "attention sink" of real LLMs.
"""

from __future__ import annotations

import torch

import probe


@torch.no_grad()
def plant_attention_structure(model: torch.nn.Module, qk_scale: float = 10.0, sink: float = 0.25) -> None:
    """Edit a `LlavaForConditionalGeneration` in place (see the module docstring)."""
    text = model.config.text_config
    lm = model.model.language_model
    head_dim = text.hidden_size // text.num_attention_heads
    slow_pair = [head_dim // 2 - 1, head_dim - 1]  # rotate_half pairs (j, j + d/2); j = d/2 - 1 turns slowest
    embed = lm.embed_tokens.weight
    spread = float(embed.std())
    embed[:, 1] += 3 * spread  # the constant feature every text token carries
    embed[text.bos_token_id if text.bos_token_id is not None else 1, 0] = 30 * spread  # the sink's feature
    projector = model.model.multi_modal_projector.linear_2
    projector.bias[1] += 3 * float(projector.bias.std() + projector.weight.std())
    for layer in lm.layers:
        attn = layer.self_attn
        attn.q_proj.weight.mul_(qk_scale)
        attn.k_proj.weight.mul_(qk_scale)
        for head in range(text.num_attention_heads):
            attn.q_proj.weight[[head * head_dim + d for d in slow_pair], 1] = 3.0 * sink
        for head in range(text.num_key_value_heads):
            attn.k_proj.weight[[head * head_dim + d for d in slow_pair], 0] = 3.0 * sink


def load_planted(dtype: str = "float32"):
    """A fresh `tiny-llava` (its own copy, loaded through the user's path) with planted structure."""
    loaded = probe.load("tiny-llava", device="cpu", dtype="float32")
    plant_attention_structure(loaded.model)
    if dtype != "float32":
        loaded.model.to(getattr(torch, dtype))
    return loaded
