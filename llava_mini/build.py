"""Turn an HF `LlavaForConditionalGeneration` into a LLaVA-Mini that shares its weights.

The vision tower, projector and LLM are the base model's own modules (not copies: training or editing
one changes the other); the compressor and the pre-fusion layers are new. With
`init_prefusion_from_llm=True` the pre-fusion layers start as copies of the base LLM's first layers.
This is the starting point of the paper's stage-2 training and of the sweeps over C, N_fusion and the
compression kind.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from llava_mini.configuration import LlavaMiniConfig
from llava_mini.modeling import AveragePoolCompressor, LlavaMiniForConditionalGeneration, Resampler
from llava_mini.processing import LlavaMiniProcessor
from probe.errors import ProbeError

_DROP_KEYS = {
    "model_type",
    "architectures",
    "transformers_version",
    "_name_or_path",
    "auto_map",
    "dtype",
    "torch_dtype",
}


def mini_config_from_llava(base_config, compressor_size: int, n_fusion: int, kind: str) -> LlavaMiniConfig:
    text = base_config.text_config
    if text.model_type != "llama":
        raise ProbeError(f"build_from_llava needs a Llama language model, got '{text.model_type}'")
    if base_config.vision_feature_select_strategy != "default" or not isinstance(
        base_config.vision_feature_layer, int
    ):
        raise ProbeError(
            "build_from_llava needs one vision feature layer with the CLS token dropped ('default')"
        )
    if base_config.projector_hidden_act != "gelu" or not base_config.multimodal_projector_bias:
        raise ProbeError("build_from_llava needs the mlp2x_gelu projector (GELU, with biases)")
    if kind not in ("query", "pool"):
        raise ProbeError(f"compression kind must be 'query' or 'pool', got '{kind}'")
    values = {k: v for k, v in text.to_dict().items() if k not in _DROP_KEYS}
    vision = base_config.vision_config
    return LlavaMiniConfig(
        **values,
        compressor_size=compressor_size,
        prefusion_layer_num=n_fusion,
        compression_kind=kind,
        mm_hidden_size=vision.hidden_size,
        mm_vision_select_layer=base_config.vision_feature_layer,
        vision_config=vision.to_dict(),
    )


def build_from_llava(
    base,
    C: int = 1,
    n_fusion: int = 4,
    kind: str = "query",
    init_prefusion_from_llm: bool = False,
    seed: int = 0,
) -> LlavaMiniForConditionalGeneration:
    """A LLaVA-Mini with C x C compressed tokens and `n_fusion` pre-fusion layers on top of `base`.

    The student shares `base`'s modules (no copy). Their attention implementation follows the student's
    config from then on, so probe the student, not `base`, after building (the engines refuse a model
    whose attention did not report every layer).
    """
    config = mini_config_from_llava(base.config, C, n_fusion, kind)
    config._attn_implementation = base.config.text_config._attn_implementation
    param = next(base.parameters())
    with torch.device("meta"):
        mini = LlavaMiniForConditionalGeneration(config)
    body, llm = mini.model, base.model.language_model
    # shared modules
    body.embed_tokens, body.layers, body.norm, body.rotary_emb = (
        llm.embed_tokens,
        llm.layers,
        llm.norm,
        llm.rotary_emb,
    )
    body.vision_tower.vision_tower = base.model.vision_tower
    proj = base.model.multi_modal_projector
    body.mm_projector = nn.Sequential(proj.linear_1, proj.act, proj.linear_2)
    mini.lm_head = base.lm_head
    # new modules
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        with torch.device(param.device):
            if kind == "query":
                body.compressor = Resampler(C, config.mm_hidden_size, config.compressor_heads)
            else:
                body.compressor = AveragePoolCompressor(C)
            body.compressor.apply(mini._init_weights)
            if init_prefusion_from_llm:
                if n_fusion > len(llm.layers):
                    raise ProbeError(
                        f"cannot copy {n_fusion} pre-fusion layers from a {len(llm.layers)}-layer LLM"
                    )
                body.prefusion_layers = nn.ModuleList([copy.deepcopy(llm.layers[i]) for i in range(n_fusion)])
            else:
                layers = type(llm.layers[0]) if len(llm.layers) else None
                body.prefusion_layers = nn.ModuleList([layers(config, i) for i in range(n_fusion)])
                body.prefusion_layers.apply(mini._init_weights)
    finally:
        torch.random.set_rng_state(generator_state)
    for layer in body.prefusion_layers:
        layer.self_attn.config = config  # attention implementation follows the LLaVA-Mini config
    for layer in body.layers:
        layer.self_attn.config = config
    body.compressor.to(param.dtype)
    body.prefusion_layers.to(param.dtype)
    mini.config.pad_token_id = base.config.text_config.pad_token_id
    return mini.eval()


def processor_from_llava(base_processor, config: LlavaMiniConfig) -> LlavaMiniProcessor:
    """The base's tokenizer and CLIP preprocessing with LLaVA-Mini's token layout (Llama-3 template kept
    only if the base has none)."""
    processor = LlavaMiniProcessor.from_config(
        base_processor.tokenizer, config, base_processor.image_processor
    )
    template = getattr(base_processor, "chat_template", None)
    if template:
        processor.chat_template = template
    return processor
