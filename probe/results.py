"""Tidy tables and manifests on disk, written atomically.

Every file is written to a temporary name in the same directory and renamed into place, so an
interrupted run never leaves a half-written table behind. Tables go out as Parquet (typed, fast) and
CSV (greppable); the manifest records what produced them, so figures can be redrawn without rerunning.
Files get the permissions of a plain `open()` (0666 minus the umask), and commands check that their
`--out` can be written before any work starts.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import secrets
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from probe.errors import ProbeError

PACKAGES = ("probe-vlm", "torch", "transformers", "transformer-lens", "nnsight", "pandas", "numpy")


def new_temp_file(directory: Path, prefix: str, suffix: str = ".tmp") -> Path:
    """An empty, new, uniquely named file in `directory`, created with mode 0666 minus the umask.

    Unlike `tempfile.mkstemp` (always 0600, meant for secrets), the file ends up with the permissions a
    plain `open(path, "w")` would give it, so results renamed into place stay readable by collaborators.
    """
    while True:
        candidate = Path(directory) / f"{prefix}{secrets.token_hex(4)}{suffix}"
        try:
            os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return candidate


def new_temp_dir(directory: Path, prefix: str) -> Path:
    """Like `new_temp_file` for a directory (mode 0777 minus the umask, where `tempfile.mkdtemp` gives 0700)."""
    while True:
        candidate = Path(directory) / f"{prefix}{secrets.token_hex(4)}"
        try:
            os.mkdir(candidate, 0o777)
        except FileExistsError:
            continue
        return candidate


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)` then rename tmp_path to `path` (same directory, so the rename is atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_temp_file(path.parent, prefix=f".{path.name}.")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_table(table: pd.DataFrame, directory: Path, name: str) -> None:
    """`name.parquet` and `name.csv` in `directory`."""
    atomic_write(Path(directory) / f"{name}.parquet", lambda p: table.to_parquet(p, index=False))
    atomic_write(Path(directory) / f"{name}.csv", lambda p: table.to_csv(p, index=False))


def read_table(directory: Path, name: str) -> pd.DataFrame:
    return pd.read_parquet(Path(directory) / f"{name}.parquet")


def write_json(path: Path, data: dict) -> None:
    atomic_write(Path(path), lambda p: p.write_text(json.dumps(data, indent=2, default=str) + "\n"))


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def check_output_dir(path: Path, option: str = "--out") -> Path:
    """Fail before any work unless `path` is a directory we can write into, or one we can create."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ProbeError(f"{option} {path} is an existing file; give a directory")
    _check_creatable(path, option)
    return path


def check_output_file(path: Path, option: str = "--out") -> Path:
    """Fail before any work unless `path` is a file we can (over)write, or one we can create."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ProbeError(f"{option} {path} is a directory; give a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise ProbeError(f"{option} {path} is not writable")
    _check_creatable(path.absolute().parent, option, shown=path)
    return path


def _check_creatable(path: Path, option: str, shown: Path | None = None) -> None:
    """The nearest existing ancestor of `path` must be a writable directory (mkdir -p would succeed)."""
    shown = path if shown is None else shown
    existing = path.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ProbeError(f"{option} {shown}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ProbeError(f"{option} {shown}: {existing} is not writable")
