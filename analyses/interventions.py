"""Figures of the ablation runs (`probe drop | knockout | prune`), from their summary table.

- `plot_drop_accuracy`: accuracy per dropped window of layers with the baseline as a line (paper Fig. 5);
- `plot_knockout`: relative change of the first gold token's probability per centre layer, one line
  per blocked edge (Zhang et al.);
- `plot_prune`: accuracy against the kept fraction of image tokens (FastV).
Error bars / bands are the summary's 95% bootstrap intervals.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def _metric(summary: pd.DataFrame, metric: str) -> pd.DataFrame:
    return summary[summary["metric"] == metric]


def _baseline(rows: pd.DataFrame) -> pd.Series | None:
    base = rows[rows["setting"] == "baseline"]
    return None if base.empty else base.iloc[0]


def _baseline_line(ax, base: pd.Series | None, label: str = "baseline") -> None:
    if base is None:
        return
    ax.axhline(base["mean"], color="black", lw=1.2, label=f"{label} {base['mean']:.3f}")
    ax.axhspan(base["ci_low"], base["ci_high"], color="black", alpha=0.08)


def plot_drop_accuracy(summary: pd.DataFrame, metric: str = "correct", title: str = "") -> plt.Figure:
    """Accuracy (or another metric) per dropped window; one group per stage x mode."""
    rows = _metric(summary, metric)
    windows = rows[rows["setting"] != "baseline"].sort_values(["stage", "first_layer"])
    fig, ax = plt.subplots(figsize=(max(4.5, 0.6 * windows["setting"].nunique() + 2), 3.4))
    groups = list(windows.groupby(["stage", "mode"], sort=False)) if "mode" in windows else [("", windows)]
    width = 0.8 / max(1, len(groups))
    labels = list(dict.fromkeys(windows["setting"]))
    for k, (name, group) in enumerate(groups):
        x = [labels.index(s) + (k - (len(groups) - 1) / 2) * width for s in group["setting"]]
        err = [group["mean"] - group["ci_low"], group["ci_high"] - group["mean"]]
        tag = " / ".join(str(n) for n in name) if isinstance(name, tuple) else str(name)
        ax.bar(x, group["mean"], width=width, yerr=err, capsize=3, alpha=0.8, label=tag or None)
    _baseline_line(ax, _baseline(rows))
    ax.set_xticks(range(len(labels)), [s.replace("drop ", "") for s in labels], rotation=45)
    ax.set_xlabel("vision tokens dropped in layers (0-based)")
    ax.set_ylabel("accuracy" if metric == "correct" else metric)
    ax.legend(fontsize=8)
    ax.set_title(title or "Dropping vision tokens by layer window (paper Fig. 5)", fontsize=9)
    fig.tight_layout()
    return fig


def plot_knockout(
    summary: pd.DataFrame, metric: str = "first_gold_rel_change_pct", title: str = ""
) -> plt.Figure:
    """Relative change of the first gold token's probability (%) per centre layer, one line per edge."""
    rows = _metric(summary, metric)
    rows = rows[rows["setting"] != "baseline"]
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for edge, line in rows.groupby("edge", sort=False):
        line = line.sort_values("centre_layer")
        ax.plot(line["centre_layer"], line["mean"], marker="o", ms=3, label=edge)
        ax.fill_between(line["centre_layer"], line["ci_low"], line["ci_high"], alpha=0.15)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xlabel("centre layer of the knockout window (0-based)")
    ax.set_ylabel("relative change of p(first gold token) (%)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title(title or "Attention knockout", fontsize=9)
    fig.tight_layout()
    return fig


def plot_prune(summary: pd.DataFrame, metric: str = "correct", title: str = "") -> plt.Figure:
    """Accuracy against the kept fraction of image tokens, one line per pruning layer K."""
    rows = _metric(summary, metric)
    fig, ax = plt.subplots(figsize=(5, 3.4))
    pruned = rows[rows["setting"] != "baseline"]
    for layer, line in pruned.groupby("prune_layer"):
        line = line.sort_values("keep")
        err = [line["mean"] - line["ci_low"], line["ci_high"] - line["mean"]]
        ax.errorbar(line["keep"], line["mean"], yerr=err, marker="o", capsize=3, label=f"K = {int(layer)}")
    _baseline_line(ax, _baseline(rows))
    ax.set_xlabel("fraction of image tokens kept")
    ax.set_ylabel("accuracy" if metric == "correct" else metric)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title(title or "FastV pruning", fontsize=9)
    fig.tight_layout()
    return fig


FIGURES = {"drop": plot_drop_accuracy, "knockout": plot_knockout, "prune": plot_prune}
