"""Measured latency: prefill (time to the first token) and per-token decode, with warm-up and repeats.

Inputs are synthetic (random pixels, random text ids) with the setup's exact token layout, so every model
is timed on the same request shape. Timing uses CUDA events on a GPU (after a synchronize) and
`time.perf_counter` on CPU. Decode runs the model's own forward one token at a time on the KV cache the
prefill built (greedy), so per-token latency excludes sampling and generate()'s bookkeeping.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from probe.efficiency.setups import Setup
from probe.errors import ProbeError

CPU_RANDOM_WEIGHTS_LIMIT = 2 * 10**9  # bytes of random fp32 weights we are willing to build on a CPU


def check_measurable(setup: Setup, params: int, device: torch.device) -> None:
    """Models without weights are measured with random weights, but only where they fit (before any work)."""
    if setup.has_weights:
        return
    if device.type == "cpu" and params * 4 > CPU_RANDOM_WEIGHTS_LIMIT:
        raise ProbeError(
            f"--measure on CPU needs a model with weights or a small one: '{setup.label}' has {params / 1e9:.1f}B "
            "parameters (random weights of real sizes are built on a CUDA device only)"
        )


def load_for_timing(setup: Setup, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The model's own weights where it has them, otherwise seeded random weights from its config."""
    if setup.has_weights:
        from probe.zoo import load

        return load(setup.model, device=str(device), dtype=str(dtype).removeprefix("torch.")).model
    from probe.efficiency.flops import build_meta_model

    torch.manual_seed(0)
    meta = build_meta_model(setup, attention="sdpa")
    model = meta.to_empty(device=device).to(dtype)
    model.init_weights()
    return model.eval()


def synthetic_inputs(setup: Setup, device: torch.device, dtype: torch.dtype, seed: int = 0) -> dict:
    """input_ids with the image placeholders each family expects, random text ids and random pixels."""
    generator = torch.Generator().manual_seed(seed)
    config, request = setup.config, setup.request
    frames, side, views = request.frames, setup.vision_config.image_size, setup.views
    image_id = config.image_token_index
    vocab = setup.text_config.vocab_size
    text = torch.randint(10, vocab, (request.prompt_tokens,), generator=generator)
    text[text == image_id] = 10
    image = torch.full((frames * setup.llm_vision_tokens,), image_id)
    input_ids = torch.cat([text[:1], image, text[1:]]).unsqueeze(0)
    inputs = {"input_ids": input_ids.to(device)}
    if setup.family == "llava_mini":
        pixels = torch.randn(1, frames, views, 3, side, side, generator=generator)
    elif setup.family == "llava_next":
        pixels = torch.randn(frames, views, 3, side, side, generator=generator)
        inputs["image_sizes"] = torch.tensor([[request.resolution] * 2] * frames, device=device)
    else:
        pixels = torch.randn(frames, 3, side, side, generator=generator)
    inputs["pixel_values"] = pixels.to(device, dtype)
    return inputs


def _timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    """-> run(fn) returning fn's wall time in ms (CUDA events on a GPU)."""

    def cpu(fn):
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3

    def cuda(fn):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end)

    return cuda if device.type == "cuda" else cpu


@dataclass
class Timing:
    """One model's request, runnable again and again: prefill, then R - 1 greedy decode steps on its cache."""

    setup: Setup
    model: torch.nn.Module
    device: torch.device
    first: list[float] = field(default_factory=list)  # ms per timed repeat
    per_token: list[float] = field(default_factory=list)
    peak_extra: int | None = None  # CUDA: peak allocated during a run minus allocated before it

    def run_once(self, dtype: torch.dtype, record: bool) -> None:
        from llava_mini.compat import cache_kwargs, cache_of

        inputs = synthetic_inputs(self.setup, self.device, dtype)
        steps = self.setup.request.response_tokens - 1
        timer, state = _timer(self.device), {}

        def prefill():
            out = self.model(**inputs, use_cache=True, logits_to_keep=1)
            state["cache"], state["next"] = cache_of(out), out.logits[:, -1:].argmax(-1)

        def decode():
            for _ in range(steps):
                out = self.model(
                    input_ids=state["next"], use_cache=True, logits_to_keep=1, **cache_kwargs(state["cache"])
                )
                state["cache"], state["next"] = cache_of(out), out.logits[:, -1:].argmax(-1)

        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
            before = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        with torch.inference_mode():
            t_first = timer(prefill)
            t_decode = timer(decode) / steps if steps else float("nan")
        if cuda:
            extra = torch.cuda.max_memory_allocated(self.device) - before
            self.peak_extra = max(self.peak_extra or 0, extra)
        if record:
            self.first.append(t_first)
            self.per_token.append(t_decode)


def measure_side_by_side(timings: list[Timing], dtype: torch.dtype, repeats: int, warmup: int = 1) -> None:
    """Round-robin: each round runs every model once, so load on a shared machine hits all of them alike and
    their ratio stays meaningful; the first `warmup` rounds are not recorded."""
    for round_ in range(warmup + repeats):
        for timing in timings:
            timing.run_once(dtype, record=round_ >= warmup)


def latency_rows(timing: Timing, dtype: str) -> list[dict]:
    rows = []
    for quantity, values in (
        ("latency_first_token_ms", timing.first),
        ("latency_per_token_ms", timing.per_token),
    ):
        quartiles = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
        for stat, value in (
            ("median", statistics.median(values)),
            ("p25", quartiles[0]),
            ("p75", quartiles[2]),
        ):
            rows.append(
                {"quantity": quantity, "component": "total", "convention": stat, "value": value, "unit": "ms"}
            )
        for i, value in enumerate(values):  # every round, so ratios can be paired round by round
            rows.append(
                {
                    "quantity": quantity,
                    "component": "total",
                    "convention": f"round {i}",
                    "value": value,
                    "unit": "ms",
                }
            )
    if timing.peak_extra is not None:  # compare with the estimate: kv_bytes_request + activation_peak_bytes
        rows.append(
            {
                "quantity": "measured_peak_bytes",
                "component": "total",
                "convention": "cuda, above weights",
                "value": timing.peak_extra,
                "unit": "bytes",
            }
        )
    for row in rows:
        row["dtype"] = dtype
    return rows
