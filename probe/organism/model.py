"""`organism-llava`: the real `LlavaForConditionalGeneration` at LLaVA-v1.5 geometry, small enough to train on CPU.

CLIP-style vision tower at 336 px / patch 14 (24 x 24 = 576 vision tokens, CLS dropped, features of
layer -2), a two-layer GELU MLP projector (LLaVA-1.5's), and a small Llama with grouped-query attention.
The tokenizer is probe's offline BPE with the synthetic data's vocabulary as extra corpus, so every
answer word is one token.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from probe.builtin.tiny import IMAGE_SIZE, PATCH_SIZE, llava_v15_processor
from probe.builtin.tokenizer import build_tokenizer
from probe.organism.data import vocabulary_corpus


@dataclass(frozen=True)
class OrganismSize:
    vision_hidden: int = 96
    vision_layers: int = 4  # layer -2 is read, so the last one is never used (as in LLaVA-v1.5)
    vision_heads: int = 4
    text_hidden: int = 128
    text_layers: int = 6
    text_heads: int = 4
    text_kv_heads: int = 2
    text_intermediate: int = 384


MICRO = OrganismSize(
    vision_hidden=32,
    vision_layers=2,
    vision_heads=2,
    text_hidden=32,
    text_layers=2,
    text_heads=2,
    text_kv_heads=1,
    text_intermediate=64,
)


def build_processor() -> LlavaProcessor:
    return llava_v15_processor(build_tokenizer(vocabulary_corpus(), vocab_size=768))


def build_organism_llava(
    seed: int = 0, size: OrganismSize | None = None
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """Seeded, untrained organism-llava and its processor."""
    size = size or OrganismSize()
    processor = build_processor()
    tokenizer = processor.tokenizer
    vision = CLIPVisionConfig(
        hidden_size=size.vision_hidden,
        intermediate_size=4 * size.vision_hidden,
        num_hidden_layers=size.vision_layers,
        num_attention_heads=size.vision_heads,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        projection_dim=size.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.text_hidden,
        intermediate_size=size.text_intermediate,
        num_hidden_layers=size.text_layers,
        num_attention_heads=size.text_heads,
        num_key_value_heads=size.text_kv_heads,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model, processor


def size_dict(size: OrganismSize) -> dict:
    return asdict(size)
