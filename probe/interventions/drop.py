"""Dropping the vision tokens in a window of layers (LLaVA-Mini paper, Fig. 5), in two readings.

- `mask`: inside the window no other token may attend to a vision token (their keys are cut for every
  non-vision query); the vision tokens themselves are still computed (they still see each other).
- `skip`: the vision tokens leave the sequence for the window (nobody sees them, they are not updated)
  and re-enter after it with the hidden states they had when they left, at their original positions.

Vision tokens: the LLM's image / compressed tokens (`vision` of the paper's grouping); in LLaVA-Mini's
pre-fusion stage, the vision tower's tokens (`global`).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from probe.errors import ProbeError
from probe.interventions.base import BlockEdges, Tokens

MODES = ("mask", "skip")


def vision_selector(stage: str) -> str:
    return "global" if stage == "prefusion" else "vision"


def window_label(layers: Iterable[int]) -> str:
    layers = sorted(layers)
    return f"{layers[0]}-{layers[-1]}" if len(layers) > 1 else str(layers[0])


class DropVision(BlockEdges):
    """Every vision token out of `layers` of `stage` (mode `mask` or `skip`)."""

    def __init__(self, layers: Iterable[int], mode: str = "mask", stage: str = "llm") -> None:
        if mode not in MODES:
            raise ProbeError(f"unknown drop mode '{mode}': use {' or '.join(MODES)}")
        layers = tuple(layers)
        super().__init__(
            source=vision_selector(stage),
            target="non-vision",
            layers=layers,
            stage=stage,
            label=f"drop {window_label(layers)}" if layers else "drop (empty)",
        )
        self.mode = mode

    def check(self, n_layers: int, labels: list[str]) -> None:
        super().check(n_layers, labels + ["non-vision"])

    def columns(self) -> dict:
        return {**super().columns(), "mode": self.mode}

    def target_mask(self, tokens: Tokens, length: int) -> torch.Tensor:
        return ~tokens.select(self.source, length)

    def blocked(
        self, layer: int, tokens: Tokens, n_queries: int, n_keys: int, offset: int | None = None
    ) -> torch.Tensor | None:
        return super().blocked(layer, tokens, n_queries, n_keys, offset) if self.mode == "mask" else None

    def removes_tokens(self) -> bool:
        return self.mode == "skip"

    def removed(self, tokens: Tokens) -> torch.Tensor | None:
        return tokens.select(self.source, tokens.length) if self.mode == "skip" else None


def parse_layer_windows(
    n_layers: int,
    window: int | None = None,
    stride: int | None = None,
    layers: str | None = None,
    from_layer: int | None = None,
) -> list[tuple[int, ...]]:
    """The windows of one drop run: `--window W --stride S` (W consecutive layers every S), `--layers
    0-3,4-7` (explicit, comma list of ranges or single layers) or `--from-layer K` (K..last)."""
    given = [x is not None for x in (window, layers, from_layer)]
    if sum(given) > 1:
        raise ProbeError("give one of --window/--stride, --layers or --from-layer")
    if layers is not None:
        windows = []
        for item in layers.split(","):
            item = item.strip()
            if not item:
                raise ProbeError(f"--layers '{layers}' has an empty window")
            lo, _, hi = item.partition("-")
            try:
                start, end = int(lo), int(hi) if hi else int(lo)
            except ValueError:
                raise ProbeError(f"--layers: '{item}' is not a layer or a range like 4-7") from None
            if end < start:
                raise ProbeError(f"--layers: window '{item}' is empty (end before start)")
            windows.append(tuple(range(start, end + 1)))
    elif from_layer is not None:
        if not 0 <= from_layer < n_layers:
            raise ProbeError(f"--from-layer {from_layer} is past the model's depth ({n_layers} layers)")
        windows = [tuple(range(from_layer, n_layers))]
    else:
        window = window or 4
        stride = stride or window
        if window < 1 or stride < 1:
            raise ProbeError("--window and --stride must be at least 1")
        if window > n_layers:
            raise ProbeError(f"--window {window} is past the model's depth ({n_layers} layers)")
        # sliding windows stop at the last full one; a partition (stride = window) keeps a shorter tail
        last_start = n_layers - 1 if stride >= window else n_layers - window
        windows = [tuple(range(s, min(s + window, n_layers))) for s in range(0, last_start + 1, stride)]
    for w in windows:
        if w[-1] >= n_layers:
            raise ProbeError(
                f"window {window_label(w)} is past the model's depth ({n_layers} layers, 0-{n_layers - 1})"
            )
    return windows
