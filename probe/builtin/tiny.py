"""Seeded random LLaVA models with the real geometry, built offline.

`tiny-llava` is a `LlavaForConditionalGeneration` with a CLIP-style tower at 336 px / patch 14 (so 576
vision tokens, the paper's geometry) and a small Llama with grouped-query attention; `tiny-llava-next`
is the LLaVA-NeXT (v1.6, "anyres") class. They are random: they exercise every code path, not behaviour.
"""

from __future__ import annotations

import torch
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    LlavaProcessor,
    PreTrainedModel,
    ProcessorMixin,
)

from probe.builtin.tokenizer import LLAVA_V15_CHAT_TEMPLATE, build_tokenizer

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
IMAGE_SIZE = 336
PATCH_SIZE = 14


def tiny_vision_config(hidden: int = 64, layers: int = 3) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        projection_dim=hidden,
    )


def tiny_text_config(
    vocab_size: int, hidden: int = 64, layers: int = 4, heads: int = 4, kv_heads: int = 2
) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
    )


def clip_image_processor() -> CLIPImageProcessorPil:
    return CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )


def llava_v15_processor(tokenizer) -> LlavaProcessor:
    """LLaVA-v1.5's processor: 336 px CLIP preprocessing, 576 `<image>` tokens per image (CLS dropped)."""
    return LlavaProcessor(
        image_processor=clip_image_processor(),
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_V15_CHAT_TEMPLATE,
    )


def build_tiny_llava(seed: int = 0) -> tuple[PreTrainedModel, ProcessorMixin]:
    """LLaVA-v1.5 geometry: one 24 x 24 grid (576 tokens) per image, CLS dropped, layer -2 features."""
    tokenizer = build_tokenizer()
    processor = llava_v15_processor(tokenizer)
    config = LlavaConfig(
        vision_config=tiny_vision_config(),
        text_config=tiny_text_config(len(tokenizer)),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlavaForConditionalGeneration(config).eval(), processor


def build_tiny_llava_next(seed: int = 0) -> tuple[PreTrainedModel, ProcessorMixin]:
    """LLaVA-NeXT "anyres": a base 24 x 24 grid plus a tiled high-res grid with image-newline tokens."""
    tokenizer = build_tokenizer()
    pinpoints = [[336, 672], [672, 336], [672, 672]]
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
        image_grid_pinpoints=pinpoints,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_V15_CHAT_TEMPLATE,
    )
    config = LlavaNextConfig(
        vision_config=tiny_vision_config(),
        text_config=tiny_text_config(len(tokenizer)),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlavaNextForConditionalGeneration(config).eval(), processor
