"""What the CLI writes and where: file permissions follow the umask, `--out` is checked before any work,
and the bare CLI (`--help`, `--version`) answers without importing torch."""

from __future__ import annotations

import importlib.metadata
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, invoke

GOOD = ["--image", "skimage:astronaut", "--prompt", "<image> What is shown?"]


def modes(root: Path) -> dict[str, int]:
    """Permission bits of every file and directory below `root` (root itself included)."""
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = stat.S_IMODE(path.stat().st_mode)
    return found


class umask:
    """Context manager: run with this umask, restore the previous one after."""

    def __init__(self, mask: int):
        self.mask = mask

    def __enter__(self):
        self.old = os.umask(self.mask)

    def __exit__(self, *exc):
        os.umask(self.old)


# --- file modes ------------------------------------------------------------------------------------
def test_run_directory_files_follow_the_umask(tmp_path, capsys, probe_home):
    out = tmp_path / "run"
    with umask(0o022):
        code, _, err = invoke(capsys, "attention", "--model", "tiny-llava", *GOOD, "--out", str(out))
    assert code == 0, err
    found = modes(out)
    assert {"manifest.json", "attention.parquet", "attention.csv", "samples.csv", "mass.png"} <= set(found)
    # what `open(path, "w")` / `mkdir` give under umask 022: group and others may read, only we write
    expected = {name: 0o755 if (out / name).is_dir() else 0o644 for name in found}
    assert found == expected


def test_organism_data_follows_a_stricter_umask(tmp_path, capsys):
    """0640 under umask 027 (not a hard-coded 0644, not mkstemp's 0600)."""
    out = tmp_path / "data"
    with umask(0o027):
        code, _, err = invoke(
            capsys, "organism", "data", "--out", str(out), "--n-train", "0", "--n-val", "0", "--n-test", "3",
            "--n-heldout", "0",
        )  # fmt: skip
    assert code == 0, err
    found = modes(out)
    assert "test.jsonl" in found and "dataset.json" in found and any(n.endswith(".png") for n in found)
    assert found == {name: 0o750 if (out / name).is_dir() else 0o640 for name in found}


def test_built_in_model_directory_follows_the_umask(tmp_path, monkeypatch):
    """The materialised model directory is renamed from a staging directory, which mkdtemp made 0700."""
    from probe import zoo

    class Saves:
        def save_pretrained(self, path):
            (Path(path) / "config.json").write_text("{}")

    monkeypatch.setenv("PROBE_HOME", str(tmp_path))
    spec = zoo.ModelSpec(name="fake", family="llava", builder=lambda: (Saves(), Saves()))
    with umask(0o022):
        target = zoo.materialise(spec)
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    assert stat.S_IMODE((target / "config.json").stat().st_mode) == 0o644


# --- --out checked before any work -------------------------------------------------------------------
def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


@pytest.fixture
def no_work(monkeypatch):
    """Make every expensive step fail loudly: a check that comes too late shows up as an AssertionError."""

    def forbidden(*args, **kwargs):
        raise AssertionError("work started before --out was checked")

    import probe.organism.data
    import probe.organism.evaluate
    import probe.zoo

    monkeypatch.setattr(probe.zoo, "load", forbidden)
    monkeypatch.setattr(probe.organism.data, "write_dataset", forbidden)
    monkeypatch.setattr(probe.organism.data, "ensure_split", forbidden)
    monkeypatch.setattr(probe.organism.evaluate, "evaluate", forbidden)


def out_commands(out: Path) -> dict[str, list[str]]:
    return {
        "attention": ["attention", "--model", "tiny-llava", *GOOD, "--out", str(out)],
        "organism data": ["organism", "data", "--out", str(out), "--n-train", "1"],
        "organism eval": ["organism", "eval", "--limit", "1", "--out", str(out)],
    }


@pytest.mark.parametrize("command", ["attention", "organism data"])
def test_out_naming_an_existing_file_is_refused(command, tmp_path, capsys, no_work):
    existing = tmp_path / "notes.txt"
    existing.write_text("keep me\n")
    code, _, err = invoke(capsys, *out_commands(existing)[command])
    assert code == 2
    assert "is an existing file" in one_error_line(err)
    assert existing.read_text() == "keep me\n"


def test_eval_out_naming_a_directory_is_refused(tmp_path, capsys, no_work):
    code, _, err = invoke(capsys, *out_commands(tmp_path)["organism eval"])
    assert code == 2
    assert "is a directory" in one_error_line(err)


@pytest.mark.parametrize("command", ["attention", "organism data", "organism eval"])
def test_out_below_a_regular_file_is_refused(command, tmp_path, capsys, no_work):
    """mkdir -p cannot create anything below a file; works as a test when run as root too."""
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    code, _, err = invoke(capsys, *out_commands(blocker / "sub" / "result")[command])
    assert code == 2
    assert f"{blocker} is a file, not a directory" in one_error_line(err)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a mode-0555 directory regardless")
@pytest.mark.parametrize("command", ["attention", "organism data", "organism eval"])
def test_out_in_a_read_only_directory_is_refused(command, tmp_path, capsys, no_work):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        code, _, err = invoke(capsys, *out_commands(locked / "result")[command])
    finally:
        locked.chmod(0o755)
    assert code == 2
    assert "is not writable" in one_error_line(err)
    assert list(locked.iterdir()) == []


# --- a fast, light CLI -------------------------------------------------------------------------------
def test_importing_the_cli_does_not_import_torch():
    code = "import sys, probe.cli; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=True,
    )
    assert result.stdout.strip() == "[]"


def test_version(capsys):
    code, out, _ = invoke(capsys, "--version")
    assert code == 0
    assert out.split() == ["probe", importlib.metadata.version("probe-vlm")]
