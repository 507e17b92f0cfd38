"""What an ablation needs from one sample under one intervention: the gold answer's log-probability
(teacher-forced), the first answer token's distribution, and the greedily generated answer.

Both forwards (the teacher-forced one and generation, with the KV cache) run inside `intervening`, so
the intervention acts on the model's own forward path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from probe.adapters.base import Adapter, Prepared
from probe.inputs import Sample
from probe.interventions.base import Intervention, Tokens
from probe.interventions.hooks import intervening


@dataclass
class Outcome:
    first_logprobs: torch.Tensor  # [V] float64: log p(first answer token | prompt)
    gold_logprob: float | None  # sum of log p(gold token | prefix) over the gold answer's tokens
    generated: list[int] | None  # greedy answer token ids (end-of-sequence excluded)
    tokens_processed: int  # query tokens x layers of the intervened stage, teacher-forced prompt forward


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


def run_sample(
    adapter: Adapter,
    sample: Sample,
    intervention: Intervention,
    gold_ids: list[int] | None,
    max_new_tokens: int = 0,
    reference: bool = False,
) -> Outcome:
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
