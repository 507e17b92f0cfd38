"""The paper's tables as DataFrames, from a run's tidy tables, and one way to draw any table as a figure
(for PDF reports and notebooks without HTML).

- `flops_by_component_table`: paper Table 14 (prefill FLOPs per component, one row per model);
- `vision_tokens_table`: the FLOPs half of paper Table 7 (prefill FLOPs against vision tokens per image,
  LLaVA-Mini's C sweep included); its accuracy half, and Tables 6 (pre-fusion depth x tokens) and 8
  (query vs pooling), need accuracies per configuration, which a sweep run (`probe sweep`) provides;
- `ablation_table`: mean [95% interval] of each metric per setting of a drop / knockout / prune run.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from probe.efficiency.flops import COMPONENTS  # noqa: E402

ROWS_PER_PAGE = 28


def _giga(value: float) -> float:
    return value / 1e9


def flops_by_component_table(table: pd.DataFrame, convention: str = "dense+attention") -> pd.DataFrame:
    """Paper Table 14: prefill GFLOPs per component (columns in pipeline order, `total` last), one row per
    model of the run's main setting."""
    rows = table[
        (table["setting"] == "main")
        & (table["quantity"] == "flops_prefill")
        & (table["convention"] == convention)
        & table["component"].isin([*COMPONENTS, "total"])
    ]
    wide = rows.pivot_table(index="label", columns="component", values="value", sort=False, aggfunc="first")
    wide = wide[[c for c in [*COMPONENTS, "total"] if c in wide.columns]].fillna(0.0).map(_giga)
    wide.columns = [f"{c} (GFLOPs)" for c in wide.columns]
    return wide.reset_index().rename(columns={"label": "model"})


def vision_tokens_table(table: pd.DataFrame, convention: str = "dense+attention") -> pd.DataFrame:
    """Paper Table 7 (FLOPs): prefill GFLOPs and the saving against the run's first model, per model and
    per LLaVA-Mini sweep point, sorted by vision tokens per image."""
    rows = table[
        (table["quantity"] == "flops_prefill")
        & (table["component"] == "total")
        & (table["convention"] == convention)
    ]
    out = rows[["label", "setting", "resolution", "llm_vision_tokens", "value"]].copy()
    out["prefill GFLOPs"] = out.pop("value").map(_giga)
    main = rows[rows["setting"] == "main"]
    reference = float(main["value"].iloc[0]) / 1e9 if len(main) else float("nan")
    out[f"vs {main['label'].iloc[0] if len(main) else '?'}"] = out["prefill GFLOPs"] / reference
    out = out.rename(columns={"label": "model", "llm_vision_tokens": "vision tokens / image"})
    return out.sort_values(["vision tokens / image", "model"], kind="stable").reset_index(drop=True)


def ablation_table(summary: pd.DataFrame, metrics: tuple[str, ...] | None = None) -> pd.DataFrame:
    """One row per setting, one column per metric: 'mean [ci_low, ci_high]' (n in its own column)."""
    metrics = metrics or ("correct", "first_gold_rel_change_pct", "kl_first_token")
    rows = summary[summary["metric"].isin(metrics)]
    out = {}
    for setting, group in rows.groupby("setting", sort=False):
        cells = {"n": int(group["n"].max())}
        for metric in metrics:
            line = group[group["metric"] == metric]
            if len(line):
                r = line.iloc[0]
                cells[metric] = f"{r['mean']:.3g} [{r['ci_low']:.3g}, {r['ci_high']:.3g}]"
        out[setting] = cells
    return pd.DataFrame.from_dict(out, orient="index").rename_axis("setting").reset_index()


def format_cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render_table(
    table: pd.DataFrame, title: str = "", caption: str = "", fontsize: float = 7.5
) -> list[plt.Figure]:
    """A table as one figure per page of `ROWS_PER_PAGE` rows (header repeated), title and caption above
    it, for a PDF or a notebook."""
    pages = []
    starts = range(0, max(len(table), 1), ROWS_PER_PAGE)
    for page, start in enumerate(starts):
        part = table.iloc[start : start + ROWS_PER_PAGE]
        fig, ax = plt.subplots(figsize=(11, 0.22 * (len(part) + 1) + 0.9))
        ax.axis("off")
        cells = [[format_cell(v) for v in row] for row in part.itertuples(index=False)]
        drawn = ax.table(
            cellText=cells or [["(empty)"] + [""] * (len(table.columns) - 1)],
            colLabels=[str(c) for c in table.columns],
            loc="upper left",
            cellLoc="left",
        )
        drawn.auto_set_font_size(False)
        drawn.set_fontsize(fontsize)
        drawn.auto_set_column_width(list(range(len(table.columns))))
        suffix = f" ({page + 1}/{len(starts)})" if len(starts) > 1 else ""
        head = f"{title}{suffix}" + (f"\n{caption}" if caption else "")
        ax.set_title(head, fontsize=9, loc="left")
        pages.append(fig)
    return pages
