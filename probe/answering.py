"""Generate an answer to every question and score it: the one loop behind `probe organism eval` and the
sweep's accuracy columns (they differ only in how a prediction is scored)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from probe.inputs import Sample


def answer_questions(
    adapter,
    samples: list[Sample],
    max_new_tokens: int,
    score: Callable[[str, str], bool],
    blank: Path | str | None = None,
    desc: str = "eval",
    progress: bool = True,
) -> pd.DataFrame:
    """One row per question: id, type, answer, prediction (the decoded generation), correct
    (`score(prediction, answer)`) and blank_image. With `blank`, every image is replaced by that file."""
    tokenizer = adapter.processor.tokenizer
    rows = []
    for sample in tqdm(samples, desc=desc, unit="q", leave=False, disable=not progress or len(samples) < 2):
        if blank is not None:
            sample = replace(sample, image_sources=[str(blank)] * len(sample.image_sources))
        with torch.no_grad():
            ids = adapter.generate(sample, max_new_tokens)
        prediction = tokenizer.decode(ids, skip_special_tokens=True).strip()
        rows.append(
            {
                "id": sample.sample_id,
                "type": str(sample.meta.get("type", "all")),
                "answer": sample.answer,
                "prediction": prediction,
                "correct": bool(score(prediction, sample.answer or "")),
                "blank_image": blank is not None,
            }
        )
    return pd.DataFrame(rows)
