"""The release's checkpoint layout: every name and shape, sharded safetensors, CLIP from its own id."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import CLIPVisionModel

from llava_mini.loading import load_llava_mini, save_llava_mini
from probe.builtin.tokenizer import build_tokenizer
from probe.errors import ProbeError
from tests.llava_mini_helpers import prompt_ids, vision_config

D, HEADS, KV, INTER, LAYERS, FUSION, C, DV, VOCAB = 32, 4, 2, 64, 2, 2, 2, 32, 300
HD = D // HEADS


def decoder_layer(prefix: str) -> dict[str, tuple]:
    return {
        f"{prefix}.self_attn.q_proj.weight": (HEADS * HD, D),
        f"{prefix}.self_attn.k_proj.weight": (KV * HD, D),
        f"{prefix}.self_attn.v_proj.weight": (KV * HD, D),
        f"{prefix}.self_attn.o_proj.weight": (D, HEADS * HD),
        f"{prefix}.mlp.gate_proj.weight": (INTER, D),
        f"{prefix}.mlp.up_proj.weight": (INTER, D),
        f"{prefix}.mlp.down_proj.weight": (D, INTER),
        f"{prefix}.input_layernorm.weight": (D,),
        f"{prefix}.post_attention_layernorm.weight": (D,),
    }


def release_names() -> dict[str, tuple]:
    """Written from the release's description (llava_mini.md), independently of our model code."""
    names = {"model.embed_tokens.weight": (VOCAB, D), "model.norm.weight": (D,), "lm_head.weight": (VOCAB, D)}
    for i in range(LAYERS):
        names.update(decoder_layer(f"model.layers.{i}"))
    for i in range(FUSION):
        names.update(decoder_layer(f"model.prefusion_layers.{i}"))
    names.update(
        {
            "model.mm_projector.0.weight": (D, DV),
            "model.mm_projector.0.bias": (D,),
            "model.mm_projector.2.weight": (D, D),
            "model.mm_projector.2.bias": (D,),
            "model.compressor.query": (C * C, DV),
            "model.compressor.pos_embed": (C * C, DV),
            "model.compressor.ln_q.weight": (DV,),
            "model.compressor.ln_q.bias": (DV,),
            "model.compressor.ln_kv.weight": (DV,),
            "model.compressor.ln_kv.bias": (DV,),
            "model.compressor.attn.in_proj_weight": (3 * DV, DV),
            "model.compressor.attn.in_proj_bias": (3 * DV,),
            "model.compressor.attn.out_proj.weight": (DV, DV),
            "model.compressor.attn.out_proj.bias": (DV,),
        }
    )
    return names


def write_release_checkpoint(path, clip_dir, drop: str | None = None, reshape: str | None = None) -> dict:
    path.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    tensors = {n: torch.randn(*s, generator=gen) * 0.05 for n, s in release_names().items()}
    for n in tensors:
        if (
            n.endswith("layernorm.weight")
            or n.endswith("norm.weight")
            or ".ln_" in n
            and n.endswith("weight")
        ):
            tensors[n] = 1 + tensors[n]
    if drop:
        del tensors[drop]
    if reshape:
        tensors[reshape] = torch.zeros(7, 3)
    names = sorted(tensors)
    shards = [names[k::3] for k in range(3)]
    weight_map = {}
    for k, shard in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-00003.safetensors"
        save_file({n: tensors[n].contiguous() for n in shard}, str(path / fname), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, fname))
    total = sum(t.numel() * 4 for t in tensors.values())
    (path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    config = {
        "architectures": ["LlavaMiniLlamaForCausalLM"],
        "model_type": "llava_mini_llama",
        "hidden_size": D,
        "intermediate_size": INTER,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV,
        "vocab_size": VOCAB,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 1024,
            "rope_type": "llama3",
        },
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "compressor_size": C,
        "prefusion_layer_num": FUSION,
        "resolution_ratio": 1,
        "mm_vision_tower": str(clip_dir),
        "mm_projector_type": "mlp2x_gelu",
        "mm_hidden_size": DV,
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "image_aspect_ratio": "pad",
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "tune_mm_mlp_adapter": False,
        "tokenizer_model_max_length": 2048,
        "tokenizer_padding_side": "right",
    }
    (path / "config.json").write_text(json.dumps(config, indent=2))
    build_tokenizer().save_pretrained(path)
    return tensors


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip")
    torch.manual_seed(1)
    CLIPVisionModel(vision_config()).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def release(tmp_path_factory, clip_dir):
    path = tmp_path_factory.mktemp("release")
    tensors = write_release_checkpoint(path, clip_dir)
    model, processor = load_llava_mini(str(path), local_files_only=True)
    return path, tensors, model, processor


def test_every_tensor_lands_where_it_belongs(release, clip_dir):
    _, tensors, model, _ = release
    state = model.state_dict()
    for name, tensor in tensors.items():
        assert torch.equal(state[name], tensor), name
    clip = CLIPVisionModel.from_pretrained(clip_dir)
    for name, tensor in clip.state_dict().items():
        assert torch.equal(state[f"model.vision_tower.vision_tower.{name}"], tensor), name
    assert set(state) - set(tensors) == {f"model.vision_tower.vision_tower.{n}" for n in clip.state_dict()}
    assert model.config.rope_parameters["rope_type"] == "llama3"


def test_save_load_round_trip(release, tmp_path):
    _, _, model, processor = release
    out = save_llava_mini(model, processor, tmp_path / "saved", max_shard_size="100KB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlavaMiniLlamaForCausalLM"]
    again, _ = load_llava_mini(str(out), local_files_only=True)
    sa, sb = model.state_dict(), again.state_dict()
    assert set(sa) == set(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    ids, px = prompt_ids(C * C), torch.randn(1, 3, 336, 336, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(
            model(input_ids=ids, pixel_values=px).logits, again(input_ids=ids, pixel_values=px).logits
        )


def test_missing_tensor_is_named(tmp_path, clip_dir):
    name = "model.prefusion_layers.1.mlp.up_proj.weight"
    write_release_checkpoint(tmp_path, clip_dir, drop=name)
    with pytest.raises(ProbeError, match=f"missing tensor.*{name}"):
        load_llava_mini(str(tmp_path), local_files_only=True)


def test_misshaped_tensor_is_named(tmp_path, clip_dir):
    name = "model.compressor.query"
    write_release_checkpoint(tmp_path, clip_dir, reshape=name)
    with pytest.raises(ProbeError, match=rf"mis-shaped.*'{name}' has shape \[7, 3\], expected \[4, 32\]"):
        load_llava_mini(str(tmp_path), local_files_only=True)


def test_missing_vision_tower_is_clear(tmp_path, clip_dir):
    write_release_checkpoint(tmp_path, tmp_path / "no-such-clip")
    with pytest.raises(ProbeError, match="mm_vision_tower"):
        load_llava_mini(str(tmp_path), local_files_only=True)


def test_release_zoo_entry_without_weights_is_clear():
    import probe

    with pytest.raises(ProbeError, match="ICTNLP/llava-mini-llama-3.1-8b"):
        probe.load("llava-mini-8b", device="cpu")
