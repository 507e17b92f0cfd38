"""The built-in run types' report pages: `probe attention`, `drop` / `knockout` / `prune`, `efficiency`
and the compression maps `probe paper` saves. Each function reads saved tables only."""

from __future__ import annotations

import pandas as pd

from probe.report.registry import FigureItem, Item, Run, TableItem, register


def run_labels(runs: list[Run]) -> list[str]:
    """The model's name per run, with the directory name added where two runs share a model."""
    models = [r.model for r in runs]
    return [m if models.count(m) == 1 else f"{m} ({r.path.name})" for m, r in zip(models, runs, strict=True)]


def _describe_runs(runs: list[Run], labels: list[str]) -> tuple[str, str]:
    names = ", ".join(labels)
    counts = "; ".join(f"{label}: {run.on_what()}" for label, run in zip(labels, runs, strict=True))
    return names, counts


@register("attention", needs=("attention.parquet", "samples.csv"))
def attention_pages(runs: list[Run]) -> list[Item]:
    """Figs. 2-3 of every stage with all attention runs side by side (paper and fine roles), then each
    run's grid maps (Fig. 4) and its samples."""
    from analyses.attention_maps import plot_run_grid
    from analyses.attention_profile import label_runs, plot_profile, profile_caption

    labels = run_labels(runs)
    table = label_runs({label: run.table("attention") for label, run in zip(labels, runs, strict=True)})
    names, counts = _describe_runs(runs, labels)
    items: list[Item] = []
    for stage in dict.fromkeys(table["stage"]):
        for value, fig_no in (("mass", 2), ("entropy", 3)):
            figure = plot_profile(table, value, stage=stage)
            caption = f"Paper Fig. {fig_no}. " + profile_caption(value, names, counts, stage)
            items.append(FigureItem(figure, caption))
    fine = table[(table["grouping"] == "fine") & (table["stage"] == "llm")]
    targets = [t for t in ("last", "response") if t in set(fine["tgt"])]
    if targets:
        figure = plot_profile(table, "mass", grouping="fine", targets=targets)
        caption = (
            "Fine grouping: "
            + profile_caption("mass", names, counts, "llm", "fine")
            + f" Targets shown: {', '.join(targets)} (the position that predicts the first response token, "
            "and the response tokens)."
        )
        items.append(FigureItem(figure, caption))
    for label, run in zip(labels, runs, strict=True):
        if (run.path / "grid.parquet").is_file():
            figure = plot_run_grid(run.path, title_prefix=label)
            caption = (
                f"Paper Fig. 4 (right): head-averaged attention of the query tokens "
                f"({run.manifest.get('options', {}).get('grid_queries')}) onto the image's patch grid, first "
                f"sample of {label} ({run.on_what()}), per layer, log colour scale over the picture; weights "
                "are probabilities over the whole sequence (a map's sum is the query's mass on the image)."
            )
            items.append(FigureItem(figure, caption))
        samples = pd.read_csv(run.path / "samples.csv", dtype={"sample": str})
        columns = [c for c in ("sample", "prompt", "response", "answer", "n_tokens") if c in samples.columns]
        shown = samples[columns].copy()
        shown["prompt"] = shown["prompt"].astype(str).str.replace("\n", " ").str.slice(0, 60)
        items.append(
            TableItem(shown, f"Samples of {label}", f"{len(samples)} samples; prompts cut to 60 characters.")
        )
    return items


def _ablation_pages(runs: list[Run]) -> list[Item]:
    from analyses.interventions import FIGURES
    from analyses.tables import ablation_table

    what = {
        "drop": "Paper Fig. 5: accuracy (normalised exact match of the greedy answer) when every vision token "
        "is removed from a window of layers",
        "knockout": "Attention knockout: relative change (%) of the probability of the first gold answer token "
        "when the blocked edges are cut in a window of layers centred on each layer",
        "prune": "FastV: accuracy when only the image tokens the last prompt token attends to most are kept",
    }
    items: list[Item] = []
    for label, run in zip(run_labels(runs), runs, strict=True):
        summary = run.table("summary")
        figure = FIGURES[run.command](summary, title=f"{label} ({run.command})")
        options = ", ".join(f"{k}={v}" for k, v in run.manifest.get("options", {}).items() if v is not None)
        caption = (
            f"{what[run.command]}; {label}, {run.on_what()} ({options}). Bars / bands: "
            f"{run.manifest.get('summary', 'mean and 95% interval over samples')}."
        )
        items.append(FigureItem(figure, caption))
        items.append(
            TableItem(ablation_table(summary), f"{run.command} settings of {label}", "mean [95% interval]")
        )
    return items


for _command in ("drop", "knockout", "prune"):
    register(_command, needs=("summary.parquet",))(_ablation_pages)


@register("efficiency", needs=("efficiency.parquet",))
def efficiency_pages(runs: list[Run]) -> list[Item]:
    from analyses import efficiency as figs
    from analyses.tables import flops_by_component_table, vision_tokens_table

    items: list[Item] = []
    for run in runs:
        table = run.table("efficiency")
        request = run.manifest.get("options", {}).get("request", {})
        setting = (
            f"{request.get('resolution')} px, {request.get('frames')} frame(s), {request.get('prompt_tokens')} "
            f"prompt and {request.get('response_tokens')} response tokens"
        )
        models = ", ".join(dict.fromkeys(table[table["setting"] == "main"]["label"]))
        counted = "counted on the meta device with each model's real modules (FLOPs = 2 x MACs)"
        drawn = [
            (
                figs.plot_flops_vs_vision_tokens(table),
                f"Paper Fig. 7: prefill FLOPs (dense+attention) against "
                f"vision tokens per image, LLaVA-Mini's C sweep as a line; {models}; {setting}; {counted}.",
            ),
            (
                figs.plot_latency_vs_vision_tokens(table),
                f"Paper Fig. 8: measured latency (median, IQR) of the "
                f"first token and per generated token; {models}; {setting}; device {run.manifest.get('options', {}).get('device')}.",
            ),
            (
                figs.plot_memory_vs_video_length(table),
                f"Paper Fig. 9: weights + KV cache against video length "
                f"at 1 fps; {models}; dashed lines: 24 / 40 / 80 GiB.",
            ),
            (
                figs.plot_flops_by_component(table),
                f"Prefill FLOPs per component (dense+attention); {models}; {setting}.",
            ),
        ]
        items += [FigureItem(figure, caption) for figure, caption in drawn if figure is not None]
        items.append(
            TableItem(
                flops_by_component_table(table),
                "Paper Table 14: prefill GFLOPs per component",
                f"{setting}; convention dense+attention.",
            )
        )
        items.append(
            TableItem(
                vision_tokens_table(table),
                "Paper Table 7 (FLOPs): prefill GFLOPs against vision tokens",
                "Accuracies per configuration (Tables 6-8) come from a sweep run.",
            )
        )
    return items


@register("compression-map", needs=("compression.parquet",))
def compression_pages(runs: list[Run]) -> list[Item]:
    from analyses.compression_map import plot_saved_compression_map

    items: list[Item] = []
    for label, run in zip(run_labels(runs), runs, strict=True):
        figure = plot_saved_compression_map(run.path)
        caption = (
            f"Paper Fig. 12: head-averaged cross-attention of {label}'s compression queries over the image's "
            f"patch grid, laid over the picture ({run.manifest.get('image')}, frame {run.manifest.get('frame', 0)})."
        )
        items.append(FigureItem(figure, caption))
    return items


@register("token-map", needs=("token_map.parquet",))
def token_map_pages(runs: list[Run]) -> list[Item]:
    from analyses.attention_maps import plot_token_map

    items: list[Item] = []
    for label, run in zip(run_labels(runs), runs, strict=True):
        table = pd.read_parquet(run.path / "token_map.parquet")
        figure = plot_token_map(
            table, title=f"{label}: token x token attention, sample {run.manifest.get('sample')}"
        )
        roles = ", ".join(dict.fromkeys(table["key_role"].astype(str)))
        caption = (
            f"Paper Fig. 4 (left): head-averaged attention probability of every query token (rows) onto every "
            f"key token (columns) of one sample ({run.manifest.get('sample')}, {label}, eager forward) at LLM "
            f"layers {run.manifest.get('layers')}; log colour scale over 4 decades, keys a query cannot see "
            f"(causal mask) white; red lines are role boundaries, in order: {roles}."
        )
        items.append(FigureItem(figure, caption))
        heads = sorted(int(h) for h in table["head"].dropna().unique()) if "head" in table.columns else []
        for head in heads:
            figure = plot_token_map(
                table,
                head=head,
                title=f"{label}: token x token attention, head {head}, sample {run.manifest.get('sample')}",
            )
            items.append(
                FigureItem(
                    figure,
                    f"Head {head} alone (the head-averaged map above averages it with the others): attention "
                    f"probability query x key, same sample, layers and scale convention.",
                )
            )
    return items
