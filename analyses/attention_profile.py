"""Paper Figs. 2 and 3: attention mass and attention entropy per layer, by target and source role.

Input is the tidy table written by `probe attention` (or its per-sample average); nothing is rerun.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from scipy import stats  # noqa: E402

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


# --- several runs, per-sample intervals, fine grouping (the report's Figs. 2-3) ----------------------
DENOMINATOR_NOTE = (
    "Attn(tgt->src) (paper Eq. 4) sums each target token's head-averaged attention over the source tokens "
    "and averages over the target tokens that can see at least one source token under the causal mask, "
    "not over all targets and not divided by the number of source tokens; so the masses of one target "
    "do not sum to 1 across sources by design (e.g. instruction tokens before the image do not count "
    "towards instruction->vision)."
)
ENTROPY_NOTE = (
    "Entropy: each target token's head-averaged attention restricted to the source tokens, renormalised, "
    "Shannon entropy in nats, averaged over the same target tokens as Eq. 4."
)
LINE_STYLES = ("-", "--", ":", "-.")


def t_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float, float, int]:
    """(mean, low, high, n) of the mean over samples: Student-t interval (NaNs left out; a single sample
    has no interval, low = high = mean)."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    n = len(values)
    if n == 0:
        return float("nan"), float("nan"), float("nan"), 0
    mean = float(values.mean())
    if n == 1:
        return mean, mean, mean, 1
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * values.std(ddof=1) / np.sqrt(n))
    return mean, mean - half, mean + half, n


def label_runs(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """{run label: attention table} -> one table with a `run` column, so that two runs of the same model
    (other data, other dtype) stay apart in `plot_profile`."""
    return pd.concat([t.assign(run=label) for label, t in tables.items()], ignore_index=True)


def profile_by_layer(
    table: pd.DataFrame,
    value: str = "mass",
    stage: str = "llm",
    grouping: str = "paper",
    targets: Sequence[str] | None = None,
    sources: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Mean and 95% t-interval over samples of `value` per run x tgt x src x layer (head-averaged rows).

    `table` is a per-sample attention table (attention.parquet); a summary table (already averaged, no
    `sample` column) gives the mean with low = high = mean and n = its n_samples."""
    rows = table[(table["grouping"] == grouping) & table["head"].isna() & (table["stage"] == stage)]
    if targets is not None:
        rows = rows[rows["tgt"].isin(list(targets))]
    if sources is not None:
        rows = rows[rows["src"].isin(list(sources))]
    if rows.empty:
        raise ValueError(f"no head-averaged rows for stage '{stage}', grouping '{grouping}' in the table")
    run = "run" if "run" in rows.columns else "model"
    out = []
    for (name, tgt, src, layer), group in rows.groupby([run, "tgt", "src", "layer"], sort=False):
        if "sample" in group.columns:
            mean, low, high, n = t_interval(group[value].to_numpy())
        else:
            mean = low = high = float(group[value].mean())
            n = int(group["n_samples"].max()) if "n_samples" in group.columns else 1
        out.append(
            {"run": name, "tgt": tgt, "src": src, "layer": int(layer), "mean": mean}
            | {"ci_low": low, "ci_high": high, "n": n}
        )
    return pd.DataFrame(out).sort_values(["run", "tgt", "src", "layer"], kind="stable").reset_index(drop=True)


def _role_order(labels) -> list[str]:
    """Paper roles in the paper's order, fine labels in sequence order (system, image:K, ...)."""
    if set(labels) <= set(PAPER_ROLES):
        return [r for r in PAPER_ROLES if r in set(labels)]
    order = {"system": 0, "image": 1, "vision": 1, "instruction": 2, "last": 3, "response": 4}

    def key(label: str) -> tuple:
        stem, _, index = label.partition(":")
        return (order.get(stem, 5), int(index) if index.isdigit() else 0, label)

    return sorted(set(labels), key=key)


def _source_colour(src: str, fine_sources: list[str]) -> str:
    if src in SOURCE_COLOURS:
        return SOURCE_COLOURS[src]
    return plt.get_cmap("tab10")(fine_sources.index(src) % 10)


def plot_profile(
    table: pd.DataFrame,
    value: str = "mass",
    stage: str = "llm",
    grouping: str = "paper",
    targets: Sequence[str] | None = None,
    sources: Sequence[str] | None = None,
    title: str = "",
) -> plt.Figure:
    """Paper Fig. 2 (value='mass') / Fig. 3 (value='entropy') for one or several runs: one panel per run
    (the `run` column, else the model), one line per tgt -> src (colour = source, line style = target),
    the mean over samples with its 95% t-interval as a band. `grouping='fine'` draws the fine roles (one
    line per image / frame, system apart); `targets` / `sources` keep some roles only."""
    profile = profile_by_layer(table, value, stage, grouping, targets, sources)
    runs = list(dict.fromkeys(profile["run"]))
    tgt_order = _role_order(profile["tgt"])
    src_order = _role_order(profile["src"])
    fig, axes = plt.subplots(
        1, len(runs), figsize=(4.6 * len(runs) + 1.6, 3.6), squeeze=False, sharey=True, layout="constrained"
    )
    for ax, run in zip(axes[0], runs, strict=True):
        part = profile[profile["run"] == run]
        for tgt in tgt_order:
            for src in src_order:
                line = part[(part["tgt"] == tgt) & (part["src"] == src)]
                if line.empty:
                    continue
                colour = _source_colour(src, src_order)
                style = LINE_STYLES[tgt_order.index(tgt) % len(LINE_STYLES)]
                ax.plot(
                    line["layer"],
                    line["mean"],
                    ls=style,
                    marker="o",
                    ms=3,
                    color=colour,
                    label=f"{tgt} -> {src}",
                )
                if (line["ci_high"] > line["ci_low"]).any():
                    ax.fill_between(
                        line["layer"], line["ci_low"], line["ci_high"], color=colour, alpha=0.12, lw=0
                    )
        n = int(part["n"].max())
        ax.set_title(f"{run} (n = {n} sample{'s' if n != 1 else ''})", fontsize=9)
        ax.set_xlabel(f"{stage} layer (0-based)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("attention mass Attn(tgt->src)" if value == "mass" else "attention entropy (nats)")
    axes[0][-1].legend(
        title="target -> source", fontsize=7, title_fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5)
    )
    default = "Attention mass per layer (Eq. 4-5)" if value == "mass" else "Attention entropy per layer"
    fig.suptitle(
        title or f"{default}, {grouping} roles; mean over samples, band = 95% t-interval", fontsize=10
    )
    return fig


def profile_caption(
    value: str, runs: str, n_samples: str, stage: str = "llm", grouping: str = "paper"
) -> str:
    """What a Fig. 2 / 3 panel shows, for a report page."""
    what = "attention mass Attn(tgt->src)" if value == "mass" else "attention entropy (nats)"
    roles = (
        "the paper's roles (instruction / vision / response)"
        if grouping == "paper"
        else ("fine roles (system, image:K per image / frame, instruction, last prompt token, response)")
    )
    text = (
        f"{what} per {stage} layer of {runs}, over {n_samples}, for {roles}. Lines: mean over samples; "
        "bands: 95% Student-t interval of that mean. " + DENOMINATOR_NOTE
    )
    return text + (" " + ENTROPY_NOTE if value == "entropy" else "")
