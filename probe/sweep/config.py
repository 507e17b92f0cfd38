"""The sweep's YAML, checked whole before any model is built: one line naming the first problem.

```yaml
base: organism-llava            # zoo name, hub id or local dir of a LLaVA-v1.5 model
dataset: {train: data/organism/train.jsonl, eval: data/organism/test.jsonl}
grid:                           # a mapping (its product) or a list of mappings (the union of products)
  compressor_size: [1, 2, 4]    # C: C x C vision tokens per image
  prefusion_layers: [0, 1, 2]   # N_fusion
  kind: [query, pool]
train: {steps: 300, lr: 1.0e-3, batch_size: 8, loss: ce, trainable: [compressor, prefusion, projector]}
eval: {limit: 300}
seed: 0
```
Dataset paths, and a base given as a path (`./x`, `a/b`), are relative to the YAML file's directory.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from probe.errors import ProbeError

KINDS = ("query", "pool")
LOSSES = ("ce", "distill", "both")
TRAINABLE = ("compressor", "prefusion", "projector", "llm", "vision")
GRID_KEYS = ("compressor_size", "prefusion_layers", "kind")


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 300
    lr: float = 1e-3
    batch_size: int = 8
    loss: str = "ce"
    trainable: tuple[str, ...] = ("compressor", "prefusion", "projector")
    warmup: int = 30
    checkpoint_every: int = 25
    init_prefusion_from_llm: bool = True  # pre-fusion layers start as copies of the LLM's first layers
    distill_temperature: float = 1.0


@dataclass(frozen=True)
class EvalSettings:
    limit: int | None = 300
    blank_image: bool = True  # also evaluate with a blank image (what the image is worth)
    attention_limit: int = 16  # eval questions in each cell's attention table
    latency_samples: int = 8
    max_new_tokens: int = 8
    prompt_tokens: int = 64  # text tokens of the request whose FLOPs are counted (probe efficiency's L)


@dataclass(frozen=True)
class Cell:
    """One student (or the base model itself: kind 'base')."""

    kind: str
    compressor_size: int | None
    prefusion_layers: int | None

    @property
    def name(self) -> str:
        if self.kind == "base":
            return "base"
        return f"{self.kind}-C{self.compressor_size}-N{self.prefusion_layers}"


@dataclass(frozen=True)
class SweepConfig:
    base: str
    train_data: Path
    eval_data: Path
    cells: tuple[Cell, ...]
    train: TrainSettings = field(default_factory=TrainSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    seed: int = 0
    device: str = "auto"
    include_base: bool = True
    source: dict = field(default_factory=dict)  # the YAML as written (for the manifest and resume)

    def settings(self) -> dict:
        """What a resumed sweep must share with the one that wrote the directory."""
        return {
            "base": self.base,
            "dataset": {"train": str(self.train_data), "eval": str(self.eval_data)},
            "cells": [c.name for c in self.cells],
            "train": asdict(self.train),
            "eval": asdict(self.eval),
            "seed": self.seed,
            "include_base": self.include_base,
        }


def _unknown(section: str, data: dict, known) -> None:
    for key in data:
        if key not in known:
            where = f"{section}.{key}" if section else str(key)
            raise ProbeError(f"unknown key '{where}' in the sweep config (known: {', '.join(known)})")


def _int(where: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ProbeError(f"{where} must be an integer >= {minimum}, got {value!r}")
    return value


def _number(where: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ProbeError(f"{where} must be a positive number, got {value!r}")
    return float(value)


def _settings(cls, section: str, data) -> object:
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ProbeError(f"'{section}' must be a mapping, got {type(data).__name__}")
    defaults = cls()
    _unknown(section, data, list(asdict(defaults)))
    values = {}
    for key, value in data.items():
        default = getattr(defaults, key)
        where = f"{section}.{key}"
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ProbeError(f"{where} must be true or false, got {value!r}")
        elif isinstance(default, float):
            value = _number(where, value)
        elif isinstance(default, int) or key == "limit":
            value = (
                None if value is None and key == "limit" else _int(where, value, 1 if key != "warmup" else 0)
            )
        elif isinstance(default, tuple):
            if not isinstance(value, list) or not value:
                raise ProbeError(f"{where} must be a non-empty list, got {value!r}")
            value = tuple(value)
        values[key] = value
    return cls(**values)


def _grid(data) -> list[dict]:
    blocks = data if isinstance(data, list) else [data]
    if not blocks or not all(isinstance(b, dict) and b for b in blocks):
        raise ProbeError("'grid' must be a mapping of lists, or a list of such mappings")
    out = []
    for block in blocks:
        _unknown("grid", block, GRID_KEYS)
        missing = [k for k in GRID_KEYS if k not in block]
        if missing:
            raise ProbeError(f"grid needs {', '.join(missing)} (each a list of values)")
        values = {k: v if isinstance(v, list) else [v] for k, v in block.items()}
        out.extend(dict(zip(GRID_KEYS, combo, strict=True)) for combo in itertools.product(*values.values()))
    return out


def _check_cell(values: dict, grid_side: int, llm_layers: int, copy_prefusion: bool) -> Cell:
    c, n, kind = values["compressor_size"], values["prefusion_layers"], values["kind"]
    if kind not in KINDS:
        raise ProbeError(f"grid.kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if isinstance(c, bool) or not isinstance(c, int) or not 1 <= c <= grid_side:
        raise ProbeError(
            f"grid.compressor_size must be an integer from 1 to {grid_side} (the base's patch grid side), "
            f"got {c!r}"
        )
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ProbeError(f"grid.prefusion_layers must be an integer >= 0, got {n!r}")
    if copy_prefusion and n > llm_layers:
        raise ProbeError(
            f"grid.prefusion_layers {n} exceeds the base LLM's {llm_layers} layers "
            "(train.init_prefusion_from_llm copies them)"
        )
    return Cell(kind, c, n)


def _base_config(base: str):
    """The base's config, without loading weights; it must be a LLaVA-v1.5 (`llava`) model."""
    from probe.efficiency.setups import load_config

    if not isinstance(base, str) or not base:
        raise ProbeError("'base' must name a LLaVA-v1.5 model (zoo name, hub id or local directory)")
    family, config, _, _ = load_config(base)
    if family != "llava":
        raise ProbeError(
            f"base '{base}' is a {family} model: the sweep builds students from a LLaVA-v1.5 model"
        )
    return config


def _dataset(where: str, value, root: Path) -> Path:
    if not isinstance(value, str):
        raise ProbeError(f"{where} must be a path to a JSONL dataset, got {value!r}")
    path = Path(value).expanduser()
    path = path if path.is_absolute() else root / path
    if not path.is_file():
        raise ProbeError(f"{where}: no such file {path}")
    return path


def check_answers(path: Path, limit: int | None = None) -> int:
    """Every sample (the first `limit`) needs a gold answer: training and accuracy both use it."""
    from probe.inputs import read_dataset

    samples = read_dataset(path)[:limit]
    if not samples:
        raise ProbeError(f"{path} holds no samples")
    missing = [s.sample_id for s in samples if not (s.answer or "").strip()]
    if missing:
        raise ProbeError(f"{path}: {len(missing)} sample(s) without an answer, e.g. id {missing[0]}")
    return len(samples)


def read_config(path: Path) -> SweepConfig:
    path = Path(path)
    if not path.is_file():
        raise ProbeError(f"--config: no such file {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ProbeError(f"{path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ProbeError(f"{path} must hold a mapping of sweep settings")
    known = ("base", "dataset", "grid", "train", "eval", "seed", "device", "include_base")
    _unknown("", data, known)
    for key in ("base", "dataset", "grid"):
        if key not in data:
            raise ProbeError(f"the sweep config needs '{key}'")
    dataset = data["dataset"]
    if not isinstance(dataset, dict):
        raise ProbeError("'dataset' must be a mapping {train: FILE, eval: FILE}")
    _unknown("dataset", dataset, ("train", "eval"))
    root = path.resolve().parent
    train_data = _dataset("dataset.train", dataset.get("train"), root)
    eval_data = _dataset("dataset.eval", dataset.get("eval"), root)
    train = _settings(TrainSettings, "train", data.get("train"))
    evaluation = _settings(EvalSettings, "eval", data.get("eval"))
    if train.loss not in LOSSES:
        raise ProbeError(f"train.loss must be one of {', '.join(LOSSES)}, got {train.loss!r}")
    bad = [t for t in train.trainable if t not in TRAINABLE]
    if bad:
        raise ProbeError(f"train.trainable: unknown module {bad[0]!r} (known: {', '.join(TRAINABLE)})")
    seed = _int("seed", data.get("seed", 0), 0)
    device = data.get("device", "auto")
    if device not in ("auto", "cpu", "cuda"):
        raise ProbeError(f"device must be auto, cpu or cuda, got {device!r}")
    include_base = data.get("include_base", True)
    if not isinstance(include_base, bool):
        raise ProbeError(f"include_base must be true or false, got {include_base!r}")
    grid_values = _grid(data["grid"])
    base = data["base"]
    if isinstance(base, str):
        from probe.zoo import looks_like_path

        if looks_like_path(base) and not Path(base).expanduser().is_absolute():
            base = str(root / base)  # a directory is relative to the YAML, like the datasets
    base_config = _base_config(base)
    vision = base_config.vision_config
    grid_side = vision.image_size // vision.patch_size
    llm_layers = base_config.text_config.num_hidden_layers
    cells = []
    for values in grid_values:
        cell = _check_cell(values, grid_side, llm_layers, train.init_prefusion_from_llm)
        if cell not in cells:
            cells.append(cell)
    check_answers(train_data)
    check_answers(eval_data, evaluation.limit)
    return SweepConfig(
        base=base,
        train_data=train_data,
        eval_data=eval_data,
        cells=tuple(cells),
        train=train,
        eval=evaluation,
        seed=seed,
        device=device,
        include_base=include_base,
        source=data,
    )
