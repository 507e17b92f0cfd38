"""Small LLaVA-Mini configurations and inputs shared by the tests/test_llava_mini_*.py files."""

from __future__ import annotations

import torch
from transformers import CLIPVisionConfig

from llava_mini.configuration import LlavaMiniConfig
from llava_mini.modeling import LlavaMiniForConditionalGeneration

VOCAB = 600


def vision_config() -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=336,
        patch_size=14,
    )


def mini_config(
    C: int = 2, n_fusion: int = 2, kind: str = "query", ratio: int = 1, with_vision: bool = True, **kw
):
    return LlavaMiniConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        compressor_size=C,
        prefusion_layer_num=n_fusion,
        compression_kind=kind,
        resolution_ratio=ratio,
        mm_hidden_size=32,
        vision_config=vision_config().to_dict() if with_vision else None,
        **kw,
    )


def mini_model(seed: int = 0, **kw) -> LlavaMiniForConditionalGeneration:
    torch.manual_seed(seed)
    return LlavaMiniForConditionalGeneration(mini_config(**kw)).eval()


def prompt_ids(n_image_tokens: int, before: int = 3, after: int = 5, image_id: int = -200) -> torch.Tensor:
    return torch.tensor(
        [[1] + list(range(10, 10 + before)) + [image_id] * n_image_tokens + list(range(40, 40 + after))]
    )
