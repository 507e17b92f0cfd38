"""`probe drop | knockout | prune`: one tidy row per sample x setting (baseline always included), as a
resumable run with the machinery of `probe attention` (run directory, `.parts/`, resume key).

A run directory holds:
    results.parquet / .csv   one row per sample x setting: correct, gold_logprob, first_gold_prob,
                             first_gold_rel_change_pct, kl_first_token, tokens_processed, ...
    summary.parquet / .csv   per setting x metric: n, mean, 95% bootstrap interval over samples
    manifest.json            model, settings, scoring, options, versions
    <command>.png            the figure (Fig. 5 for drop; relative change per layer for knockout;
                             accuracy vs kept fraction for prune)
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pandas as pd
import torch

from probe.attention_job import PARTS, compute_parts, fingerprint, prepare_run_dir, sample_fingerprint
from probe.errors import ProbeError
from probe.inputs import Sample
from probe.interventions.base import Baseline, Intervention
from probe.interventions.metrics import (
    is_correct,
    kl_divergence,
    relative_change_pct,
    scoring_description,
    summarise,
)
from probe.interventions.run import Outcome, run_sample
from probe.provenance import run_provenance
from probe.results import atomic_write, versions, write_json, write_table
from probe.zoo import LoadedModel, probe_home


@dataclass
class AblationOptions:
    command: str  # drop | knockout | prune
    max_new_tokens: int = 8
    only_correct: bool = False  # summary over the samples the baseline answers right
    seed: int = 0  # bootstrap
    spec: dict = field(default_factory=dict)  # the command's own options, for the manifest
    dataset: dict = field(default_factory=dict)  # where the samples came from (path, format, options)


def answer_ids(adapter, sample: Sample) -> list[int]:
    """The gold answer as the model would produce it after the prompt (a space after 'ASSISTANT:')."""
    rendered = adapter.render(sample.prompt)
    answer = sample.answer.strip()
    return adapter.encode_response(answer if rendered[-1:].isspace() else " " + answer)


def check_settings(loaded: LoadedModel, samples: list[Sample], settings: list[Intervention]) -> None:
    """Every check that needs no forward pass: gold answers, layer windows, role names."""
    missing = [s.sample_id for s in samples if not (s.answer or "").strip()]
    if missing:
        raise ProbeError(
            f"the ablation metrics need gold answers: sample '{missing[0]}' has no 'answer' "
            f"({len(missing)} of {len(samples)} samples without one)"
        )
    adapter = loaded.adapter
    for sample in samples:
        adapter.validate(sample)
    prepared = adapter.prepare(samples[0], response_ids=[])
    for setting in settings:
        if setting.stage not in adapter.stages:
            raise ProbeError(
                f"'{loaded.name}' has no {setting.stage} stage (stages: {', '.join(adapter.stages)})"
            )
        roles = prepared.sequence_roles.get(setting.stage, prepared.roles[setting.stage])
        setting.check(adapter.num_layers(setting.stage), roles.labels)


def with_baseline(settings: list[Intervention]) -> list[Intervention]:
    """The baseline first, counted in the stage the settings intervene in."""
    return [Baseline(settings[0].stage if settings else "llm"), *settings]


def sample_rows(loaded: LoadedModel, sample: Sample, settings: list[Intervention], options) -> pd.DataFrame:
    """The baseline and every setting on one sample."""
    adapter = loaded.adapter
    tokenizer = loaded.processor.tokenizer
    gold = answer_ids(adapter, sample)
    rows = []
    base: Outcome | None = None
    for setting in with_baseline(settings):
        # the baseline's prompt cache is reused by every setting that leaves a prefix of the prompt unchanged
        outcome = run_sample(
            adapter,
            sample,
            setting,
            gold,
            options.max_new_tokens,
            baseline_cache=base.prompt_cache if base else None,
            keep_cache=base is None,
        )
        base = base or outcome
        text = tokenizer.decode(outcome.generated, skip_special_tokens=True)
        p_first = float(outcome.first_logprobs[gold[0]].exp())
        p_base = float(base.first_logprobs[gold[0]].exp())
        rows.append(
            {
                "model": loaded.name,
                "sample": sample.sample_id,
                **setting.columns(),
                "answer": sample.answer,
                "generated": text.strip(),
                "scoring": sample.scoring,
                "correct": is_correct(text, sample.answer, sample.choices),
                "gold_logprob": outcome.gold_logprob,
                "first_gold_prob": p_first,
                "first_gold_rel_change_pct": relative_change_pct(p_first, p_base),
                "kl_first_token": kl_divergence(base.first_logprobs, outcome.first_logprobs),
                "tokens_processed": outcome.tokens_processed,
            }
        )
    table = pd.DataFrame(rows)
    table["baseline_correct"] = bool(table["correct"].iloc[0])
    return table


def manifest_for(loaded: LoadedModel, samples, settings, options: AblationOptions) -> dict:
    scoring = scoring_description([s.scoring for s in samples])
    return {
        "command": options.command,
        "model": {
            "name": loaded.name,
            "source": loaded.source,
            "family": loaded.family,
            "revision": loaded.revision,
        },
        "device": str(loaded.adapter.device),
        "dtype": str(next(loaded.model.parameters()).dtype),
        **loaded.adapter.template.manifest_entries(),
        "options": {
            "max_new_tokens": options.max_new_tokens,
            "only_correct": options.only_correct,
            "seed": options.seed,
            **options.spec,
        },
        "dataset": options.dataset,
        "settings": [s.columns() for s in with_baseline(settings)],
        "n_samples": len(samples),
        "samples_fingerprint": fingerprint(
            [(s.sample_id, s.prompt, s.image_sources, s.answer) for s in samples]
        ),
        "scoring": scoring,
        "scoring_per_sample": dict(Counter(s.scoring for s in samples)),
        "metrics": {
            "correct": "generated answer (greedy, KV cache) == gold, " + scoring,
            "gold_logprob": "sum of log p(gold answer token | prefix), teacher-forced, nats",
            "first_gold_prob": "p(first gold answer token | prompt)",
            "first_gold_rel_change_pct": "(p - p_baseline) / p_baseline x 100, same sample",
            "kl_first_token": "KL(baseline || ablated) of the first answer token's distribution, nats",
            "tokens_processed": "query tokens x layers of the intervened stage, teacher-forced forward",
        },
        "summary": "mean and 95% percentile-bootstrap interval over samples"
        + (", samples the baseline answers right only" if options.only_correct else ""),
        "layer_index": "0-based",
        "versions": versions(),
    }


def ablation_fingerprint(sample: Sample) -> str:
    """What a finished part must match: the sample as `probe attention` sees it, and its gold answer (an
    edited answers file changes every metric)."""
    return fingerprint((sample_fingerprint(sample), sample.answer, sample.choices))


def ablation_work(loaded: LoadedModel, sample: Sample, settings: list[Intervention], options) -> tuple:
    """(info, {suffix: table}) of one sample: its rows for the baseline and every setting."""
    return {"sample": sample.sample_id}, {".parquet": sample_rows(loaded, sample, settings, options)}


def run_ablation(
    loaded: LoadedModel,
    samples: list[Sample],
    settings: list[Intervention],
    out_dir: Path,
    options: AblationOptions,
    overwrite: bool = False,
    progress: bool = True,
    dataset: Path | None = None,
    limit: int | None = None,
    command: str | None = None,
    executor: str = "local",
    reload: Callable[[], LoadedModel] | None = None,
    address: str | None = None,
) -> pd.DataFrame:
    """`dataset`, `limit` and `command` (the command line) are recorded in the manifest's provenance.
    `executor="ray"` shards the samples over Ray workers, each loading the model with `reload()`."""
    check_settings(loaded, samples, settings)
    out_dir = Path(out_dir)
    fresh = not out_dir.exists()
    manifest = manifest_for(loaded, samples, settings, options)
    parts = prepare_run_dir(out_dir, manifest, samples, overwrite, ablation_fingerprint)
    if parts is None:  # this exact run is finished: nothing to do
        print(f"{out_dir} already holds this finished run: nothing to do")
        return load_results(out_dir)[0]
    torch.manual_seed(options.seed)

    work = partial(ablation_work, settings=settings, options=options)
    compute_parts(
        out_dir,
        fresh,
        samples,
        parts,
        loaded,
        work,
        ablation_fingerprint,
        progress,
        executor=executor,
        reload=reload,
        address=address,
    )
    results = pd.concat(
        [pd.read_parquet(parts / f"{k:07d}.parquet") for k in range(len(samples))], ignore_index=True
    )
    manifest["provenance"] = run_provenance(
        loaded.source, loaded.revision, probe_home(), dataset=dataset, limit=limit, command=command
    )
    finish(out_dir, results, manifest, options)  # .parts stays: a longer --limit computes only new samples
    return results


def setting_keys(results: pd.DataFrame) -> list[str]:
    ignore = {"model", "sample", "answer", "generated", "baseline_correct", "scoring"}
    metrics = {"correct", "gold_logprob", "first_gold_prob", "first_gold_rel_change_pct", "kl_first_token"}
    return [c for c in results.columns if c not in ignore | metrics | {"tokens_processed"}]


def finish(out_dir: Path, results: pd.DataFrame, manifest: dict, options: AblationOptions) -> None:
    """Tables, figure, and the manifest last (its presence marks a finished run)."""
    import matplotlib.pyplot as plt

    from analyses.interventions import FIGURES

    write_table(results, out_dir, "results")
    chosen = results[results["baseline_correct"]] if options.only_correct else results
    summary = summarise(chosen, setting_keys(results), seed=options.seed)
    write_table(summary, out_dir, "summary")
    fig = FIGURES[options.command](
        summary, title=f"{manifest['model']['name']} ({manifest['n_samples']} samples)"
    )
    atomic_write(out_dir / f"{options.command}.png", lambda p: fig.savefig(p, dpi=120, format="png"))
    plt.close(fig)
    write_json(out_dir / "manifest.json", manifest)


def load_results(out_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(results, summary, manifest) of a finished run."""
    from probe.results import read_table

    out_dir = Path(out_dir)
    if not (out_dir / "manifest.json").is_file():
        raise ProbeError(f"{out_dir} is not a finished ablation run (no manifest.json)")
    manifest = json.loads((out_dir / "manifest.json").read_text())
    return read_table(out_dir, "results"), read_table(out_dir, "summary"), manifest


__all__ = ["AblationOptions", "run_ablation", "load_results", "PARTS"]
