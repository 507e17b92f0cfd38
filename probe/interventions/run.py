"""What an ablation needs from one sample under one intervention: the gold answer's log-probability
(teacher-forced), the first answer token's distribution, and the greedily generated answer.

Both forwards (the teacher-forced one and generation, with the KV cache) run inside `intervening`, so
the intervention acts on the model's own forward path.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from llava_mini.compat import cache_kwargs, cache_of
from probe.adapters.base import Adapter, Prepared
from probe.inputs import Sample
from probe.interventions.base import Intervention, Tokens
from probe.interventions.hooks import intervening


@dataclass
class Outcome:
    first_logprobs: torch.Tensor  # [V] float64: log p(first answer token | prompt)
    gold_logprob: float | None  # sum of log p(gold token | prefix) over the gold answer's tokens
    generated: list[int] | None  # greedy answer token ids (end-of-sequence excluded)
    tokens_processed: int  # query tokens x layers of the intervened stage in the prompt's forward
    prompt_cache: object | None = None  # the prompt's KV cache (run_sample(keep_cache=True)), for reuse


def stage_tokens(prepared: Prepared, stage: str) -> Tokens:
    return Tokens(prepared.sequence_roles.get(stage, prepared.roles[stage]))


@torch.no_grad()
def forward_logits(
    adapter: Adapter, prepared: Prepared, intervention: Intervention, reference: bool = False
) -> tuple[torch.Tensor, int]:
    """Logits [N, V] (float64, cpu) of one prepared sequence under the intervention, and tokens processed.

    Positions a pruned output no longer holds (removed image tokens) are NaN."""
    inputs = {k: v.to(adapter.device) for k, v in prepared.inputs.items()}
    tokens = stage_tokens(prepared, intervention.stage)
    with intervening(adapter, intervention, tokens, reference=reference) as state:
        logits = adapter.forward(inputs).logits[0].double().cpu()
    if state.output_kept is not None:  # FastV: the last layers held the kept tokens only
        full = torch.full((int(prepared.inputs["input_ids"].shape[-1]), logits.shape[-1]), torch.nan)
        full[state.output_kept.cpu()] = logits.to(full.dtype)
        logits = full.double()
    return logits, state.tokens_processed


@torch.no_grad()
def generate(
    adapter: Adapter, sample: Sample, intervention: Intervention, max_new_tokens: int, reference: bool = False
) -> list[int]:
    """Greedy answer under the intervention, with the KV cache (without it when the intervention
    shortens the cache of the first layer, whose length tells the model the next position)."""
    prompt = adapter.prepare(sample, response_ids=[])
    tokens = stage_tokens(prompt, intervention.stage)
    use_cache = not (
        intervention.removes_tokens() and intervention.stage == "llm" and 0 in intervention.layers
    )
    with intervening(adapter, intervention, tokens, reference=reference):
        return adapter.generate(sample, max_new_tokens, use_cache=use_cache)


def eos_token_id(adapter: Adapter) -> int | None:
    eos = getattr(adapter.processor, "eos_token_id", None)
    return eos if eos is not None else getattr(adapter.tokenizer, "eos_token_id", None)


def shared_prefix(intervention: Intervention, tokens: Tokens) -> int:
    """How many leading positions of the LLM's prompt the intervention leaves exactly as the baseline's.

    A mask edit changes a token's hidden states only from the first query that loses a (causally visible)
    edge; every position before it sees what it saw in the baseline, in every layer, so its KV cache is
    the baseline's. Dropping vision tokens in mask mode leaves the system prompt and every image token
    alone (only the text after the image is changed); `vision->last` changes only the last position.
    0 where nothing can be reused: sequence edits, other stages, or a changed position among the vision
    tokens (a continuation from the cache carries text ids only, no pixels)."""
    if intervention.stage != "llm" or intervention.removes_tokens() or not intervention.layers:
        return 0
    n = tokens.length
    if tokens.roles.role_ids.shape[0] != 1:
        return 0
    causal = torch.ones(n, n, dtype=torch.bool).tril_()
    changed = torch.zeros(n, dtype=torch.bool)
    for layer in intervention.layers:
        blocked = intervention.blocked(layer, tokens, n, n)
        if blocked is not None:
            changed |= (blocked[0] & causal).any(-1)
    first = changed.nonzero()
    prefix = int(first[0]) if len(first) else n - 1  # at least the last position runs (its logits)
    vision = tokens.select("vision", n)[0]
    return 0 if bool(vision[prefix:].any()) else prefix


@torch.no_grad()
def run_sample(
    adapter: Adapter,
    sample: Sample,
    intervention: Intervention,
    gold_ids: list[int] | None,
    max_new_tokens: int = 0,
    reference: bool = False,
    baseline_cache=None,
    keep_cache: bool = False,
) -> Outcome:
    """One prefill of the prompt under the intervention, shared by everything an ablation reads: the first
    answer token's distribution, the gold answer scored from a copy of its KV cache, and greedy decoding
    from it. Interventions that shorten the first layer's cache (whose length sets the next position)
    are scored from one teacher-forced forward and decoded without a cache instead.

    `baseline_cache`: the baseline's prompt cache (`keep_cache=True` returns it in the outcome). With it, a
    mask edit reuses the positions it leaves unchanged (`shared_prefix`) and runs only the rest of the
    prompt, through every layer, on top of them: same results, a fraction of the prefill."""
    if intervention.removes_tokens() and intervention.stage == "llm" and 0 in intervention.layers:
        return _run_without_cache(adapter, sample, intervention, gold_ids, max_new_tokens, reference)
    prompt = adapter.prepare(sample, response_ids=[])
    return run_prepared(
        adapter, prompt, intervention, gold_ids, max_new_tokens, reference, baseline_cache, keep_cache
    )


@torch.no_grad()
def run_prepared(
    adapter: Adapter,
    prompt: Prepared,
    intervention: Intervention,
    gold_ids: list[int] | None,
    max_new_tokens: int = 0,
    reference: bool = False,
    baseline_cache=None,
    keep_cache: bool = False,
) -> Outcome:
    """`run_sample` on a prepared prompt (interventions that keep the first layer's cache whole)."""
    inputs = {k: v.to(adapter.device) for k, v in prompt.inputs.items()}
    n = prompt.prompt_length
    tokens = stage_tokens(prompt, intervention.stage)
    reused = shared_prefix(intervention, tokens) if baseline_cache is not None else 0
    if reused and _holds_image_tokens(adapter, inputs["input_ids"][0, reused - tokens.length :]):
        reused = 0  # a continuation carries no pixels
    if reused and _fuses_text(adapter):
        reused = 0  # LLaVA-Mini's prompt text enters the LLM pre-fused with the image: a plain-id continuation would skip that
    with intervening(adapter, intervention, tokens, reference) as state:
        if reused:
            cache = copy.deepcopy(baseline_cache)
            cache.crop(reused - tokens.length)  # keep the first `reused` positions
            rest = inputs["input_ids"][0, reused - tokens.length :].tolist()
            out = _step(adapter, cache, rest, reused)
        else:
            out = adapter.forward(inputs, use_cache=True)
        # the reused positions were processed by every layer, as in a full forward
        processed = state.tokens_processed + reused * adapter.num_layers(intervention.stage)
        first = torch.log_softmax(out.logits[0, -1].double().cpu(), dim=-1)
        cache = cache_of(out)
        kept = copy.deepcopy(cache) if keep_cache else None
        gold_logprob = None
        if gold_ids:
            gold_logprob = float(first[gold_ids[0]])
            if len(gold_ids) > 1:
                rest = _step(adapter, copy.deepcopy(cache), gold_ids[:-1], n)
                logprobs = torch.log_softmax(rest.logits[0].double().cpu(), dim=-1)
                gold_logprob += float(logprobs.gather(1, torch.tensor(gold_ids[1:])[:, None]).sum())
        generated: list[int] | None = None
        if max_new_tokens > 0:
            generated, eos, token = [], eos_token_id(adapter), int(first.argmax())
            while token != eos and len(generated) < max_new_tokens:
                generated.append(token)
                if len(generated) == max_new_tokens:
                    break
                step = _step(adapter, cache, [token], n + len(generated) - 1)
                cache = cache_of(step)
                token = int(step.logits[0, -1].argmax())
    return Outcome(first, gold_logprob, generated, processed, kept)


def _fuses_text(adapter: Adapter) -> bool:
    """Whether the prompt's text tokens reach the LLM through a pre-fusion stage (LLaVA-Mini, N_fusion > 0)."""
    return "prefusion" in adapter.stages and adapter.num_layers("prefusion") > 0


def _holds_image_tokens(adapter: Adapter, ids: torch.Tensor) -> bool:
    config = adapter.model.config
    special = {
        getattr(config, name, None) for name in ("image_token_id", "image_token_index", "video_token_id")
    }
    special.discard(None)
    return bool(torch.isin(ids, torch.tensor(sorted(special), device=ids.device)).any()) if special else False


def _step(adapter: Adapter, cache, ids: list[int], past: int):
    """Feed `ids` after `past` cached positions (no images: they are in the cache)."""
    device = adapter.device
    return adapter.forward(
        {
            "input_ids": torch.tensor([ids], device=device),
            "attention_mask": torch.ones(1, past + len(ids), dtype=torch.long, device=device),
        },
        use_cache=True,
        **cache_kwargs(cache),
    )


def _run_without_cache(adapter, sample, intervention, gold_ids, max_new_tokens, reference) -> Outcome:
    prepared = adapter.prepare(sample, response_ids=list(gold_ids or []))
    logits, processed = forward_logits(adapter, prepared, intervention, reference)
    logprobs = torch.log_softmax(logits, dim=-1)
    start = prepared.prompt_length
    gold_logprob = None
    if gold_ids:
        targets = torch.tensor(gold_ids)
        gold_logprob = float(
            logprobs[start - 1 : start - 1 + len(gold_ids)].gather(1, targets[:, None]).sum()
        )
    generated = (
        generate(adapter, sample, intervention, max_new_tokens, reference) if max_new_tokens > 0 else None
    )
    return Outcome(logprobs[start - 1], gold_logprob, generated, processed)
