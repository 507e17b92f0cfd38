"""A tiny LLaVA whose attention looks like a trained 7B's: peaked rows and a sink on the first token.

Random tiny models attend almost uniformly (largest head-averaged probability ~1.1x uniform at 600
tokens), where a wrong mask, a dropped scale or bf16 rounding barely moves a mass. Every weight is first
drawn from a generator seeded by the parameter's name (`seeded_weights`), so the structure is the same
whatever initialisation the installed transformers release gives `tiny-llava`; then, in every LLM
layer:
- q_proj and k_proj are scaled so that logits have the spread of a real model (rows peaked);
- every token carries a constant feature (embedding column 1 for text, the projector's output bias for
  image tokens) that q_proj maps onto the slowest RoPE frequency pair of each head, and the first
  token (BOS) carries a large feature (embedding column 0) that k_proj maps onto the same pair: every
  query then gives a large share of its attention to position 0, the "attention sink" of real LLMs.
"""

from __future__ import annotations

import zlib

import torch

import probe


@torch.no_grad()
def seeded_weights(model: torch.nn.Module, seed: int = 0, std: float = 0.02) -> None:
    """Overwrite every parameter independently of transformers' init: matrices ~ N(0, std^2) from a
    generator seeded by (seed, parameter name), vectors = 1 (norm scales) and biases = 0."""
    for name, param in model.named_parameters():
        if name.endswith("bias"):
            param.zero_()
        elif param.dim() == 1:
            param.fill_(1.0)
        else:
            generator = torch.Generator().manual_seed(seed * 2**32 + zlib.crc32(name.encode()))
            param.copy_(torch.randn(param.shape, generator=generator, dtype=torch.float32) * std)


@torch.no_grad()
def plant_attention_structure(model: torch.nn.Module, qk_scale: float = 12.0, sink: float = 0.4) -> None:
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
    seeded_weights(loaded.model)
    plant_attention_structure(loaded.model)
    if dtype != "float32":
        loaded.model.to(getattr(torch, dtype))
    return loaded
