"""LLaVA-Mini (arXiv 2501.03895), one readable file in the style of a transformers modeling file.

Pipeline for one image (standard resolution, 336 px):

    CLIP ViT-L/14 (layer -2, CLS dropped)            -> 576 x 1024 raw features (24 x 24 grid)
    compressor (`Resampler`, C x C queries)          -> C^2 x 1024   (on the RAW features, before the projector)
    projector (`mm_projector`, mlp2x_gelu)           -> 576 "global" tokens and C^2 compressed tokens, d wide
    modality pre-fusion (N Llama decoder layers)     input [576 global, C^2 compressed, L text], causal
                                                     -> fused text (last L) and compressed tokens (the C^2 before)
    LLM (Llama)                                      prompt with `<image>` -> C^2 compressed tokens, text -> fused

Video: every frame goes through CLIP, compressor and pre-fusion on its own; the LLM sees the T x C^2
compressed tokens in frame order and the fused text averaged over frames. High resolution
(`resolution_ratio` n): n x n crops are stitched into a (24n) x (24n) grid and compressed in one call;
pre-fusion input is [n^2 x 576 crop tokens (stitched raster order), 576 global, C^2, text].

State-dict names follow the release: `model.embed_tokens`, `model.layers.*`, `model.norm`, `lm_head`,
`model.mm_projector.{0,2}`, `model.compressor.*`, `model.prefusion_layers.*` and (when CLIP is part of
the checkpoint) `model.vision_tower.vision_tower.*`. Pre-fusion and LLM layers are transformers'
`LlamaDecoderLayer`s sharing one config, so their attention goes through `ALL_ATTENTION_FUNCTIONS`
(eager / sdpa / flash / any registered `AttentionInterface`) and `set_attn_implementation` switches both.
With eager attention, `output_attentions=True` returns the probabilities of both stacks.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm, LlamaRotaryEmbedding

from llava_mini.compat import cache_kwargs, cache_of
from llava_mini.configuration import LlavaMiniConfig


# --- compressor --------------------------------------------------------------------------------------
def get_2d_sincos_pos_embed(embed_dim: int, grid_size: int) -> torch.Tensor:
    """MAE's frozen 2D sin-cos embedding of a grid_size x grid_size grid -> [grid_size^2, embed_dim].

    First half of the channels encodes the column (MAE's meshgrid puts w first), second half the row.
    """
    if embed_dim % 4:
        raise ValueError(f"2D sin-cos embedding needs embed_dim divisible by 4, got {embed_dim}")
    rows, cols = torch.meshgrid(torch.arange(grid_size), torch.arange(grid_size), indexing="ij")

    def one_d(dim: int, pos: torch.Tensor) -> torch.Tensor:
        omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
        out = pos.reshape(-1, 1).double() * omega
        return torch.cat([out.sin(), out.cos()], dim=1)

    return torch.cat([one_d(embed_dim // 2, cols), one_d(embed_dim // 2, rows)], dim=1).float()


def resize_pos_embed(pos_embed: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """[C^2, D] embedding of a C x C grid -> [rows * cols, D] by bicubic resizing (as the release)."""
    side = math.isqrt(pos_embed.shape[0])
    if (side, side) == (rows, cols):
        return pos_embed
    grid = pos_embed.float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
    resized = F.interpolate(grid, size=(rows, cols), mode="bicubic", align_corners=False)
    return resized.permute(0, 2, 3, 1).flatten(0, 2).to(pos_embed.dtype)


class Resampler(nn.Module):
    """Query-based compression: C x C learnable queries cross-attend once to the vision features.

    Q = ln_q(query) + pos_embed, K = ln_kv(x) + pos_embed resized to the key grid, V = ln_kv(x);
    no residual, no MLP. The head-averaged attention weights [B, C^2, grid] (the compression map, paper
    Fig. 12) are returned and kept in `last_weights`; the release discards them.
    """

    def __init__(self, grid_size: int, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        self.grid_size = grid_size
        self.num_queries = grid_size**2
        self.embed_dim = embed_dim
        self.query = nn.Parameter(torch.zeros(self.num_queries, embed_dim))
        self.pos_embed = nn.Parameter(get_2d_sincos_pos_embed(embed_dim, grid_size), requires_grad=False)
        self.kv_proj = nn.Identity()
        self.attn = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
        self.ln_q = nn.LayerNorm(embed_dim)
        self.ln_kv = nn.LayerNorm(embed_dim)
        self.last_weights: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, rows * cols, D] -> (compressed [B, C^2, D], weights [B, C^2, rows * cols])."""
        key_pos = resize_pos_embed(self.pos_embed, *grid).to(x.dtype)
        x = self.ln_kv(self.kv_proj(x))
        query = (self.ln_q(self.query) + self.pos_embed.to(x.dtype)).unsqueeze(0).expand(x.shape[0], -1, -1)
        out, weights = self.attn(query, x + key_pos, x, need_weights=True, average_attn_weights=True)
        self.last_weights = weights.detach()
        return out, weights


class AveragePoolCompressor(nn.Module):
    """The paper's alternative (Table 8): average pooling of the grid to C x C cells; no parameters.

    Its "compression map" is the pooling matrix (each output cell weighs the features it averages).
    """

    def __init__(self, grid_size: int) -> None:
        super().__init__()
        self.grid_size = grid_size
        self.num_queries = grid_size**2
        self.last_weights: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        rows, cols = grid
        b, n, d = x.shape
        pooled = F.adaptive_avg_pool2d(x.transpose(1, 2).reshape(b, d, rows, cols), self.grid_size)
        eye = torch.eye(n, dtype=torch.float32, device=x.device).view(n, 1, rows, cols)
        matrix = F.adaptive_avg_pool2d(eye, self.grid_size).view(n, self.num_queries).T  # [C^2, N]
        weights = matrix.to(x.dtype).unsqueeze(0).expand(b, -1, -1)
        self.last_weights = weights.detach()
        return pooled.flatten(2).transpose(1, 2), weights


# --- vision tower and projector ----------------------------------------------------------------------
class LlavaMiniVisionTower(nn.Module):
    """CLIP vision model under the release's attribute names (`vision_tower.vision_tower.*`)."""

    def __init__(
        self, config: CLIPVisionConfig, select_layer: int = -2, select_feature: str = "patch"
    ) -> None:
        super().__init__()
        self.vision_tower = CLIPVisionModel(config)
        self.select_layer = select_layer
        self.select_feature = select_feature

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] -> [N, grid, D] features of `select_layer`, CLS dropped."""
        dtype = next(self.vision_tower.parameters()).dtype
        out = self.vision_tower(pixel_values.to(dtype), output_hidden_states=True)
        features = out.hidden_states[self.select_layer]
        return features[:, 1:] if self.select_feature == "patch" else features


def build_projector(config: LlavaMiniConfig) -> nn.Sequential:
    """`mlp2x_gelu`: Linear(mm_hidden, d) -> GELU -> Linear(d, d), keys `mm_projector.0` / `.2`."""
    return nn.Sequential(
        nn.Linear(config.mm_hidden_size, config.hidden_size),
        nn.GELU(),
        nn.Linear(config.hidden_size, config.hidden_size),
    )


# --- outputs -----------------------------------------------------------------------------------------
# Built on transformers' own output classes so that the cache field carries the installed release's name
# (`past_key_values` up to 5.23, `cache` from 5.24), which `generate` reads back.
@dataclass
class LlavaMiniModelOutput(BaseModelOutputWithPast):
    """`attentions`: one [B, H, N, N] per LLM layer; `prefusion_attentions`: one [B*T, H, M, M] per pre-fusion
    layer (eager attention and `output_attentions=True` only). `compression_weights` [B, T, C^2, rows, cols]."""

    prefusion_attentions: tuple[torch.Tensor, ...] | None = None
    compression_weights: torch.Tensor | None = None


@dataclass
class LlavaMiniCausalLMOutput(CausalLMOutputWithPast):
    prefusion_attentions: tuple[torch.Tensor, ...] | None = None
    compression_weights: torch.Tensor | None = None


@dataclass
class VisionTokens:
    """Projected vision tokens of N images / frames, before pre-fusion."""

    crops: torch.Tensor | None  # [N, n^2 * 576, d] high-res crop tokens (stitched raster), or None
    global_: torch.Tensor  # [N, 576, d]
    compressed: torch.Tensor  # [N, C^2, d]
    weights: torch.Tensor  # [N, C^2, rows * cols]
    grid: tuple[int, int]


@contextmanager
def recording_attentions(layers: nn.ModuleList, enabled: bool):
    """Collect the attention probabilities each layer's `self_attn` returns (None unless eager)."""
    records: list[torch.Tensor] = []
    handles = []
    if enabled:
        for layer in layers:
            handles.append(layer.self_attn.register_forward_hook(lambda _m, _a, out: records.append(out[1])))
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


# --- models ------------------------------------------------------------------------------------------
class LlavaMiniPreTrainedModel(PreTrainedModel):
    config: LlavaMiniConfig
    config_class = LlavaMiniConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LlamaDecoderLayer", "CLIPEncoderLayer"]
    _skip_keys_device_placement = ["cache", "past_key_values"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, Resampler):
            init.normal_(module.query, mean=0.0, std=0.02)
            init.copy_(module.pos_embed, get_2d_sincos_pos_embed(module.embed_dim, module.grid_size))


class LlavaMiniModel(LlavaMiniPreTrainedModel):
    def __init__(self, config: LlavaMiniConfig) -> None:
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList([LlamaDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.vision_tower = None
        if config.vision_config is not None:
            self.vision_tower = LlavaMiniVisionTower(
                config.vision_config, config.mm_vision_select_layer, config.mm_vision_select_feature
            )
        self.mm_projector = build_projector(config)
        if config.compression_kind == "query":
            self.compressor = Resampler(
                config.compressor_size, config.mm_hidden_size, config.compressor_heads
            )
        else:
            self.compressor = AveragePoolCompressor(config.compressor_size)
        # Same architecture and hyper-parameters as the LLM's layers (the release builds them from its config).
        self.prefusion_layers = nn.ModuleList(
            [LlamaDecoderLayer(config, i) for i in range(config.prefusion_layer_num)]
        )
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    # --- vision -------------------------------------------------------------------------------------
    def encode_vision(self, pixel_values: torch.Tensor) -> VisionTokens:
        """pixel_values [N, V, 3, 336, 336], V = 1 (standard) or n^2 + 1 (crops row-major, whole image last)."""
        if self.vision_tower is None:
            raise ValueError("this LLaVA-Mini has no vision tower attached (see llava_mini.loading)")
        n_images, views = pixel_values.shape[:2]
        features = self.vision_tower(pixel_values.flatten(0, 1))
        patches, width = features.shape[1:]
        side = math.isqrt(patches)
        features = features.view(n_images, views, patches, width)
        global_raw = features[:, -1]
        if views == 1:
            crops_raw, keys, grid = None, global_raw, (side, side)
        else:
            n = math.isqrt(views - 1)
            if n * n != views - 1:
                raise ValueError(f"high-res input needs n^2 crops + 1 whole image, got {views} views")
            crops_raw = features[:, :-1].reshape(n_images, n, n, side, side, width).transpose(2, 3)
            crops_raw = crops_raw.reshape(n_images, n * side * n * side, width)
            keys, grid = crops_raw, (n * side, n * side)
        compressed_raw, weights = self.compressor(keys, grid)
        return VisionTokens(
            crops=None if crops_raw is None else self.mm_projector(crops_raw),
            global_=self.mm_projector(global_raw),
            compressed=self.mm_projector(compressed_raw),
            weights=weights,
            grid=grid,
        )

    # --- modality pre-fusion ------------------------------------------------------------------------
    def prefuse(
        self, hidden: torch.Tensor, keep: torch.Tensor, output_attentions: bool = False
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Run the pre-fusion layers over [vision..., compressed, text]; `keep` [B, M] marks valid tokens.

        Masked tokens are invisible as keys and do not count in the position ids (running count of valid
        tokens), exactly as if they were absent. No final norm.

        The pre-fusion layers number themselves 0..N-1 (`layer_idx`), as the LLM's layers do: a KV cache
        indexed by layer would mix the two stacks, so they run without one (they see every token at once,
        and decoding steps reuse the fused text from the LLM's cache, as in the release).
        """
        position_ids = (keep.long().cumsum(-1) - 1).clamp(min=0)
        mask = create_causal_mask(
            config=self.config,
            inputs_embeds=hidden,
            attention_mask=keep.long(),
            position_ids=position_ids,
            **cache_kwargs(None),
        )
        position_embeddings = self.rotary_emb(hidden, position_ids=position_ids)
        with recording_attentions(self.prefusion_layers, output_attentions) as records:
            for layer in self.prefusion_layers:
                hidden = layer(
                    hidden,
                    attention_mask=mask,
                    position_ids=position_ids,
                    position_embeddings=position_embeddings,
                    use_cache=False,
                    **cache_kwargs(None),  # never the LLM's cache: the layer indices overlap
                )
        return hidden, tuple(records)

    def embed_multimodal(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        fusion_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor]:
        """LLM input embeddings for a prompt whose image slots hold T x C^2 `image_token_index` ids.

        pixel_values: [B, 3, H, W], [B, T, 3, H, W] or [B, T, V, 3, H, W] (T frames, V views per frame).
        fusion_mask [B, L'] (L' <= L): text tokens that take part in pre-fusion (default: every valid token);
        tokens past its end and tokens it marks False (padding, teacher-forced or generated response) keep
        their plain embedding, as in the release.
        Returns (embeddings [B, L, d], pre-fusion attentions, compression weights [B, T, C^2, rows, cols]).
        """
        config = self.config
        batch, length = input_ids.shape
        if pixel_values.dim() == 4:
            pixel_values = pixel_values[:, None, None]
        elif pixel_values.dim() == 5:
            pixel_values = pixel_values[:, :, None]
        frames = pixel_values.shape[1]
        per_frame = config.compressor_size**2
        is_image = input_ids == config.image_token_index
        counts = is_image.sum(-1)
        if (counts != frames * per_frame).any():
            raise ValueError(
                f"each prompt needs {frames} x {per_frame} image tokens for {frames} frame(s), found {counts.tolist()}"
            )
        valid = torch.ones_like(is_image) if attention_mask is None else attention_mask.bool()
        fuse = valid & ~is_image
        if fusion_mask is not None:
            fusion_mask = F.pad(fusion_mask.bool(), (0, length - fusion_mask.shape[-1]), value=False)
            fuse = fuse & fusion_mask
        plain = self.embed_tokens(input_ids.masked_fill(is_image, 0))
        text_len = length - frames * per_frame
        text_plain = plain[~is_image].view(batch, text_len, -1)
        text_fuse = fuse[~is_image].view(batch, text_len)

        vision = self.encode_vision(pixel_values.flatten(0, 1))  # every frame on its own: [B*T, ...]
        attentions: tuple[torch.Tensor, ...] = ()
        compressed, fused_text = vision.compressed, text_plain
        if len(self.prefusion_layers) > 0:
            text_rep = text_plain.repeat_interleave(frames, dim=0)
            fuse_rep = text_fuse.repeat_interleave(frames, dim=0)
            parts = [t for t in (vision.crops, vision.global_, vision.compressed) if t is not None]
            n_vision = sum(t.shape[1] for t in parts)
            hidden = torch.cat([*parts, text_rep.to(vision.global_.dtype)], dim=1)
            keep = torch.cat([fuse_rep.new_ones(batch * frames, n_vision), fuse_rep], dim=1)
            hidden, attentions = self.prefuse(hidden, keep, output_attentions)
            compressed = hidden[:, n_vision - per_frame : n_vision]
            fused = torch.where(fuse_rep.unsqueeze(-1), hidden[:, n_vision:], text_rep)
            fused_text = fused.view(batch, frames, text_len, -1).float().mean(dim=1).to(text_plain.dtype)

        embeds = torch.empty_like(plain)
        embeds[~is_image] = fused_text.reshape(-1, plain.shape[-1]).to(embeds.dtype)
        embeds[is_image] = compressed.reshape(-1, plain.shape[-1]).to(embeds.dtype)
        rows, cols = vision.grid
        weights = vision.weights.reshape(batch, frames, per_frame, rows, cols)
        return embeds, attentions, weights

    # --- forward ------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: Cache | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        fusion_mask: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> LlavaMiniModelOutput:
        """`cache` is the KV cache; `past_key_values` is its name before transformers 5.24 (see compat)."""
        cache = cache if cache is not None else past_key_values
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        output_attentions = bool(output_attentions)
        prefusion_attentions, compression_weights = None, None
        if inputs_embeds is None:
            if pixel_values is not None:
                inputs_embeds, prefusion_attentions, compression_weights = self.embed_multimodal(
                    input_ids, pixel_values, attention_mask, fusion_mask, output_attentions
                )
            else:
                if (input_ids == self.config.image_token_index).any():
                    raise ValueError("the prompt has image tokens but no pixel_values were given")
                inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        if position_ids is None:
            past_seen = cache.get_seq_length() if cache is not None else 0
            position_ids = (
                torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen
            ).unsqueeze(0)
        mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **cache_kwargs(cache),
        )
        hidden = inputs_embeds
        position_embeddings = self.rotary_emb(hidden, position_ids=position_ids)
        with recording_attentions(self.layers, output_attentions) as records:
            for layer in self.layers:
                hidden = layer(
                    hidden,
                    attention_mask=mask,
                    position_ids=position_ids,
                    use_cache=use_cache,
                    **cache_kwargs(cache),
                    position_embeddings=position_embeddings,
                    **kwargs,
                )
        return LlavaMiniModelOutput(
            last_hidden_state=self.norm(hidden),
            **cache_kwargs(cache),
            attentions=tuple(records) if output_attentions else None,
            prefusion_attentions=prefusion_attentions if output_attentions else None,
            compression_weights=compression_weights,
        )


class LlavaMiniForConditionalGeneration(LlavaMiniPreTrainedModel, GenerationMixin):
    """The release's `LlavaMiniLlamaForCausalLM`: `model` (LLaVA-Mini body) + `lm_head`."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: LlavaMiniConfig) -> None:
        super().__init__(config)
        self.model = LlavaMiniModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def generate(self, input_ids: torch.Tensor | None = None, **kwargs):
        """`GenerationMixin.generate`; only the prompt is pre-fused, generated tokens keep plain embeddings
        (also without a KV cache, where every step re-runs the whole sequence)."""
        if input_ids is not None and kwargs.get("fusion_mask") is None:
            mask = kwargs.get("attention_mask")
            kwargs["fusion_mask"] = (
                torch.ones_like(input_ids, dtype=torch.bool) if mask is None else mask.bool()
            )
        return super().generate(input_ids=input_ids, **kwargs)

    def prepare_inputs_for_generation(self, *args, is_first_iteration: bool | None = False, **kwargs):
        """Images enter at the first step only; later steps find them in the KV cache (as LLaVA's own
        override does; transformers < 5.24 would otherwise pass `pixel_values` at every step)."""
        pixel_values = kwargs.pop("pixel_values", None)
        inputs = super().prepare_inputs_for_generation(*args, is_first_iteration=is_first_iteration, **kwargs)
        if is_first_iteration or not kwargs.get("use_cache", True):
            inputs["pixel_values"] = pixel_values
        return inputs

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: Cache | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        fusion_mask: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> LlavaMiniCausalLMOutput:
        kwargs.pop("return_dict", None)
        cache = cache if cache is not None else past_key_values
        if fusion_mask is None and labels is not None:
            fusion_mask = labels == -100  # the release pre-fuses only the prompt (unsupervised) tokens
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            fusion_mask=fusion_mask,
            output_attentions=output_attentions,
            **kwargs,
        )
        hidden = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs
            )
        return LlavaMiniCausalLMOutput(
            loss=loss,
            logits=logits,
            **cache_kwargs(cache_of(outputs)),
            attentions=outputs.attentions,
            prefusion_attentions=outputs.prefusion_attentions,
            compression_weights=outputs.compression_weights,
        )


__all__ = [
    "AveragePoolCompressor",
    "LlavaMiniForConditionalGeneration",
    "LlavaMiniModel",
    "LlavaMiniPreTrainedModel",
    "Resampler",
    "get_2d_sincos_pos_embed",
    "resize_pos_embed",
]
