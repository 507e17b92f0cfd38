"""`probe paper --model M --out DIR`: every analysis of the LLaVA-Mini paper's Sections 3 and 6 that
applies to one model, each run by its own job into a subdirectory, then DIR/report.pdf.

    attention/        Figs. 2-3 (mass, entropy; LLaVA-Mini: LLM and pre-fusion stages) + Fig. 4 grid maps
    token-map/        Fig. 4 token x token map of the first sample
    drop/             Fig. 5: vision tokens removed window by window (LLaVA-Mini: also drop-prefusion/)
    efficiency/       Figs. 7-9, Tables 7 and 14 (FLOPs on the meta device, memory); a LLaVA-v1.5 model is
                      compared with the LLaVA-Mini built on it (C = 1, N = 4), as in the paper
    compression/      Fig. 12 (LLaVA-Mini only)
    report.pdf        all of it, plus a sweep run directory when given

The jobs resume on their own (attention and drop keep finished samples in `.parts/`; efficiency and the
compression maps take seconds and are rewritten), so rerunning the same command after a kill finishes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import click

from probe.errors import ProbeError

REPORT = "report.pdf"


@dataclass
class PaperOptions:
    model: str
    out: Path
    dataset: Path | None = None  # default: the organism's test split (images + questions + answers)
    n_samples: int = 16
    max_new_tokens: int = 8  # answer length of the drop runs
    compare: list[str] = field(default_factory=list)  # more models for the efficiency figures
    sweep: Path | None = None
    per_head: bool = False  # the token x token map of every head too (Fig. 4 per head)
    device: str = "cpu"
    dtype: str = "auto"
    progress: bool = True
    command: str | None = None  # the command line, for the manifests' provenance


def _step(text: str) -> None:
    click.echo(f"paper: {text}", err=True)


def check_paper_inputs(options: PaperOptions) -> list[Path]:
    """Every check that needs no model: output directory, sweep directory, dataset; returns extra run dirs."""
    from probe.report.registry import read_run
    from probe.results import check_output_dir

    check_output_dir(options.out)
    if options.n_samples < 1 or options.max_new_tokens < 1:
        raise ProbeError("--samples and --max-new-tokens must be at least 1")
    if options.dataset is not None and not Path(options.dataset).is_file():
        raise ProbeError(f"--dataset {options.dataset} is not a file")
    extra = []
    if options.sweep is not None:
        run = read_run(Path(options.sweep))
        if run.command != "sweep":
            raise ProbeError(f"--sweep {options.sweep} is a '{run.command}' run, not a sweep")
        extra.append(run.path)
    return extra


def run_paper(options: PaperOptions) -> Path:
    """Run every applicable job into `options.out`, then write the report; returns the report's path."""
    from analyses.compression_map import save_compression_run
    from probe.attention_job import AttentionOptions, run_attention
    from probe.efficiency.job import EfficiencyOptions, run_efficiency
    from probe.inputs import read_dataset
    from probe.interventions.drop import DropVision, parse_layer_windows
    from probe.interventions.job import AblationOptions, run_ablation
    from probe.organism.data import ensure_split
    from probe.report import write_report
    from probe.token_map import save_token_map_run
    from probe.zoo import load

    extra = check_paper_inputs(options)
    out = Path(options.out)
    dataset = Path(options.dataset) if options.dataset else ensure_split("test")
    samples = read_dataset(dataset, "answer")[: options.n_samples]
    loaded = load(options.model, device=options.device, dtype=options.dtype)
    mini = loaded.family == "llava_mini"
    runs: list[Path] = []

    _step(f"attention profile of {loaded.name} on {len(samples)} samples of {dataset}")
    attention = AttentionOptions(response_from="answer", grid_queries=None if mini else "last,response")
    run_attention(
        loaded,
        samples,
        out / "attention",
        attention,
        progress=options.progress,
        dataset=dataset,
        limit=options.n_samples,
        command=options.command,
    )
    runs.append(out / "attention")

    _step("token x token attention of the first sample")
    save_token_map_run(
        loaded, samples[0], out / "token-map", command=options.command, per_head=options.per_head
    )
    runs.append(out / "token-map")

    for stage in ("llm", "prefusion") if mini else ("llm",):
        n_layers = loaded.adapter.num_layers(stage)
        window = max(1, round(n_layers / 8))  # the paper's 8 windows (4 layers each on 32-layer LLaVA-v1.5)
        settings = [DropVision(w, stage=stage) for w in parse_layer_windows(n_layers, window, window)]
        name = "drop" if stage == "llm" else "drop-prefusion"
        _step(f"vision tokens dropped per window of {window} {stage} layer(s) ({len(settings)} windows)")
        spec = {"window": window, "stride": window, "mode": "mask", "stage": stage}
        run_ablation(
            loaded,
            samples,
            settings,
            out / name,
            AblationOptions(command="drop", max_new_tokens=options.max_new_tokens, spec=spec),
            progress=options.progress,
            dataset=dataset,
            limit=options.n_samples,
            command=options.command,
        )
        runs.append(out / name)

    if loaded.family == "llava":  # the paper's comparison: the LLaVA-Mini built on this model (C = 1, N = 4)
        efficiency = EfficiencyOptions(
            models=[options.model, options.model, *options.compare], queries=1, prefusion=4
        )
    else:
        efficiency = EfficiencyOptions(models=[options.model, *options.compare])
    compared = " and the LLaVA-Mini built on it" if loaded.family == "llava" else ""
    _step(f"efficiency (FLOPs on the meta device, memory) of {loaded.name}{compared}")
    run_efficiency(efficiency, out / "efficiency")
    runs.append(out / "efficiency")

    if mini:
        _step("compression maps")
        save_compression_run(loaded, samples[0], out / "compression", command=options.command)
        runs.append(out / "compression")

    report = out / REPORT
    counts = write_report([*runs, *extra], report, title=f"probe paper: {loaded.name}")
    _step(f"wrote {report} ({counts['pages']} pages: {counts['figures']} figures, {counts['tables']} tables)")
    return report
