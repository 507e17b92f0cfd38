"""LLaVA-Mini configuration: the release's flat Llama config plus its multimodal keys.

The release (`model_type = "llava_mini_llama"`) stores the LLM's Llama hyper-parameters at the top level
of config.json together with `mm_*`, `compressor_size`, `prefusion_layer_num` and `resolution_ratio`;
CLIP is loaded from its own id (`mm_vision_tower`). Ours adds `compression_kind`, an optional
`vision_config` (when CLIP is part of the checkpoint, e.g. built-in models) and `image_token_index`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import CLIPVisionConfig, LlamaConfig, PreTrainedConfig

IMAGE_TOKEN_INDEX = -200  # the release's `<image>` placeholder id (not in the vocabulary)
CLIP_L_336 = "openai/clip-vit-large-patch14-336"


@strict
class LlavaMiniConfig(LlamaConfig):
    model_type = "llava_mini_llama"
    sub_configs = {"vision_config": CLIPVisionConfig}

    # --- keys of the release -----------------------------------------------------------------------
    compressor_size: int = 1  # C: the compressor emits C x C tokens per image / frame
    prefusion_layer_num: int = 4  # N_fusion: pre-fusion decoder layers (0 = none)
    resolution_ratio: int = 1  # n: n x n crops of 336 px plus the whole image (n = 1: standard)
    mm_vision_tower: str = CLIP_L_336
    mm_projector_type: str = "mlp2x_gelu"
    mm_hidden_size: int = 1024
    mm_vision_select_layer: int = -2
    mm_vision_select_feature: str = "patch"
    image_aspect_ratio: str = "pad"
    tokenizer_model_max_length: int | None = None  # the release's token limit for a whole sequence (2048)
    # --- ours ----------------------------------------------------------------------------------------
    compression_kind: Literal["query", "pool"] = "query"
    compressor_heads: int = 8
    vision_config: dict | PreTrainedConfig | None = None
    image_token_index: int = IMAGE_TOKEN_INDEX

    def __post_init__(self, **kwargs):
        if isinstance(self.vision_config, dict):
            self.vision_config = CLIPVisionConfig(**self.vision_config)
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        super().validate_architecture()
        if self.compressor_size < 1:
            raise ValueError(f"compressor_size must be >= 1, got {self.compressor_size}")
        if self.prefusion_layer_num < 0:
            raise ValueError(f"prefusion_layer_num must be >= 0, got {self.prefusion_layer_num}")
        if self.resolution_ratio < 1:
            raise ValueError(f"resolution_ratio must be >= 1, got {self.resolution_ratio}")
        if self.mm_projector_type != "mlp2x_gelu":
            raise ValueError(
                f"only the release's mm_projector_type 'mlp2x_gelu' is supported, got {self.mm_projector_type}"
            )
        if self.mm_vision_select_feature != "patch":
            raise ValueError(
                f"only mm_vision_select_feature 'patch' (CLS dropped) is supported, got {self.mm_vision_select_feature}"
            )

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> LlavaMiniConfig:
        """`from_pretrained` for every spelling of the release's model_type (`llava_mini_llama` or
        `llava_mini`): the alias is normalised first, so transformers does not warn that a model of one
        type instantiates another."""
        config_dict, _ = cls.get_config_dict(str(path))
        return cls.from_dict({**config_dict, "model_type": cls.model_type})

    @property
    def num_vision_tokens(self) -> int:
        """Tokens the LLM sees per image / frame: C^2."""
        return self.compressor_size**2
