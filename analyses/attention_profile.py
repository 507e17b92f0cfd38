"""Paper Figs. 2 and 3: attention mass and attention entropy per layer, by target and source role.

Input is the tidy table written by `probe attention` (or its per-sample average); nothing is rerun.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from probe.roles import PAPER_ROLES  # noqa: E402
from probe.stats import average_over_samples  # noqa: E402

SOURCE_COLOURS = {"instruction": "#1f77b4", "vision": "#d62728", "response": "#2ca02c"}


def paper_view(table: pd.DataFrame, stage: str = "llm") -> pd.DataFrame:
    """Head-averaged rows of the paper's three roles for one stage, averaged over samples."""
    rows = table[(table["grouping"] == "paper") & table["head"].isna() & (table["stage"] == stage)]
    if "n_samples" not in rows.columns:
        rows = average_over_samples(rows)
    return rows


def plot_by_layer(table: pd.DataFrame, value: str, stage: str = "llm", title: str = "") -> plt.Figure:
    """One panel per target role; one line per source role across layers."""
    view = paper_view(table, stage)
    targets = [t for t in PAPER_ROLES if t in set(view["tgt"])]
    fig, axes = plt.subplots(1, len(targets), figsize=(4.2 * len(targets), 3.4), squeeze=False, sharey=True)
    for ax, tgt in zip(axes[0], targets, strict=True):
        for src in PAPER_ROLES:
            line = view[(view["tgt"] == tgt) & (view["src"] == src)].sort_values("layer")
            if line.empty:
                continue
            ax.plot(line["layer"], line[value], marker="o", ms=3, label=src, color=SOURCE_COLOURS[src])
        ax.set_title(f"target: {tgt}")
        ax.set_xlabel("layer (0-based)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("attention mass Attn(tgt->src)" if value == "mass" else "attention entropy (nats)")
    axes[0][-1].legend(title="source", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_mass(table: pd.DataFrame, stage: str = "llm", title: str = "") -> plt.Figure:
    """Paper Fig. 2."""
    return plot_by_layer(table, "mass", stage, title or "Attention mass per layer (Eq. 4-5)")


def plot_entropy(table: pd.DataFrame, stage: str = "llm", title: str = "") -> plt.Figure:
    """Paper Fig. 3."""
    return plot_by_layer(table, "entropy", stage, title or "Attention entropy per layer")
