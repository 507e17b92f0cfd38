"""An ablation's settings reuse the baseline's prompt cache for the positions a mask edit leaves alone
(`shared_prefix`), and get what a full re-run of the prompt gives: first-token distribution, gold
log-probability, generated answer and tokens processed. On the planted model (peaked rows, a BOS sink),
fp32, where cutting the wrong edges or a shifted position would show."""

from __future__ import annotations

import pytest
import torch

from probe.inputs import make_sample
from probe.interventions.base import BASELINE
from probe.interventions.drop import DropVision
from probe.interventions.knockout import Knockout
from probe.interventions.run import run_sample, shared_prefix, stage_tokens
from tests.planted import load_planted


@pytest.fixture(scope="module")
def planted(probe_home):
    return load_planted()


def image_positions(loaded, prepared) -> torch.Tensor:
    return (prepared.inputs["input_ids"][0] == loaded.model.config.image_token_id).nonzero().flatten()


@pytest.mark.parametrize(
    "make, first_changed",
    [
        # mask-mode drop: the system prompt and the image tokens are untouched; the text after the image is not
        (lambda n: DropVision([1, 2]), "after image"),
        (lambda n: DropVision(range(n)), "after image"),
        # knockout onto the last prompt token: only that position changes
        (lambda n: Knockout("vision", "last", centre=2, window=3, n_layers=n), "last"),
        (lambda n: Knockout("instruction", "last", centre=0, window=1, n_layers=n), "last"),
    ],
)
def test_reusing_the_baseline_prefix_equals_the_full_rerun(planted, make, first_changed):
    adapter = planted.adapter
    sample = make_sample("<image>\nWhat is in the picture? Answer briefly.", ["skimage:astronaut"])
    prompt = adapter.prepare(sample, response_ids=[])
    intervention = make(adapter.num_layers("llm"))
    images = image_positions(planted, prompt)
    expected = int(images.max()) + 1 if first_changed == "after image" else prompt.prompt_length - 1
    assert 0 < int(images.max()) < expected
    assert shared_prefix(intervention, stage_tokens(prompt, "llm")) == expected

    gold = adapter.encode_response(" an astronaut")
    base = run_sample(adapter, sample, BASELINE, gold, max_new_tokens=4, keep_cache=True)
    full = run_sample(adapter, sample, intervention, gold, max_new_tokens=4)
    reused = run_sample(
        adapter, sample, intervention, gold, max_new_tokens=4, baseline_cache=base.prompt_cache
    )
    # the setting really differs from the baseline (else equality would prove nothing)
    assert (full.first_logprobs - base.first_logprobs).abs().max() > 1e-3
    torch.testing.assert_close(reused.first_logprobs, full.first_logprobs, atol=1e-5, rtol=0)
    assert reused.gold_logprob == pytest.approx(full.gold_logprob, abs=1e-5)
    assert reused.generated == full.generated
    assert reused.tokens_processed == full.tokens_processed == base.tokens_processed


def test_nothing_is_reused_where_the_vision_tokens_change(planted):
    """Skip mode moves the vision tokens' own states; vision->vision edges change image positions."""
    adapter = planted.adapter
    sample = make_sample("<image> What?", ["skimage:coffee"])
    tokens = stage_tokens(adapter.prepare(sample, response_ids=[]), "llm")
    assert shared_prefix(DropVision([1], mode="skip"), tokens) == 0
    assert shared_prefix(Knockout("system", "vision", centre=1, window=1, n_layers=4), tokens) == 0


def test_static_cache_steps_get_the_same_edit(planted):
    """A static cache is longer than what it holds (keys = its full length): the queries' place comes
    from the mask (`query_offset`), so decoding through it equals the teacher-forced forward."""
    from transformers import StaticCache

    from llava_mini.compat import cache_kwargs
    from probe.interventions.hooks import intervening
    from probe.interventions.run import forward_logits

    adapter, model = planted.adapter, planted.model
    sample = make_sample("<image> What is it?", ["skimage:coffee"])
    gold = adapter.encode_response(" a cup of coffee")
    intervention = DropVision([0, 1, 2, 3])  # the answer's queries lose the vision keys in every layer
    whole, _ = forward_logits(adapter, adapter.prepare(sample, response_ids=gold), intervention)
    prompt = adapter.prepare(sample, response_ids=[])
    n = prompt.prompt_length
    cache = StaticCache(config=model.config, max_cache_len=n + len(gold) + 5)
    steps = []
    with intervening(adapter, intervention, stage_tokens(prompt, "llm")), torch.no_grad():
        out = model(**prompt.inputs, use_cache=True, **cache_kwargs(cache))
        steps.append(out.logits[0, -1])
        for k, token in enumerate(gold[:-1]):
            out = model(
                input_ids=torch.tensor([[token]]),
                attention_mask=torch.ones(1, n + k + 1, dtype=torch.long),
                cache_position=torch.tensor([n + k]),
                use_cache=True,
                **cache_kwargs(cache),
            )
            steps.append(out.logits[0, -1])
    expected = whole[n - 1 : n - 1 + len(gold)]
    baseline, _ = forward_logits(adapter, adapter.prepare(sample, response_ids=gold), BASELINE)
    assert (expected - baseline[n - 1 : n - 1 + len(gold)]).abs().max() > 1e-3  # the edit matters
    torch.testing.assert_close(torch.stack(steps).double(), expected, atol=1e-4, rtol=0)


def test_llava_mini_text_is_not_continued_unfused(probe_home):
    """LLaVA-Mini's prompt text enters its LLM pre-fused with the image: a setting on its LLM must give
    what a full re-run gives (a continuation from the baseline cache with plain text ids would not)."""
    import probe

    loaded = probe.load("organism-llava-mini", device="cpu", dtype="float32")
    adapter = loaded.adapter
    from probe.inputs import read_dataset
    from probe.organism.data import ensure_split

    sample = read_dataset(ensure_split("test"))[0]
    gold = adapter.encode_response(sample.answer)
    intervention = DropVision([4])
    base = run_sample(adapter, sample, BASELINE, gold, max_new_tokens=2, keep_cache=True)
    full = run_sample(adapter, sample, intervention, gold, max_new_tokens=2)
    reused = run_sample(
        adapter, sample, intervention, gold, max_new_tokens=2, baseline_cache=base.prompt_cache
    )
    torch.testing.assert_close(reused.first_logprobs, full.first_logprobs, atol=1e-5, rtol=0)
    assert reused.generated == full.generated
