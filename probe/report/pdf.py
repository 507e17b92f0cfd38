"""Assemble the report: a title page, then every registered run type's figures and tables, one per page,
each with its caption; written with matplotlib's PDF backend (no LaTeX, no browser) and atomically."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402

from probe.errors import ProbeError  # noqa: E402
from probe.report.registry import FigureItem, Item, Run, TableItem, read_run, registered  # noqa: E402
from probe.results import atomic_write, check_output_file  # noqa: E402

PAGE = (11.69, 8.27)  # A4 landscape, inches
LINES_PER_PAGE = 52


def check_report_inputs(run_dirs: Sequence[Path], out: Path) -> tuple[list[Run], Path]:
    """Every check before any drawing: runs readable and of a known type, output writable."""
    if not run_dirs:
        raise ProbeError("give at least one run directory")
    out = check_output_file(Path(out), option="-o")
    runs = [read_run(Path(d)) for d in run_dirs]
    return runs, out


def _config_line(manifest: dict) -> str:
    config = manifest.get("model_config") or {}
    text = config.get("text_config") or {}
    vision = config.get("vision_config") or {}
    parts = []
    if text:
        parts.append(
            f"LLM {text.get('model_type', '?')}: {text.get('num_hidden_layers', '?')} layers, hidden "
            f"{text.get('hidden_size', '?')}, {text.get('num_attention_heads', '?')} heads"
        )
    if vision:
        parts.append(f"vision {vision.get('image_size', '?')} px / patch {vision.get('patch_size', '?')}")
    for key in ("compressor_size", "prefusion_layer_num"):
        if key in config:
            parts.append(f"{key} {config[key]}")
    return "; ".join(parts)


def title_lines(runs: list[Run], title: str) -> list[str]:
    """Models, configurations, versions, dates and the command lines from every manifest."""
    lines = [f"generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} by probe report", ""]
    versions: dict[str, str] = {}
    for k, run in enumerate(runs, 1):
        manifest = run.manifest
        provenance = manifest.get("provenance") or {}
        lines.append(f"[{k}] {run.path}  ({run.command})")
        lines.append(
            f"    model: {run.model}  dtype {manifest.get('dtype', '-')}  device {manifest.get('device', '-')}"
        )
        config = _config_line(manifest)
        if config:
            lines.append(f"    config: {config}")
        options = manifest.get("options")
        if isinstance(options, dict):
            shown = {k: v for k, v in options.items() if v not in (None, [], {}) and k != "request"}
            lines.append(f"    options: {shown}")
        if run.n_samples is not None or run.dataset:
            lines.append(f"    data: {run.on_what()}")
        when = provenance.get("timestamp_utc")
        commit = (provenance.get("git") or {}).get("commit")
        lines.append(f"    run at: {when or 'not recorded'}" + (f", git {commit[:10]}" if commit else ""))
        lines.append(f"    command: {provenance.get('command_line') or 'not recorded in the manifest'}")
        lines.append("")
        versions.update(manifest.get("versions") or {})
    if versions:
        lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())))
    return lines


def _text_pages(title: str, lines: list[str]) -> list[plt.Figure]:
    """The title in large type, then the lines in monospace, as many pages as they need."""
    wrapped: list[str] = []
    for line in lines:
        wrapped += textwrap.wrap(line, 150, subsequent_indent="        ") or [""]
    pages = []
    for start in range(0, max(len(wrapped), 1), LINES_PER_PAGE):
        fig = plt.figure(figsize=PAGE)
        fig.text(
            0.04, 0.96, title if start == 0 else f"{title} (continued)", va="top", fontsize=14, weight="bold"
        )
        chunk = "\n".join(wrapped[start : start + LINES_PER_PAGE])
        fig.text(0.04, 0.91, chunk, va="top", ha="left", family="monospace", fontsize=7.5)
        pages.append(fig)
    return pages


def _add_caption(figure, caption: str) -> None:
    """The caption under the figure (saved with bbox_inches='tight', so it is kept on the page)."""
    width = figure.get_size_inches()[0]
    text = "\n".join(textwrap.wrap(caption, max(60, int(width * 16))))
    figure.text(0.01, -0.02, text, va="top", ha="left", fontsize=8, wrap=False)


def write_report(run_dirs: Sequence[Path], out: Path, title: str = "probe report") -> dict:
    """Check everything, then draw every run's pages into `out` (atomically). Returns page counts."""
    runs, out = check_report_inputs(run_dirs, out)
    types = registered()
    items: list[Item] = []
    for command in dict.fromkeys(run.command for run in runs):
        items += types[command].pages([run for run in runs if run.command == command])
    counts = {"title_pages": 0, "figures": 0, "tables": 0, "table_pages": 0}

    def draw(path: Path) -> None:
        from analyses.tables import render_table

        with PdfPages(path, metadata={"Title": title, "Creator": "probe report"}) as pdf:
            for page in _text_pages(title, title_lines(runs, title)):
                pdf.savefig(page)
                plt.close(page)
                counts["title_pages"] += 1
            for item in items:
                if isinstance(item, FigureItem):
                    counts["figures"] += 1
                    _add_caption(item.figure, f"Figure {counts['figures']}. {item.caption}")
                    pdf.savefig(item.figure, bbox_inches="tight")
                    plt.close(item.figure)
                elif isinstance(item, TableItem):
                    counts["tables"] += 1
                    heading = f"Table {counts['tables']}. {item.title}"
                    for page in render_table(item.table, heading, item.caption):
                        pdf.savefig(page, bbox_inches="tight")
                        plt.close(page)
                        counts["table_pages"] += 1

    atomic_write(out, draw)
    counts["pages"] = counts["title_pages"] + counts["figures"] + counts["table_pages"]
    return counts
