"""Build one LLaVA-Mini student from the base and train it with the shared trainer.

The student shares the base's tower, projector and LLM (`build_from_llava`), so every cell loads its
own copy of the base. Distillation needs the base's answers as they were: when a shared module trains,
the teacher is a second, frozen copy; otherwise the base itself is the teacher (nothing of it changes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from probe.inputs import Sample
from probe.organism.train import pad_batch
from probe.sweep.config import Cell, SweepConfig
from probe.training.loop import Schedule, Stage, run_stages

SHARED = ("projector", "llm", "vision")  # trainable names that are modules of the base too


class SampleBatcher:
    """Batches of (question, gold answer) samples built by the model's own adapter: training sees the
    prompt exactly as evaluation and `probe attention` render it. Labels cover the answer and its </s>."""

    def __init__(self, adapter, samples: list[Sample]) -> None:
        self.adapter = adapter
        self.samples = samples
        self.eos = adapter.tokenizer.eos_token_id

    def batch(self, indices: list[int]) -> dict:
        rows = []
        for i in indices:
            sample = self.samples[i]
            answer = self.adapter.encode_response(sample.answer) + [self.eos]
            prepared = self.adapter.prepare(sample, response_ids=answer)
            ids = prepared.inputs["input_ids"][0].tolist()
            labels = [-100] * prepared.prompt_length + answer
            rows.append((ids, labels, prepared.inputs["pixel_values"][0]))
        return pad_batch(rows, self.adapter.tokenizer.pad_token_id)


def trainable_modules(student, names: tuple[str, ...]) -> list[nn.Module]:
    body = student.model
    modules = {
        "compressor": [body.compressor],
        "prefusion": [body.prefusion_layers],
        "projector": [body.mm_projector],
        "llm": [body.embed_tokens, body.layers, body.norm, student.lm_head],
        "vision": [body.vision_tower],
    }
    return [m for name in names for m in modules[name]]


def answer_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[answer tokens, vocab]: the logits that predict each supervised token, in sequence order."""
    predicts = labels[:, 1:] != -100
    return logits[:, :-1][predicts]


def distill_loss(student_logits, student_labels, teacher_logits, teacher_labels, temperature: float):
    """KL(teacher || student) per answer token. The two sequences differ in length (576 vision tokens
    against C^2) but hold the same answer tokens in the same order, so the labels align them."""
    s = answer_logits(student_logits, student_labels) / temperature
    t = answer_logits(teacher_logits, teacher_labels) / temperature
    return F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean") * (
        temperature**2
    )


def build_student(base_loaded, cell: Cell, config: SweepConfig):
    """(student, its processor) for `cell` on top of the loaded base."""
    from llava_mini.build import build_from_llava, processor_from_llava

    student = build_from_llava(
        base_loaded.model,
        C=cell.compressor_size,
        n_fusion=cell.prefusion_layers,
        kind=cell.kind,
        init_prefusion_from_llm=config.train.init_prefusion_from_llm,
        seed=config.seed,
    )
    return student, processor_from_llava(base_loaded.processor, student.config)


def train_student(
    student,
    adapter,
    base_loaded,
    load_teacher,
    train_samples: list[Sample],
    config: SweepConfig,
    out: Path,
    stop_after: int | None = None,
    progress: bool = True,
    desc: str = "train",
) -> dict | None:
    """Train `student` in `out` (resumable); returns the loop's final state, None when stopped early.
    `load_teacher()` gives a fresh frozen base, called only for distillation with shared modules training."""
    settings = config.train
    params = [p for m in trainable_modules(student, settings.trainable) for p in m.parameters()]
    if not params or settings.steps == 0:
        return {"elapsed_s": 0.0, "loss": None, "resumed_from": None}
    device = next(student.parameters()).device
    student_batches = SampleBatcher(adapter, train_samples)
    teacher = teacher_batches = None
    if settings.loss in ("distill", "both"):
        teacher = load_teacher() if set(settings.trainable) & set(SHARED) else base_loaded.model
        teacher.eval().requires_grad_(False)
        teacher_batches = SampleBatcher(base_loaded.adapter, train_samples)

    def loss(rng: np.random.Generator) -> torch.Tensor:
        indices = [int(i) for i in rng.choice(len(train_samples), size=settings.batch_size, replace=False)]
        batch = {k: v.to(device) for k, v in student_batches.batch(indices).items()}
        output = student(**batch)
        if teacher is None:
            return output.loss
        teacher_batch = {k: v.to(device) for k, v in teacher_batches.batch(indices).items()}
        with torch.no_grad():
            teacher_logits = teacher(**{k: v for k, v in teacher_batch.items() if k != "labels"}).logits
        kl = distill_loss(
            output.logits,
            batch["labels"],
            teacher_logits,
            teacher_batch["labels"],
            settings.distill_temperature,
        )
        return kl if settings.loss == "distill" else output.loss + kl

    stage = Stage(
        name="student",
        steps=settings.steps,
        lr=settings.lr,
        groups=lambda: [{"params": params, "scale": 1.0}],
        loss=loss,
    )
    schedule = Schedule(
        seed=config.seed,
        warmup=min(settings.warmup, settings.steps),
        checkpoint_every=settings.checkpoint_every,
    )
    student.train()
    try:
        return run_stages(
            student, [stage], out, schedule, stop_after=stop_after, progress=progress, desc=desc
        )
    finally:
        student.eval()
