"""Figures of `probe efficiency` (paper Figs. 7-9): the tidy table in, a matplotlib figure out.

Redraw from a saved run: `plot_flops_by_component(probe.results.read_table("runs/eff", "efficiency"))`.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from probe.efficiency.flops import COMPONENTS

GIB = 2**30


def plot_flops_vs_vision_tokens(table: pd.DataFrame, convention: str = "dense+attention") -> Figure:
    """Prefill FLOPs against vision tokens per image (paper Fig. 7): LLaVA-Mini's C sweep as a line, every
    other model as a point."""
    rows = table[
        (table.quantity == "flops_prefill") & (table.component == "total") & (table.convention == convention)
    ]
    figure, ax = plt.subplots(figsize=(6, 4))
    for model, group in rows.groupby("model", sort=False):
        group = group.sort_values("llm_vision_tokens")
        ax.plot(group.llm_vision_tokens, group.value / 1e12, marker="o", label=model)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("vision tokens per image in the LLM")
    ax.set_ylabel(f"prefill TFLOPs ({convention})")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return figure


def plot_flops_by_component(table: pd.DataFrame, convention: str = "dense+attention") -> Figure:
    """Stacked bars: prefill FLOPs of each component, one bar per model (main setting)."""
    rows = table[
        (table.setting == "main")
        & (table.quantity == "flops_prefill")
        & (table.convention == convention)
        & table.component.isin(COMPONENTS)
    ]
    wide = rows.pivot_table(index="label", columns="component", values="value", sort=False).fillna(0) / 1e12
    wide = wide[[c for c in COMPONENTS if c in wide.columns]]
    figure, ax = plt.subplots(figsize=(1.6 + 1.4 * len(wide), 4))
    bottom = pd.Series(0.0, index=wide.index)
    for component in wide.columns:
        ax.bar(range(len(wide)), wide[component], bottom=bottom, label=component)
        bottom += wide[component]
    ax.set_xticks(range(len(wide)), [label.replace(" [", "\n[") for label in wide.index], fontsize=7)
    ax.set_ylabel(f"prefill TFLOPs ({convention})")
    ax.legend(fontsize=8)
    return figure


def plot_memory_vs_video_length(table: pd.DataFrame, hours: float = 3.0, fps: float = 1.0) -> Figure:
    """Memory against video length at `fps` (paper Fig. 9): all weights + KV cache of every frame so far."""
    rows = table[table.setting == "main"]
    dtype = rows[rows.quantity == "kv_bytes_per_frame"].dtype.iloc[0]
    figure, ax = plt.subplots(figsize=(6, 4))
    seconds = pd.Series(range(0, int(hours * 3600) + 1, 60), dtype=float)
    for label, group in rows[rows.dtype == dtype].groupby("label", sort=False):
        weights = group[(group.quantity == "weights_bytes") & (group.component == "total")].value.iloc[0]
        per_frame = group[group.quantity == "kv_bytes_per_frame"].value.iloc[0]
        ax.plot(seconds / 60, (weights + seconds * fps * per_frame) / GIB, label=label)
    for budget in (24, 40, 80):
        ax.axhline(budget, color="grey", lw=0.8, ls="--")
        ax.annotate(f"{budget} GiB", (0, budget), fontsize=7, color="grey", va="bottom")
    ax.set_yscale("log")
    ax.set_xlabel(f"video length (minutes, {fps:g} fps)")
    ax.set_ylabel(f"weights + KV cache (GiB, {dtype})")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return figure


def plot_latency_vs_vision_tokens(table: pd.DataFrame) -> Figure | None:
    """Measured median latency (first token and per generated token) against vision tokens (paper Fig. 8);
    None when nothing was measured."""
    rows = table[table.quantity.isin(["latency_first_token_ms", "latency_per_token_ms"])]
    if rows.empty:
        return None
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, quantity in zip(axes, ("latency_first_token_ms", "latency_per_token_ms"), strict=True):
        for label, group in rows[rows.quantity == quantity].groupby("label", sort=False):
            stats = group.set_index("convention").value
            low, high = stats["median"] - stats["p25"], stats["p75"] - stats["median"]
            ax.errorbar(
                group.llm_vision_tokens.iloc[0],
                stats["median"],
                yerr=[[low], [high]],
                fmt="o",
                capsize=3,
                label=label,
            )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("vision tokens per image in the LLM")
        ax.set_ylabel(quantity.replace("_ms", " (ms, median, IQR)").replace("_", " "))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return figure
