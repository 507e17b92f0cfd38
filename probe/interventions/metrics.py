"""Scoring an ablation: answers against gold, and means with bootstrap intervals over samples."""

from __future__ import annotations

import re
import string

import numpy as np
import pandas as pd
import torch

EXACT_MATCH, OPTION_LETTER = "exact match", "option letter"
SCORING = "normalised exact match (lower case, punctuation and articles a/an/the removed, spaces collapsed)"
SCORINGS = {
    EXACT_MATCH: SCORING,
    OPTION_LETTER: "option letter (multiple choice): the letter the generated answer starts with ('B', "
    "'(B)', 'b.', 'B) red', 'Answer: B'), or the option whose text it is exactly, vs the gold option's letter",
}
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)
_LEADING_LETTER = re.compile(r"^[(\[]?\s*([A-Za-z])\s*(?:[)\].:,]|$)")
_ANSWER_IS = re.compile(r"\banswer(?:\s+is)?\s*[:\-]?\s*[(\[]?([A-Z])\b", re.I)


def normalise_answer(text: str) -> str:
    """'The Red.' -> 'red' (the usual VQA normalisation)."""
    text = _ARTICLES.sub(" ", str(text).lower().translate(_PUNCT))
    return " ".join(text.split())


def predicted_letter(generated: str, choices: list[str]) -> str | None:
    """The option a multiple-choice answer names: a leading letter ('(B)', 'b.', 'B) red', a bare 'B'),
    'the answer is B', or the exact (normalised) text of one option; None if it names none of them."""
    letters = [chr(ord("A") + k) for k in range(len(choices))]
    text = str(generated).strip()
    for pattern in (_LEADING_LETTER, _ANSWER_IS):
        found = pattern.search(text)
        if found and found.group(1).upper() in letters:
            return found.group(1).upper()
    named = [k for k, option in enumerate(choices) if normalise_answer(option) == normalise_answer(text)]
    return letters[named[0]] if len(named) == 1 else None


def is_correct(generated: str, gold: str, choices: list[str] | None = None) -> bool:
    """Normalised exact match; with `choices`, the predicted option letter against the gold letter."""
    if choices:
        return predicted_letter(generated, choices) == str(gold).strip().upper()
    return normalise_answer(generated) == normalise_answer(gold)


def scoring_description(kinds: list[str]) -> str:
    """What the manifest says about scoring: the one rule used, or both when a dataset mixes them."""
    used = sorted(set(kinds))
    if len(used) == 1:
        return SCORINGS[used[0]]
    return "mixed, per sample (results' `scoring` column): " + "; ".join(
        f"{kind}: {SCORINGS[kind]}" for kind in used
    )


def kl_divergence(base_logprobs: torch.Tensor, logprobs: torch.Tensor) -> float:
    """KL(base || ablated) in nats between two next-token distributions given as log-probabilities."""
    p = base_logprobs.exp()
    return float((p * (base_logprobs - logprobs)).sum())


def relative_change_pct(p: float, p_base: float) -> float:
    """(p - p_base) / p_base x 100 (knockout's metric); NaN when the baseline probability is 0."""
    return (p - p_base) / p_base * 100 if p_base > 0 else float("nan")


def bootstrap_interval(
    values: np.ndarray, n_resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over samples (NaN values left out)."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_resamples, len(values)))].mean(1)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


METRICS = (
    "correct",
    "gold_logprob",
    "first_gold_prob",
    "first_gold_rel_change_pct",
    "kl_first_token",
    "tokens_processed",
)


def summarise(results: pd.DataFrame, keys: list[str], seed: int = 0) -> pd.DataFrame:
    """One row per setting x metric: n, mean and its 95% bootstrap interval over samples."""
    rows = []
    for values, group in results.groupby(keys, sort=False, dropna=False):
        values = values if isinstance(values, tuple) else (values,)
        for metric in METRICS:
            column = group[metric].astype(float).to_numpy()
            low, high = bootstrap_interval(column, seed=seed)
            valid = column[~np.isnan(column)]
            rows.append(
                {
                    **dict(zip(keys, values, strict=True)),
                    "metric": metric,
                    "n": int(len(valid)),
                    "mean": float(valid.mean()) if len(valid) else float("nan"),
                    "ci_low": low,
                    "ci_high": high,
                }
            )
    return pd.DataFrame(rows)
