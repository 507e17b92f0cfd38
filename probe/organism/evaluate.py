"""`probe organism eval`: exact-match accuracy of the generated first word, with and without the image.

The model is loaded through the zoo and answers through the LLaVA adapter's real `generate` path (the
same prompt rendering `probe attention` uses). `--blank-image` swaps every image for a blank canvas of
the same size and background: a model that reads the image must fall to about chance there.

Chance per question type is reported two ways: `uniform` = 1 / number of possible answers, and
`majority` = accuracy of always answering the split's most frequent answer for that type (the best a
model that ignores the image can do from the answer prior of the type alone).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pandas as pd
import torch

from probe.answering import answer_questions
from probe.inputs import Sample
from probe.organism import data as D
from probe.results import atomic_write


def first_word(text: str) -> str:
    words = re.findall(r"[a-z0-9]+", text.lower())
    return words[0] if words else ""


def blank_image_path() -> Path:
    from probe.zoo import probe_home

    path = probe_home() / "organism-data" / "blank.png"
    if not path.is_file():
        atomic_write(path, lambda p: D.blank_image().save(p, format="PNG"))
    return path


def question_type(sample: Sample) -> str:
    return str(sample.meta.get("type", "all"))


def evaluate(
    loaded, samples: list[Sample], blank: bool = False, max_new_tokens: int = 3, progress: bool = True
) -> pd.DataFrame:
    """One row per sample: id, type, answer, prediction (the generation), correct (its first word is the
    answer), blank_image."""
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    return answer_questions(
        loaded.adapter,
        samples,
        max_new_tokens,
        lambda prediction, answer: first_word(prediction) == answer.strip().lower(),
        blank_image_path() if blank else None,
        "eval" + (" (blank image)" if blank else ""),
        progress,
    )


def chance(samples: list[Sample]) -> pd.DataFrame:
    """Per question type: n, uniform chance (1 / #answers) and majority-answer accuracy in these samples."""
    by_type: dict[str, list[str]] = {}
    for s in samples:
        by_type.setdefault(question_type(s), []).append((s.answer or "").lower())
    rows = []
    for t, answers in sorted(by_type.items()):
        n_choices = len(D.ANSWERS.get(t, ())) or len(set(answers))
        top, count = Counter(answers).most_common(1)[0]
        rows.append(
            {
                "type": t,
                "n": len(answers),
                "uniform": 1 / n_choices,
                "majority": count / len(answers),
                "majority_answer": top,
            }
        )
    table = pd.DataFrame(rows)
    total = table["n"].sum()
    overall = {
        "type": "all",
        "n": int(total),
        "uniform": float((table["uniform"] * table["n"]).sum() / total),
        "majority": float((table["majority"] * table["n"]).sum() / total),
        "majority_answer": "-",
    }
    return pd.concat([table, pd.DataFrame([overall])], ignore_index=True)


def summarise(results: pd.DataFrame, chance_table: pd.DataFrame, column: str = "accuracy") -> pd.DataFrame:
    acc = results.groupby("type")["correct"].mean().rename(column)
    table = chance_table.set_index("type").join(acc)
    table.loc["all", column] = results["correct"].mean()
    return table.reset_index()
