"""`--dataset` reads what researchers already have: LLaVA's evaluation question files (+ answers file),
MMBench TSVs and `datasets` directories written by `save_to_disk`. Fixtures are built here, by hand; the
expected samples are written out literally, and scoring is checked on hand-written answers."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from probe.dataset_formats import DatasetSource
from probe.errors import ProbeError
from probe.inputs import load_image, read_dataset
from probe.interventions.metrics import is_correct, predicted_letter, scoring_description
from tests.conftest import invoke

MC = "Answer with the option's letter from the given choices directly."
COLOURS = {"red": (220, 20, 20), "blue": (20, 20, 220), "green": (20, 200, 20)}


def picture(colour: str) -> Image.Image:
    """A 40 x 30 picture, one colour with a white corner, so a wrong / rotated decode shows."""
    array = np.zeros((30, 40, 3), dtype=np.uint8)
    array[:] = COLOURS[colour]
    array[:5, :5] = 255
    return Image.fromarray(array)


def png_bytes(colour: str) -> bytes:
    buffer = io.BytesIO()
    picture(colour).save(buffer, format="PNG")
    return buffer.getvalue()


def same_pixels(source: str, colour: str) -> bool:
    return np.array_equal(np.asarray(load_image(source)), np.asarray(picture(colour)))


def write_lines(path, lines) -> None:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


@pytest.fixture
def llava_files(tmp_path):
    """A GQA-like question file, its images in another folder, and gold answers in two layouts."""
    images = tmp_path / "images"
    images.mkdir()
    for colour in COLOURS:
        picture(colour).save(images / f"{colour}.png")
    questions = tmp_path / "llava_gqa_testdev_balanced.jsonl"
    write_lines(
        questions,
        [
            {"question_id": "q1", "image": "red.png", "text": "What colour?\nAnswer the question using a single "
             "word or phrase.", "category": "colour"},
            {"question_id": 202, "image": "blue.png", "text": "Which colour is it?\nA. red\nB. blue\n" + MC},
        ],
    )  # fmt: skip
    jsonl_answers = tmp_path / "answers.jsonl"
    write_lines(jsonl_answers, [{"question_id": "q1", "text": "Red"}, {"question_id": 202, "answer": "blue"}])
    gqa_answers = tmp_path / "testdev_balanced_questions.json"
    gqa_answers.write_text(
        json.dumps({"q1": {"answer": "red", "imageId": "x"}, "202": {"answer": "B", "imageId": "y"}})
    )
    return questions, images, jsonl_answers, gqa_answers


def test_llava_question_file_with_answers_file(llava_files):
    questions, images, jsonl_answers, gqa_answers = llava_files
    for answers in (jsonl_answers, gqa_answers):
        samples = read_dataset(questions, source=DatasetSource(answers=answers, image_folder=images))
        first, second = samples
        assert first.sample_id == "q1"
        assert first.prompt == "<image>\nWhat colour?\nAnswer the question using a single word or phrase."
        assert first.image_sources == [str(images / "red.png")]
        assert first.answer.lower() == "red" and first.choices is None and first.scoring == "exact match"
        assert first.meta["category"] == "colour"
        # a question that lists its options the LLaVA way is multiple choice; 'blue' is option B
        assert second.sample_id == "202" and second.choices == ["red", "blue"] and second.answer == "B"
        assert second.scoring == "option letter"
        assert same_pixels(second.image_sources[0], "blue")


def test_mmbench_tsv(tmp_path):
    rows = [
        {"index": 10, "question": "What colour is the picture?", "hint": "Look closely.", "A": "red",
         "B": "blue", "C": "green", "D": "", "answer": "C", "category": "colour", "image": "placeholder"},
        {"index": 11, "question": "Is it blue?", "hint": "nan", "A": "yes", "B": "no", "C": "", "D": "",
         "answer": "B", "category": "yes_no", "image": "10"},  # MMBench's reuse of another row's image
    ]  # fmt: skip
    rows[0]["image"] = base64.b64encode(png_bytes("green")).decode()
    path = tmp_path / "mmbench_dev_20230712.tsv"
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
    first, second = read_dataset(path)
    assert first.prompt == (
        "<image>\nLook closely.\nWhat colour is the picture?\nA. red\nB. blue\nC. green\n" + MC
    )
    assert first.choices == ["red", "blue", "green"] and first.answer == "C" and first.sample_id == "10"
    assert second.prompt == "<image>\nIs it blue?\nA. yes\nB. no\n" + MC and second.answer == "B"
    assert same_pixels(first.image_sources[0], "green") and same_pixels(second.image_sources[0], "green")


def test_save_to_disk_dataset_with_named_columns(tmp_path):
    datasets = pytest.importorskip("datasets")
    table = datasets.Dataset.from_dict(
        {
            "picture": [picture("red"), picture("blue")],
            "query": ["Which colour?", "Name the colour."],
            "options": [["green", "red"], ["blue", "red"]],
            "label": [1, 0],  # 0-based option indices (ScienceQA's layout)
        }
    ).cast_column("picture", datasets.Image())
    datasets.DatasetDict({"test": table}).save_to_disk(str(tmp_path / "ds"))
    source = DatasetSource(
        image_column="picture", question_column="query", answer_column="label", choices_columns=["options"],
        split="test",
    )  # fmt: skip
    first, second = read_dataset(tmp_path / "ds", source=source)
    assert first.prompt == "<image>\nWhich colour?\nA. green\nB. red\n" + MC and first.answer == "B"
    assert second.prompt == "<image>\nName the colour.\nA. blue\nB. red\n" + MC and second.answer == "A"
    assert same_pixels(first.image_sources[0], "red") and same_pixels(second.image_sources[0], "blue")
    # short answers, default column names, one Dataset (no split)
    plain = datasets.Dataset.from_dict(
        {"image": [picture("green")], "question": ["What colour?"], "answer": ["green"]}
    ).cast_column("image", datasets.Image())
    plain.save_to_disk(str(tmp_path / "plain"))
    (only,) = read_dataset(tmp_path / "plain")
    assert only.prompt == "<image>\nWhat colour?" and only.answer == "green" and only.choices is None
    assert same_pixels(only.image_sources[0], "green")


@pytest.mark.parametrize(
    "generated, letter",
    [("(B)", "B"), ("b.", "B"), ("B) red", "B"), ("B", "B"), ("[C]", "C"), ("The answer is C.", "C"),
     ("Answer: a", "A"), ("green", "C"), ("The Green.", "C"), ("E", None), ("Blue sky", None), ("", None)],
)  # fmt: skip
def test_option_letter_of_generated_answers(generated, letter):
    assert predicted_letter(generated, ["red", "blue", "green", "white"]) == letter


def test_correct_by_letter_or_by_normalised_text():
    assert is_correct("(B) blue", "B", ["red", "blue"]) and not is_correct("A.", "B", ["red", "blue"])
    assert is_correct("The red.", "red") and not is_correct("B", "red")
    assert scoring_description(["exact match", "exact match"]).startswith("normalised exact match")
    assert scoring_description(["option letter"]).startswith("option letter")
    assert scoring_description(["option letter", "exact match"]).startswith("mixed, per sample")


def test_bad_datasets_are_one_line_before_any_work(tmp_path, llava_files, capsys):
    questions, images, jsonl_answers, _ = llava_files
    partial = tmp_path / "partial.jsonl"
    write_lines(partial, [{"question_id": "q1", "answer": "red"}])  # no answer for 202
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"image": [picture("red")], "prompt": ["What?"]}).cast_column(
        "image", datasets.Image()
    ).save_to_disk(str(tmp_path / "ds"))
    cases = [
        (["--dataset", str(questions), "--answers", str(partial), "--image-folder", str(images)],
         "question_id 202 has no answer in partial.jsonl"),
        (["--dataset", str(tmp_path / "ds")], "has no column 'question' (--question-column)"),
        (["--dataset", str(tmp_path / "ds"), "--question-column", "prompt", "--answer-column", "gold"],
         "has no column 'gold' (--answer-column)"),
        (["--dataset", str(tmp_path / "ds"), "--question-column", "prompt"], "has no gold 'answer' for sample '0'"),
        (["--dataset", str(tmp_path / "ds"), "--answers", str(partial)], "--answers does not apply"),
    ]  # fmt: skip
    capsys.readouterr()  # save_to_disk's progress bar
    for args, message in cases:
        out = tmp_path / "run"
        code, _, err = invoke(
            capsys, "drop", "--model", "organism-llava", *args, "--layers", "0", "--out", str(out)
        )
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (args, err)
        assert not out.exists()
    with pytest.raises(ProbeError, match="question_id 202 has no answer"):
        read_dataset(questions, source=DatasetSource(answers=partial, image_folder=images))


def test_drop_on_mmbench_scores_by_letter(tmp_path, capsys, probe_home):
    rows = [
        {"index": k, "question": "What colour is the shape?", "hint": "", "A": "red", "B": "blue",
         "answer": "AB"[k], "image": base64.b64encode(png_bytes(["red", "blue"][k])).decode()}
        for k in range(2)
    ]  # fmt: skip
    path = tmp_path / "mmbench.tsv"
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
    out = tmp_path / "run"
    code, _, err = invoke(
        capsys, "drop", "--model", "organism-llava", "--dataset", str(path), "--layers", "0-5",
        "--max-new-tokens", "2", "--out", str(out), "--device", "cpu",
    )  # fmt: skip
    assert code == 0, err
    results = pd.read_parquet(out / "results.parquet")
    assert (results["scoring"] == "option letter").all() and set(results["answer"]) == {"A", "B"}
    for row in results.itertuples():  # 'correct' is the letter rule applied to what was generated
        assert row.correct == (predicted_letter(row.generated, ["red", "blue"]) == row.answer)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["scoring"].startswith("option letter")
    assert manifest["dataset"]["format"] == "MMBench TSV"
