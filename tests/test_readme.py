"""Every example in README.md runs as written on the built-in models.

The README's ```bash and ```python blocks and its inline `analyses.…(…)` calls run in README order in one
scratch directory (the quick start's `runs/demo` is what the later redraw example reads). The files a
reader brings (photo.jpg, a.png, b.png, clip.mp4, questions.jsonl) are created there first. Only these
changes are made, each listed below with its reason; every one must still match the README, so an edited
README cannot silently stop being tested. Commands that set up the environment or are the suite itself
are not run (SKIPPED). Any other command the test does not understand fails it.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from tests.conftest import REPO, invoke

README = REPO / "README.md"

# (README text, what runs instead, why): SUBSTITUTED, plainly.
SUBSTITUTIONS = [
    # (the run keeps the directory the real model would have written: runs/llava-v1.5-7b-attention)
    ("--model llava-v1.5-7b", "--model tiny-llava --out runs/llava-v1.5-7b-attention", "a 14 GB download"),
    ("--model /path/to/local/llava", "--model {tiny_llava_dir}", "a reader's own downloaded model"),
    ("--n-test 24", "--n-test 1", "speed: 1 test image (2 questions) instead of 24"),
    ("--generate 32", "--generate 4", "speed"),
    ("--generate 16", "--generate 4", "speed"),
    ("--limit 100", "--limit 2", "speed"),
    ("--config sweep.yaml", "--config sweep-tiny.yaml", "speed: one 2-step cell on tiny-llava, 2 questions"),
    ("--out runs/paper ", "--out runs/paper --samples 1 --max-new-tokens 2 ", "speed"),
    (
        "--split test [--blank-image]",
        "--split test --blank-image --limit 2",
        "optional flag shown in []; speed",
    ),
]
# Commands not run, by how they start: setting up the environment this test runs in, or the suite itself.
SKIPPED = (
    "python3 -m venv",
    ".venv/bin/pip install",
    ".venv/bin/ruff",
    ".venv/bin/python -m pytest",
    "bash .ci/",  # builds fresh venvs from the newest / oldest releases: needs the network
)
PROBE = ("probe ", ".venv/bin/probe ")


def readme_examples(text: str) -> list[tuple[str, str]]:
    """[(kind, code)] in README order: kind is 'bash', 'python' or 'inline' (a one-line python call)."""
    found = [
        (m.start(), m.group(1), m.group(2)) for m in re.finditer(r"```(bash|python)\n(.*?)```", text, re.S)
    ]
    fenced = [(m.start(), m.end()) for m in re.finditer(r"```.*?```", text, re.S)]
    for m in re.finditer(r"(?<!`)`(analyses\.[^`\n]+\))`(?!`)", text):
        if not any(a <= m.start() < b for a, b in fenced):
            found.append((m.start(), "inline", m.group(1)))
    return [(kind, code) for _, kind, code in sorted(found)]


def bash_commands(block: str, values: dict, used: set) -> list[list[str]]:
    """Argument lists, one per command (comments dropped, lines and `&&` chains split), substituted."""
    commands: list[list[str]] = []
    for line in block.replace("\\\n", " ").splitlines():
        for old, new, _ in SUBSTITUTIONS:
            if old in line:
                line = line.replace(old, new.format(**values))
                used.add(old)
        current: list[str] = []
        for token in shlex.split(line, comments=True) + ["&&"]:
            if token == "&&":
                if current:
                    commands.append(current)
                current = []
            else:
                current.append(token)
    return commands


def write_reader_files(cwd: Path) -> None:
    """The files the README's examples assume the reader has."""
    import av

    Image.fromarray(np.asarray(Image.new("RGB", (400, 300), (200, 40, 40)))).save(cwd / "photo.jpg")
    Image.new("RGB", (336, 336), (30, 90, 200)).save(cwd / "a.png")
    Image.new("RGB", (300, 200), (240, 220, 40)).save(cwd / "b.png")
    with av.open(str(cwd / "clip.mp4"), "w") as container:  # 2 s at 4 fps -> 2 frames at 1 fps
        stream = container.add_stream("mpeg4", rate=4)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for k in range(8):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 25 * k, dtype=np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    lines = [
        {"id": "q1", "image": "a.png", "prompt": "<image> What colour is it?", "answer": "blue"},
        {"id": "q2", "image": "b.png", "prompt": "What colour is it?", "answer": "yellow"},
        {"id": "q3", "image": "skimage:coffee", "prompt": "<image> What drink?", "answer": "coffee"},
    ]
    (cwd / "questions.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    sweep = {
        "base": "tiny-llava",
        "dataset": {"train": "questions.jsonl", "eval": "questions.jsonl"},
        "grid": {"compressor_size": [1], "prefusion_layers": [1], "kind": ["query"]},
        "train": {"steps": 2, "batch_size": 2, "warmup": 1},
        "eval": {"limit": 2, "attention_limit": 1, "latency_samples": 1, "max_new_tokens": 2},
    }
    (cwd / "sweep-tiny.yaml").write_text(json.dumps(sweep))  # JSON is YAML


def test_every_readme_example_runs(tmp_path, capsys, monkeypatch, tiny_llava):
    monkeypatch.chdir(tmp_path)
    write_reader_files(tmp_path)
    values = {"tiny_llava_dir": tiny_llava.source}
    used = set()
    ran = []
    for kind, code in readme_examples(README.read_text()):
        if kind in ("python", "inline"):
            source = code if kind == "python" else f"import analyses.attention_maps\n{code}\n"
            exec(compile(source, f"README.md ({kind})", "exec"), {"__name__": "readme"})
            plt.close("all")
            ran.append(code.strip().splitlines()[0])
            continue
        for args in bash_commands(code, values, used):
            command = shlex.join(args)
            if command.startswith(SKIPPED):
                continue
            assert command.startswith(PROBE), f"README command the test does not know how to run: {command}"
            exit_code, _, err = invoke(capsys, *args[1:])
            assert exit_code == 0, f"README example failed: {command}\n{err}"
            ran.append(command)
    assert used == {old for old, _, _ in SUBSTITUTIONS}, "a substitution no longer matches the README"
    assert any("plot_run_grid" in r for r in ran) and any(
        "probe.attention(" in r or "import probe" in r for r in ran
    )
    assert (tmp_path / "runs" / "demo" / "manifest.json").is_file()
