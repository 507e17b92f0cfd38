"""The native streaming, nnsight and TransformerLens engines against the eager reference.

Every comparison is against an independent computation (the eager engine's explicit probabilities, or
the model's plain SDPA forward), never against stored numbers.
"""

from __future__ import annotations

import pytest
import torch

from llava_mini.compat import cache_kwargs, cache_of
from probe.adapters.base import collate_left_padded
from probe.engines import get_engine
from probe.engines.streaming import (
    StreamingContext,
    collect,
    collecting,
    instrumented_attention,
    mass_by_sdpa,
)
from probe.errors import ProbeError
from probe.inputs import make_sample
from probe.intermediate import stats_from_probabilities
from probe.roles import StageRoles
from tests.reference import assert_stats_close

BACKENDS = ["native", "nnsight", "transformer-lens"]
ONE = ("<image> What is shown?", ["skimage:astronaut"], "An astronaut in a suit.")
TWO = (
    "<image> What is shown? <image> And in this one?",
    ["skimage:astronaut", "skimage:coffee"],
    "A person and a cup.",
)


def llm_modules(adapter, context: StreamingContext) -> dict:
    return {module: context for module in adapter.attention_modules("llm")}


@pytest.fixture(scope="module")
def one_image(tiny_llava):
    prepared = tiny_llava.adapter.prepare(make_sample(ONE[0], ONE[1], response=ONE[2]))
    return prepared, get_engine("eager")(tiny_llava.adapter, prepared, per_head=True)


@pytest.fixture(scope="module")
def two_images(tiny_llava):
    prepared = tiny_llava.adapter.prepare(make_sample(TWO[0], TWO[1], response=TWO[2]))
    return prepared, get_engine("eager")(tiny_llava.adapter, prepared)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backends_match_eager_per_head_gqa(tiny_llava, one_image, backend):
    config = tiny_llava.model.config.text_config
    assert config.num_key_value_heads < config.num_attention_heads  # grouped-query attention is exercised
    prepared, ref = one_image
    got = get_engine(backend)(tiny_llava.adapter, prepared, per_head=True)
    assert_stats_close(ref, got, per_head=True)
    assert tiny_llava.adapter.current_attention() == "sdpa"  # every backend restores the model


@pytest.mark.parametrize("backend", BACKENDS)
def test_backends_match_eager_two_images(tiny_llava, two_images, backend):
    prepared, ref = two_images
    assert prepared.roles["llm"].labels.count("image:1") == 1
    assert_stats_close(ref, get_engine(backend)(tiny_llava.adapter, prepared))


@pytest.mark.parametrize("backend", ["native", "transformer-lens"])
def test_llava_next_matches_eager(tiny_llava_next, backend):
    adapter = tiny_llava_next.adapter
    prepared = adapter.prepare(make_sample("<image> Describe it.", ["skimage:coffee"], response="A cup."))
    ref = get_engine("eager")(adapter, prepared)
    assert_stats_close(ref, get_engine(backend)(adapter, prepared))


def test_native_padded_batch_matches_unpadded_runs(tiny_llava):
    adapter = tiny_llava.adapter
    samples = [
        make_sample("<image> What is shown?", ["skimage:astronaut"], response="A person."),
        make_sample(
            "<image> Please describe this picture in detail, then name the main object.",
            ["skimage:coffee"],
            response="A cup of coffee on a saucer.",
        ),
    ]
    singles = [adapter.prepare(s) for s in samples]
    batch = collate_left_padded(singles, adapter.tokenizer.pad_token_id)
    lengths = [int(p.inputs["input_ids"].shape[-1]) for p in singles]
    assert lengths[0] != lengths[1]
    batched = get_engine("native")(adapter, batch, per_head=True)
    for b, single in enumerate(singles):
        ref = get_engine("eager")(adapter, single, per_head=True)
        pad = batch.inputs["input_ids"].shape[-1] - lengths[b]
        rows = [
            type(s)(
                s.stage,
                s.layer,
                s.mass[b : b + 1, pad:],
                s.entropy[b : b + 1, pad:],
                s.visible[b : b + 1, pad:],
                s.head_mass[b : b + 1, :, pad:],
                s.head_entropy[b : b + 1, :, pad:],
            )
            for s in batched
        ]
        assert_stats_close(ref, rows, per_head=True)
        if pad:  # padding rows see nothing
            assert not batched[0].visible[b, :pad].any()


def test_native_does_not_change_the_forward(tiny_llava, one_image):
    adapter = tiny_llava.adapter
    prepared, _ = one_image
    inputs = dict(prepared.inputs)
    with torch.no_grad():
        plain = adapter.forward(inputs, output_hidden_states=True)
        context = StreamingContext(roles=prepared.roles["llm"], device=adapter.device)
        with instrumented_attention(adapter) as name, collecting(llm_modules(adapter, context)):
            assert name == adapter.current_attention() == "sdpa"  # the model's own implementation, by name
            streamed = adapter.forward(inputs, output_hidden_states=True)
    assert len(context.chunks) == adapter.num_layers()
    assert torch.equal(plain.logits, streamed.logits)
    for a, b in zip(plain.hidden_states, streamed.hidden_states, strict=True):
        assert torch.equal(a, b)
    # outside a collecting context the fronted implementation is a plain pass-through
    with torch.no_grad(), instrumented_attention(adapter):
        assert torch.equal(adapter.forward(inputs).logits, plain.logits)


def test_native_grid_rows_equal_eager_probabilities(tiny_llava, two_images):
    adapter = tiny_llava.adapter
    prepared, _ = two_images
    roles = prepared.roles["llm"]
    n = roles.role_ids.shape[1]
    queries = [-1, n - 5, int(roles.grids[1].positions[-1, -1]) + 2]
    got = get_engine("native")(
        adapter, prepared, grid_queries=queries, block_bytes=2**16
    )  # many query blocks
    with torch.no_grad(), adapter.attention_implementation("eager"):
        attentions = adapter.forward(dict(prepared.inputs), output_attentions=True).attentions
    targets = sorted(q % n for q in queries)
    assert len(roles.grids) == 2
    for stats, probs in zip(got, attentions, strict=True):
        mean = probs.double().mean(1)  # [B, N, N]
        for grid in roles.grids:
            expected = mean[:, targets][:, :, grid.positions.flatten()].view(
                1, len(targets), *grid.positions.shape
            )
            assert torch.allclose(stats.grid_rows[grid.image_index].double(), expected, atol=1e-6)


def test_native_kv_cache_rows(tiny_llava, one_image):
    """Prefill then feed the last tokens through the cache: rows for the new queries see cache + new keys."""
    adapter = tiny_llava.adapter
    prepared, ref = one_image
    inputs = dict(prepared.inputs)
    n, k = inputs["input_ids"].shape[-1], 3
    context = StreamingContext(roles=prepared.roles["llm"], device=adapter.device, per_head=True)
    with torch.no_grad(), instrumented_attention(adapter), collecting(llm_modules(adapter, context)):
        first = adapter.model(
            input_ids=inputs["input_ids"][:, : n - k],
            pixel_values=inputs["pixel_values"],
            attention_mask=inputs["attention_mask"][:, : n - k],
            use_cache=True,
        )
        for step in range(n - k, n):  # one token at a time, as generation does
            first = adapter.model(
                input_ids=inputs["input_ids"][:, step : step + 1],
                attention_mask=inputs["attention_mask"][:, : step + 1],
                **cache_kwargs(cache_of(first)),
                use_cache=True,
            )
    got = context.layer_stats()
    assert all(s.mass.shape[1] == n for s in got)
    assert_stats_close(ref, got, per_head=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_collect_on_random_tensors_with_padding_mask(dtype):
    """Unit check of the block path: GQA, a 4D bool padding mask, several blocks, low precision inputs."""
    torch.manual_seed(0)
    bsz, heads, kv, n, dim = 2, 6, 2, 37, 16
    q = torch.randn(bsz, heads, n, dim).to(dtype)
    k = torch.randn(bsz, kv, n, dim).to(dtype)
    keep = torch.ones(bsz, n, dtype=torch.bool)
    keep[1, :5] = False  # left padding in row 1
    causal = torch.tril(torch.ones(n, n, dtype=torch.bool))
    mask = (causal[None] & keep[:, None, :])[:, None]  # [B, 1, N, N]
    role_ids = torch.randint(0, 3, (bsz, n))
    role_ids[1, :5] = -1
    roles = StageRoles(labels=["instruction", "image:0", "response"], role_ids=role_ids)
    context = StreamingContext(roles=roles, device=torch.device("cpu"), per_head=True, block_bytes=4 * 1024)

    class Module:
        layer_idx, is_causal = 0, True

    collect(context, Module(), q, k, mask, scaling=dim**-0.5)
    (got,) = context.layer_stats()
    scores = q.double() @ k.double().repeat_interleave(heads // kv, 1).transpose(-1, -2) * dim**-0.5
    probs = scores.masked_fill(~mask, float("-inf")).softmax(-1).nan_to_num(0.0)
    ref = stats_from_probabilities("llm", 0, probs, roles, per_head=True)
    tol = (
        1e-5 if dtype == torch.float32 else 1e-4
    )  # inputs are the same bf16 values: only accumulation differs
    assert_stats_close([ref], [got], per_head=True, rows=slice(5, None), tol=tol)
    # the SDPA identity (V = one-hot roles) gives the same per-head mass
    onehot = roles.onehot(torch.float64)
    identity = mass_by_sdpa(q.double(), k.double(), onehot, attn_mask=mask, scale=dim**-0.5)
    assert torch.allclose(identity[:, :, 5:], got.head_mass[:, :, 5:].double(), atol=1e-5)


def test_api_default_backend_is_native(tiny_llava, monkeypatch):
    import probe
    from probe import engines

    called = []
    for name in list(engines.ENGINES):
        real = get_engine(name)

        def spy(*args, _name=name, _real=real, **kwargs):
            called.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setitem(engines.ENGINES, name, spy)
    table = probe.attention(tiny_llava, image="skimage:astronaut", prompt="<image> Hi?", response="Yes.")
    assert called == ["native"] and len(table) > 0


def test_statistics_keep_full_fp32_matmuls_when_the_user_enabled_tf32(tiny_llava, one_image, monkeypatch):
    """TF32 / reduced-precision fp32 matmuls are a user's choice for the forward, never for collect."""
    from probe.engines import streaming

    seen = []
    real_collect = streaming.collect

    def spy(*args, **kwargs):
        seen.append(torch.get_float32_matmul_precision())
        return real_collect(*args, **kwargs)

    monkeypatch.setattr(streaming, "collect", spy)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        prepared, _ = one_image
        get_engine("native")(tiny_llava.adapter, prepared)
        assert torch.get_float32_matmul_precision() == "medium"  # the user's setting is restored
    finally:
        torch.set_float32_matmul_precision(previous)
    assert seen and set(seen) == {"highest"}


def test_token_limits_raise_probe_error(tiny_llava, one_image, monkeypatch):
    from probe.engines import lens_engine, nnsight_engine

    prepared, _ = one_image
    monkeypatch.setattr(nnsight_engine, "MAX_TOKENS", 10)
    monkeypatch.setattr(lens_engine, "MAX_TOKENS", 10)
    for backend in ("nnsight", "transformer-lens"):
        with pytest.raises(ProbeError, match="native"):
            get_engine(backend)(tiny_llava.adapter, prepared)


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_native_rows_during_generation_with_each_cache(tiny_llava, cache):
    """generate() with a static cache hands attention keys as long as the cache, not as what it holds:
    the rows must still land on the generated tokens (checked against eager on the finished sequence)."""
    adapter = tiny_llava.adapter
    sample = make_sample("<image> What is shown?", ["skimage:astronaut"])
    prompt = adapter.prepare(sample, response_ids=[])
    inputs = {k: v.to(adapter.device) for k, v in prompt.inputs.items()}
    context = StreamingContext(roles=prompt.roles["llm"], device=adapter.device)
    extra = {"cache_implementation": "static"} if cache == "static" else {}
    with torch.no_grad(), instrumented_attention(adapter), collecting(llm_modules(adapter, context)):
        out = adapter.model.generate(
            **inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False, use_cache=True, **extra
        )
    generated = out[0, inputs["input_ids"].shape[1] :].tolist()
    full = adapter.prepare(sample, response_ids=generated)
    expected = get_engine("eager")(adapter, full)
    got = context.layer_stats()
    n_rows = full.inputs["input_ids"].shape[1] - 1  # the last generated token is never fed back
    assert all(s.mass.shape[1] == n_rows for s in got)
    # generated tokens are "response" to the context (beyond the prompt's roles), as in the finished run
    assert_stats_close(expected, got, rows=slice(0, n_rows))


def test_transformer_lens_says_before_it_copies_the_model(probe_home, one_image, capsys):
    import probe

    loaded = probe.load("tiny-llava", device="cpu")  # its own adapter: no bridge built yet
    prepared, _ = one_image
    for _ in range(2):
        get_engine("transformer-lens")(loaded.adapter, prepared)
    weights = sum(t.numel() * t.element_size() for t in loaded.model.state_dict().values())
    err = capsys.readouterr().err
    assert err.count("copy of the model") == 1  # said once, before the first (and only) copy
    assert f"{weights / 2**20:,.0f} MiB more memory on cpu" in err
