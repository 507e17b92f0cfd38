"""The notebooks run top to bottom, headless, on the venv's own Python, and are stored without outputs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ["attention_explorer.ipynb", "ablation.ipynb", "efficiency.ipynb", "sweep_results.ipynb"]


def test_every_notebook_is_tested_and_stored_without_outputs():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(NAMES)
    for name in NAMES:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{name} was saved with outputs"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name, tmp_path, monkeypatch, probe_home):
    monkeypatch.setenv("PROBE_NOTEBOOK_OUT", str(tmp_path))
    monkeypatch.delenv("PROBE_SWEEP_DIR", raising=False)
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=180, resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    # the kernel is this venv's interpreter, not some other python3 on the machine
    assert Path(nb.cells[-1].outputs[0]["text"].strip()).resolve() == Path(sys.executable).resolve()
    # every notebook shows at least one figure
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, f"{name} drew no figure"
