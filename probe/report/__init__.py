"""`probe report RUN_DIR... -o report.pdf`: a PDF of a set of finished runs, redrawn from their saved tables.

Each run type (the `command` its manifest.json names) contributes pages through one registered function,
so a new run type is one `register(...)` call (see `registry.py`); the built-in types are in `sections.py`.
"""

from probe.report.pdf import write_report
from probe.report.registry import FigureItem, Run, TableItem, register, registered

__all__ = ["FigureItem", "Run", "TableItem", "register", "registered", "write_report"]
