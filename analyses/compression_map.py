"""Paper Fig. 12: where the compressor's queries look, as heat maps over the image.

Each of the C^2 queries has head-averaged cross-attention weights over the image's 24 x 24 grid
(48 x 48 at 2x2 high resolution); each map is upsampled to the picture and laid over it. For average
pooling the map is the pooling window.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402


def plot_compression_map(
    weights: torch.Tensor, image: Image.Image, title: str = "", max_queries: int = 16, alpha: float = 0.55
) -> plt.Figure:
    """weights [C^2, rows, cols] of one image / frame -> figure: the image, then one overlay per query."""
    weights = weights.float().cpu()
    n = min(weights.shape[0], max_queries)
    side = max(image.size)
    square = Image.new("RGB", (side, side), (0, 0, 0))
    square.paste(image.convert("RGB"), ((side - image.width) // 2, (side - image.height) // 2))
    picture = np.asarray(square.resize((336, 336)))
    fig, axes = plt.subplots(1, n + 1, figsize=(2.6 * (n + 1), 2.8), squeeze=False)
    axes[0][0].imshow(picture)
    axes[0][0].set_title("image")
    for q in range(n):
        heat = weights[q].numpy()
        ax = axes[0][q + 1]
        ax.imshow(picture)
        ax.imshow(heat, cmap="jet", alpha=alpha, extent=(0, 336, 336, 0), interpolation="bilinear")
        ax.set_title(f"query {q} (max {heat.max():.3f})", fontsize=8)
    for ax in axes[0]:
        ax.axis("off")
    fig.suptitle(title or "compressor cross-attention (head-averaged)")
    fig.tight_layout()
    return fig


def save_compression_maps(adapter, sample, out_path, frame: int = 0) -> torch.Tensor:
    """Run the model on `sample`, draw the compression map of one image / frame to `out_path` (PNG)."""
    from probe.errors import ProbeError
    from probe.results import atomic_write

    weights, visuals = adapter.compression_map(sample)
    if frame >= weights.shape[0]:
        raise ProbeError(f"frame {frame} is out of range: the input has {weights.shape[0]} frame(s)")
    fig = plot_compression_map(weights[frame], visuals[frame], title=f"compression map, frame/image {frame}")
    atomic_write(Path(out_path), lambda p: fig.savefig(p, dpi=100, format="png"))
    plt.close(fig)
    return weights


def compression_table(weights: torch.Tensor) -> pd.DataFrame:
    """[frames, C^2, rows, cols] -> one tidy row per frame x query x patch row x patch col."""
    frames, queries, rows, cols = weights.shape
    f, q, r, c = np.meshgrid(range(frames), range(queries), range(rows), range(cols), indexing="ij")
    return pd.DataFrame(
        {
            "frame": f.ravel(),
            "query": q.ravel(),
            "row": r.ravel(),
            "col": c.ravel(),
            "weight": weights.float().cpu().numpy().ravel(),
        }
    )


def save_compression_run(loaded, sample, out_dir, frame: int = 0, command: str | None = None) -> Path:
    """A redrawable run directory: compression.parquet / .csv (every frame), the picture of `frame` as
    image.png, compression.png and manifest.json (command 'compression-map', written last)."""
    from probe.errors import ProbeError
    from probe.provenance import run_provenance
    from probe.results import atomic_write, versions, write_json, write_table
    from probe.zoo import probe_home

    out_dir = Path(out_dir)
    weights, visuals = loaded.adapter.compression_map(sample)
    if frame >= weights.shape[0]:
        raise ProbeError(f"frame {frame} is out of range: the input has {weights.shape[0]} frame(s)")
    write_table(compression_table(weights), out_dir, "compression")
    atomic_write(out_dir / "image.png", lambda p: visuals[frame].convert("RGB").save(p, format="png"))
    fig = plot_compression_map(weights[frame], visuals[frame], title=f"{loaded.name}, frame/image {frame}")
    atomic_write(out_dir / "compression.png", lambda p: fig.savefig(p, dpi=100, format="png"))
    plt.close(fig)
    manifest = {
        "command": "compression-map",
        "model": {"name": loaded.name, "source": loaded.source, "family": loaded.family},
        "image": ";".join(sample.image_sources),
        "prompt": sample.prompt,
        "frame": frame,
        "n_samples": 1,
        "versions": versions(),
        "provenance": run_provenance(loaded.source, loaded.revision, probe_home(), command=command),
    }
    write_json(out_dir / "manifest.json", manifest)
    return out_dir


def plot_saved_compression_map(run_dir, frame: int | None = None) -> plt.Figure:
    """Fig. 12 redrawn from a directory written by `save_compression_run`."""
    import json

    run_dir = Path(run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    frame = int(manifest.get("frame", 0)) if frame is None else frame
    table = pd.read_parquet(run_dir / "compression.parquet")
    part = table[table["frame"] == frame].sort_values(["query", "row", "col"])
    shape = (part["query"].nunique(), int(part["row"].max()) + 1, int(part["col"].max()) + 1)
    weights = torch.tensor(part["weight"].to_numpy(dtype=np.float32).reshape(shape))
    image = Image.open(run_dir / "image.png")
    return plot_compression_map(weights, image, title=f"{manifest['model']['name']}, frame/image {frame}")
