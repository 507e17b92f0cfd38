"""Attention knockout (Zhang et al., CVPR 2025, after Geva et al. 2023): cut the edges from source
tokens to target tokens in a window of layers centred on each layer in turn.

For layer l and window w the edges are cut in [l - floor(w/2), l + ceil(w/2)) clipped to the model.
"""

from __future__ import annotations

from probe.errors import ProbeError
from probe.interventions.base import BlockEdges


def parse_block(spec: str) -> tuple[str, str]:
    """'vision->last' -> ('vision', 'last')."""
    source, sep, target = spec.partition("->")
    if not sep or not source.strip() or not target.strip():
        raise ProbeError(
            f"--block '{spec}': write SOURCE->TARGET, quoted in a shell (its > redirects): --block 'vision->last'"
        )
    return source.strip(), target.strip()


def centred_window(layer: int, window: int, n_layers: int) -> tuple[int, ...]:
    return tuple(range(max(0, layer - window // 2), min(n_layers, layer + -(-window // 2))))


class Knockout(BlockEdges):
    """The edges `source -> target` cut in the window centred on `centre`."""

    def __init__(self, source: str, target: str, centre: int, window: int, n_layers: int) -> None:
        if window < 1:
            raise ProbeError("--window must be at least 1")
        super().__init__(source, target, centred_window(centre, window, n_layers), stage="llm")
        self.centre = centre
        self.edge = f"{source}->{target}"
        self.label = f"{self.edge} @{centre}"

    def columns(self) -> dict:
        return {**super().columns(), "edge": self.edge, "centre_layer": self.centre}
