"""Paper Fig. 4 (right): attention from text tokens onto the 24 x 24 image grid, at several layers.

Input is the grid table written by `probe attention --grid-queries ...` (`grid.parquet`: one row per
sample x stage x layer x image x query x patch row x patch col, `weight` = head-averaged attention);
nothing is rerun. One row of heat maps per image, one column per layer, on a shared logarithmic colour
scale (as in the paper), optionally laid over the picture.

In a notebook:

    from analyses.attention_maps import plot_run_grid
    fig = plot_run_grid("runs/demo", layers=[0, 2, 5])  # LLaVA-v1.5-7B: e.g. [0, 8, 16, 24, 31]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from PIL import Image  # noqa: E402

PICTURE_SIDE = 336  # LLaVA's input resolution: the grid covers this square


def pick_layers(available: Sequence[int], n: int = 6) -> list[int]:
    """First, last and evenly spaced middle layers (all of them when there are at most `n`)."""
    available = sorted(int(x) for x in set(available))
    if len(available) <= n:
        return available
    idx = np.unique(np.round(np.linspace(0, len(available) - 1, n)).astype(int))
    return [available[i] for i in idx]


def check_layers(layers: Sequence[int], available: Sequence[int]) -> None:
    """Asking for layers a model does not have (the paper's [0, 8, 16, 31] on a 6-layer model) is an error
    naming the valid range, not a figure with panels quietly dropped."""
    from probe.errors import ProbeError

    have = sorted(int(x) for x in available)
    missing = [int(x) for x in layers if int(x) not in set(have)]
    if missing:
        span = f"{have[0]}..{have[-1]}" if have == list(range(have[0], have[-1] + 1)) else str(have)
        raise ProbeError(
            f"layer(s) {missing} are not in the grid table: it has layers {span} (0-based); "
            "pass layers in that range, or none for an even spread"
        )


def select_queries(
    grid: pd.DataFrame,
    sample: str | None = None,
    query: int | Sequence[int] | None = None,
    query_role: str | Sequence[str] | None = None,
    stage: str = "llm",
) -> pd.DataFrame:
    """Rows of one sample (default: the first) and stage, restricted to some query positions / fine roles."""
    rows = grid[grid["stage"] == stage]
    if rows.empty:
        raise ValueError(f"the grid table has no rows for stage '{stage}'")
    sample = str(rows["sample"].iloc[0]) if sample is None else str(sample)
    rows = rows[rows["sample"].astype(str) == sample]
    if rows.empty:
        raise ValueError(f"the grid table has no rows for sample '{sample}'")
    if query is not None:
        wanted = [query] if isinstance(query, int | np.integer) else list(query)
        rows = rows[rows["query"].isin([int(q) for q in wanted])]
    if query_role is not None:
        rows = rows[
            rows["query_role"].isin([query_role] if isinstance(query_role, str) else list(query_role))
        ]
    if rows.empty:
        raise ValueError(f"no grid rows for sample '{sample}' with query={query}, query_role={query_role}")
    return rows


def grid_maps(rows: pd.DataFrame, image: int = 0) -> dict[int, np.ndarray]:
    """{layer: [rows, cols]} attention onto image `image`'s grid, averaged over the selected queries that
    can see the image (non-zero total weight on it; as Eq. 4-5 counts only targets that see the source)."""
    return _grid_maps(rows, image)[0]


def _grid_maps(rows: pd.DataFrame, image: int) -> tuple[dict[int, np.ndarray], int, float]:
    """(maps, number of queries that see the image, smallest share of the image's attention the grid
    shows in any layer: 1 for LLaVA-v1.5, less for LLaVA-NeXT, whose high-res crops are not on the grid)."""
    rows = rows[rows["image"] == image].sort_values(["layer", "query", "row", "col"])
    if rows.empty:
        raise ValueError(f"no grid rows for image {image}")
    shape = (int(rows["row"].max()) + 1, int(rows["col"].max()) + 1)
    maps, n_seen, covered = {}, 0, 1.0
    for layer, part in rows.groupby("layer", sort=True):
        weights = part["weight"].to_numpy(dtype=np.float64).reshape(-1, *shape)  # [Q, rows, cols]
        seen = weights.reshape(len(weights), -1).sum(1) > 0
        maps[int(layer)] = weights[seen].mean(0) if seen.any() else np.zeros(shape)
        n_seen = max(n_seen, int(seen.sum()))
        if "image_mass" in part and seen.any():
            total = part["image_mass"].to_numpy(dtype=np.float64)[:: shape[0] * shape[1]][seen].sum()
            if total > 0:
                covered = min(covered, float(weights[seen].sum() / total))
    return maps, n_seen, covered


def fit_picture(image: Image.Image, fit: str = "crop", side: int = PICTURE_SIDE) -> np.ndarray:
    """The picture as the grid sees it: `crop` = shortest side to `side` then centre crop (CLIP's
    preprocessing, LLaVA-v1.5), `pad` = pad to a square, `squash` = resize to a square."""
    image = image.convert("RGB")
    if fit == "crop":
        scale = side / min(image.size)
        w, h = max(side, round(image.width * scale)), max(side, round(image.height * scale))
        image = image.resize((w, h), Image.BICUBIC)
        left, top = (w - side) // 2, (h - side) // 2
        image = image.crop((left, top, left + side, top + side))
    elif fit == "pad":
        big = max(image.size)
        square = Image.new("RGB", (big, big), (0, 0, 0))
        square.paste(image, ((big - image.width) // 2, (big - image.height) // 2))
        image = square.resize((side, side), Image.BICUBIC)
    elif fit == "squash":
        image = image.resize((side, side), Image.BICUBIC)
    else:
        raise ValueError(f"fit must be crop, pad or squash, not '{fit}'")
    return np.asarray(image)


def _load_picture(source) -> Image.Image | None:
    if source is None or isinstance(source, Image.Image):
        return source
    from probe.errors import ProbeError
    from probe.inputs import load_image

    try:
        return load_image(str(source))
    except (ProbeError, OSError, ValueError):
        return None  # moved / relative to another directory / a video: draw the map without the picture


def sample_pictures(samples: pd.DataFrame, sample: str) -> list[str]:
    """Image sources of one sample from a run's samples table (`images` is ';'-joined)."""
    row = samples[samples["sample"].astype(str) == str(sample)]
    if row.empty or pd.isna(row["images"].iloc[0]):
        return []
    return str(row["images"].iloc[0]).split(";")


def _query_label(rows: pd.DataFrame) -> str:
    queries = rows.drop_duplicates("query").sort_values("query")
    if len(queries) == 1:
        q = queries.iloc[0]
        token = f" {str(q['query_token']).strip()!r}" if str(q.get("query_token", "")).strip() else ""
        return f"query token {int(q['query'])}{token} ({q['query_role']})"
    roles = ", ".join(sorted(set(queries["query_role"])))
    return f"mean over the query tokens that see each image, of {len(queries)} ({roles})"


def plot_grid_attention(
    grid: pd.DataFrame,
    sample: str | None = None,
    images: Sequence[int] | None = None,
    layers: Sequence[int] | None = None,
    query: int | Sequence[int] | None = None,
    query_role: str | Sequence[str] | None = None,
    pictures: Sequence | None = None,
    n_layers: int = 6,
    fit: str = "crop",
    alpha: float = 0.65,
    dynamic_range: float = 1e3,
    title_prefix: str = "",
    stage: str = "llm",
) -> plt.Figure:
    """Heat maps of the query tokens' attention over each image's grid: one row per image, one column per
    layer (default: first, last and evenly spaced middle layers), one shared log colour scale; cells with
    zero weight (not visible to the queries under the causal mask) are left blank.

    grid: the tidy grid table (or a slice); sample: its id (default: the first); query / query_role: which
    query tokens (default: all of the sample's, averaged over those that can see the image); pictures:
    image sources (paths, `skimage:NAME`) or PIL images by image index, to lay the maps over (`fit` says how
    the picture maps onto the grid); dynamic_range: the colour scale spans max / dynamic_range .. max.
    """
    rows = select_queries(grid, sample, query, query_role, stage)
    sample = str(rows["sample"].iloc[0])
    images = sorted(set(rows["image"])) if images is None else list(images)
    layers = pick_layers(rows["layer"], n_layers) if layers is None else [int(x) for x in layers]
    check_layers(layers, set(rows["layer"]))
    computed = {k: _grid_maps(rows, k) for k in images}
    maps = {k: m for k, (m, _, _) in computed.items()}
    row_label = {
        k: f"image {k} ({n} quer{'y' if n == 1 else 'ies'})"
        + (f"\ngrid shows {covered:.0%} of its attention" if covered < 0.995 else "")
        for k, (_, n, covered) in computed.items()
    }
    loaded = {
        k: _load_picture(pictures[k]) if pictures is not None and k < len(pictures) else None for k in images
    }
    shown = {k: fit_picture(p, fit) for k, p in loaded.items() if p is not None}

    values = np.concatenate([maps[k][x].ravel() for k in images for x in layers])
    vmax = float(values.max()) if values.size and values.max() > 0 else 1.0
    positive = values[values > 0]
    vmin = max(float(positive.min()) if positive.size else 0.0, vmax / dynamic_range)
    norm = LogNorm(vmin=vmin if vmin < vmax else vmax / 10, vmax=vmax)
    # cells with exactly zero weight (not visible to the queries / no token) are left blank
    overlay_cmap = plt.get_cmap("jet").with_extremes(bad=(0.0, 0.0, 0.0, 0.0))
    plain_cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")

    extra = 1 if shown else 0
    n_cols = len(layers) + extra
    fig, axes = plt.subplots(
        len(images),
        n_cols,
        figsize=(2.4 * n_cols + 0.8, 2.5 * len(images) + 0.6),
        squeeze=False,
        layout="constrained",
    )
    mappable = None
    for r, k in enumerate(images):
        picture = shown.get(k)
        if extra:
            ax = axes[r][0]
            if picture is not None:
                ax.imshow(picture)
            ax.set_title(row_label[k], fontsize=9)
            ax.axis("off")
        for c, layer in enumerate(layers):
            ax = axes[r][c + extra]
            heat = np.ma.clip(np.ma.masked_less_equal(maps[k][layer], 0.0), norm.vmin, None)
            if picture is not None:
                side = picture.shape[0]
                ax.imshow(picture)
                mappable = ax.imshow(
                    heat,
                    cmap=overlay_cmap,
                    norm=norm,
                    alpha=alpha,
                    extent=(0, side, side, 0),
                    interpolation="nearest",
                )
            else:
                mappable = ax.imshow(heat, cmap=plain_cmap, norm=norm, interpolation="nearest")
            total = float(maps[k][layer].sum())
            ax.set_title(f"layer {layer} (sum {total:.2g})", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0 and not extra:
                ax.set_ylabel(row_label[k], fontsize=9)
    fig.colorbar(mappable, ax=axes.ravel().tolist(), shrink=0.85, label="attention weight (log scale)")
    head = f"{title_prefix}: " if title_prefix else ""
    fig.suptitle(f"{head}sample {sample}, {_query_label(rows)} -> image grid (heads averaged)", fontsize=10)
    return fig


def plot_run_grid(
    run_dir: str | Path, sample: str | None = None, overlay: bool = True, **kwargs
) -> plt.Figure:
    """`plot_grid_attention` straight from a finished run directory (grid.parquet + samples.csv)."""
    from probe.attention_job import load_grid

    run_dir = Path(run_dir)
    grid = load_grid(run_dir)
    if overlay and "pictures" not in kwargs and (run_dir / "samples.csv").is_file():
        samples = pd.read_csv(run_dir / "samples.csv", dtype={"sample": str})
        chosen = str(grid["sample"].iloc[0]) if sample is None else str(sample)
        kwargs["pictures"] = sample_pictures(samples, chosen)
    return plot_grid_attention(grid, sample=sample, **kwargs)


# --- paper Fig. 4 (left): the token x token map of one sample ----------------------------------------
def role_spans(roles: Sequence[str]) -> list[tuple[str, int, int]]:
    """[(role, first position, last position + 1)] of consecutive runs of the same role."""
    spans: list[tuple[str, int, int]] = []
    for position, role in enumerate(roles):
        if spans and spans[-1][0] == role:
            spans[-1] = (role, spans[-1][1], position + 1)
        else:
            spans.append((role, position, position + 1))
    return spans


def token_matrix(table: pd.DataFrame, layer: int, head: int | None = None) -> tuple[np.ndarray, list[str]]:
    """(matrix [N, N] with NaN where a key is not visible to the query, role of every position) of the
    head-averaged map (`head` None) or one head's."""
    rows = table[table["layer"] == layer]
    if "head" in rows.columns:
        rows = rows[rows["head"].isna()] if head is None else rows[rows["head"] == head]
        if rows.empty:
            raise ValueError(f"no map of head {head} at layer {layer} (per-head maps need per_head=True)")
    if rows.empty:
        check_layers([layer], set(table["layer"]))
    n = int(rows["query"].max()) + 1
    matrix = np.full((n, n), np.nan)
    matrix[rows["query"].to_numpy(), rows["key"].to_numpy()] = rows["weight"].to_numpy(dtype=np.float64)
    roles = rows.drop_duplicates("key").sort_values("key")["key_role"].astype(str).tolist()
    return matrix, roles


def plot_token_map(
    table: pd.DataFrame,
    layers: Sequence[int] | None = None,
    dynamic_range: float = 1e4,
    title: str = "",
    head: int | None = None,
) -> plt.Figure:
    """Attention query x key of one sample (heads averaged, or one `head` of a per-head table), one panel
    per layer, one shared log colour scale (spanning max / dynamic_range .. max), role boundaries drawn as
    lines and named on the axes."""
    layers = sorted(set(table["layer"])) if layers is None else [int(x) for x in layers]
    check_layers(layers, set(table["layer"]))
    matrices = {layer: token_matrix(table, layer, head) for layer in layers}
    values = np.concatenate([m[np.isfinite(m) & (m > 0)] for m, _ in matrices.values()])
    vmax = float(values.max()) if values.size else 1.0
    norm = LogNorm(vmin=vmax / dynamic_range, vmax=vmax)
    cmap = plt.get_cmap("viridis").with_extremes(bad="white", under=plt.get_cmap("viridis")(0.0))
    fig, axes = plt.subplots(
        1, len(layers), figsize=(3.6 * len(layers) + 1.2, 4.0), squeeze=False, layout="constrained"
    )
    mappable = None
    for ax, layer in zip(axes[0], layers, strict=True):
        matrix, roles = matrices[layer]
        # keys the query cannot see (NaN) are white; visible keys below the scale get its lowest colour
        heat = np.ma.masked_invalid(np.clip(matrix, norm.vmin / 2, None))
        mappable = ax.imshow(heat, cmap=cmap, norm=norm, interpolation="nearest")
        spans = role_spans(roles)
        for _, start, _ in spans[1:]:
            ax.axhline(start - 0.5, color="red", lw=0.6)
            ax.axvline(start - 0.5, color="red", lw=0.6)
        named = [(role, start, end) for role, start, end in spans if end - start >= len(roles) / 40]
        centres = [(start + end - 1) / 2 for _, start, end in named]  # short spans: lines only
        names = [role for role, _, _ in named]
        ax.set_xticks(centres, names, rotation=90, fontsize=6)
        ax.set_yticks(centres, names, fontsize=6)
        ax.set_title(f"layer {layer}", fontsize=9)
        ax.set_xlabel("key (source) token", fontsize=8)
    axes[0][0].set_ylabel("query (target) token", fontsize=8)
    fig.colorbar(mappable, ax=axes.ravel().tolist(), shrink=0.85, label="attention weight (log scale)")
    sample = str(table["sample"].iloc[0]) if "sample" in table.columns else ""
    which = "heads averaged" if head is None else f"head {head}"
    fig.suptitle(title or f"sample {sample}: token x token attention ({which})", fontsize=10)
    return fig
