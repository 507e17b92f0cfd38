"""Auxiliary grounding targets for organism training: each question's key words predict their object.

Why: a from-scratch LLM must learn two things at once to answer "What colour is the triangle?" from 576
vision tokens: carry the word "triangle" to the answer position, and use it to select the triangle's
patches. Neither helps the loss until the other works, so training sits on the answer-prior plateau
(recipe v1-v3). A throw-away linear head on the LLM's last hidden state at the key word's own token
(" triangle", the last token of " top left", ...) predicts the attributes of the object it names: the
token's own embedding is the query, so the retrieval is learned directly, and the answer position then
only has to read it from a few tokens back. Count questions predict the count at the shape word.

Targets per key token: colour, shape, size, grid row, grid column (of the named object) and count
(count questions only); -100 where a target does not apply.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from probe.organism import data as D

TARGET_SIZES = (len(D.COLOURS), len(D.SHAPES), len(D.SIZES), D.GRID, D.GRID, len(D.NUMBERS))
IGNORE = -100


def key_phrases(question: D.Question, objects) -> list[tuple[str, list[int]]]:
    """(phrase as it appears in the prompt, targets) for each object a question names."""
    named = [objects[i] for i in question.about]

    def of(obj: D.Obj) -> list[int]:
        return [
            list(D.COLOURS).index(obj.colour) if obj.colour in D.COLOURS else IGNORE,  # D.UNNAMED
            D.SHAPES.index(obj.shape),
            list(D.SIZES).index(obj.size),
            obj.row,
            obj.col,
            IGNORE,
        ]

    kind = question.type
    if kind == "count":  # "How many circles are there?"
        return [(question.prompt.split()[2], [IGNORE] * 5 + [len(named)])]
    if kind == "colour_of_shape":
        return [(named[0].shape, of(named[0]))]
    if kind == "shape_of_colour":
        return [(named[0].colour, of(named[0]))]
    if kind in ("shape_at", "colour_at"):
        return [(D.position_name(named[0].row, named[0].col), of(named[0]))]
    if kind == "size":
        return [(f"{named[0].colour} {named[0].shape}", of(named[0]))]
    if kind == "left_of":
        return [(named[0].colour, of(named[0])), (named[1].colour, of(named[1]))]
    return []


def key_positions(
    tokenizer, prompt_ids: list[int], question: D.Question, objects
) -> list[tuple[int, list[int]]]:
    """(index in `prompt_ids` of the last token of each key phrase's last occurrence, targets)."""
    out = []
    for phrase, targets in key_phrases(question, objects):
        phrase_ids = tokenizer(" " + phrase, add_special_tokens=False).input_ids
        n = len(phrase_ids)
        hits = [j for j in range(len(prompt_ids) - n + 1) if prompt_ids[j : j + n] == phrase_ids]
        if hits:
            out.append((hits[-1] + n - 1, targets))
    return out


def grounding_loss(
    head: torch.nn.Module, hidden: torch.Tensor, keys: list[list[tuple[int, list[int]]]]
) -> torch.Tensor:
    """Mean cross-entropy of the head's predictions at every key token of the batch (`keys[b]` holds
    (position, targets) pairs of row b), averaged over the target kinds that apply."""
    rows = [b for b, row in enumerate(keys) for _ in row]
    if not rows:
        return hidden.sum() * 0
    positions = [p for row in keys for p, _ in row]
    targets = torch.tensor([t for row in keys for _, t in row])
    logits = torch.split(head(hidden[rows, positions]), TARGET_SIZES, dim=-1)
    losses = [
        F.cross_entropy(lg, targets[:, k], ignore_index=IGNORE)
        for k, lg in enumerate(logits)
        if (targets[:, k] != IGNORE).any()
    ]
    return torch.stack(losses).mean()
