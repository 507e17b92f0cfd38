"""Run a sweep's cells, locally or on Ray, and gather them into tidy tables; resumable at every point.

Layout of a sweep directory:
  sweep.json                 the settings it was started with (a rerun with other settings is refused)
  cells/<cell>/train/        the cell's checkpoint (safetensors) and log.jsonl: a killed cell continues
  cells/<cell>/model/        the trained student in LLaVA-Mini's layout (what `checkpoint` points at)
  cells/<cell>/attention/    a `probe attention` run of the cell on eval questions (both stages)
  cells/<cell>/questions.parquet, result.json   per-question answers, then the row (its presence = done)
  cells.parquet/.csv, questions.parquet/.csv, attention.parquet/.csv, figures, manifest.json (last)
A cell is finished when its result.json exists, so a rerun skips it; the tables are rebuilt from the
cells' files each time, which is why a kill can neither lose nor duplicate a row.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from probe.errors import ProbeError
from probe.executors import run_tasks
from probe.results import atomic_write, check_output_dir, versions, write_json, write_table
from probe.sweep.config import Cell, SweepConfig

BASE = Cell("base", None, None)
SETTINGS_FILE = "sweep.json"
GRID_COLUMNS = ["cell", "kind", "compressor_size", "prefusion_layers"]


def cell_dir(out: Path, cell: Cell) -> Path:
    return Path(out) / "cells" / cell.name


def planned_cells(config: SweepConfig) -> list[Cell]:
    return ([BASE] if config.include_base else []) + list(config.cells)


def prepare_sweep_dir(out: Path, config: SweepConfig) -> None:
    """Create the directory, or check that the sweep in it was started with the same settings."""
    from probe.attention_job import setting_differences

    out = check_output_dir(out)
    settings = json.loads(json.dumps(config.settings(), default=str))
    path = out / SETTINGS_FILE
    if path.is_file():
        old = json.loads(path.read_text())
        changed = setting_differences(old, settings)
        if changed:
            raise ProbeError(
                f"{out} holds a sweep with other settings ({changed[0]}); use another --out or delete it"
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, settings)


CODE_FILE = "code.json"


def code_identity() -> dict:
    from probe import __version__
    from probe.provenance import git_commit

    return {"probe": __version__, "git": git_commit()}


def warn_code_changed(out: Path, in_flight: list[Cell]) -> None:
    """Resume keys on the sweep's settings, not on probe's code: say so when cells in flight continue from
    checkpoints an older probe wrote (a fix since then would not reach their first steps)."""
    from probe.notes import note

    path = Path(out) / CODE_FILE
    now = code_identity()
    if not path.is_file():
        write_json(path, now)
        return
    then = json.loads(path.read_text())
    if then != now and in_flight:
        names = ", ".join(c.name for c in in_flight)
        note(
            f"this sweep was started with probe {then} and continues with {now}: {names} resume from "
            "checkpoints the older code wrote (delete their cells/ directories to retrain them)"
        )


def blank_image(eval_samples, out: Path) -> Path:
    """A flat picture in the first eval image's most frequent colour (its background) and size."""
    path = Path(out) / "blank.png"
    if not path.is_file():
        image = eval_samples[0].load_images()[0].convert("RGB")
        pixels = np.asarray(image).reshape(-1, 3)
        colours, counts = np.unique(pixels, axis=0, return_counts=True)
        flat = Image.new("RGB", image.size, tuple(int(v) for v in colours[counts.argmax()]))
        atomic_write(path, lambda p: flat.save(p, format="PNG"))
    return path


def final_train_loss(log_path: Path, last: int = 20) -> float | None:
    """Mean loss of the last `last` steps (a resumed run re-logs the steps after its checkpoint: the
    latest line of each step counts)."""
    if not log_path.is_file():
        return None
    by_step = {}
    for line in log_path.read_text().splitlines():
        record = json.loads(line)
        by_step[record["step"]] = record["loss"]
    steps = sorted(by_step)[-last:]
    return float(np.mean([by_step[s] for s in steps])) if steps else None


def _device(config: SweepConfig) -> str:
    from probe.zoo import parse_device

    return parse_device(config.device).type


def run_cell(
    config: SweepConfig, cell: Cell, out: Path, threads: int | None = None, progress: bool = True
) -> dict:
    """Train (resuming) and evaluate one cell; returns its row, also written to result.json (last). Notes
    (image placement, ...) were said when the config was read: not again per cell."""
    from probe.notes import muted

    with muted():
        return _run_cell(config, cell, out, threads, progress)


def _run_cell(config: SweepConfig, cell: Cell, out: Path, threads: int | None, progress: bool) -> dict:
    from probe.attention_job import AttentionOptions, run_attention
    from probe.inputs import read_dataset
    from probe.sweep.evaluate import evaluate_cell
    from probe.sweep.student import build_student, train_student
    from probe.zoo import LoadedModel, load

    here = cell_dir(out, cell)
    result_path = here / "result.json"
    if result_path.is_file():
        return json.loads(result_path.read_text())
    if threads is not None:
        torch.set_num_threads(threads)
    here.mkdir(parents=True, exist_ok=True)
    device = _device(config)
    eval_samples = read_dataset(config.eval_data)[: config.eval.limit]
    base = load(config.base, device=device, dtype="float32")
    row: dict = {"cell": cell.name, "kind": cell.kind}
    row.update({"compressor_size": cell.compressor_size, "prefusion_layers": cell.prefusion_layers})
    if cell.kind == "base":
        loaded = base
        row.update({"train_steps": 0, "train_loss": None, "train_seconds": 0.0, "checkpoint": config.base})
    else:
        from llava_mini.adapter import LlavaMiniAdapter
        from probe.training.checkpoint import save_trained

        student, processor = build_student(base, cell, config)
        adapter = LlavaMiniAdapter(student, processor)
        state = train_student(
            student,
            adapter,
            base,
            lambda: load(config.base, device=device, dtype="float32").model,
            read_dataset(config.train_data),
            config,
            here / "train",
            progress=progress,
            desc=cell.name,
        )
        model_dir = here / "model"
        if not (model_dir / "config.json").is_file():
            save_trained(student, processor, model_dir)
        loaded = LoadedModel(
            name=cell.name,
            source=str(model_dir),
            family="llava_mini",
            model=student,
            processor=processor,
            adapter=adapter,
        )
        row.update(
            {
                "train_steps": config.train.steps,
                "train_loss": final_train_loss(here / "train" / "log.jsonl"),
                "train_seconds": round(state["elapsed_s"], 1),
                "checkpoint": str(model_dir.relative_to(out)),
            }
        )
    metrics, questions = evaluate_cell(
        loaded.adapter, cell, config, eval_samples, blank_image(eval_samples, out)
    )
    row.update(metrics)
    attention_samples = read_dataset(config.eval_data, response_from="answer")[: config.eval.attention_limit]
    run_attention(
        loaded,
        attention_samples,
        here / "attention",
        AttentionOptions(response_from="answer", seed=config.seed),
        overwrite=True,
        progress=False,
        dataset=config.eval_data,
    )
    questions.insert(0, "cell", cell.name)
    atomic_write(here / "questions.parquet", lambda p: questions.to_parquet(p, index=False))
    write_json(result_path, row)
    return row


def gather(out: Path, cells: list[Cell]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(cells, questions, attention) tables from the finished cells' files, in the config's cell order."""
    rows, questions, attention = [], [], []
    for cell in cells:
        here = cell_dir(out, cell)
        rows.append(json.loads((here / "result.json").read_text()))
        questions.append(pd.read_parquet(here / "questions.parquet"))
        summary = pd.read_parquet(here / "attention" / "summary.parquet")
        summary.insert(0, "cell", cell.name)
        attention.append(summary)
    return (
        pd.DataFrame(rows),
        pd.concat(questions, ignore_index=True),
        pd.concat(attention, ignore_index=True),
    )


def run_sweep(
    config: SweepConfig,
    out: Path,
    executor: str = "local",
    address: str | None = None,
    threads: int | None = None,
    progress: bool = True,
    command: str | None = None,
) -> pd.DataFrame:
    """Run every unfinished cell, then (re)write the sweep's tables, figures and manifest."""
    from probe.provenance import run_provenance
    from probe.zoo import probe_home

    out = Path(out)
    prepare_sweep_dir(out, config)
    cells = planned_cells(config)
    todo = [c for c in cells if not (cell_dir(out, c) / "result.json").is_file()]
    warn_code_changed(out, [c for c in todo if (cell_dir(out, c) / "train").is_dir()])
    if len(todo) < len(cells):
        print(f"resuming: {len(cells) - len(todo)} of {len(cells)} cells already done")
    # a cell's own bars (steps, questions) only where they can be seen: in this process
    arguments = [
        (config, cell, Path(out).resolve(), threads, progress and executor == "local") for cell in todo
    ]
    gpus = 1.0 if _device(config) == "cuda" else 0.0
    run_tasks(run_cell, arguments, executor, address, gpus, threads or 1, progress, desc="cells")
    table, questions, attention = gather(out, cells)
    write_table(table, out, "cells")
    write_table(questions, out, "questions")
    write_table(attention, out, "attention")
    from probe.sweep.figures import save_figures

    figures = save_figures(table, out)
    from probe.zoo import resolve

    source = resolve(config.base).source
    provenance = run_provenance(source, None, probe_home(), dataset=config.eval_data, command=command)
    provenance["train_dataset"] = run_provenance(source, None, probe_home(), dataset=config.train_data)[
        "dataset"
    ]
    manifest = {
        "command": "sweep",
        "model": {"name": config.base, "source": source},
        "n_samples": int(table["n_eval"].max()),
        "config": json.loads(json.dumps(config.source, default=str)),
        "settings": json.loads(json.dumps(config.settings(), default=str)),
        "executor": executor,
        "cells": [c.name for c in cells],
        "figures": figures,
        "versions": versions(),
        "provenance": provenance,
    }
    write_json(out / "manifest.json", manifest)
    return table
