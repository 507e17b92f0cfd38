"""Interventions on the real forward path, each against an independent reference written plainly here:
eager attention with a hand-built 4-D additive mask, a hand-written loop over decoder layers, the
shortened sequence run by hand with its original position ids.

organism-llava is trained, so its attention is peaked and an edit that cuts the wrong edges shows."""

from __future__ import annotations

import pytest
import torch

from probe.inputs import make_sample
from probe.interventions.base import BASELINE
from probe.interventions.drop import DropVision
from probe.interventions.hooks import intervening
from probe.interventions.knockout import Knockout
from probe.interventions.prune import Prune
from probe.interventions.run import forward_logits, generate, run_sample, stage_tokens

PROMPT = "<image> What colour is the circle?"


@pytest.fixture(scope="module")
def organism(probe_home):
    import probe

    return probe.load("organism-llava", device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    from probe.organism.data import Obj, render

    path = tmp_path_factory.mktemp("img") / "scene.png"
    scene = [Obj("circle", "red", "big", 0, 0), Obj("square", "blue", "small", 2, 1)]
    render(scene).save(path)
    return make_sample(PROMPT, [str(path)], response="red")


@pytest.fixture(scope="module")
def baseline(organism, sample):
    """Logits of the plain forward (no hook) on `sample` with its response."""
    with torch.no_grad():
        return organism.model(**organism.adapter.prepare(sample).inputs).logits[0].double()


def additive(allowed: torch.Tensor) -> torch.Tensor:
    """[N, N] bool -> [1, 1, N, N] float additive mask (0 where allowed, the float32 minimum elsewhere)."""
    mask = torch.zeros(allowed.shape)
    mask[~allowed] = torch.finfo(torch.float32).min
    return mask[None, None]


def eager_with_masks(loaded, prepared, masks: dict[int, torch.Tensor]) -> torch.Tensor:
    """Logits of the model's eager forward where layer l's attention gets masks[l] (else plain causal)."""
    model, adapter = loaded.model, loaded.adapter
    n = prepared.inputs["input_ids"].shape[-1]
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    handles = []
    for layer, attn in enumerate(adapter.attention_modules("llm")):

        def hook(module, args, kwargs, layer=layer):
            kwargs["attention_mask"] = additive(masks.get(layer, causal))
            return args, kwargs

        handles.append(attn.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with adapter.attention_implementation("eager"), torch.no_grad():
            return model(**prepared.inputs).logits[0].double()
    finally:
        for h in handles:
            h.remove()


def vision_positions(loaded, prepared) -> torch.Tensor:
    return prepared.inputs["input_ids"][0] == loaded.model.config.image_token_id


def test_mask_drop_equals_eager_with_hand_built_mask(organism, sample, baseline):
    prepared = organism.adapter.prepare(sample)
    n = prepared.inputs["input_ids"].shape[-1]
    vision = vision_positions(organism, prepared)
    allowed = torch.ones(n, n, dtype=torch.bool).tril() & ~(~vision[:, None] & vision[None, :])
    reference = eager_with_masks(organism, prepared, {1: allowed, 2: allowed})
    ours, processed = forward_logits(organism.adapter, prepared, DropVision([1, 2]))
    assert (reference - baseline).abs().max() > 1e-2  # the edit matters on this model
    torch.testing.assert_close(ours, reference, atol=2e-4, rtol=0)
    eager_path, _ = forward_logits(organism.adapter, prepared, DropVision([1, 2]), reference=True)
    torch.testing.assert_close(eager_path, reference, atol=1e-5, rtol=0)
    assert processed == n * organism.adapter.num_layers()  # mask mode computes every token


@pytest.mark.parametrize("edge", ["vision->last", "instruction->last"])
def test_knockout_equals_eager_with_hand_built_mask(organism, sample, baseline, edge):
    prepared = organism.adapter.prepare(sample)
    n = prepared.inputs["input_ids"].shape[-1]
    last = prepared.prompt_length - 1
    vision = vision_positions(organism, prepared)
    source = vision if edge.startswith("vision") else ~vision & (torch.arange(n) < prepared.prompt_length)
    allowed = torch.ones(n, n, dtype=torch.bool).tril()
    allowed[last, source] = False
    knockout = Knockout(*edge.split("->"), centre=3, window=3, n_layers=6)  # layers 2, 3, 4
    assert knockout.layers == (2, 3, 4)
    reference = eager_with_masks(organism, prepared, {2: allowed, 3: allowed, 4: allowed})
    ours, _ = forward_logits(organism.adapter, prepared, knockout)
    assert (reference[last] - baseline[last]).abs().max() > 1e-3
    torch.testing.assert_close(ours, reference, atol=2e-4, rtol=0)


def test_empty_intervention_is_the_plain_forward_bit_for_bit(organism, sample, baseline):
    ours, _ = forward_logits(organism.adapter, organism.adapter.prepare(sample), BASELINE)
    assert torch.equal(ours, baseline)


def test_late_intervention_leaves_earlier_layers_unchanged(organism, sample):
    prepared = organism.adapter.prepare(sample)
    tokens = stage_tokens(prepared, "llm")

    def hidden(intervention):
        with intervening(organism.adapter, intervention, tokens), torch.no_grad():
            return organism.model(**prepared.inputs, output_hidden_states=True).hidden_states

    base, late = hidden(BASELINE), hidden(DropVision([3, 4, 5]))
    for layer in range(4):  # hidden_states[k] = the input of layer k: outputs of layers 0..2 and embeddings
        assert torch.equal(base[layer], late[layer])
    assert not torch.allclose(base[4], late[4])


def test_decoding_with_kv_cache_equals_one_forward(organism, sample):
    """Teacher-forced tokens fed one at a time through the KV cache == the whole sequence at once."""
    from llava_mini.compat import cache_kwargs, cache_of

    adapter = organism.adapter
    gold = adapter.encode_response("red square")
    prepared = adapter.prepare(sample, response_ids=gold)
    prompt = adapter.prepare(sample, response_ids=[])
    for intervention in (DropVision([0, 1, 2]),):  # response queries lose the vision keys at every step
        whole, _ = forward_logits(adapter, prepared, intervention)
        steps = []
        with intervening(adapter, intervention, stage_tokens(prompt, "llm")), torch.no_grad():
            out = organism.model(**prompt.inputs, use_cache=True)
            steps.append(out.logits[0, -1])
            for k, token in enumerate(gold[:-1]):
                mask = torch.ones(1, prompt.prompt_length + k + 1, dtype=torch.long)
                out = organism.model(
                    input_ids=torch.tensor([[token]]),
                    attention_mask=mask,
                    use_cache=True,
                    **cache_kwargs(cache_of(out)),
                )
                steps.append(out.logits[0, -1])
        start = prompt.prompt_length - 1
        torch.testing.assert_close(
            torch.stack(steps).double(), whole[start : start + len(gold)], atol=2e-4, rtol=0
        )


def test_generation_with_cache_equals_without(tiny_llava):
    """HF generate with the cache, and run_sample's shared prefill + greedy decoding with the cache, both
    equal generation without a cache; its gold log-prob equals the teacher-forced forward's."""
    adapter = tiny_llava.adapter
    sample = make_sample("<image> Describe it.", ["skimage:coffee"])
    intervention = Knockout("vision", "response", centre=2, window=2, n_layers=4)
    prompt = adapter.prepare(sample, response_ids=[])
    with intervening(adapter, intervention, stage_tokens(prompt, "llm")):
        without = adapter.generate(sample, 4, use_cache=False)
    assert len(without) == 4 and generate(adapter, sample, intervention, 4) == without
    gold = [11, 12, 13]
    outcome = run_sample(adapter, sample, intervention, gold, max_new_tokens=4)
    assert outcome.generated == without
    logits, _ = forward_logits(adapter, adapter.prepare(sample, response_ids=gold), intervention)
    logprobs = torch.log_softmax(logits, dim=-1)[prompt.prompt_length - 1 :]
    expected = sum(float(logprobs[k, t]) for k, t in enumerate(gold))
    assert outcome.gold_logprob == pytest.approx(expected, abs=1e-4)
    torch.testing.assert_close(outcome.first_logprobs, logprobs[0], atol=1e-4, rtol=0)


def run_layers_by_hand(loaded, prepared, keep_in_layer) -> torch.Tensor:
    """A plain loop over the decoder layers: in layer l only positions keep_in_layer(l) (or all) take part;
    those that sit out keep their hidden state. Positions keep their original rotary angles."""
    model = loaded.model
    lm = model.model.language_model
    captured = {}
    handle = lm.layers[0].register_forward_pre_hook(
        lambda m, args, kwargs: captured.update(h=args[0] if args else kwargs["hidden_states"]),
        with_kwargs=True,
    )
    with torch.no_grad():
        model(**prepared.inputs)
    handle.remove()
    hidden = captured["h"]
    n = hidden.shape[1]
    positions = torch.arange(n)[None]
    cos, sin = lm.rotary_emb(hidden, position_ids=positions)
    with loaded.adapter.attention_implementation("eager"), torch.no_grad():
        for layer_index, layer in enumerate(lm.layers):
            idx = keep_in_layer(layer_index)
            idx = torch.arange(n) if idx is None else idx
            m = len(idx)
            causal = additive(torch.ones(m, m, dtype=torch.bool).tril())
            out = layer(
                hidden[:, idx],
                attention_mask=causal,
                position_ids=positions[:, idx],
                position_embeddings=(cos[:, idx], sin[:, idx]),
            )
            hidden = hidden.clone()
            hidden[:, idx] = out
        return model.lm_head(lm.norm(hidden))[0].double()


def test_skip_drop_equals_hand_written_layer_loop(organism, sample):
    prepared = organism.adapter.prepare(sample)
    text = (~vision_positions(organism, prepared)).nonzero().flatten()
    reference = run_layers_by_hand(organism, prepared, lambda layer: text if layer in (1, 2) else None)
    ours, processed = forward_logits(organism.adapter, prepared, DropVision([1, 2], mode="skip"))
    masked, _ = forward_logits(organism.adapter, prepared, DropVision([1, 2], mode="mask"))
    torch.testing.assert_close(ours, reference, atol=2e-4, rtol=0)
    assert (ours[text] - masked[text]).abs().max() > 1e-3  # skip is not mask: vision states are frozen
    n = prepared.inputs["input_ids"].shape[-1]
    assert processed == 4 * n + 2 * len(text)


def test_prune_equals_shortened_sequence_by_hand(organism, sample):
    adapter = organism.adapter
    prepared = adapter.prepare(sample)
    n = prepared.inputs["input_ids"].shape[-1]
    last = prepared.prompt_length - 1
    vision = vision_positions(organism, prepared)
    with adapter.attention_implementation("eager"), torch.no_grad():
        attn = organism.model(**prepared.inputs, output_attentions=True).attentions[1]  # layer K-1 = 1
    row = attn[0, :, last].mean(0)  # heads averaged
    image = vision.nonzero().flatten()
    n_keep = -(-len(image) // 4)
    top = image[row[image].topk(n_keep).indices]
    kept = torch.sort(torch.cat([(~vision).nonzero().flatten(), top])).values
    reference = run_layers_by_hand(organism, prepared, lambda layer: kept if layer >= 2 else None)
    ours, processed = forward_logits(adapter, prepared, Prune(2, 0.25, 6))
    torch.testing.assert_close(ours[kept], reference[kept], atol=2e-4, rtol=0)
    assert torch.isnan(ours[image[~torch.isin(image, top)]]).all()
    assert processed == 2 * n + 4 * len(kept)


def test_prune_generation_with_cache_equals_without(organism, sample):
    adapter = organism.adapter
    sample2 = make_sample("<image> What colour is the square? Answer and describe.", sample.image_sources)
    with_cache = generate(adapter, sample2, Prune(2, 0.5, 6), 5)
    prompt = adapter.prepare(sample2, response_ids=[])
    with intervening(adapter, Prune(2, 0.5, 6), stage_tokens(prompt, "llm")):
        without = adapter.generate(sample2, 5, use_cache=False)
    assert with_cache == without


def test_llava_mini_both_stages_equal_eager_with_hand_built_masks(sample, probe_home):
    """Pre-fusion (vision tower tokens = the first 576 of each frame's sequence) and LLM (compressed tokens)."""
    import probe

    mini = probe.load("organism-llava-mini", device="cpu", dtype="float32")
    adapter, model = mini.adapter, mini.model
    prepared = adapter.prepare(sample, response_ids=adapter.encode_response(" red"))
    n = prepared.inputs["input_ids"].shape[-1]
    compressed = prepared.inputs["input_ids"][0] == model.config.image_token_index
    llm_allowed = torch.ones(n, n, dtype=torch.bool).tril() & ~(~compressed[:, None] & compressed[None, :])
    minimum = torch.finfo(torch.float32).min

    def prefusion_hook(module, args, kwargs):
        mask = kwargs["attention_mask"].clone()  # the model's own eager mask: causal + padding
        mask[..., 576:, :576] = minimum  # text and compressed queries no longer see the 576 vision keys
        kwargs["attention_mask"] = mask
        return args, kwargs

    def llm_hook(module, args, kwargs):
        kwargs["attention_mask"] = additive(llm_allowed)
        return args, kwargs

    baseline, _ = forward_logits(adapter, prepared, BASELINE)
    for stage, hook in (("prefusion", prefusion_hook), ("llm", llm_hook)):
        handle = adapter.attention_modules(stage)[1].register_forward_pre_hook(hook, with_kwargs=True)
        try:
            with adapter.attention_implementation("eager"), torch.no_grad():
                reference = model(**prepared.inputs).logits[0].double()
        finally:
            handle.remove()
        ours, _ = forward_logits(adapter, prepared, DropVision([1], stage=stage))
        assert (reference - baseline).abs().max() > 1e-3, stage
        torch.testing.assert_close(ours, reference, atol=2e-4, rtol=0)


def test_llava_next_mask_drop_equals_eager_with_hand_built_mask(tiny_llava_next):
    loaded = tiny_llava_next
    sample = make_sample("<image> What is it?", ["skimage:coffee"], response="A cup.")
    prepared = loaded.adapter.prepare(sample)
    n = prepared.inputs["input_ids"].shape[-1]
    vision = vision_positions(loaded, prepared)  # base view, crops and image-newline tokens
    allowed = torch.ones(n, n, dtype=torch.bool).tril() & ~(~vision[:, None] & vision[None, :])
    reference = eager_with_masks(loaded, prepared, {0: allowed})
    ours, _ = forward_logits(loaded.adapter, prepared, DropVision([0]))
    torch.testing.assert_close(ours, reference, atol=2e-4, rtol=0)


def test_observation_and_intervention_in_one_forward(organism, sample):
    """The native statistics of the same forward see the edit: no mass from text onto vision tokens in
    the window, the baseline's statistics before it; observing does not change the output."""
    from probe.engines.streaming import run_native

    adapter = organism.adapter
    prepared = adapter.prepare(sample)
    with intervening(adapter, DropVision([2, 3]), stage_tokens(prepared, "llm"), observe=True) as state:
        with torch.no_grad():
            logits = organism.model(**prepared.inputs).logits[0].double()
    stats = state.layer_stats()
    unobserved, _ = forward_logits(adapter, prepared, DropVision([2, 3]))
    assert torch.equal(logits, unobserved)
    baseline = run_native(adapter, prepared)
    image = prepared.roles["llm"].labels.index("image:0")
    text = ~vision_positions(organism, prepared)
    for layer in range(6):
        onto_vision = stats[layer].mass[0, text, image]
        if layer in (2, 3):
            assert (onto_vision == 0).all()
        else:
            assert onto_vision.max() > 1e-3
    for layer in (0, 1):
        torch.testing.assert_close(stats[layer].mass, baseline[layer].mass, atol=1e-6, rtol=0)
