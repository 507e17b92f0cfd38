"""Efficiency analysis without weights: FLOPs per component on the meta device, memory per image / frame,
and (with weights) measured latency. See `probe efficiency --help` and README.md."""
