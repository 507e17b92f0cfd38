"""Engines: different ways to obtain the same `LayerStats` from a model's forward pass.

`eager` is the reference (explicit attention probabilities, O(N^2) memory, slower); `native` streams the
statistics out of the model's real SDPA / flash forward (the default); `nnsight` and `transformer-lens`
read the probabilities through those libraries.
"""

from __future__ import annotations

from collections.abc import Callable

from probe.errors import ProbeError

ENGINES: dict[str, Callable] = {}
GRID_ENGINES: set[str] = set()  # engines that accept grid_queries= (attention onto the image grid)


def register_engine(name: str, fn: Callable, grid_queries: bool = False) -> None:
    ENGINES[name] = fn
    if grid_queries:
        GRID_ENGINES.add(name)


def grid_unsupported(name: str) -> ProbeError:
    return ProbeError(
        f"--grid-queries is not supported by the {name} backend: use --backend native (default) or eager"
    )


def check_grid_support(name: str) -> None:
    """One-line error unless engine `name` can return attention rows onto the image grid."""
    get_engine(name)
    if name not in GRID_ENGINES:
        raise grid_unsupported(name)


def get_engine(name: str) -> Callable:
    """-> run(adapter, prepared, per_head=False[, grid_queries=positions]) -> list[LayerStats]."""
    # importing is idempotent; the heavy libraries (nnsight, transformer_lens) load only when run
    from probe.engines import eager, lens_engine, nnsight_engine, streaming  # noqa: F401  (register themselves)

    if name not in ENGINES:
        raise ProbeError(f"unknown backend '{name}': available: {', '.join(sorted(ENGINES))}")
    return ENGINES[name]
