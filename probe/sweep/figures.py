"""Write a sweep's figures next to its tables (drawn by `analyses.sweep`)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from probe.results import atomic_write


def save_figures(cells: pd.DataFrame, out: Path) -> list[str]:
    import matplotlib.pyplot as plt

    from analyses.sweep import plot_accuracy_grid, plot_accuracy_vs_flops, plot_query_vs_pool

    figures = {
        "accuracy_vs_flops.png": plot_accuracy_vs_flops(cells),
        "query_vs_pool.png": plot_query_vs_pool(cells),
    }
    for kind in ("query", "pool"):
        if (cells["kind"] == kind).any():
            figures[f"accuracy_grid_{kind}.png"] = plot_accuracy_grid(cells, kind)
    written = []
    for name, fig in figures.items():
        if fig is None:
            continue
        atomic_write(Path(out) / name, lambda p, fig=fig: fig.savefig(p, dpi=120, format="png"))
        plt.close(fig)
        written.append(name)
    return written
