"""Report pages of a `probe sweep` run: the paper's Tables 6-8 as figures and as one table."""

from __future__ import annotations

import pandas as pd

from probe.report.registry import FigureItem, Item, Run, TableItem, register


def _on_what(run: Run, cells: pd.DataFrame) -> str:
    settings = run.manifest.get("settings", {})
    train = settings.get("train", {})
    n_eval = int(cells["n_eval"].max()) if "n_eval" in cells else "?"
    return (
        f"base {settings.get('base', '?')}, {n_eval} eval questions of {settings.get('dataset', {}).get('eval')}; "
        f"each student trained {train.get('steps')} steps of batch {train.get('batch_size')} "
        f"(loss {train.get('loss')}, trainable: {', '.join(train.get('trainable', []))})"
    )


def cells_table(cells: pd.DataFrame) -> pd.DataFrame:
    """One line per cell: tokens, accuracy [95% interval], blank-image accuracy, GFLOPs, training loss."""

    def interval(row, column: str) -> str:
        if pd.isna(row.get(column)):
            return "-"
        return f"{row[column]:.3f} [{row[f'{column}_ci_low']:.2f}, {row[f'{column}_ci_high']:.2f}]"

    return pd.DataFrame(
        {
            "cell": cells["cell"],
            "vision tokens": cells["vision_tokens"],
            "accuracy [95%]": [interval(r, "accuracy") for _, r in cells.iterrows()],
            "blank image": [interval(r, "blank_accuracy") for _, r in cells.iterrows()],
            "prefill GFLOPs": (cells["flops_prefill"] / 1e9).round(3),
            "train loss": [f"{v:.3f}" if pd.notna(v) else "-" for v in cells["train_loss"]],
        }
    )


@register("sweep", needs=("cells.parquet", "questions.parquet", "attention.parquet"))
def sweep_pages(runs: list[Run]) -> list[Item]:
    from analyses.sweep import plot_accuracy_grid, plot_accuracy_vs_flops, plot_query_vs_pool

    items: list[Item] = []
    for run in runs:
        cells = run.table("cells")
        where = _on_what(run, cells)
        items.append(
            FigureItem(
                plot_accuracy_vs_flops(cells),
                "Accuracy against prefill FLOPs per request (paper Tables 6-7 as a Pareto view), one marker per "
                f"cell with its 95% bootstrap interval; {where}. Overlapping intervals: the sweep cannot order "
                "those cells.",
            )
        )
        for kind in ("query", "pool"):
            if (cells["kind"] == kind).any():
                items.append(
                    FigureItem(
                        plot_accuracy_grid(cells, kind),
                        f"Accuracy over C (C x C vision tokens) and pre-fusion depth, {kind} compression "
                        f"(paper Tables 6-7), 95% intervals in the squares; {where}.",
                    )
                )
        figure = plot_query_vs_pool(cells)
        if figure is not None:
            items.append(
                FigureItem(
                    figure, f"Query-based against average-pooling compression (paper Table 8); {where}."
                )
            )
        items.append(TableItem(cells_table(cells), f"Sweep cells of {run.path.name}", where))
    return items
