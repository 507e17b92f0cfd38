"""Engines: different ways to obtain the same `LayerStats` from a model's forward pass.

`eager` is the reference (explicit attention probabilities, O(N^2) memory, slower).
"""

from __future__ import annotations

from collections.abc import Callable

from probe.errors import ProbeError

ENGINES: dict[str, Callable] = {}


def register_engine(name: str, fn: Callable) -> None:
    ENGINES[name] = fn


def get_engine(name: str) -> Callable:
    """-> run(adapter, prepared, per_head=False) -> list[LayerStats]."""
    if not ENGINES:
        from probe.engines import eager  # noqa: F401  (registers itself)
    if name not in ENGINES:
        raise ProbeError(f"unknown backend '{name}': available: {', '.join(sorted(ENGINES))}")
    return ENGINES[name]
