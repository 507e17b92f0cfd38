"""The training loop shared by the model organisms and the sweep: stages of AdamW steps, resumable.

A run is a list of `Stage`s sharing one step counter. The batch of step t is whatever the stage's
`loss` draws from the generator `step_rng(seed, stage, t)`, and the learning rate is a pure function of
t, so a run killed at any point and started again from its last checkpoint ends with the same weights
as an uninterrupted one. Checkpoints (`probe.training.checkpoint`) are written atomically every
`checkpoint_every` steps and at each stage's end; `log.jsonl` gets one line per step.
"""

from __future__ import annotations

import json
import math
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from probe.training.checkpoint import load_checkpoint, save_checkpoint

CHECKPOINT = "checkpoint.safetensors"
# generator streams of the organism's stages (kept so that its shipped weights stay reproducible)
STAGE_STREAMS = {"vision": 0, "projector": 1, "full": 2, "easy": 3}


@dataclass
class Stage:
    """`steps` optimiser steps on the parameter groups `groups()` returns (each with an lr `scale`),
    minimising `loss(rng)`; `start()` runs once when the stage begins (not when it resumes)."""

    name: str
    steps: int
    lr: float
    groups: Callable[[], list[dict]]
    loss: Callable[[np.random.Generator], torch.Tensor]
    start: Callable[[], None] | None = None


@dataclass(frozen=True)
class Schedule:
    seed: int = 0
    warmup: int = 30
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    checkpoint_every: int = 50
    betas: tuple[float, float] = (0.9, 0.999)


def step_rng(seed: int, stage: str, step: int) -> np.random.Generator:
    stream = STAGE_STREAMS.get(stage, zlib.crc32(stage.encode()))
    return np.random.default_rng([seed, 1000 + stream, step])


def learning_rate(base: float, step: int, total: int, schedule: Schedule) -> float:
    """Linear warm-up, then cosine decay to `min_lr_ratio` x base."""
    if step < schedule.warmup:
        return base * (step + 1) / schedule.warmup
    progress = (step - schedule.warmup) / max(1, total - schedule.warmup)
    ratio = schedule.min_lr_ratio
    return base * (ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def set_trainable(model: nn.Module, parameters: list[nn.Parameter]) -> None:
    """Exactly `parameters` get gradients."""
    for p in model.parameters():
        p.requires_grad_(False)
    for p in parameters:
        p.requires_grad_(True)


def run_stages(
    model: nn.Module,
    stages: list[Stage],
    out: Path,
    schedule: Schedule,
    extra_modules: dict[str, nn.Module] | None = None,
    stop_after: int | None = None,
    progress: bool = True,
    desc: str = "train",
) -> dict | None:
    """Run (or resume) `stages` with checkpoints in `out`; returns the final state (`elapsed_s`, ...), or
    None when `stop_after` steps of this call ran first. `extra_modules` (e.g. a probe head) are
    checkpointed with the model."""
    modules = {"model": model, **(extra_modules or {})}
    Path(out).mkdir(parents=True, exist_ok=True)
    ckpt_path = Path(out) / CHECKPOINT
    state = {"stage_index": 0, "step": 0, "elapsed_s": 0.0, "resumed_from": None}
    resuming = ckpt_path.is_file()
    if resuming:
        state = load_checkpoint(ckpt_path, modules, None)
        state["resumed_from"] = sum(s.steps for s in stages[: state["stage_index"]]) + state["step"]
    total = sum(s.steps for s in stages)
    done = sum(s.steps for s in stages[: state["stage_index"]]) + state["step"]
    bar = tqdm(total=total, initial=done, desc=desc, unit="step", disable=not progress, dynamic_ncols=True)
    steps_this_run = 0
    with (Path(out) / "log.jsonl").open("a") as log:
        try:
            for si in range(state["stage_index"], len(stages)):
                stage = stages[si]
                groups = stage.groups()
                params = [p for g in groups for p in g["params"]]
                set_trainable(model, params)
                optimiser = torch.optim.AdamW(
                    groups, lr=stage.lr, betas=schedule.betas, weight_decay=schedule.weight_decay
                )
                first = 0
                if resuming and si == state["stage_index"]:
                    first = state["step"]
                    if first:
                        load_checkpoint(ckpt_path, {}, optimiser)
                if first == 0 and stage.start is not None:
                    stage.start()
                for step in range(first, stage.steps):
                    t0 = time.perf_counter()
                    lr = learning_rate(stage.lr, step, stage.steps, schedule)
                    for group in optimiser.param_groups:
                        group["lr"] = lr * group["scale"]
                    loss = stage.loss(step_rng(schedule.seed, stage.name, step))
                    optimiser.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(params, schedule.grad_clip)
                    optimiser.step()
                    elapsed = state["elapsed_s"] + time.perf_counter() - t0
                    state = {**state, "stage_index": si, "step": step + 1, "elapsed_s": elapsed}
                    state["loss"] = round(loss.item(), 5)
                    record = {"stage": stage.name, "step": step, "loss": state["loss"], "lr": lr}
                    log.write(json.dumps({**record, "elapsed_s": round(elapsed, 2)}) + "\n")
                    bar.update(1)
                    bar.set_postfix(stage=stage.name, loss=f"{loss.item():.3f}")
                    steps_this_run += 1
                    last = step + 1 == stage.steps
                    stop = stop_after is not None and steps_this_run >= stop_after
                    if last or stop or (step + 1) % schedule.checkpoint_every == 0:
                        if last and si + 1 < len(stages):
                            state = {**state, "stage_index": si + 1, "step": 0}
                        log.flush()
                        save_checkpoint(ckpt_path, modules, None if last else optimiser, state)
                    if stop and not (last and si + 1 == len(stages)):
                        return None
                resuming = False
        finally:
            bar.close()
    for p in model.parameters():
        p.requires_grad_(True)
    return state
