"""The dataset files researchers already have, read into one record shape for `probe.inputs`.

Formats (chosen from the path; `read_dataset` turns records into validated samples):
- probe JSONL: `{"image" | "images", "prompt", "answer"?, "response"?, "id"?}` per line;
- LLaVA evaluation question files (`llava/eval/model_vqa_loader.py`): JSONL with `question_id`, `image`,
  `text` and optional `category`, images under `--image-folder` (default: the file's folder); gold
  answers in the line (`answer`, or POPE's `label`) or in `--answers FILE`: JSONL or a JSON list of
  `{question_id | questionId | id, answer | text | label}`, or a JSON object keyed by question id whose
  values are the answer or an object with `answer` (GQA's `testdev_balanced_questions.json`);
- MMBench TSV (`llava/eval/model_vqa_mmbench.py`): `index`, `question`, `hint`, options `A`..`D` (up to
  the first empty one), `answer` (the letter; dev split), `image` as base64 (or the `index` of the row
  holding it), `category`;
- a Hugging Face `datasets` directory written by `save_to_disk` (a Dataset, or a DatasetDict and
  `--split`): `--image-column` (an image feature or a path), `--question-column`, `--answer-column`,
  and for multiple choice `--choices-column` (one list column, or several columns, one option each).

Multiple choice (MMBench, choices columns, or a LLaVA question whose text already lists `A. ...` lines
and ends with LLaVA's instruction) is asked the LLaVA way: the question, one `A. option` line per
option, then "Answer with the option's letter from the given choices directly."; its gold answer is the
option's letter (given as the letter, the option's text or a 0-based index) and it is scored by letter.

Images stored inside a file (MMBench's base64, a `datasets` image feature) are named by a source string
(`tsv:FILE#INDEX`, `hf:DIR#SPLIT:ROW:COLUMN`) and decoded only when a sample is run.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from PIL import Image

from probe.errors import ProbeError

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
TSV_PREFIX = "tsv:"
HF_PREFIX = "hf:"
_OPTION_LINE = re.compile(r"^([A-Z])\. (.+)$", re.M)


@dataclass
class DatasetSource:
    """How to read a dataset that is not probe's own JSONL (the CLI's dataset options)."""

    answers: Path | None = None  # LLaVA question files: the gold answers, by question id
    image_folder: Path | None = None  # LLaVA question files, path columns: where relative image paths live
    image_column: str | None = None  # save_to_disk datasets [image]
    question_column: str | None = None  # [question]
    answer_column: str | None = None  # [answer]
    choices_columns: list[str] | None = None  # multiple choice: one list column or one column per option
    split: str | None = None  # a saved DatasetDict's split

    def describe(self, path: Path) -> dict:
        """For a manifest: the dataset's path and format, and the options that read it."""
        given = {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self).items() if v not in (None, [])
        }
        return {
            "path": str(Path(path).resolve()),
            "format": FORMAT_NAMES[dataset_format(Path(path))],
            **given,
        }

    def check_used(self, fmt: str) -> None:
        """Options a format does not read are an error, not silently ignored."""
        used = {
            "llava": {"answers", "image_folder"},
            "hf": {
                "image_folder",
                "image_column",
                "question_column",
                "answer_column",
                "choices_columns",
                "split",
            },
            "tsv": set(),
            "jsonl": set(),
        }[fmt]
        for name, value in vars(self).items():
            if value not in (None, []) and name not in used:
                option = "--" + name.replace("_", "-").replace("choices-columns", "choices-column")
                raise ProbeError(f"{option} does not apply to a {FORMAT_NAMES[fmt]}")


FORMAT_NAMES = {
    "jsonl": "probe JSONL dataset",
    "llava": "LLaVA question file",
    "tsv": "MMBench TSV",
    "hf": "save_to_disk dataset",
}


@dataclass
class Record:
    """One question as a format gives it; `where` names it in error messages."""

    where: str
    prompt: str
    images: list[str]
    sample_id: str
    answer: str | None = None
    response: str | None = None
    choices: list[str] | None = None  # multiple choice: the options, in letter order
    meta: dict = field(default_factory=dict)
    # the format never marks image slots (LLaVA's eval files put the image first): no note about placing them
    slotless_format: bool = True


def dataset_format(path: Path) -> str:
    """jsonl | llava | tsv | hf, from the path (and a JSONL's first line)."""
    if path.is_dir():
        if any((path / name).is_file() for name in ("dataset_info.json", "state.json", "dataset_dict.json")):
            return "hf"
        raise ProbeError(f"{path} is a directory but not a dataset saved with datasets' save_to_disk")
    if path.suffix.lower() == ".tsv":
        return "tsv"
    with path.open(encoding="utf-8") as fh:
        first = next((line for line in fh if line.strip()), "")
    try:
        record = json.loads(first) if first else {}
    except json.JSONDecodeError:
        return "jsonl"  # the JSONL reader reports the line
    is_llava = isinstance(record, dict) and "question_id" in record and "text" in record
    return "llava" if is_llava and "prompt" not in record else "jsonl"


def dataset_records(path: Path, source: DatasetSource) -> Iterator[Record]:
    fmt = dataset_format(path)
    source.check_used(fmt)
    readers = {"jsonl": probe_jsonl, "llava": llava_questions, "tsv": mmbench_tsv, "hf": saved_dataset}
    return readers[fmt](path, source)


def multiple_choice_prompt(question: str, choices: list[str], hint: str | None = None) -> str:
    """LLaVA's multiple-choice prompt (model_vqa_mmbench.py with --single-pred-prompt)."""
    text = f"{hint}\n{question}" if hint else question
    for letter, option in zip(LETTERS, choices, strict=False):
        text += f"\n{letter}. {option}"
    return f"{text}\n{MC_INSTRUCTION}"


def gold_letter(answer, choices: list[str], where: str) -> str:
    """The gold option's letter, from a letter (any case), the option's text, or a 0-based index."""
    if isinstance(answer, int) and not isinstance(answer, bool):
        if 0 <= answer < len(choices):
            return LETTERS[answer]
        raise ProbeError(f"{where}: answer index {answer} is not one of the {len(choices)} options")
    text = str(answer).strip()
    letter = text.rstrip(".").strip("()").upper()
    if len(letter) == 1 and letter in LETTERS[: len(choices)]:
        return letter
    matches = [k for k, option in enumerate(choices) if option.strip().lower() == text.lower()]
    if len(matches) == 1:
        return LETTERS[matches[0]]
    if text.isdigit() and int(text) < len(choices):
        return LETTERS[int(text)]
    raise ProbeError(
        f"{where}: answer '{text}' is neither an option letter (A-{LETTERS[len(choices) - 1]}) nor an option"
    )


def _is_missing(value) -> bool:
    """Empty cells as pandas / datasets / LLaVA write them (None, NaN, '', 'nan', 'none')."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    return isinstance(value, str) and value.strip().lower() in ("", "nan", "none")


def _resolve(image: str, folder: Path) -> str:
    if image.startswith("skimage:") or Path(image).is_absolute():
        return image
    return str(folder / image)


def _text(value) -> str | None:
    return None if value is None else str(value)


# --- probe JSONL -----------------------------------------------------------------------------------
def _json_lines(path: Path) -> Iterator[tuple[str, dict]]:
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path.name} line {lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ProbeError(f"{where}: malformed JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise ProbeError(f"{where}: expected a JSON object")
            yield where, record


def probe_jsonl(path: Path, source: DatasetSource) -> Iterator[Record]:
    for k, (where, record) in enumerate(_json_lines(path)):
        images = record.get("images", record.get("image"))
        if isinstance(images, str):
            images = [images]
        if not images or not isinstance(images, list) or not all(isinstance(i, str) for i in images):
            raise ProbeError(f"{where}: needs 'image' (a path) or 'images' (a list of paths)")
        prompt = record.get("prompt", record.get("question"))
        if not isinstance(prompt, str) or not prompt.strip():
            raise ProbeError(f"{where}: needs a non-empty 'prompt'")
        yield Record(
            where=where,
            prompt=prompt,
            images=[_resolve(i, path.parent) for i in images],
            sample_id=str(record.get("id", k)),
            answer=_text(record.get("answer")),
            response=_text(record.get("response")),
            slotless_format=False,
            meta={
                k: v
                for k, v in record.items()
                if k not in {"image", "images", "prompt", "question", "response"}
            },
        )


# --- LLaVA evaluation question files ---------------------------------------------------------------
ANSWER_ID_KEYS = ("question_id", "questionId", "id")
ANSWER_KEYS = ("answer", "text", "label")


def read_answers(path: Path) -> dict[str, str]:
    """Gold answers by question id (see the module docstring for the layouts read)."""
    if not path.is_file():
        raise ProbeError(f"answers file not found: {path}")
    data = None
    if path.suffix.lower() != ".jsonl":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            pass  # JSON lines under another name
    entries = data if isinstance(data, list) else None
    if isinstance(data, dict) and any(k in data for k in ANSWER_ID_KEYS):
        entries = [data]  # a one-line JSONL file
    if (
        isinstance(data, dict) and entries is None
    ):  # {question id: answer | {"answer": ...}} (GQA's questions file)
        answers = {}
        for qid, value in data.items():
            value = value.get("answer") if isinstance(value, dict) else value
            if value is None or isinstance(value, (list, dict)):
                raise ProbeError(f"{path.name}: question '{qid}' has no single 'answer'")
            answers[str(qid)] = str(value)
        return answers
    lines = (
        [(f"{path.name} item {k + 1}", e) for k, e in enumerate(entries)]
        if entries is not None
        else list(_json_lines(path))
    )
    answers = {}
    for where, entry in lines:
        if not isinstance(entry, dict):
            raise ProbeError(f"{where}: expected a JSON object")
        qid = next((entry[k] for k in ANSWER_ID_KEYS if k in entry), None)
        value = next((entry[k] for k in ANSWER_KEYS if k in entry), None)
        if qid is None or value is None or isinstance(value, (list, dict)):
            raise ProbeError(
                f"{where}: needs a question id ({' / '.join(ANSWER_ID_KEYS)}) and one answer "
                f"({' / '.join(ANSWER_KEYS)})"
            )
        answers[str(qid)] = str(value)
    return answers


def listed_choices(text: str) -> list[str] | None:
    """The options of a question that already lists them the LLaVA way (`A. ...` lines + the instruction)."""
    if MC_INSTRUCTION not in text:
        return None
    found = _OPTION_LINE.findall(text)
    letters = [letter for letter, _ in found]
    return [option for _, option in found] if letters == list(LETTERS[: len(letters)]) and found else None


def llava_questions(path: Path, source: DatasetSource) -> Iterator[Record]:
    answers = read_answers(Path(source.answers)) if source.answers is not None else None
    folder = Path(source.image_folder) if source.image_folder is not None else path.parent
    if not folder.is_dir():
        raise ProbeError(f"--image-folder {folder} is not a directory")
    for where, record in _json_lines(path):
        qid, image, text = record.get("question_id"), record.get("image"), record.get("text")
        if qid is None or not isinstance(image, str) or not isinstance(text, str) or not text.strip():
            raise ProbeError(f"{where}: a LLaVA question needs 'question_id', 'image' (a path) and 'text'")
        answer = record.get("answer", record.get("label"))
        if answers is not None:
            if str(qid) not in answers:
                raise ProbeError(f"{where}: question_id {qid} has no answer in {Path(source.answers).name}")
            answer = answers[str(qid)]
        choices = listed_choices(text)
        if choices is not None and answer is not None:
            answer = gold_letter(answer, choices, where)
        meta = {"question_id": qid}
        if record.get("category") is not None:
            meta["category"] = record["category"]
        yield Record(
            where=where,
            prompt=text,
            images=[_resolve(image, folder)],
            sample_id=str(qid),
            answer=_text(answer),
            choices=choices,
            meta=meta,
        )


# --- MMBench TSV -----------------------------------------------------------------------------------
@lru_cache(maxsize=2)
def _tsv_table(path: str):
    import pandas as pd

    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ProbeError(f"cannot read {Path(path).name} as a TSV ({exc.__class__.__name__})") from None
    return table


def _tsv_images(path: str) -> dict[str, str]:
    table = _tsv_table(path)
    return dict(zip(table["index"], table["image"], strict=True))


def mmbench_tsv(path: Path, source: DatasetSource) -> Iterator[Record]:
    table = _tsv_table(str(path.resolve()))
    missing = [c for c in ("index", "question", "image", "A", "B") if c not in table.columns]
    if missing:
        raise ProbeError(f"{path.name}: an MMBench TSV needs the column(s) {', '.join(missing)}")
    letters = [c for c in LETTERS if c in table.columns]
    for row_number, row in enumerate(table.to_dict("records"), start=2):  # line 1 is the header
        where = f"{path.name} line {row_number}"
        choices = []
        for letter in letters:  # up to the first empty option, as LLaVA's get_options
            if _is_missing(row[letter]):
                break
            choices.append(row[letter])
        if len(choices) < 2:
            raise ProbeError(f"{where}: fewer than two options")
        hint = None if _is_missing(row.get("hint")) else row["hint"]
        answer = None if _is_missing(row.get("answer")) else gold_letter(row["answer"], choices, where)
        meta = {"index": row["index"]}
        for key in ("category", "l2-category", "split"):
            if not _is_missing(row.get(key)):
                meta[key] = row[key]
        yield Record(
            where=where,
            prompt=multiple_choice_prompt(row["question"], choices, hint),
            images=[f"{TSV_PREFIX}{path.resolve()}#{row['index']}"],
            sample_id=str(row["index"]),
            answer=answer,
            choices=choices,
            meta=meta,
        )


def _tsv_image(source: str) -> Image.Image:
    path, _, index = source[len(TSV_PREFIX) :].rpartition("#")
    images = _tsv_images(path)
    data = images.get(index)
    if data is not None and len(data) <= 64 and data in images:  # a row that reuses another row's image
        data = images[data]
    if not data:
        raise ProbeError(f"{Path(path).name} row {index}: no image")
    try:
        return Image.open(io.BytesIO(base64.b64decode(data)))
    except (ValueError, OSError) as exc:
        raise ProbeError(
            f"{Path(path).name} row {index}: image is not base64 ({exc.__class__.__name__})"
        ) from None


# --- datasets saved with save_to_disk --------------------------------------------------------------
def _require_datasets():
    try:
        import datasets
    except ImportError:
        raise ProbeError(
            "reading a save_to_disk dataset needs the `datasets` package: pip install 'probe-vlm[datasets]'"
        ) from None
    return datasets


@lru_cache(maxsize=4)
def _load_saved(path: str, split: str | None):
    datasets = _require_datasets()
    try:
        loaded = datasets.load_from_disk(path)
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise ProbeError(f"cannot load {path} with datasets.load_from_disk: {exc}") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split is None or split not in loaded:
            raise ProbeError(
                f"{path} holds the splits {', '.join(loaded)}: choose one with --split"
                + ("" if split is None else f" ('{split}' is not one of them)")
            )
        return loaded[split]
    if split is not None:
        raise ProbeError(f"--split {split}: {path} holds one dataset, not a DatasetDict")
    return loaded


ID_COLUMNS = ("question_id", "id", "index")  # a saved dataset's sample ids (else the row number)


def saved_dataset(path: Path, source: DatasetSource) -> Iterator[Record]:
    datasets = _require_datasets()
    table = _load_saved(str(path.resolve()), source.split)
    image_col = source.image_column or "image"
    question_col = source.question_column or "question"
    answer_col = source.answer_column or "answer"
    choice_cols = list(source.choices_columns or [])
    wanted = [
        ("--image-column", image_col),
        ("--question-column", question_col),
        *[("--choices-column", c) for c in choice_cols],
    ]
    if source.answer_column is not None:
        wanted.append(("--answer-column", answer_col))
    for option, column in wanted:
        if column not in table.column_names:
            raise ProbeError(
                f"{path.name} has no column '{column}' ({option}); its columns: {', '.join(table.column_names)}"
            )
    image_feature = table.features[image_col]
    embedded = isinstance(image_feature, datasets.Image)
    if not embedded and getattr(image_feature, "dtype", None) != "string":
        raise ProbeError(f"{path.name}: column '{image_col}' holds neither images nor image paths")
    folder = Path(source.image_folder) if source.image_folder is not None else path
    list_choices = len(choice_cols) == 1 and not isinstance(table.features[choice_cols[0]], datasets.Value)
    # read the text columns only: images are decoded one sample at a time (see load_image)
    id_col = next((c for c in ID_COLUMNS if c in table.column_names), None)
    text_cols = [c for c in (id_col, question_col, answer_col, *choice_cols) if c in table.column_names]
    rows = table.select_columns(text_cols + ([] if embedded else [image_col]))
    for k, row in enumerate(rows):
        where = f"{path.name} row {k}"
        question = row[question_col]
        if not isinstance(question, str) or not question.strip():
            raise ProbeError(f"{where}: empty question in column '{question_col}'")
        choices = None
        if choice_cols:
            values = row[choice_cols[0]] if list_choices else [row[c] for c in choice_cols]
            choices = []
            for value in values or []:
                if _is_missing(value):
                    break
                choices.append(str(value))
            if len(choices) < 2:
                raise ProbeError(f"{where}: fewer than two options in {', '.join(choice_cols)}")
        answer = row.get(answer_col)
        if _is_missing(answer):
            answer = None
        elif choices is not None:
            answer = gold_letter(answer, choices, where)
        if embedded:
            image = f"{HF_PREFIX}{path.resolve()}#{source.split or ''}:{k}:{image_col}"
        else:
            if _is_missing(row[image_col]):
                raise ProbeError(f"{where}: no image path in column '{image_col}'")
            image = _resolve(row[image_col], folder)
        yield Record(
            where=where,
            prompt=multiple_choice_prompt(question, choices) if choices else question,
            images=[image],
            sample_id=str(row[id_col]) if id_col else str(k),
            answer=_text(answer),
            choices=choices,
            meta={"row": k},
        )


def _hf_image(source: str) -> Image.Image:
    path, _, address = source[len(HF_PREFIX) :].rpartition("#")
    split, row, column = address.split(":", 2)
    table = _load_saved(path, split or None)
    image = table.select_columns([column])[int(row)][column]
    if image is None:
        raise ProbeError(f"{Path(path).name} row {row}: no image in column '{column}'")
    return image


def is_embedded(source: str) -> bool:
    return source.startswith((TSV_PREFIX, HF_PREFIX))


def embedded_image(source: str) -> Image.Image:
    """An image stored inside a dataset file (an MMBench TSV, a save_to_disk dataset), undecoded PIL."""
    return _tsv_image(source) if source.startswith(TSV_PREFIX) else _hf_image(source)
