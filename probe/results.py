"""Tidy tables and manifests on disk, written atomically.

Every file is written to a temporary name in the same directory and renamed into place, so an
interrupted run never leaves a half-written table behind. Tables go out as Parquet (typed, fast) and
CSV (greppable); the manifest records what produced them, so figures can be redrawn without rerunning.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd

PACKAGES = ("probe-vlm", "torch", "transformers", "transformer-lens", "nnsight", "pandas", "numpy")


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)` then rename tmp_path to `path` (same directory, so the rename is atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
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
