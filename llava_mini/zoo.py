"""Registers the `llava_mini` family and the built-in `tiny-llava-mini` with probe's zoo."""

from __future__ import annotations

import torch

from probe.zoo import Family, ModelSpec, register, register_family


def build_tiny_llava_mini(
    seed: int = 0, compressor_size: int = 2, n_fusion: int = 2, kind: str = "query", resolution_ratio: int = 1
):
    """Seeded random LLaVA-Mini with the real geometry (336 px, patch 14, 24 x 24 grid), a small Llama
    with grouped-query attention, the offline BPE tokenizer and a Llama-3-style chat template."""
    from llava_mini.configuration import LlavaMiniConfig
    from llava_mini.modeling import LlavaMiniForConditionalGeneration
    from llava_mini.processing import EOT_TOKEN, LLAMA3_SPECIAL_TOKENS, SYSTEM_PROMPT, LlavaMiniProcessor
    from probe.builtin.tiny import tiny_text_config, tiny_vision_config
    from probe.builtin.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(extra_corpus=[SYSTEM_PROMPT, "system user assistant"])
    tokenizer.add_special_tokens({"additional_special_tokens": LLAMA3_SPECIAL_TOKENS})
    tokenizer.eos_token = EOT_TOKEN
    text = tiny_text_config(len(tokenizer)).to_dict()
    vision = tiny_vision_config()
    config = LlavaMiniConfig(
        **{k: v for k, v in text.items() if k not in ("model_type", "transformers_version", "architectures")},
        compressor_size=compressor_size,
        prefusion_layer_num=n_fusion,
        resolution_ratio=resolution_ratio,
        compression_kind=kind,
        mm_hidden_size=vision.hidden_size,
        vision_config=vision.to_dict(),
    )
    config.pad_token_id = tokenizer.pad_token_id
    config.bos_token_id = tokenizer.convert_tokens_to_ids("<|begin_of_text|>")
    config.eos_token_id = tokenizer.convert_tokens_to_ids(EOT_TOKEN)
    torch.manual_seed(seed)
    model = LlavaMiniForConditionalGeneration(config).eval()
    return model, LlavaMiniProcessor.from_config(tokenizer, config)


def _adapter(model, processor):
    from llava_mini.adapter import LlavaMiniAdapter

    return LlavaMiniAdapter(model, processor)


def _loader(source, family, dtype, **kwargs):
    from llava_mini.loading import load_llava_mini

    return load_llava_mini(
        source,
        family,
        dtype,
        local_files_only=bool(kwargs.get("local_files_only", False)),
        device_map=kwargs.get("device_map"),
    )


register_family("llava_mini", Family(loader=_loader, adapter=_adapter))
register(
    ModelSpec(
        name="tiny-llava-mini",
        family="llava_mini",
        builder=build_tiny_llava_mini,
        description="seeded random LLaVA-Mini: 336 px / patch 14, C=2 (4 vision tokens), 2 pre-fusion layers",
    )
)
