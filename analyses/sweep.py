"""Figures of a sweep (paper Tables 6-8 as pictures), from its `cells` table alone.

Every accuracy is drawn with its 95% bootstrap interval: on a few hundred questions neighbouring cells
often overlap, and the figure should say so rather than rank them.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def _errors(rows: pd.DataFrame, column: str = "accuracy") -> np.ndarray:
    return np.vstack([rows[column] - rows[f"{column}_ci_low"], rows[f"{column}_ci_high"] - rows[column]])


def plot_accuracy_grid(cells: pd.DataFrame, kind: str = "query") -> plt.Figure:
    """Accuracy over C (rows) x N_fusion (columns) for one compression kind, interval in each square."""
    rows = cells[cells["kind"] == kind]
    sizes = sorted(rows["compressor_size"].dropna().astype(int).unique())
    depths = sorted(rows["prefusion_layers"].dropna().astype(int).unique())
    grid = np.full((len(sizes), len(depths)), np.nan)
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(depths), 1.2 + 1.0 * len(sizes)))
    for r in rows.itertuples():
        i, j = sizes.index(int(r.compressor_size)), depths.index(int(r.prefusion_layers))
        grid[i, j] = r.accuracy
        ax.text(
            j,
            i,
            f"{r.accuracy:.3f}\n[{r.accuracy_ci_low:.2f}, {r.accuracy_ci_high:.2f}]",
            ha="center",
            va="center",
            fontsize=8,
        )
    image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(depths)), [str(d) for d in depths])
    ax.set_yticks(range(len(sizes)), [f"{c} ({c * c})" for c in sizes])
    ax.set_xlabel("pre-fusion layers N_fusion")
    ax.set_ylabel("C (vision tokens C x C)")
    ax.set_title(f"accuracy, {kind} compression (95% interval)")
    fig.colorbar(image, ax=ax, label="accuracy")
    fig.tight_layout()
    return fig


def plot_accuracy_vs_flops(cells: pd.DataFrame) -> plt.Figure:
    """Accuracy against prefill FLOPs per request, one marker per cell (the Pareto view of Tables 6-7)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for kind, marker in (("base", "s"), ("query", "o"), ("pool", "^")):
        rows = cells[cells["kind"] == kind]
        if rows.empty:
            continue
        ax.errorbar(
            rows["flops_prefill"] / 1e9,
            rows["accuracy"],
            yerr=_errors(rows),
            fmt=marker,
            capsize=3,
            label=kind,
        )
        for r in rows.itertuples():
            ax.annotate(
                r.cell,
                (r.flops_prefill / 1e9, r.accuracy),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
    if "blank_accuracy" in cells:
        base = cells[cells["kind"] == "base"]
        if not base.empty:
            ax.axhline(base["blank_accuracy"].iloc[0], color="grey", ls=":", label="base, blank image")
    ax.set_xscale("log")
    ax.set_xlabel("prefill GFLOPs per request (log)")
    ax.set_ylabel("accuracy")
    ax.set_title("accuracy against compute")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_query_vs_pool(cells: pd.DataFrame) -> plt.Figure | None:
    """Query-based against average-pooling compression at each (C, N_fusion) both kinds ran (Table 8)."""
    both = cells[cells["kind"].isin(["query", "pool"])]
    pairs = both.groupby(["compressor_size", "prefusion_layers"])["kind"].nunique()
    keys = [k for k, n in pairs.items() if n == 2]
    if not keys:
        return None
    fig, ax = plt.subplots(figsize=(1.5 + 1.2 * len(keys), 4))
    x = np.arange(len(keys))
    for offset, kind in ((-0.18, "query"), (0.18, "pool")):
        rows = pd.concat(
            [
                both[
                    (both["kind"] == kind) & (both["compressor_size"] == c) & (both["prefusion_layers"] == n)
                ]
                for c, n in keys
            ]
        )
        ax.bar(x + offset, rows["accuracy"], width=0.34, yerr=_errors(rows), capsize=3, label=kind)
    ax.set_xticks(x, [f"C={int(c)}\nN={int(n)}" for c, n in keys])
    ax.set_ylabel("accuracy")
    ax.set_title("query vs pool compression (95% interval)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
