"""Every bad input gives one clear line on stderr, a non-zero exit, no traceback and no output files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import invoke, run_cli

GOOD_PROMPT = "<image> What is shown?"


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def frames_folder(tmp: Path) -> Path:
    """A folder holding one frame image: read as a video."""
    from PIL import Image

    folder = tmp / "frames"
    folder.mkdir(exist_ok=True)
    Image.new("RGB", (8, 8)).save(folder / "0001.png")
    return folder


def bad_inputs(tmp: Path) -> dict[str, tuple[list[str], str]]:
    corrupt = tmp / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    good = '{"image": "skimage:astronaut", "prompt": "What is shown?"}'
    empty_folder = tmp / "empty"
    empty_folder.mkdir(exist_ok=True)
    two_slots = '{"image": "skimage:astronaut", "prompt": "<image> <image> Compare."}'
    return {
        "unknown model": (
            ["--model", "no-such-model", "--image", "skimage:astronaut", "--prompt", GOOD_PROMPT],
            "unknown model 'no-such-model'",
        ),
        "missing weights": (
            ["--model", "llava-v1.5-7b", "--image", "skimage:astronaut", "--prompt", GOOD_PROMPT],
            "weights for 'llava-hf/llava-1.5-7b-hf' are not available locally",
        ),
        "missing image": (
            ["--model", "tiny-llava", "--image", str(tmp / "nope.jpg"), "--prompt", GOOD_PROMPT],
            "image not found",
        ),
        "corrupt image": (
            ["--model", "tiny-llava", "--image", str(corrupt), "--prompt", GOOD_PROMPT],
            "cannot read image",
        ),
        "directory as image": (
            ["--model", "tiny-llava", "--image", str(empty_folder), "--prompt", GOOD_PROMPT],
            "is a directory, not an image file",
        ),
        "folder of frames for a still-image model": (
            ["--model", "tiny-llava", "--image", str(frames_folder(tmp)), "--prompt", GOOD_PROMPT],
            "is a folder of video frames; this model takes still images",
        ),
        "dataset slots do not match its images": (
            ["--model", "tiny-llava", "--dataset", str(write_jsonl(tmp / "slots.jsonl", [good, two_slots]))],
            "slots.jsonl line 2 has 2 <image> slot(s) but 1 image(s)",
        ),
        "more images than slots": (
            [
                "--model",
                "tiny-llava",
                "--image",
                "skimage:astronaut",
                "--image",
                "skimage:coffee",
                "--prompt",
                GOOD_PROMPT,
            ],
            "1 <image> slot(s) but 2 image(s)",
        ),
        "fewer images than slots": (
            ["--model", "tiny-llava", "--image", "skimage:astronaut", "--prompt", "<image> <image> Compare."],
            "2 <image> slot(s) but 1 image(s)",
        ),
        "empty dataset": (
            ["--model", "tiny-llava", "--dataset", str(write_jsonl(tmp / "empty.jsonl", [""]))],
            "is empty",
        ),
        "malformed jsonl": (
            ["--model", "tiny-llava", "--dataset", str(write_jsonl(tmp / "bad.jsonl", [good, "{not json"]))],
            "bad.jsonl line 2: malformed JSON",
        ),
        "unknown backend": (
            [
                "--model",
                "tiny-llava",
                "--image",
                "skimage:astronaut",
                "--prompt",
                GOOD_PROMPT,
                "--backend",
                "magic",
            ],
            "unknown backend 'magic'",
        ),
    }


CASES = list(bad_inputs(Path("/tmp")).keys())


@pytest.mark.parametrize("case", CASES)
def test_bad_input_one_line_error_no_traceback_no_files(case, tmp_path, capsys):
    args, message = bad_inputs(tmp_path)[case]
    out = tmp_path / "run"
    code, _, err = invoke(capsys, "attention", *args, "--out", str(out))
    assert code != 0
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and message in lines[0], lines[0]
    assert not out.exists()


def test_error_in_a_fresh_process_has_no_traceback(tmp_path):
    """The same guarantee end to end through a real interpreter (warnings and logging included)."""
    result = run_cli(
        "attention",
        "--model",
        "tiny-llava",
        "--image",
        "skimage:astronaut",
        "--prompt",
        "<image> <image> Compare.",
        "--out",
        str(tmp_path / "o"),
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: prompt has 2 <image> slot(s) but 1 image(s) were given"
    ]


def test_dataset_line_errors_name_the_line(tmp_path, capsys):
    dataset = write_jsonl(
        tmp_path / "d.jsonl",
        [
            json.dumps({"image": "skimage:astronaut", "prompt": "ok?"}),
            json.dumps({"image": "missing.png", "prompt": "ok?"}),
        ],
    )
    code, _, err = invoke(
        capsys, "attention", "--model", "tiny-llava", "--dataset", str(dataset), "--out", str(tmp_path / "o")
    )
    assert code != 0 and "d.jsonl line 2: image not found" in err
    assert not (tmp_path / "o").exists()
