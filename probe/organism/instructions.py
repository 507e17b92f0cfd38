"""Instruction-heavy conversations for the `organism-llava-instruct` variant (issue 15).

The paper's deep-layer finding (over 80 % of attention on the instruction) belongs to a model whose
answers depend on the instruction text. organism-llava's do not much: every question is one short
template. This variant's training makes the text matter in four ways, all within the organism's
vocabulary of answers (its tokenizer is the base's):
  - longer, varied wording: the image question is wrapped in one of several preambles and answer-format
    requests;
  - text-only questions whose answer is in the instruction alone ("Is square a colour?", "Say the word
    blue.", "What number comes after two?");
  - conditional instructions whose answer needs both ("What colour is the star? If it is red, answer
    yes; otherwise answer no.");
  - two-word answers ("What colour and shape is the object in the top left?" -> "red circle").
"""

from __future__ import annotations

import numpy as np

from probe.organism import data as D

PREAMBLES = (
    "",
    "Look at the image. ",
    "Here is a picture of some flat shapes. ",
    "Please look carefully at the shapes in the picture before you answer. ",
    "I am going to ask you about this image. ",
)
ANSWER_FORMATS = ("", " Answer with one word.", " Reply with a single word.", " Give a short answer.")
TEXT_ONLY_TYPES = ("is_colour", "is_shape", "say_word", "next_number")


def _text_only(rng: np.random.Generator) -> D.Question:
    kind = TEXT_ONLY_TYPES[int(rng.integers(len(TEXT_ONLY_TYPES)))]
    colours, shapes = list(D.COLOURS), list(D.SHAPES)
    if kind in ("is_colour", "is_shape"):
        word = str(rng.choice(colours + shapes))
        asked = "colour" if kind == "is_colour" else "shape"
        answer = "yes" if (word in colours) == (asked == "colour") else "no"
        return D.Question(kind, f"Is {word} a {asked}?", answer)
    if kind == "say_word":
        word = str(rng.choice(colours + shapes + list(D.NUMBERS)))
        return D.Question(kind, f"Ignore the picture and say the word {word}.", word)
    n = int(rng.integers(len(D.NUMBERS) - 1))
    return D.Question(kind, f"What number comes after {D.NUMBERS[n]}?", D.NUMBERS[n + 1])


def _conditional(rng: np.random.Generator, objects) -> D.Question | None:
    """Colour of a uniquely shaped object, compared with a colour the instruction names."""
    unique = [o for o in objects if sum(p.shape == o.shape for p in objects) == 1]
    if not unique:
        return None
    obj = unique[int(rng.integers(len(unique)))]
    named = obj.colour if rng.random() < 0.5 else str(rng.choice(list(D.COLOURS)))
    answer = "yes" if named == obj.colour else "no"
    prompt = f"What colour is the {obj.shape}? If it is {named}, answer yes; otherwise answer no."
    return D.Question("conditional", prompt, answer)


def _two_words(rng: np.random.Generator, objects) -> D.Question:
    obj = objects[int(rng.integers(len(objects)))]
    where = D.position_name(obj.row, obj.col)
    return D.Question(
        "colour_and_shape",
        f"What colour and shape is the object in the {where}?",
        f"{obj.colour} {obj.shape}",
    )


def instruction_questions(rng: np.random.Generator, objects, k: int) -> list[D.Question]:
    """k questions for one conversation: about half the usual image questions in varied wording, the rest
    text-only, conditional or two-word ones."""
    base = D.sample_questions(rng, objects, k)
    out: list[D.Question] = []
    for question in base:
        roll = rng.random()
        if roll < 0.5:
            preamble = PREAMBLES[int(rng.integers(len(PREAMBLES)))]
            fmt = ANSWER_FORMATS[int(rng.integers(len(ANSWER_FORMATS)))]
            out.append(D.Question(question.type, preamble + question.prompt + fmt, question.answer))
        elif roll < 0.7:
            out.append(_text_only(rng))
        elif roll < 0.85:
            out.append(_conditional(rng, objects) or question)
        else:
            out.append(_two_words(rng, objects))
    seen: set[str] = set()
    return [q for q in out if not (q.prompt in seen or seen.add(q.prompt))]
