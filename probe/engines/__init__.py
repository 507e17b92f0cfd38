"""Engines: different ways to obtain the same `LayerStats` from a model's forward pass.

`eager` is the reference (explicit attention probabilities, O(N^2) memory, slower); `native` streams the
statistics out of the model's real SDPA / flash forward (the default); `nnsight` and `transformer-lens`
read the probabilities through those libraries.
"""

from __future__ import annotations

from collections.abc import Callable

from probe.errors import ProbeError

ENGINES: dict[str, Callable] = {}


def register_engine(name: str, fn: Callable) -> None:
    ENGINES[name] = fn


def get_engine(name: str) -> Callable:
    """-> run(adapter, prepared, per_head=False) -> list[LayerStats]."""
    # importing is idempotent; the heavy libraries (nnsight, transformer_lens) load only when run
    from probe.engines import eager, lens_engine, nnsight_engine, streaming  # noqa: F401  (register themselves)

    if name not in ENGINES:
        raise ProbeError(f"unknown backend '{name}': available: {', '.join(sorted(ENGINES))}")
    return ENGINES[name]
