"""LLaVA-Mini's computation: token counts, the compressor's formula, pooling without pre-fusion, video,
high resolution, generation with and without cache, and building from an HF LLaVA."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import LlamaConfig, LlamaForCausalLM

from llava_mini.build import build_from_llava
from llava_mini.processing import LlavaMiniProcessor
from probe.builtin.tokenizer import build_tokenizer
from probe.video import load_video_frames
from tests.llava_mini_helpers import mini_model, prompt_ids


def pixels(n: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 336, 336, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_llm_sees_c2_plus_text_tokens_and_prefusion_sees_all():
    model = mini_model(C=3, n_fusion=1)
    model.set_attn_implementation({"": "eager"})
    ids = prompt_ids(9)
    out = model(input_ids=ids, pixel_values=pixels(), output_attentions=True)
    n_text = ids.shape[1] - 9
    assert out.logits.shape[1] == 9 + n_text
    assert out.attentions[0].shape[-1] == 9 + n_text
    assert out.prefusion_attentions[0].shape[-1] == 576 + 9 + n_text
    assert out.compression_weights.shape == (1, 1, 9, 24, 24)
    assert model.config.vision_config._attn_implementation != "eager"  # CLIP keeps its own


@torch.no_grad()
def test_video_frames_give_t_times_c2_tokens(tmp_path):
    import av

    video = tmp_path / "clip.mp4"
    with av.open(str(video), "w") as container:
        stream = container.add_stream("mpeg4", rate=4)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for k in range(12):  # 3 seconds at 4 fps
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 20 * k, dtype=np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    frames = load_video_frames(video)
    assert len(frames) == 3
    folder = tmp_path / "frames"
    folder.mkdir()
    for k, f in enumerate(frames):
        f.save(folder / f"{k:03d}.png")
    assert len(load_video_frames(folder)) == 3

    model = mini_model(C=2, n_fusion=1)
    model.set_attn_implementation({"": "eager"})
    tokenizer = build_tokenizer()
    processor = LlavaMiniProcessor.from_config(tokenizer, model.config)
    enc = processor("USER: <image>\nWhat happens? ASSISTANT:", video=frames)
    assert enc["pixel_values"].shape == (1, 3, 1, 3, 336, 336)
    n_image = int((enc["input_ids"] == -200).sum())
    assert n_image == 3 * 4
    out = model(**enc, output_attentions=True)
    n_text = enc["input_ids"].shape[1] - n_image
    assert out.logits.shape[1] == 3 * 4 + n_text
    assert out.prefusion_attentions[0].shape[:1] == (3,)  # every frame pre-fused on its own
    assert out.compression_weights.shape == (1, 3, 4, 24, 24)


@torch.no_grad()
def test_fused_text_is_mean_over_frames():
    model = mini_model(C=1, n_fusion=1)
    px = pixels(2).unsqueeze(0)  # [1, T=2, 3, H, W]
    ids = prompt_ids(2)
    emb2, _, _ = model.model.embed_multimodal(ids, px)
    single = [model.model.embed_multimodal(prompt_ids(1), px[:, t : t + 1])[0] for t in range(2)]
    text = (ids != -200)[0]
    text1 = (prompt_ids(1) != -200)[0]
    expected = (single[0][0, text1] + single[1][0, text1]) / 2
    torch.testing.assert_close(emb2[0, text], expected, atol=1e-5, rtol=1e-5)
    image_rows = emb2[0, ~text]
    torch.testing.assert_close(image_rows, torch.cat([s[0, ~text1] for s in single]), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_high_resolution_layout():
    model = mini_model(C=2, n_fusion=1, ratio=2)
    model.set_attn_implementation({"": "eager"})
    tokenizer = build_tokenizer()
    processor = LlavaMiniProcessor.from_config(tokenizer, model.config)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8))
    enc = processor("USER: <image>\nDescribe. ASSISTANT:", images=[image])
    assert enc["pixel_values"].shape == (1, 1, 5, 3, 336, 336)  # 2 x 2 crops + whole image
    out = model(**enc, output_attentions=True)
    n_text = enc["input_ids"].shape[1] - 4
    assert out.logits.shape[1] == 4 + n_text
    assert out.prefusion_attentions[0].shape[-1] == 4 * 576 + 576 + 4 + n_text
    assert out.compression_weights.shape == (1, 1, 4, 48, 48)


@pytest.mark.parametrize("kind", ["query", "pool"])
@torch.no_grad()
def test_compression_map_rows_sum_to_one(kind):
    model = mini_model(C=3, kind=kind)
    out = model(input_ids=prompt_ids(9), pixel_values=pixels())
    sums = out.compression_weights.flatten(-2).sum(-1)
    torch.testing.assert_close(sums, torch.ones_like(sums))
    assert model.model.compressor.last_weights.shape == (1, 9, 576)


def sincos(dim: int, side: int) -> torch.Tensor:
    """MAE's 2D sin-cos embedding, written out with numpy as in MAE's pos_embed.py."""

    def one(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid = np.meshgrid(np.arange(side, dtype=np.float64), np.arange(side, dtype=np.float64))
    return torch.from_numpy(np.concatenate([one(dim // 2, grid[0]), one(dim // 2, grid[1])], axis=1)).float()


@torch.no_grad()
def test_compressor_matches_its_formula():
    model = mini_model(C=3)
    comp = model.model.compressor
    torch.manual_seed(3)
    for p in comp.parameters():
        if p.requires_grad:
            p.normal_(0, 0.3)
    torch.testing.assert_close(comp.pos_embed, sincos(32, 3))
    x = torch.randn(2, 576, 32)
    out, weights = comp(x, (24, 24))
    # independent: Q = ln_q(query) + pos, K = ln_kv(x) + bicubic(pos), V = ln_kv(x); 8 heads; out_proj
    d, h = 32, comp.attn.num_heads
    pos = comp.pos_embed.reshape(1, 3, 3, d).permute(0, 3, 1, 2)
    key_pos = (
        F.interpolate(pos, size=(24, 24), mode="bicubic", align_corners=False)
        .permute(0, 2, 3, 1)
        .reshape(576, d)
    )
    kv = F.layer_norm(x, (d,), comp.ln_kv.weight, comp.ln_kv.bias)
    q = F.layer_norm(comp.query, (d,), comp.ln_q.weight, comp.ln_q.bias) + comp.pos_embed
    wq, wk, wv = comp.attn.in_proj_weight.chunk(3)
    bq, bk, bv = comp.attn.in_proj_bias.chunk(3)
    Q = (q @ wq.T + bq).view(9, h, d // h).transpose(0, 1)  # [h, 9, hd]
    K = ((kv + key_pos) @ wk.T + bk).view(2, 576, h, d // h).transpose(1, 2)  # [2, h, 576, hd]
    V = (kv @ wv.T + bv).view(2, 576, h, d // h).transpose(1, 2)
    probs = torch.softmax(Q.unsqueeze(0) @ K.transpose(-1, -2) / math.sqrt(d // h), dim=-1)
    expected = (probs @ V).transpose(1, 2).reshape(
        2, 9, d
    ) @ comp.attn.out_proj.weight.T + comp.attn.out_proj.bias
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(weights, probs.mean(1), atol=1e-6, rtol=1e-4)


@torch.no_grad()
def test_no_fusion_with_pooling_is_the_plain_pooled_model():
    model = mini_model(C=2, n_fusion=0, kind="pool")
    ids, px = prompt_ids(4), pixels()
    logits = model(input_ids=ids, pixel_values=px).logits
    # independent: CLIP layer -2 without CLS -> 2 x 2 average pool -> projector -> plain Llama
    clip = model.model.vision_tower.vision_tower
    feats = clip(px, output_hidden_states=True).hidden_states[-2][:, 1:]
    pooled = F.adaptive_avg_pool2d(feats.transpose(1, 2).reshape(1, 32, 24, 24), 2).flatten(2).transpose(1, 2)
    vision = model.model.mm_projector(pooled)
    llama_cfg = LlamaConfig(
        **{k: v for k, v in model.config.to_dict().items() if k in LlamaConfig().to_dict()}
    )
    llama = LlamaForCausalLM(llama_cfg).eval()
    state = {
        k: v
        for k, v in model.state_dict().items()
        if k.startswith(("model.embed_tokens", "model.layers", "model.norm", "lm_head"))
    }
    llama.load_state_dict(state, strict=True)
    is_image = ids[0] == -200
    embeds = llama.model.embed_tokens(ids.clamp(min=0))
    embeds[0, is_image] = vision[0]
    torch.testing.assert_close(logits, llama(inputs_embeds=embeds).logits, atol=1e-5, rtol=1e-4)


def test_generation_with_cache_equals_without(probe_home):
    import probe
    from probe.inputs import make_sample

    loaded = probe.load("tiny-llava-mini", device="cpu")
    sample = make_sample("<image> What is shown?", ["skimage:astronaut"])
    with_cache = loaded.adapter.generate(sample, 6, use_cache=True)
    without = loaded.adapter.generate(sample, 6, use_cache=False)
    assert with_cache == without and len(with_cache) > 0


@torch.no_grad()
def test_build_from_llava_shares_weights(probe_home):
    import probe

    base = probe.load("tiny-llava", device="cpu").model  # its own copy: building re-points shared layers
    mini = build_from_llava(base, C=2, n_fusion=2, kind="query")
    llm = base.model.language_model
    assert mini.model.layers is llm.layers and mini.model.embed_tokens is llm.embed_tokens
    assert mini.lm_head is base.lm_head and mini.model.norm is llm.norm
    assert mini.model.vision_tower.vision_tower is base.model.vision_tower
    assert mini.model.mm_projector[0].weight is base.model.multi_modal_projector.linear_1.weight
    assert mini.model.mm_projector[2].weight is base.model.multi_modal_projector.linear_2.weight
    assert set(mini.state_dict()) >= {"model.compressor.query", "model.prefusion_layers.1.mlp.up_proj.weight"}
    copied = build_from_llava(base, C=1, n_fusion=2, init_prefusion_from_llm=True)
    for i in range(2):
        a, b = copied.model.prefusion_layers[i].state_dict(), llm.layers[i].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in b)
        assert (
            copied.model.prefusion_layers[i].self_attn.q_proj.weight
            is not llm.layers[i].self_attn.q_proj.weight
        )
    ids = prompt_ids(4)
    out = mini(input_ids=ids, pixel_values=pixels())
    assert out.logits.shape[1] == ids.shape[1] and torch.isfinite(out.logits).all()


@torch.no_grad()
def test_response_and_padding_are_not_prefused():
    """Masked tokens act as if absent: a teacher-forced response or left padding leaves the prompt unchanged."""
    model = mini_model(C=2, n_fusion=2)
    ids, px = prompt_ids(4), pixels()
    base = model(input_ids=ids, pixel_values=px).logits
    response = torch.tensor([[70, 71, 72]])
    full = torch.cat([ids, response], dim=1)
    forced = model(input_ids=full, pixel_values=px, fusion_mask=torch.ones_like(ids, dtype=torch.bool)).logits
    torch.testing.assert_close(forced[:, : ids.shape[1]], base, atol=1e-5, rtol=1e-4)
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones_like(ids)], dim=1)
    emb_pad, _, _ = model.model.embed_multimodal(padded, px, attention_mask=mask)
    emb, _, _ = model.model.embed_multimodal(ids, px)
    torch.testing.assert_close(emb_pad[:, 3:], emb, atol=1e-5, rtol=1e-4)
