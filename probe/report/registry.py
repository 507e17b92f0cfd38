"""Run types a report can show: manifest `command` -> the function that turns such runs into pages.

To add a run type, register one function in a module that `registered()` imports (as `sweep.py` does):

    @register("my-command", needs=("rows.parquet",))
    def my_pages(runs: list[Run]) -> list[FigureItem | TableItem]:
        ...

`needs` lists the files every run of that type must hold; they are checked before any page is drawn.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from probe.errors import ProbeError


@dataclass
class Run:
    """A finished run directory and its manifest."""

    path: Path
    manifest: dict

    @property
    def command(self) -> str:
        return str(self.manifest.get("command"))

    @property
    def model(self) -> str:
        model = self.manifest.get("model")
        if isinstance(model, dict):
            return str(model.get("name"))
        models = self.manifest.get("models")
        return ", ".join(models) if isinstance(models, dict) else str(model or "?")

    @property
    def n_samples(self) -> int | None:
        return self.manifest.get("n_samples")

    @property
    def dataset(self) -> str | None:
        data = (self.manifest.get("provenance") or {}).get("dataset")
        return data.get("path") if isinstance(data, dict) else None

    def on_what(self) -> str:
        """'8 samples of /data/test.jsonl' (what a caption says the numbers were computed on)."""
        n = self.n_samples
        count = f"{n} sample{'s' if n != 1 else ''}" if n is not None else "an unrecorded number of samples"
        return f"{count} of {self.dataset}" if self.dataset else count

    def table(self, name: str) -> pd.DataFrame:
        return pd.read_parquet(self.path / f"{name}.parquet")


@dataclass
class FigureItem:
    figure: object  # matplotlib Figure
    caption: str


@dataclass
class TableItem:
    table: pd.DataFrame
    title: str
    caption: str = ""


Item = FigureItem | TableItem


@dataclass
class RunType:
    command: str
    pages: Callable[[list[Run]], list[Item]]
    needs: tuple[str, ...] = field(default_factory=tuple)


REGISTRY: dict[str, RunType] = {}


def register(command: str, needs: tuple[str, ...] = ()) -> Callable:
    """Decorator: `pages(runs)` draws every run whose manifest says `command` (all of them at once, so
    several runs can share a figure)."""

    def decorate(pages: Callable[[list[Run]], list[Item]]) -> Callable:
        REGISTRY[command] = RunType(command, pages, tuple(needs))
        return pages

    return decorate


def registered() -> dict[str, RunType]:
    import probe.report.sections  # noqa: F401  (registers the built-in run types)
    import probe.report.sweep  # noqa: F401

    return REGISTRY


def read_run(path: Path) -> Run:
    """A run directory checked for what its run type needs; one-line ProbeError otherwise."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ProbeError(f"{path} does not exist")
    if not path.is_dir():
        raise ProbeError(f"{path} is a file; give a run directory")
    manifest_file = path / "manifest.json"
    if not manifest_file.is_file():
        raise ProbeError(f"{path} is not a finished probe run (no manifest.json)")
    try:
        manifest = json.loads(manifest_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ProbeError(f"{manifest_file} cannot be read as JSON ({exc})") from None
    run = Run(path, manifest if isinstance(manifest, dict) else {})
    types = registered()
    if run.command not in types:
        raise ProbeError(
            f"{path} is a '{run.command}' run, which reports cannot show yet (known: {', '.join(sorted(types))})"
        )
    missing = [name for name in types[run.command].needs if not (path / name).is_file()]
    if missing:
        raise ProbeError(
            f"{path} is an unfinished or damaged '{run.command}' run: {', '.join(missing)} missing"
        )
    return run
