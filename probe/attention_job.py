"""`probe attention`: per-layer attention mass and entropy of every sample, as a resumable run.

A run directory holds:
    attention.parquet / .csv   one row per sample x stage x layer x grouping x tgt x src [x head]
    summary.parquet / .csv     the same averaged over samples (what the figures show)
    samples.csv                prompt, response and token counts per sample
    manifest.json              model, config, versions, seed, options
    mass.png, entropy.png      paper Figs. 2 and 3
Finished samples are kept in `.parts/` until the run completes, so an interrupted run resumes where
it stopped without redoing or duplicating work.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from probe.engines import get_engine
from probe.errors import ProbeError
from probe.inputs import Sample
from probe.results import atomic_write, read_table, versions, write_json, write_table
from probe.stats import average_over_samples, layer_rows, to_table
from probe.zoo import LoadedModel

PARTS = ".parts"


@dataclass
class AttentionOptions:
    backend: str = "native"
    per_head: bool = False
    generate: int | None = None
    seed: int = 0
    groupings: tuple[str, ...] = ("paper", "fine")
    extra: dict = field(default_factory=dict)


def probe_sample(loaded: LoadedModel, sample: Sample, options: AttentionOptions) -> tuple[pd.DataFrame, dict]:
    """Statistics of one sample -> (tidy rows, sample info)."""
    adapter = loaded.adapter
    engine = get_engine(options.backend)
    response_ids = None
    if options.generate:
        torch.manual_seed(options.seed)
        response_ids = adapter.generate(sample, options.generate)
    prepared = adapter.prepare(sample, response_ids=response_ids)
    rows: list[dict] = []
    for stats in engine(adapter, prepared, per_head=options.per_head):
        rows.extend(layer_rows(stats, prepared.roles[stats.stage], [sample.sample_id], options.groupings))
    table = to_table(rows)
    table.insert(0, "model", loaded.name)
    tokenizer = getattr(loaded.processor, "tokenizer", None)
    response_text = sample.response
    if prepared.response_ids and tokenizer is not None:
        response_text = tokenizer.decode(prepared.response_ids, skip_special_tokens=True)
    info = {
        "sample": sample.sample_id,
        "images": ";".join(sample.image_sources),
        "prompt": sample.prompt,
        "response": response_text,
        "answer": sample.answer,
        "n_tokens": int(prepared.inputs["input_ids"].shape[-1]),
        "n_prompt_tokens": prepared.prompt_length,
        "n_response_tokens": len(prepared.response_ids),
    }
    return table, info


def manifest_for(loaded: LoadedModel, options: AttentionOptions, samples: list[Sample]) -> dict:
    config = loaded.model.config.to_dict()
    return {
        "command": "attention",
        "model": {
            "name": loaded.name,
            "source": loaded.source,
            "family": loaded.family,
            "revision": loaded.revision,
        },
        "model_config": config,
        "device": str(loaded.adapter.device),
        "dtype": str(next(loaded.model.parameters()).dtype),
        "options": {
            "backend": options.backend,
            "per_head": options.per_head,
            "generate": options.generate,
            "seed": options.seed,
            "groupings": list(options.groupings),
            **options.extra,
        },
        "n_samples": len(samples),
        "samples_fingerprint": _fingerprint(
            [(s.sample_id, s.prompt, s.image_sources, s.response) for s in samples]
        ),
        "entropy_unit": "nats",
        "layer_index": "0-based",
        "versions": versions(),
    }


def _fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _resume_key(manifest: dict) -> str:
    keep = {k: manifest[k] for k in ("model", "options", "n_samples", "samples_fingerprint", "dtype")}
    return _fingerprint(keep)


def prepare_run_dir(out_dir: Path, manifest: dict, overwrite: bool) -> Path:
    """Check the run directory and return its parts folder, keeping finished parts of the same run."""
    out_dir = Path(out_dir)
    parts = out_dir / PARTS
    if (out_dir / "manifest.json").exists() and not overwrite:
        raise ProbeError(f"{out_dir} already holds a finished run; pass --overwrite or choose another --out")
    key = _resume_key(manifest)
    key_file = parts / "run.key"
    if parts.exists():
        same_run = key_file.is_file() and key_file.read_text().strip() == key
        if not same_run and not overwrite:
            raise ProbeError(
                f"{out_dir} holds an unfinished run with other settings; pass --overwrite or choose another --out"
            )
        if not same_run or overwrite:
            shutil.rmtree(parts)
    if overwrite and out_dir.exists():
        for name in ("manifest.json", "attention.parquet", "attention.csv", "summary.parquet", "summary.csv"):
            (out_dir / name).unlink(missing_ok=True)
    parts.mkdir(parents=True, exist_ok=True)
    atomic_write(key_file, lambda p: p.write_text(key + "\n"))
    return parts


def run_attention(
    loaded: LoadedModel,
    samples: list[Sample],
    out_dir: Path,
    options: AttentionOptions,
    overwrite: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Probe every sample (resuming finished ones), then write the table, summary, manifest and figures."""
    for sample in samples:
        loaded.adapter.validate(sample)
    manifest = manifest_for(loaded, options, samples)
    parts = prepare_run_dir(Path(out_dir), manifest, overwrite)
    todo = [(k, s) for k, s in enumerate(samples) if not (parts / f"{k:07d}.parquet").exists()]
    if len(todo) < len(samples):
        print(f"resuming: {len(samples) - len(todo)} of {len(samples)} samples already done")
    for k, sample in tqdm(todo, desc="samples", unit="sample", disable=not progress or len(samples) < 2):
        table, info = probe_sample(loaded, sample, options)
        atomic_write(
            parts / f"{k:07d}.json", lambda p, info=info: p.write_text(json.dumps(info, default=str))
        )
        atomic_write(parts / f"{k:07d}.parquet", lambda p, table=table: table.to_parquet(p, index=False))
    table = pd.concat(
        [pd.read_parquet(parts / f"{k:07d}.parquet") for k in range(len(samples))], ignore_index=True
    )
    infos = [json.loads((parts / f"{k:07d}.json").read_text()) for k in range(len(samples))]
    finish_run(Path(out_dir), table, pd.DataFrame(infos), manifest)
    shutil.rmtree(parts)
    return table


def finish_run(out_dir: Path, table: pd.DataFrame, samples: pd.DataFrame, manifest: dict) -> None:
    """Write tables and figures; the manifest goes last, so its presence marks a finished run."""
    from analyses.attention_profile import plot_entropy, plot_mass

    write_table(table, out_dir, "attention")
    summary = average_over_samples(table)
    write_table(summary, out_dir, "summary")
    atomic_write(out_dir / "samples.csv", lambda p: samples.to_csv(p, index=False))
    import matplotlib.pyplot as plt

    title = f"{manifest['model']['name']} ({manifest['n_samples']} sample(s))"
    for stage in summary["stage"].unique():
        suffix = "" if stage == "llm" else f"_{stage}"  # mass.png is the LLM's; other stages get a suffix
        for name, plot in (("mass", plot_mass), ("entropy", plot_entropy)):
            fig = plot(summary, stage=stage, title=f"{name}, {stage} layers: {title}")
            path = out_dir / f"{name}{suffix}.png"
            atomic_write(path, lambda p, fig=fig: fig.savefig(p, dpi=120, format="png"))
            plt.close(fig)
    write_json(out_dir / "manifest.json", manifest)


def load_run(out_dir: Path) -> tuple[pd.DataFrame, dict]:
    """Read a finished run back: (tidy table, manifest)."""
    out_dir = Path(out_dir)
    if not (out_dir / "manifest.json").is_file():
        raise ProbeError(f"{out_dir} is not a finished probe run (no manifest.json)")
    return read_table(out_dir, "attention"), json.loads((out_dir / "manifest.json").read_text())
