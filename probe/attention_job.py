"""`probe attention`: per-layer attention mass and entropy of every sample, as a resumable run.

A run directory holds:
    attention.parquet / .csv   one row per sample x stage x layer x grouping x tgt x src [x head]
    summary.parquet / .csv     the same averaged over samples (what the figures show)
    samples.csv                prompt, response and token counts per sample
    manifest.json              model, config, versions, seed, options
    mass.png, entropy.png      paper Figs. 2 and 3
    grid.parquet / .csv        with --grid-queries: attention of the chosen query tokens onto each image's
    grid.png                   patch grid, one row per sample x stage x layer x image x query x row x col,
                               and its heat maps (paper Fig. 4) for the first sample
Finished samples are kept in `.parts/` (also after the run completes), so an interrupted run resumes
where it stopped without redoing or duplicating work, and a larger --limit computes only the new samples.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from probe.engines import check_grid_support, get_engine
from probe.errors import ProbeError
from probe.grid import (
    GRID_STAGE,
    Selector,
    check_has_grid,
    format_grid_queries,
    grid_table,
    parse_grid_queries,
    resolve_grid_queries,
    to_grid_table,
)
from probe.inputs import Sample
from probe.provenance import run_provenance
from probe.results import atomic_write, read_table, versions, write_json, write_table
from probe.stats import average_over_samples, layer_rows, to_table
from probe.zoo import LoadedModel, probe_home

PARTS = ".parts"


@dataclass
class AttentionOptions:
    backend: str = "native"
    per_head: bool = False
    generate: int | None = None
    seed: int = 0
    groupings: tuple[str, ...] = ("paper", "fine")
    # which dataset key was teacher-forced as the response (probe.inputs.RESPONSE_FROM); None: not a dataset
    response_from: str | None = None
    # attention onto the image grid (paper Fig. 4): query selectors (positions / role names, see probe.grid);
    # a spec string such as "-1,response" is parsed
    grid_queries: tuple[Selector, ...] | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.grid_queries, str):
            self.grid_queries = parse_grid_queries(self.grid_queries)
        elif self.grid_queries is not None:
            self.grid_queries = tuple(self.grid_queries)


@dataclass
class SampleResult:
    """What one sample gives: the tidy attention rows, its info, and (with grid queries) its grid rows.

    Unpacks as `table, info = probe_sample(...)`."""

    table: pd.DataFrame
    info: dict
    grid: pd.DataFrame | None = None

    def __iter__(self):
        return iter((self.table, self.info))


def check_grid_options(options: AttentionOptions, samples: list[Sample]) -> None:
    """Grid-query checks that need no model run (backend support, a response for `response`)."""
    if not options.grid_queries:
        return
    check_grid_support(options.backend)
    if "response" in options.grid_queries and not options.generate:
        for sample in samples:
            if not sample.response:
                raise ProbeError(
                    f"--grid-queries 'response': sample '{sample.sample_id}' has no response; give --response, "
                    "--generate N, a 'response' in each dataset line or --response-from answer"
                )


def probe_sample(loaded: LoadedModel, sample: Sample, options: AttentionOptions) -> SampleResult:
    """Statistics of one sample -> (tidy rows, sample info[, grid rows])."""
    adapter = loaded.adapter
    engine = get_engine(options.backend)
    response_ids = None
    if options.generate:
        torch.manual_seed(options.seed)
        response_ids = adapter.generate(sample, options.generate)
    prepared = adapter.prepare(sample, response_ids=response_ids)
    positions: list[int] | None = None
    kwargs = {}
    if options.grid_queries:
        check_grid_support(options.backend)
        grid_roles = prepared.roles[GRID_STAGE]
        check_has_grid(grid_roles, loaded.name, sample.sample_id)
        positions = resolve_grid_queries(options.grid_queries, grid_roles, sample.sample_id)
        if positions:  # `response` after an empty generation picks nothing: no grid rows for this sample
            kwargs["grid_queries"] = positions
    rows: list[dict] = []
    grid_stats = []
    for stats in engine(adapter, prepared, per_head=options.per_head, **kwargs):
        rows.extend(layer_rows(stats, prepared.roles[stats.stage], [sample.sample_id], options.groupings))
        if stats.stage == GRID_STAGE and stats.grid_rows:
            grid_stats.append(stats)
    table = to_table(rows)
    table.insert(0, "model", loaded.name)
    tokenizer = getattr(loaded.processor, "tokenizer", None)
    grid = None
    if positions is not None:
        ids = prepared.inputs["input_ids"][0]
        tokens = [tokenizer.decode([int(ids[p])]) if tokenizer is not None else "" for p in positions]
        grid = grid_table(grid_stats, prepared.roles[GRID_STAGE], positions, [sample.sample_id], tokens)
        grid.insert(0, "model", loaded.name)
    response_text = sample.response
    if prepared.response_ids and tokenizer is not None:
        # every response token, special ones included, so the text says what the model was fed
        response_text = tokenizer.decode(prepared.response_ids)
    info = {
        "sample": sample.sample_id,
        "images": ";".join(sample.image_sources),
        "prompt": sample.prompt,
        "response": visible(response_text),
        "response_ids": " ".join(str(int(t)) for t in prepared.response_ids),
        "answer": sample.answer,
        "n_tokens": int(prepared.inputs["input_ids"].shape[-1]),
        "n_prompt_tokens": prepared.prompt_length,
        "n_response_tokens": len(prepared.response_ids),
    }
    if positions is not None:
        info["grid_queries"] = " ".join(str(p) for p in positions)
    return SampleResult(table, info, grid)


def visible(text: str | None) -> str | None:
    """`text` with non-printable characters as backslash escapes (a random model's form feeds looked like
    an empty response in samples.csv); `response_ids` keeps the exact tokens."""
    if text is None:
        return None
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def response_summary(infos: list[dict], options: AttentionOptions) -> dict:
    """Where the response role came from and how many samples have one (a run without any has no
    response rows, so the response panels of the figures are missing)."""
    with_response = sum(1 for info in infos if info["n_response_tokens"] > 0)
    source = "generate" if options.generate else options.response_from or "--response"
    summary = {"from": source, "samples_with_response": with_response, "n_samples": len(infos)}
    if with_response == 0:
        summary["note"] = (
            "no sample has response tokens, so the tables have no response role: teacher-force a "
            "dataset's answers with --response-from answer, or use --generate N / --response"
        )
    return summary


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
        "dtype": str(next(loaded.model.parameters()).dtype).removeprefix("torch."),
        "attn_implementation": loaded.adapter.current_attention(),
        **loaded.adapter.template.manifest_entries(),
        "options": {
            "backend": options.backend,
            "per_head": options.per_head,
            "generate": options.generate,
            "seed": options.seed,
            "groupings": list(options.groupings),
            "response_from": options.response_from,
            "grid_queries": format_grid_queries(options.grid_queries) if options.grid_queries else None,
            **options.extra,
        },
        "n_samples": len(samples),
        "samples_fingerprint": fingerprint(
            [(s.sample_id, s.prompt, s.image_sources, s.response) for s in samples]
        ),
        "entropy_unit": "nats",
        "layer_index": "0-based",
        **({"grid": grid_manifest(options)} if options.grid_queries else {}),
        "versions": versions(),
    }


def grid_manifest(options: AttentionOptions) -> dict:
    return {
        "queries": format_grid_queries(options.grid_queries),
        "stage": GRID_STAGE,
        "table": "grid.parquet",
        "weight": "head-averaged attention probability from the query token to the image token at (row, col), "
        "a row of the full attention matrix (not renormalised over the grid)",
        "query": "0-based position in the LLM sequence (negative selectors resolved per sample)",
    }


def fingerprint(obj) -> str:
    """A short stable hash of anything JSON can write (samples, settings)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# What must match for finished samples to be reused: the model, the options, the dtype and the prompt's
# template. The samples themselves are matched one by one (fingerprint per sample), so a longer --limit
# extends a run.
RUN_SETTINGS = ("model", "options", "dtype", "template")
SETTINGS_FILE = "settings.json"
RUN_OUTPUTS = (
    "manifest.json",
    "attention.parquet",
    "attention.csv",
    "summary.parquet",
    "summary.csv",
    "samples.csv",
    "grid.parquet",
    "grid.csv",
    "grid.png",
)


def run_settings(manifest: dict) -> dict:
    """The manifest's resume-relevant part, as it reads back from JSON."""
    return json.loads(json.dumps({k: manifest.get(k) for k in RUN_SETTINGS}, default=str))


def sample_fingerprint(sample: Sample) -> str:
    return fingerprint((sample.sample_id, sample.prompt, sample.image_sources, sample.response))


def setting_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """['options.per_head: False -> True', ...]: every leaf that differs between two settings dicts."""
    found = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += setting_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key}: {a} -> {b}")
    return found


def _part(parts: Path, k: int, suffix: str = ".parquet") -> Path:
    return parts / f"{k:07d}{suffix}"


def _check_finished_parts(
    out_dir: Path, parts: Path, samples: list[Sample], fingerprint_of: Callable[[Sample], str]
) -> None:
    """Every finished part must belong to the same sample as now (else the dataset changed under the run)."""
    for k, sample in enumerate(samples):
        if _part(parts, k).exists():
            info = json.loads(_part(parts, k, ".json").read_text())
            if info.get("_fingerprint") != fingerprint_of(sample):
                raise ProbeError(
                    f"{out_dir} holds sample {k + 1} ('{info.get('sample')}') computed from other input than "
                    f"sample '{sample.sample_id}' now (the dataset changed); pass --overwrite or choose another --out"
                )


def prepare_run_dir(
    out_dir: Path,
    manifest: dict,
    samples: list[Sample],
    overwrite: bool,
    fingerprint_of: Callable[[Sample], str] = sample_fingerprint,
) -> Path | None:
    """Check the run directory; return its parts folder (finished samples of the same settings kept), or
    None when it already holds this exact finished run (nothing to do). `fingerprint_of`: what of a
    sample a finished part must match (`store_parts` records it).

    Refusals name what differs. A finished run keeps `.parts/`, so rerunning with a larger --limit
    computes only the new samples.
    """
    out_dir = Path(out_dir)
    parts = out_dir / PARTS
    if overwrite:
        shutil.rmtree(parts, ignore_errors=True)
        for name in RUN_OUTPUTS:
            (out_dir / name).unlink(missing_ok=True)
    settings = run_settings(manifest)
    finished = out_dir / "manifest.json"
    if finished.is_file():
        old = json.loads(finished.read_text())
        diffs = setting_differences(run_settings(old), settings)
        if diffs:
            raise ProbeError(
                f"{out_dir} holds a finished run with other settings ({'; '.join(diffs)}); "
                "pass --overwrite or choose another --out"
            )
        if old.get("samples_fingerprint") == manifest["samples_fingerprint"]:
            return None
        n_old = int(old.get("n_samples", 0))
        if len(samples) <= n_old or not (parts / SETTINGS_FILE).is_file():
            raise ProbeError(
                f"{out_dir} holds a finished run of {n_old} sample(s); this command's {len(samples)} are fewer "
                "or other ones (only a longer --limit extends a run); pass --overwrite or choose another --out"
            )
        _check_finished_parts(out_dir, parts, samples, fingerprint_of)
        finished.unlink()  # from here on the directory holds an unfinished (longer) run
    elif parts.exists():
        saved = parts / SETTINGS_FILE
        if not saved.is_file():
            raise ProbeError(
                f"{out_dir} holds an unfinished run of an older probe version; pass --overwrite or choose another --out"
            )
        diffs = setting_differences(json.loads(saved.read_text()), settings)
        if diffs:
            raise ProbeError(
                f"{out_dir} holds an unfinished run with other settings ({'; '.join(diffs)}); "
                "pass --overwrite or choose another --out"
            )
        _check_finished_parts(out_dir, parts, samples, fingerprint_of)
    parts.mkdir(parents=True, exist_ok=True)
    write_json(parts / SETTINGS_FILE, settings)
    return parts


def store_parts(parts: Path, k: int, info: dict, tables: dict[str, pd.DataFrame], fingerprint: str) -> None:
    """Sample k's info (.json, with its fingerprint) first, then its tables in the order given, the main
    `.parquet` last (its presence marks the sample done). Any process may write them (`--executor ray`)."""
    write_json(_part(parts, k, ".json"), {**info, "_fingerprint": fingerprint})
    for suffix, table in tables.items():
        atomic_write(_part(parts, k, suffix), lambda p, table=table: table.to_parquet(p, index=False))


def attention_work(loaded: LoadedModel, sample: Sample, options: AttentionOptions):
    """(info, {suffix: table}) of one sample: what `store_parts` keeps per sample."""
    result = probe_sample(loaded, sample, options)
    tables = {} if result.grid is None else {".grid.parquet": result.grid}
    return result.info, {**tables, ".parquet": result.table}


Work = Callable[[LoadedModel, Sample], tuple[dict, dict[str, pd.DataFrame]]]


def probe_shard(
    reload: Callable[[], LoadedModel], items: list, work: Work, parts: Path, fingerprint_of
) -> None:
    """A worker's share: load the model once, then work on and store each (k, sample)."""
    loaded = reload()
    for k, sample in items:
        info, tables = work(loaded, sample)
        store_parts(parts, k, info, tables, fingerprint_of(sample))


def compute_parts(
    out_dir: Path,
    fresh: bool,
    samples: list[Sample],
    parts: Path,
    loaded: LoadedModel,
    work: Work,
    fingerprint_of: Callable[[Sample], str] = sample_fingerprint,
    progress: bool = True,
    executor: str = "local",
    reload: Callable[[], LoadedModel] | None = None,
    address: str | None = None,
) -> None:
    """`work(loaded, sample)` -> (info, {suffix: table}) for every sample without a finished part, stored by
    `store_parts` (the main `.parquet` last: its presence marks the sample done, so a killed run resumes
    without losing or duplicating finished samples). Here, with progress, or with `executor="ray"` split
    over as many Ray tasks as the cluster runs at once (its GPUs on CUDA), each loading the model once
    with `reload()`; `work` must then be picklable (a module-level function or a `functools.partial` of
    one). A ProbeError before any sample is done leaves no trace of the run (no new directory)."""
    if executor != "local" and reload is None:
        raise ProbeError(f"--executor {executor} needs a way to load the model in each worker (reload=)")
    todo = [(k, s) for k, s in enumerate(samples) if not _part(parts, k).exists()]
    if len(todo) < len(samples):
        print(f"resuming: {len(samples) - len(todo)} of {len(samples)} samples already done")
    try:
        if executor == "local":
            for k, sample in tqdm(
                todo, desc="samples", unit="sample", disable=not progress or len(samples) < 2
            ):
                store_parts(parts, k, *work(loaded, sample), fingerprint_of(sample))
        elif todo:
            from probe.executors import ray_worker_count, run_tasks

            gpus = 1.0 if next(loaded.model.parameters()).device.type == "cuda" else 0.0
            n = min(len(todo), ray_worker_count(gpus, address)) if executor == "ray" else 1
            shards = [(reload, todo[i::n], work, parts, fingerprint_of) for i in range(n)]
            run_tasks(probe_shard, shards, executor, address, gpus=gpus, progress=progress, desc="shards")
    except ProbeError:
        if not any(_part(parts, k).exists() for k in range(len(samples))):
            shutil.rmtree(out_dir if fresh else parts, ignore_errors=True)  # nothing done: leave nothing
        raise


def run_attention(
    loaded: LoadedModel,
    samples: list[Sample],
    out_dir: Path,
    options: AttentionOptions,
    overwrite: bool = False,
    progress: bool = True,
    dataset: Path | None = None,
    limit: int | None = None,
    command: str | None = None,
    executor: str = "local",
    reload: Callable[[], LoadedModel] | None = None,
    address: str | None = None,
) -> pd.DataFrame:
    """Probe every sample (resuming finished ones), then write the table, summary, manifest and figures.

    `executor="ray"` shards the unfinished samples over Ray tasks (one GPU each on CUDA), each loading the
    model with `reload()` and writing the same parts; this process then merges them as a local run does.

    Per sample, `.parts/` gets its info (.json, with the sample's fingerprint), its grid rows (.grid.parquet,
    with grid queries) and last its attention rows (.parquet), whose presence marks the sample done; the parts
    stay after the run, so a larger --limit later computes only the new samples. A ProbeError before any
    sample is done leaves no trace of the run (no new directory). Rerunning a finished run returns its table.
    `dataset`, `limit` and `command` (the command line) are recorded in the manifest's provenance.
    """
    for sample in samples:
        loaded.adapter.validate(sample)
    check_grid_options(options, samples)
    out_dir = Path(out_dir)
    fresh = not out_dir.exists()
    manifest = manifest_for(loaded, options, samples)
    parts = prepare_run_dir(out_dir, manifest, samples, overwrite)
    if parts is None:
        print(
            f"{out_dir} already holds this finished run ({len(samples)} sample(s), same settings): nothing to do"
        )
        return read_table(out_dir, "attention")
    work = partial(attention_work, options=options)
    compute_parts(
        out_dir,
        fresh,
        samples,
        parts,
        loaded,
        work,
        progress=progress,
        executor=executor,
        reload=reload,
        address=address,
    )
    table = pd.concat(
        [pd.read_parquet(parts / f"{k:07d}.parquet") for k in range(len(samples))], ignore_index=True
    )
    infos = [json.loads(_part(parts, k, ".json").read_text()) for k in range(len(samples))]
    for info in infos:
        info.pop("_fingerprint", None)
    manifest["response"] = response_summary(infos, options)
    if "note" in manifest["response"]:
        print(f"note: {manifest['response']['note']}")
    grid = None
    if options.grid_queries:
        grid = to_grid_table([pd.read_parquet(parts / f"{k:07d}.grid.parquet") for k in range(len(samples))])
    manifest["provenance"] = run_provenance(
        loaded.source, loaded.revision, probe_home(), dataset=dataset, limit=limit, command=command
    )
    finish_run(out_dir, table, pd.DataFrame(infos), manifest, grid=grid)
    return table


def finish_run(
    out_dir: Path,
    table: pd.DataFrame,
    samples: pd.DataFrame,
    manifest: dict,
    grid: pd.DataFrame | None = None,
) -> None:
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
    if grid is not None:
        write_table(grid, out_dir, "grid")
        if len(grid):
            from analyses.attention_maps import plot_grid_attention, sample_pictures

            sample = grid["sample"].iloc[0]
            fig = plot_grid_attention(
                grid, sample=sample, pictures=sample_pictures(samples, sample), title_prefix=title
            )
            atomic_write(out_dir / "grid.png", lambda p: fig.savefig(p, dpi=120, format="png"))
            plt.close(fig)
    write_json(out_dir / "manifest.json", manifest)


def load_run(out_dir: Path) -> tuple[pd.DataFrame, dict]:
    """Read a finished run back: (tidy table, manifest)."""
    out_dir = Path(out_dir)
    if not (out_dir / "manifest.json").is_file():
        raise ProbeError(f"{out_dir} is not a finished probe run (no manifest.json)")
    return read_table(out_dir, "attention"), json.loads((out_dir / "manifest.json").read_text())


def load_grid(out_dir: Path) -> pd.DataFrame:
    """The grid table of a finished run made with --grid-queries."""
    out_dir = Path(out_dir)
    if not (out_dir / "grid.parquet").is_file():
        raise ProbeError(f"{out_dir} has no grid.parquet: rerun `probe attention` with --grid-queries")
    return read_table(out_dir, "grid")
