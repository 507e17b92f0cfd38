"""Shared fixtures. Tests never touch the network: the hub is forced offline and built-in models are
materialised into a per-session PROBE_HOME, exercising the same save -> from_pretrained path as a
user's download."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def probe_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("probe_home")
    os.environ["PROBE_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def tiny_llava(probe_home):
    import probe

    return probe.load("tiny-llava", device="cpu")


@pytest.fixture(scope="session")
def tiny_llava_next(probe_home):
    import probe

    return probe.load("tiny-llava-next", device="cpu")


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `probe ...` in a fresh interpreter, as a user would."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", "from probe.cli import main; main()", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
    )


def invoke(capsys, *args: str) -> tuple[int, str, str]:
    """Run `probe ...` in-process through the real entry point (faster than a subprocess)."""
    from probe.cli import main

    old_argv = sys.argv
    sys.argv = ["probe", *args]
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = old_argv
    captured = capsys.readouterr()
    return code, captured.out, captured.err
