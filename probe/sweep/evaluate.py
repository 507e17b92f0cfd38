"""What a cell is worth: accuracy (with and without the image), FLOPs, latency, memory, attention.

Accuracy is the normalised exact match `probe drop` scores with, over the eval questions, with a 95%
bootstrap interval; the blank-image accuracy says how much of it the image carries. FLOPs come from
`probe efficiency`'s counter on the cell's own config; the KV cache per image is what its vision tokens
leave in the LLM's cache (fp16, the deployment dtype); latency is measured here, on this device.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import pandas as pd
import torch

from probe.answering import answer_questions
from probe.inputs import Sample
from probe.interventions.metrics import bootstrap_interval, is_correct
from probe.sweep.config import Cell, SweepConfig


def accuracy_columns(questions: pd.DataFrame, seed: int) -> dict:
    out = {}
    for blank, prefix in ((False, "accuracy"), (True, "blank_accuracy")):
        values = questions.loc[questions["blank_image"] == blank, "correct"].astype(float).to_numpy()
        if len(values) == 0:
            continue
        low, high = bootstrap_interval(values, seed=seed)
        out.update({prefix: float(values.mean()), f"{prefix}_ci_low": low, f"{prefix}_ci_high": high})
    out["n_eval"] = int((questions["blank_image"] == False).sum())  # noqa: E712 (a pandas mask)
    return out


def efficiency_columns(base: str, cell: Cell, prompt_tokens: int) -> dict:
    """FLOPs of one single-image request's prefill (dense + attention convention) and the KV cache its
    vision tokens occupy, from the counted config (no weights involved)."""
    from probe.efficiency.flops import count_stages, flops_rows
    from probe.efficiency.memory import kv_bytes_per_token
    from probe.efficiency.setups import Request, make_setup

    request = Request(prompt_tokens=prompt_tokens, response_tokens=1)
    if cell.kind == "base":
        setup = make_setup(base, request)
    else:
        setup = make_setup(
            base, request, queries=cell.compressor_size, prefusion=cell.prefusion_layers, kind=cell.kind
        )
    rows = pd.DataFrame(flops_rows(count_stages(setup), setup))
    prefill = rows[
        (rows["quantity"] == "flops_prefill")
        & (rows["component"] == "total")
        & (rows["convention"] == "dense+attention")
    ]["value"]
    return {
        "vision_tokens": setup.llm_vision_tokens,
        "flops_prefill": float(prefill.iloc[0]),
        "kv_mib_per_image_fp16": kv_bytes_per_token(setup, 2) * setup.llm_vision_tokens / 2**20,
    }


def latency_columns(adapter, samples: list[Sample]) -> dict:
    """Median wall time of the prefill + first token over `samples` (after one warm-up), and on CUDA the
    peak memory of those calls."""
    if not samples:
        return {}
    device = next(adapter.model.parameters()).device
    with torch.no_grad():
        adapter.generate(samples[0], 1)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for sample in samples:
            start = time.perf_counter()
            adapter.generate(sample, 1)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
    out = {"latency_ms": 1000 * statistics.median(times), "latency_device": device.type}
    if device.type == "cuda":
        out["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def evaluate_cell(
    adapter, cell: Cell, config: SweepConfig, samples: list[Sample], blank: Path
) -> tuple[dict, pd.DataFrame]:
    """(metric columns, per-question rows) of one trained cell."""
    ev = config.eval
    tables = [answer_questions(adapter, samples, ev.max_new_tokens, is_correct, None, f"eval {cell.name}")]
    if ev.blank_image:
        tables.append(
            answer_questions(adapter, samples, ev.max_new_tokens, is_correct, blank, f"blank {cell.name}")
        )
    questions = pd.concat(tables, ignore_index=True)
    metrics = {
        **accuracy_columns(questions, config.seed),
        **efficiency_columns(config.base, cell, ev.prompt_tokens),
        **latency_columns(adapter, samples[: ev.latency_samples]),
    }
    return metrics, questions
