"""`probe paper` runs every analysis into one directory and `probe report` renders it: the PDF's pages are
drawn (not blank), and hold exactly the expected figures and tables; bad input is one line, before work."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import invoke

pdfium = pytest.importorskip("pypdfium2")

PAPER_COMMAND = "probe paper --model tiny-llava --out X --samples 2"
# what a LLaVA-v1.5 paper report holds: attention (Figs. 2, 3, fine roles, grid map + samples table),
# token map, drop (figure + table), efficiency (Figs. 7, 9, components + Tables 14 and 7; no latency)
PAPER_FIGURES = 4 + 1 + 1 + 3
PAPER_TABLES = 1 + 1 + 2


@pytest.fixture(scope="module")
def paper_dir(tmp_path_factory, probe_home) -> Path:
    from probe.paper import PaperOptions, run_paper

    out = tmp_path_factory.mktemp("paper")
    options = PaperOptions(
        model="tiny-llava", out=out, n_samples=2, max_new_tokens=2, progress=False, command=PAPER_COMMAND
    )
    run_paper(options)
    return out


def pdf_pages(path: Path) -> list[tuple[str, np.ndarray]]:
    """(text, grey pixels) of every page."""
    pdf = pdfium.PdfDocument(str(path))
    pages = []
    try:
        for page in pdf:
            text = page.get_textpage().get_text_range()
            pixels = np.asarray(page.render(scale=0.5).to_pil().convert("L"))
            pages.append((text, pixels))
    finally:
        pdf.close()
    return pages


def numbered(pages, kind: str) -> list[int]:
    return [int(n) for text, _ in pages for n in re.findall(rf"{kind} (\d+)\.", text)]


def test_paper_report_holds_every_figure_and_table(paper_dir):
    for name in ("attention", "token-map", "drop", "efficiency"):  # each subdirectory is named after its run
        assert json.loads((paper_dir / name / "manifest.json").read_text())["command"] == name
    pages = pdf_pages(paper_dir / "report.pdf")
    assert len(pages) == 1 + PAPER_FIGURES + PAPER_TABLES
    title = pages[0][0]
    assert "probe paper: tiny-llava" in title
    # the command line of every run that records one: attention, token map, drop
    assert " ".join(title.split()).count(PAPER_COMMAND) == 3
    assert numbered(pages, "Figure") == list(range(1, PAPER_FIGURES + 1))
    assert numbered(pages, "Table") == list(range(1, PAPER_TABLES + 1))
    captions = " ".join(text for text, _ in pages)
    for figure in (
        "Paper Fig. 2",
        "Paper Fig. 3",
        "Paper Fig. 4 (right)",
        "Paper Fig. 4 (left)",
        "Paper Fig. 5",
    ):
        assert figure in captions
    assert "2 samples of" in captions  # every caption says on how many samples
    for k, (_, pixels) in enumerate(pages):
        inked = (pixels < 200).mean()
        assert inked > 0.003, f"page {k + 1} is blank"


def test_report_redraws_chosen_runs_from_saved_tables(paper_dir, tmp_path, capsys):
    out = tmp_path / "r.pdf"
    code, stdout, stderr = invoke(
        capsys, "report", str(paper_dir / "drop"), str(paper_dir / "attention"), "-o", str(out)
    )
    assert code == 0, stderr
    pages = pdf_pages(out)
    assert len(pages) == 1 + (4 + 1) + (1 + 1)
    assert "wrote" in stdout and f"{len(pages)} pages" in stdout


def test_bad_input_is_one_line_before_any_work(paper_dir, tmp_path, capsys):
    out = tmp_path / "r.pdf"
    blocker = tmp_path / "file"
    blocker.write_text("x")
    no_manifest = tmp_path / "empty"
    no_manifest.mkdir()
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "manifest.json").write_text(json.dumps({"command": "some-future-run"}))
    cases = [
        ([str(tmp_path / "missing"), "-o", str(out)], "does not exist"),
        ([str(no_manifest), "-o", str(out)], "not a finished probe run"),
        ([str(sweep), "-o", str(out)], "'some-future-run' run, which reports cannot show yet"),
        ([str(paper_dir / "drop"), "-o", str(blocker / "r.pdf")], "is a file, not a directory"),
        ([str(paper_dir / "drop"), "-o", str(tmp_path)], "is a directory"),
        (["-o", str(out)], "at least one run directory"),
    ]
    for args, message in cases:
        code, _, stderr = invoke(capsys, "report", *args)
        assert code == 2 and stderr.count("\n") == 1 and message in stderr, (args, stderr)
    assert not out.exists()

    code, _, stderr = invoke(
        capsys,
        "paper",
        "--model",
        "tiny-llava",
        "--out",
        str(tmp_path / "p"),
        "--sweep",
        str(paper_dir / "drop"),
    )
    assert code == 2 and "is a 'drop' run, not a sweep" in stderr and not (tmp_path / "p").exists()


def test_a_new_run_type_is_one_registration_and_the_pdf_is_atomic(tmp_path):
    import matplotlib.pyplot as plt

    from probe.errors import ProbeError
    from probe.report import FigureItem, TableItem, register, write_report
    from probe.report.registry import REGISTRY

    run = tmp_path / "toy"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"command": "toy", "n_samples": 3}))

    @register("toy", needs=("cells.parquet",))
    def toy_pages(runs):
        fig, ax = plt.subplots()
        ax.plot([0, 1], [1, 0])
        return [FigureItem(fig, f"toy on {runs[0].on_what()}"), TableItem(runs[0].table("cells"), "cells")]

    try:
        with pytest.raises(ProbeError, match="cells.parquet missing"):
            write_report([run], tmp_path / "r.pdf")
        import pandas as pd

        pd.DataFrame({"a": [1, 2]}).to_parquet(run / "cells.parquet")
        counts = write_report([run], tmp_path / "r.pdf")
        assert counts == {"title_pages": 1, "figures": 1, "tables": 1, "table_pages": 1, "pages": 3}
        pages = pdf_pages(tmp_path / "r.pdf")
        assert len(pages) == 3 and "toy on 3 samples" in pages[1][0]

        existing = tmp_path / "r.pdf"
        before = existing.read_bytes()

        @register("toy", needs=("cells.parquet",))
        def broken_pages(runs):
            return [TableItem(None, "no table")]  # fails while the PDF is being drawn

        with pytest.raises(TypeError):
            write_report([run], existing)
        assert existing.read_bytes() == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["r.pdf", "toy"]  # no temporary file left
    finally:
        REGISTRY.pop("toy", None)


def test_token_map_rows_agree_with_the_native_engine(paper_dir):
    """The saved token x token map (eager forward) against the attention run's masses, which the native
    engine computed inside SDPA without any matrix: same sample, same teacher-forced answer."""
    import pandas as pd

    tokens = pd.read_parquet(paper_dir / "token-map" / "token_map.parquet")
    sample = json.loads((paper_dir / "token-map" / "manifest.json").read_text())["sample"]
    masses = pd.read_parquet(paper_dir / "attention" / "attention.parquet")
    masses = masses[(masses["sample"] == sample) & (masses["grouping"] == "fine") & masses["head"].isna()]
    row_sums = tokens.groupby(["layer", "query"])["weight"].sum()
    assert np.allclose(row_sums, 1.0, atol=1e-5)  # every query's row is a distribution over visible keys
    for layer in sorted(set(tokens["layer"])):
        part = tokens[(tokens["layer"] == layer) & (tokens["query_role"] == "last")]
        for src in ("image:0", "instruction", "system"):
            from_map = part.loc[part["key_role"] == src, "weight"].sum()
            native = masses[(masses.layer == layer) & (masses.tgt == "last") & (masses.src == src)]["mass"]
            assert from_map == pytest.approx(float(native.iloc[0]), abs=1e-4), (layer, src)
