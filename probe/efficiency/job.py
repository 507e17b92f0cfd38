"""`probe efficiency`: FLOPs, memory and (optionally) latency of one or more models -> tidy table + figures.

Everything the user asked for is validated first (`plan`), so bad input costs nothing. Counting on the meta
device takes seconds per model, so a run is not resumable: it is rewritten whole, each file atomically.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

import click
import pandas as pd

from probe.efficiency.flops import COMPONENTS, build_meta_model, count_stages, flops_rows
from probe.efficiency.memory import DTYPE_BYTES, memory_rows, parameter_counts
from probe.efficiency.setups import Request, Setup, make_setup, with_queries
from probe.errors import ProbeError

SWEEP_QUERIES = (1, 2, 4, 8, 12, 24)  # C; C^2 = 1, 4, 16, 64, 144, 576 (the paper's Figs. 7-8)
TABLE = "efficiency"


@dataclass
class EfficiencyOptions:
    models: list[str]  # --model first, then every --compare
    request: Request = field(default_factory=Request)
    queries: int | None = None  # LLaVA-Mini knobs: apply to --model only
    prefusion: int | None = None
    kind: str | None = None
    dtypes: list[str] = field(default_factory=lambda: ["float16"])
    components: list[str] | None = None
    measure: bool = False
    repeats: int = 5
    device: str = "auto"


def plan(options: EfficiencyOptions) -> list[Setup]:
    """Every model's setup, every option checked; raises ProbeError before any work."""
    for dtype in options.dtypes:
        if dtype not in DTYPE_BYTES:
            raise ProbeError(f"unknown dtype '{dtype}': use {', '.join(DTYPE_BYTES)}")
    for component in options.components or []:
        if component not in COMPONENTS:
            raise ProbeError(f"unknown component '{component}': use {', '.join(COMPONENTS)}")
    if options.repeats < 1:
        raise ProbeError(f"--repeats must be >= 1, got {options.repeats}")
    setups = [
        make_setup(options.models[0], options.request, options.queries, options.prefusion, options.kind)
    ]
    setups += [make_setup(name, options.request) for name in options.models[1:]]
    if options.measure:
        from probe.efficiency.latency import check_measurable
        from probe.zoo import parse_device

        device = parse_device(options.device)
        for setup in setups:
            check_measurable(setup, sum(parameter_counts(setup, build_meta_model(setup)).values()), device)
    return setups


def _describe(setup: Setup, setting: str) -> dict:
    config, request = setup.config, setup.request
    mini = setup.family == "llava_mini"
    return {
        "model": setup.model,
        "label": setup.label,
        "family": setup.family,
        "setting": setting,
        "queries": config.compressor_size if mini else None,
        "prefusion": config.prefusion_layer_num if mini else None,
        "kind": config.compression_kind if mini else "",
        "resolution": request.resolution,
        "frames": request.frames,
        "prompt_tokens": request.prompt_tokens,
        "response_tokens": request.response_tokens,
        "llm_vision_tokens": setup.llm_vision_tokens,
        "llm_tokens": setup.llm_tokens,
    }


def setup_rows(setup: Setup, options: EfficiencyOptions) -> list[dict]:
    """FLOPs and memory of one setup, plus the FLOPs of its C sweep (LLaVA-Mini models)."""
    model = build_meta_model(setup)
    rows = [
        {**_describe(setup, "main"), "dtype": "", **r} for r in flops_rows(count_stages(setup, model), setup)
    ]
    rows += [{**_describe(setup, "main"), **r} for r in memory_rows(setup, model, options.dtypes)]
    if setup.family == "llava_mini":
        for c in SWEEP_QUERIES:
            if c != setup.config.compressor_size:
                variant = with_queries(setup, c)
                counts = count_stages(variant)
                rows += [
                    {**_describe(variant, "sweep"), "dtype": "", **r} for r in flops_rows(counts, variant)
                ]
    return rows


def measured_rows(setups: list[Setup], options: EfficiencyOptions) -> list[dict]:
    """Latency of every model, measured side by side (all loaded at once, repeats interleaved)."""
    from probe.efficiency.latency import Timing, latency_rows, load_for_timing, measure_side_by_side
    from probe.zoo import parse_device, parse_dtype

    device = parse_device(options.device)
    dtype = parse_dtype("auto" if device.type == "cpu" else options.dtypes[0], device)
    timings = [Timing(setup, load_for_timing(setup, device, dtype), device) for setup in setups]
    measure_side_by_side(timings, dtype, options.repeats)
    name = str(dtype).removeprefix("torch.")
    return [{**_describe(t.setup, "main"), **row} for t in timings for row in latency_rows(t, name)]


def ratio_rows(table: pd.DataFrame) -> list[dict]:
    """Each measured model's latency over the first model's (`--model`), paired round by round (both ran in
    the same round, under the same load): median, 25th and 75th percentile of the per-round ratios."""
    rows = []
    for quantity in ("latency_first_token_ms", "latency_per_token_ms"):
        rounds = table[(table.quantity == quantity) & table.convention.str.startswith("round ")]
        if rounds.label.nunique() < 2:
            continue
        wide = rounds.pivot_table(index="convention", columns="label", values="value", sort=False)
        labels = list(dict.fromkeys(rounds.label))
        base = labels[0]
        for label in labels[1:]:
            ratios = (wide[label] / wide[base]).tolist()
            quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
            first = rounds[rounds.label == label].iloc[0].to_dict()
            for stat, value in (
                ("", statistics.median(ratios)),
                (" p25", quartiles[0]),
                (" p75", quartiles[2]),
            ):
                rows.append(
                    {
                        **first,
                        "quantity": quantity.replace("_ms", "_ratio"),
                        "convention": f"vs {base}{stat}",
                        "value": value,
                        "unit": "x",
                    }
                )
    return rows


def run_efficiency(options: EfficiencyOptions, out: Path) -> pd.DataFrame:
    from probe.results import versions, write_json, write_table

    setups = plan(options)
    rows: list[dict] = []
    for setup in setups:
        click.echo(f"counting {setup.label} on the meta device ...", err=True)
        rows += setup_rows(setup, options)
    if options.measure:
        names = ", ".join(s.label for s in setups)
        click.echo(f"measuring {names} side by side ({options.repeats} rounds after 1 warm-up) ...", err=True)
        rows += measured_rows(setups, options)
    table = pd.DataFrame(rows)
    table = pd.concat([table, pd.DataFrame(ratio_rows(table))], ignore_index=True)
    if options.components:
        keep = set(options.components) | {"total"}
        table = table[~table.quantity.str.startswith("flops") | table.component.isin(keep)]
    table = table.reset_index(drop=True)
    out = Path(out)
    write_table(table, out, TABLE)
    figures = save_figures(table, out)
    write_json(
        out / "manifest.json",
        {
            "command": "efficiency",
            "options": {**options.__dict__, "request": options.request.__dict__},
            "models": {
                s.label: {"family": s.family, "config_source": s.source, "config": s.config.to_dict()}
                for s in setups
            },
            "table": f"{TABLE}.parquet",
            "figures": figures,
            "versions": versions(),
        },
    )
    return table


def save_figures(table: pd.DataFrame, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from analyses import efficiency as figs

    made = []
    for name, draw in (
        ("flops_vs_vision_tokens.png", figs.plot_flops_vs_vision_tokens),
        ("flops_by_component.png", figs.plot_flops_by_component),
        ("memory_vs_video_length.png", figs.plot_memory_vs_video_length),
        ("latency_vs_vision_tokens.png", figs.plot_latency_vs_vision_tokens),
    ):
        figure = draw(table)
        if figure is None:
            continue
        from probe.results import atomic_write

        atomic_write(
            out / name, lambda p, figure=figure: figure.savefig(p, dpi=120, bbox_inches="tight", format="png")
        )
        plt.close(figure)
        made.append(name)
    return made


def summary_lines(table: pd.DataFrame) -> list[str]:
    """One line per model: vision tokens, prefill TFLOPs in both conventions, KV MiB per image, frames in 24 GiB."""
    main = table[table.setting == "main"]
    lines = []
    for label, rows in main.groupby("label", sort=False):

        def value(quantity, convention=None, component="total", dtype=None, rows=rows):
            sel = rows[(rows.quantity == quantity) & (rows.component == component)]
            if convention is not None:
                sel = sel[sel.convention == convention]
            if dtype is not None:
                sel = sel[sel.dtype == dtype]
            return sel.value.iloc[0] if len(sel) else float("nan")

        dtype = rows[rows.quantity == "kv_bytes_per_image"].dtype.iloc[0]
        line = (
            f"{label}: {int(rows.llm_vision_tokens.iloc[0])} vision tokens/image, prefill "
            f"{_flops(value('flops_prefill', 'dense'))} dense / "
            f"{_flops(value('flops_prefill', 'dense+attention'))} with attention; KV "
            f"{value('kv_bytes_per_image', component='llm', dtype=dtype) / 2**20:.3f} MiB/image ({dtype}); "
            f"frames in 24 GiB: {value('frames_fit_24gib', 'kv-only', dtype=dtype):.0f} (KV only), "
            f"{value('frames_fit_24gib', 'weights+kv+activations', dtype=dtype):.0f} (after weights)"
        )
        context = value("frames_fit_context", "max_position_embeddings", component="llm")
        if rows.frames.iloc[0] > context:
            line += f"; NOTE: {int(rows.frames.iloc[0])} frames exceed the LLM's window ({int(context)} fit)"
        first = value("latency_first_token_ms", "median")
        if first == first:
            line += f"; first token {first:.1f} ms, {value('latency_per_token_ms', 'median'):.1f} ms/token"
        lines.append(line)
    ratios = table[table.quantity.str.endswith("_ratio")].set_index(["label", "quantity", "convention"]).value
    for (label, quantity, convention), value in ratios.items():
        if not convention.endswith((" p25", " p75")):
            low, high = (
                ratios[label, quantity, f"{convention} p25"],
                ratios[label, quantity, f"{convention} p75"],
            )
            name = quantity.replace("_", " ")
            lines.append(
                f"{label} {convention}: {name} = {value:.3f}x (paired rounds, IQR {low:.3f}-{high:.3f})"
            )
    return lines


def _flops(value: float) -> str:
    return f"{value / 1e12:.3f} TFLOPs" if value >= 1e11 else f"{value / 1e9:.3f} GFLOPs"
