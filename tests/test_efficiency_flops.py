"""FLOPs counted on the meta device against formulas derived by hand here, stage by stage."""

from __future__ import annotations

import pytest
import torch
from transformers import LlavaConfig

from probe.builtin.tiny import tiny_text_config, tiny_vision_config
from probe.efficiency.flops import count_stages, counting, flops_rows
from probe.efficiency.setups import Request, Setup, with_resolution

VOCAB = 100
PATCHES = 576  # 336 px / patch 14 -> 24 x 24


def tiny_llava_config() -> LlavaConfig:
    return LlavaConfig(
        vision_config=tiny_vision_config(),  # 64 wide, MLP 128, 3 layers, 4 heads
        text_config=tiny_text_config(VOCAB),  # 64 wide, MLP 128, 4 layers, 4 heads, 2 KV heads
        image_token_index=5,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )


def llava_setup(prompt: int = 20, frames: int = 1) -> Setup:
    return Setup("tiny", "llava", tiny_llava_config(), Request(prompt_tokens=prompt, frames=frames))


def mini_setup(
    queries: int, n_fusion: int, prompt: int = 20, kind: str = "query", res: int = 336, frames: int = 1
) -> Setup:
    from llava_mini.build import mini_config_from_llava

    config = mini_config_from_llava(tiny_llava_config(), queries, n_fusion, kind)
    request = Request(resolution=res, prompt_tokens=prompt, frames=frames)
    return with_resolution(Setup("tiny", "llava_mini", config, request))


def table(setup: Setup) -> dict[tuple[str, str, str], float]:
    rows = flops_rows(count_stages(setup), setup)
    return {(r["quantity"], r["component"], r["convention"]): r["value"] for r in rows}


# --- hand formulas (2 FLOPs per multiply-add; biases and norms are not counted) ----------------------
def clip_dense(views: int) -> int:
    tokens, width, mlp = PATCHES + 1, 64, 128
    conv = 2 * PATCHES * (3 * 14 * 14) * width
    per_layer = 2 * tokens * (4 * width * width + 2 * width * mlp)
    return views * (conv + 3 * per_layer)  # all 3 layers run although layer -2 is read


def clip_attention(views: int) -> int:
    tokens, heads, head_dim = PATCHES + 1, 4, 16
    return views * 3 * 2 * heads * tokens * tokens * (2 * head_dim)


def decoder_dense(tokens: int, layers: int) -> int:
    d, heads, kv, hd, mlp = 64, 4, 2, 16, 128
    per_token = 2 * (d * heads * hd + 2 * d * kv * hd + heads * hd * d + 3 * d * mlp)
    return layers * tokens * per_token


def decoder_attention(queries: int, keys: int, layers: int, causal: bool, batch: int = 1) -> int:
    heads, hd = 4, 16
    pairs = queries * (keys - queries) + queries * (queries + 1) // 2 if causal else queries * keys
    return batch * layers * 2 * heads * pairs * (2 * hd)


def test_llava_v15_flops_match_hand_formula_in_both_conventions():
    L = 20
    got = table(llava_setup(prompt=L))
    S = PATCHES + L
    projector = 2 * PATCHES * (64 * 64 + 64 * 64)
    head = 2 * 64 * VOCAB
    assert got["flops_prefill", "vision_encoder", "dense"] == clip_dense(1)
    assert got["flops_prefill", "vision_encoder", "dense+attention"] == clip_dense(1) + clip_attention(1)
    # CLIP is bidirectional: causal halving leaves it alone
    assert got["flops_prefill", "vision_encoder", "dense+attention-causal"] == clip_dense(1) + clip_attention(
        1
    )
    assert got["flops_prefill", "projector", "dense"] == projector
    assert got["flops_prefill", "llm", "dense"] == decoder_dense(S, 4)
    assert got["flops_prefill", "llm", "dense+attention"] == decoder_dense(S, 4) + decoder_attention(
        S, S, 4, False
    )
    assert got["flops_prefill", "llm", "dense+attention-causal"] == decoder_dense(S, 4) + decoder_attention(
        S, S, 4, True
    )
    assert got["flops_prefill", "lm_head", "dense"] == head
    total = clip_dense(1) + projector + decoder_dense(S, 4) + head
    assert got["flops_prefill", "total", "dense"] == total
    # one decode step: one new token attending to the S cached keys and itself
    assert got["flops_per_generated_token", "llm", "dense"] == decoder_dense(1, 4)
    assert got["flops_per_generated_token", "llm", "dense+attention-causal"] == decoder_dense(
        1, 4
    ) + decoder_attention(1, S + 1, 4, True)


@pytest.mark.parametrize("kind", ["query", "pool"])
def test_llava_mini_flops_match_hand_formula(kind):
    C, N, L = 2, 2, 20
    got = table(mini_setup(C, N, prompt=L, kind=kind))
    d, width = 64, 64
    # compressor: Q / out projections on C^2 queries, K / V projections on the 576 keys, 8 heads
    compressor_dense = 2 * (C * C * width * width * 2 + 2 * PATCHES * width * width) if kind == "query" else 0
    compressor_attention = 2 * 8 * (C * C) * PATCHES * (2 * width // 8) if kind == "query" else 0
    projector = 2 * (PATCHES + C * C) * (width * d + d * d)
    M = PATCHES + C * C + L  # pre-fusion sequence: [global, compressed, text]
    assert got["flops_prefill", "vision_encoder", "dense"] == clip_dense(1)
    assert got["flops_prefill", "compressor", "dense"] == compressor_dense
    assert got["flops_prefill", "compressor", "dense+attention"] == compressor_dense + compressor_attention
    assert got["flops_prefill", "projector", "dense"] == projector
    assert got["flops_prefill", "prefusion", "dense"] == decoder_dense(M, N)
    assert got["flops_prefill", "prefusion", "dense+attention-causal"] == decoder_dense(
        M, N
    ) + decoder_attention(M, M, N, True)
    S = C * C + L
    assert got["flops_prefill", "llm", "dense+attention"] == decoder_dense(S, 4) + decoder_attention(
        S, S, 4, False
    )


def test_high_resolution_mini_sees_stitched_grid_and_crops():
    C, N, L = 1, 1, 10
    got = table(mini_setup(C, N, prompt=L, res=672))
    keys = 4 * PATCHES  # 2 x 2 crops stitched into a 48 x 48 grid
    assert got["flops_prefill", "vision_encoder", "dense"] == clip_dense(5)  # 4 crops + whole image
    assert got["flops_prefill", "compressor", "dense"] == 2 * (2 * 64 * 64 + 2 * keys * 64 * 64)
    M = keys + PATCHES + C * C + L
    assert got["flops_prefill", "prefusion", "dense"] == decoder_dense(M, N)
    assert got["flops_prefill", "llm", "dense"] == decoder_dense(C * C + L, 4)


def test_llm_stage_grows_with_c_squared_plus_l_for_mini_and_576_plus_l_for_v15():
    per_token = decoder_dense(1, 4)
    for C, L in [(1, 8), (2, 8), (3, 30), (4, 5)]:
        got = table(mini_setup(C, 1, prompt=L))
        assert got["flops_prefill", "llm", "dense"] == (C * C + L) * per_token
    for L in (8, 40):
        assert table(llava_setup(prompt=L))["flops_prefill", "llm", "dense"] == (576 + L) * per_token
    # video: T frames of 576 tokens each; LLaVA-Mini: T x C^2 tokens, and every frame pre-fused on its own
    assert (
        table(llava_setup(prompt=8, frames=3))["flops_prefill", "llm", "dense"] == (3 * 576 + 8) * per_token
    )
    video = table(mini_setup(2, 1, prompt=8, frames=3))
    assert video["flops_prefill", "llm", "dense"] == (3 * 4 + 8) * per_token
    assert video["flops_prefill", "prefusion", "dense"] == 3 * decoder_dense(576 + 4 + 8, 1)
    assert video["flops_prefill", "vision_encoder", "dense"] == clip_dense(3)


def test_prefusion_grows_linearly_with_n_fusion_and_vanishes_at_zero():
    values = [
        table(mini_setup(1, n, prompt=10)).get(("flops_prefill", "prefusion", "dense"), 0) for n in range(4)
    ]
    assert values[0] == 0
    assert values[1] > 0 and values == [n * values[1] for n in range(4)]


def test_attention_terms_do_not_depend_on_the_kernel_the_counter_sees():
    """Real CPU tensors (fused SDPA kernel) and meta tensors (math path) give the same counts; on meta the
    counter's own bmm tally of the bidirectional CLIP attention equals the recorded attention FLOPs."""
    from transformers import CLIPVisionModel

    from probe.efficiency.flops import RECORDING, register_recording

    register_recording()
    config = tiny_vision_config()
    config._attn_implementation = RECORDING
    counts = {}
    for device in ("cpu", "meta"):
        with torch.device(device):
            model = CLIPVisionModel(config).eval()
        with torch.no_grad(), counting() as count:
            model(torch.zeros(1, 3, 336, 336, device=device))
        counts[device] = count
    cpu, meta = counts["cpu"], counts["meta"]
    assert cpu.dense == meta.dense == clip_dense(1)
    assert cpu.total("dense+attention") == meta.total("dense+attention") == clip_dense(1) + clip_attention(1)
    assert meta.counter_other == clip_attention(1)
