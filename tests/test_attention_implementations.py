"""The native engine on every attention implementation a user can load, under that implementation's name.

flash_attention_2 / 3 need CUDA; what they depend on is tested here on CPU: the model keeps the
implementation it was loaded with (transformers loads flash kernels by that name), a registered custom
kernel is the one that computes the forward, flex attention's `BlockMask` is read exactly, and an
eager model is moved to SDPA only with a warning.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

import probe
from probe.engines import get_engine
from probe.engines.streaming import StreamingContext, collect
from probe.inputs import make_sample
from probe.intermediate import stats_from_probabilities
from probe.roles import StageRoles
from tests.reference import assert_stats_close

SAMPLE = ("<image> What is shown?", ["skimage:astronaut"], "An astronaut in a suit.")
CALLS: list[int] = []


def counting_kernel(module, *args, **kwargs):
    CALLS.append(module.layer_idx)
    return sdpa_attention_forward(module, *args, **kwargs)


AttentionInterface.register("test_counting_kernel", counting_kernel)
AttentionMaskInterface.register("test_counting_kernel", sdpa_mask)


@pytest.fixture(scope="module")
def reference(tiny_llava):
    prepared = tiny_llava.adapter.prepare(make_sample(SAMPLE[0], SAMPLE[1], response=SAMPLE[2]))
    return prepared, get_engine("eager")(tiny_llava.adapter, prepared, per_head=True)


def test_a_custom_kernel_computes_the_forward_under_its_own_name(tiny_llava, reference):
    prepared, expected = reference
    adapter = tiny_llava.adapter
    seen_names = []
    real_forward = adapter.forward

    def forward(inputs, **kwargs):
        seen_names.append(adapter.current_attention())
        return real_forward(inputs, **kwargs)

    CALLS.clear()
    with adapter.attention_implementation("test_counting_kernel"):
        adapter.forward = forward
        try:
            got = get_engine("native")(adapter, prepared, per_head=True)
        finally:
            del adapter.forward
        assert adapter.current_attention() == "test_counting_kernel"
    assert seen_names == ["test_counting_kernel"]  # never renamed: flash kernels load by this name
    assert sorted(CALLS) == list(range(adapter.num_layers()))  # the user's kernel ran every LLM layer
    assert_stats_close(expected, got, per_head=True)


def test_an_eager_model_runs_on_sdpa_with_a_note_and_stays_eager(tiny_llava, reference, capsys):
    prepared, expected = reference
    adapter = tiny_llava.adapter
    with adapter.attention_implementation("eager"):
        got = get_engine("native")(adapter, prepared)
        get_engine("native")(adapter, prepared)
        assert adapter.current_attention() == "eager"
    assert capsys.readouterr().err.count("instead of its 'eager' attention") == 1  # said once, not per sample
    assert_stats_close(expected, got)


def test_sdpa_model_runs_without_note(tiny_llava, reference, capsys):
    prepared, _ = reference
    get_engine("native")(tiny_llava.adapter, prepared)
    assert "note:" not in capsys.readouterr().err


def test_flex_attention_model_on_cpu(probe_home, reference, monkeypatch):
    """A model loaded with flex attention: transformers hands the attention a `BlockMask`."""
    from torch.nn.attention.flex_attention import flex_attention
    from transformers import masking_utils
    from transformers.integrations import flex_attention as hf_flex

    # transformers compiles flex attention and its block-mask builder (minutes on 2 CPU cores); the
    # uncompiled functions compute the same attention from the same BlockMask
    monkeypatch.setattr(hf_flex.WrappedFlexAttention, "_is_flex_compiled", True, raising=False)
    monkeypatch.setattr(
        hf_flex.WrappedFlexAttention, "_compiled_flex_attention", staticmethod(flex_attention), raising=False
    )
    monkeypatch.setattr(hf_flex.WrappedFlexAttention, "training", False, raising=False)
    monkeypatch.setattr(
        masking_utils,
        "create_block_mask",
        lambda *args, _compile=True, **kwargs: create_block_mask(*args, _compile=False, **kwargs),
    )
    prepared, expected = reference
    loaded = probe.load("tiny-llava", device="cpu")
    loaded.model.set_attn_implementation({"text_config": "flex_attention"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch: "flex_attention called without torch.compile()"
        got = get_engine("native")(loaded.adapter, prepared, per_head=True)
    assert loaded.adapter.current_attention() == "flex_attention"
    assert_stats_close(expected, got, per_head=True)


def test_collect_reads_a_block_mask_with_padding_exactly():
    torch.manual_seed(0)
    bsz, heads, kv, n, dim = 2, 4, 2, 40, 8
    q, k = torch.randn(bsz, heads, n, dim) * 3, torch.randn(bsz, kv, n, dim) * 3  # peaked rows
    keep = torch.ones(bsz, n, dtype=torch.bool)
    keep[1, :6] = False  # left padding

    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & keep[b, kv_idx]

    block_mask = create_block_mask(mask_mod, bsz, None, n, n, device="cpu", BLOCK_SIZE=16, _compile=False)
    role_ids = torch.randint(0, 3, (bsz, n))
    role_ids[1, :6] = -1
    roles = StageRoles(labels=["instruction", "image:0", "response"], role_ids=role_ids)
    context = StreamingContext(roles=roles, device=torch.device("cpu"), per_head=True, block_bytes=2048)

    class Module:
        layer_idx, is_causal = 0, True

    collect(context, Module(), q, k, block_mask, scaling=dim**-0.5)
    (got,) = context.layer_stats()
    dense = torch.tril(torch.ones(n, n, dtype=torch.bool))[None] & keep[:, None, :]  # by hand
    scores = q.double() @ k.double().repeat_interleave(heads // kv, 1).transpose(-1, -2) * dim**-0.5
    probs = scores.masked_fill(~dense[:, None], float("-inf")).softmax(-1).nan_to_num(0.0)
    expected = stats_from_probabilities("llm", 0, probs, roles, per_head=True)
    assert_stats_close([expected], [got], per_head=True, rows=slice(6, None), tol=1e-5)


def test_cli_attn_option(tmp_path, capsys):
    import json

    from tests.conftest import invoke

    args = ["attention", "--model", "tiny-llava", "--image", "skimage:astronaut", "--prompt", "<image> Hi?"]
    code, _, err = invoke(
        capsys, *args, "--response", "yes", "--attn", "flash_attention_2", "--out", str(tmp_path / "a")
    )
    assert (
        code == 2
        and err.count("\n") == 1
        and "cannot use attention implementation 'flash_attention_2'" in err
    )
    assert not (tmp_path / "a" / "manifest.json").exists()
    code, _, err = invoke(capsys, *args, "--response", "yes", "--attn", "eager", "--out", str(tmp_path / "b"))
    assert code == 0, err
    assert "instead of its 'eager' attention" in err  # said, not done silently
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["attn_implementation"] == "eager"
