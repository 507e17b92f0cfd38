"""`probe sweep`: LLaVA-Mini students over compression queries x pre-fusion depth x compression kind.

`config` reads and checks the YAML a researcher writes, `cells` expands its grid, `student` builds and
trains one student with the shared trainer (`probe.training`), `evaluate` measures it, `runner` runs
the cells (locally or on Ray), resumably, and writes the tables.
"""
