"""One rule for `<image>` slots in `--prompt` and in dataset prompts: no slot means the images go before
the text (LLaVA convention) with one note line; a slot count that differs from the image count is an
error in both. And a directory given as an image gets the right message."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from tests.conftest import invoke

QUESTION = "What is shown?"


def attention_run(capsys, out: Path, *args: str) -> tuple[pd.DataFrame, str]:
    code, _, err = invoke(capsys, "attention", "--model", "tiny-llava", *args, "--out", str(out))
    assert code == 0, err
    return pd.read_csv(out / "attention.csv"), err


def notes(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("note:")]


def test_prompt_without_slot_is_the_llava_layout_in_both_paths(tmp_path, capsys):
    """`What is shown?` means `<image>\\nWhat is shown?` (the layout LLaVA was trained on), whether it comes
    from --prompt or from a dataset line; the user is told so once."""
    image = ["--image", "skimage:astronaut"]
    explicit, err = attention_run(capsys, tmp_path / "explicit", *image, "--prompt", f"<image>\n{QUESTION}")
    assert notes(err) == []
    bare, err = attention_run(capsys, tmp_path / "bare", *image, "--prompt", QUESTION)
    assert len(notes(err)) == 1 and "<image>" in notes(err)[0]

    dataset = tmp_path / "d.jsonl"
    dataset.write_text(
        "".join(json.dumps({"image": "skimage:astronaut", "prompt": QUESTION}) + "\n" for _ in range(2))
    )
    from_dataset, err = attention_run(capsys, tmp_path / "dataset", "--dataset", str(dataset))
    assert len(notes(err)) == 1 and "2 of 2 prompts" in notes(err)[0]  # once, not once per line

    columns = ["stage", "layer", "tgt", "src", "mass", "entropy"]
    assert explicit["mass"].max() > 0
    pd.testing.assert_frame_equal(bare[columns], explicit[columns])
    first = from_dataset[from_dataset["sample"].astype(str) == "0"].reset_index(drop=True)
    pd.testing.assert_frame_equal(first[columns], explicit[columns])


def test_image_dot_names_the_directory(tmp_path, capsys, monkeypatch):
    """`--image .` in a folder without frames: not an image, and not "a video" either."""
    monkeypatch.chdir(tmp_path)
    code, _, err = invoke(
        capsys, "attention", "--model", "tiny-llava", "--image", ".", "--prompt", QUESTION, "--out", "o"
    )
    assert code == 2
    assert err.strip().startswith("error: . is a directory, not an image file"), err
    assert "video" not in err.split("(")[0]
    assert not (tmp_path / "o").exists()
