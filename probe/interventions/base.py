"""What an intervention is: a small class that says, for one stage's sequence, which attention edges to
block in which layers, or which positions leave the sequence for which layers.

An intervention never touches a model. `probe.interventions.hooks` applies it inside the same attention
function the native statistics engine uses (`probe.engines.streaming`), so an edit and an observation
run in one real forward (SDPA / flash; eager for the reference path), with the KV cache.

Token selectors (for `--block SRC->TGT`): every role of the attention table, in either grouping
(paper: `vision`, `instruction`, `response`; fine: `system`, `image:K`, `image` = every image, `global`,
`compressed`, `text`, ...), `last` (the last prompt token, whose output predicts the first answer
token) and explicit 0-based positions (`12`, or `12:20`, half-open). Names are resolved per sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from probe.errors import ProbeError
from probe.roles import PAPER_ROLES, StageRoles, label_stem, paper_group

LAST = "last"


@dataclass
class Tokens:
    """Who is who in one stage's sequence: role ids [B, N] (-1 = padding / not in this stage).

    Positions past N (tokens generated after the prompt) are `response`."""

    roles: StageRoles

    @property
    def length(self) -> int:
        return int(self.roles.role_ids.shape[1])

    def role_ids(self, length: int) -> torch.Tensor:
        ids = self.roles.role_ids
        if length > ids.shape[1]:
            fill = self.roles.labels.index("response") if "response" in self.roles.labels else -1
            extra = torch.full((ids.shape[0], length - ids.shape[1]), fill, dtype=ids.dtype)
            ids = torch.cat([ids, extra], dim=1)
        return ids[:, :length]

    def last_prompt_position(self) -> torch.Tensor:
        """[B] the last position that is neither response nor padding (the last prompt token)."""
        ids = self.roles.role_ids
        response = self.roles.labels.index("response") if "response" in self.roles.labels else -2
        prompt = (ids >= 0) & (ids != response)
        positions = torch.arange(ids.shape[1]).expand_as(ids)
        return torch.where(prompt, positions, -1).amax(1)

    def select(self, selector: str, length: int) -> torch.Tensor:
        """[B, length] bool: the positions a selector names (see the module docstring)."""
        ids = self.role_ids(length)
        name = selector.strip()
        if name == LAST:
            last = self.last_prompt_position()
            return torch.arange(length)[None, :] == last[:, None]
        span = _positions(name)
        if span is not None:
            start, end = span
            if end > length:
                raise ProbeError(f"position {end - 1} is past the sequence ({length} tokens)")
            chosen = torch.zeros(ids.shape, dtype=torch.bool)
            chosen[:, start:end] = True
            return chosen
        labels = [k for k, label in enumerate(self.roles.labels) if _matches(name, label)]
        if not labels:
            raise ProbeError(f"unknown role '{name}': {', '.join(known_selectors(self.roles.labels))}")
        return torch.isin(ids, torch.tensor(labels))


def _positions(name: str) -> tuple[int, int] | None:
    """'12' -> (12, 13); '12:20' -> (12, 20); anything else -> None."""
    parts = name.split(":")
    if not all(p.strip().isdigit() for p in parts) or len(parts) > 2:
        return None
    start = int(parts[0])
    end = int(parts[1]) if len(parts) == 2 else start + 1
    if end <= start:
        raise ProbeError(f"empty position range '{name}'")
    return start, end


def _matches(name: str, label: str) -> bool:
    if name in PAPER_ROLES and name != "instruction":
        return paper_group(label) == name
    if name == "instruction":  # the paper's instruction role: every non-vision prompt token
        return paper_group(label) == "instruction"
    return name in (label, label_stem(label))


def known_selectors(labels: list[str]) -> list[str]:
    stems = sorted({label_stem(label) for label in labels})
    return [*PAPER_ROLES, *stems, *labels, LAST, "positions (12 or 12:20)"]


def check_selector(selector: str, labels: list[str]) -> None:
    """One-line error for a name no role of these labels matches (before any work)."""
    name = selector.strip()
    if name == LAST or _positions(name) is not None:
        return
    if not any(_matches(name, label) for label in labels):
        raise ProbeError(f"unknown role '{name}': use one of {', '.join(known_selectors(labels))}")


class Intervention:
    """One setting of an ablation. Subclasses implement `blocked` (mask edits) and / or `removed`
    (positions that leave the sequence in `layers`).

    `layers`: the 0-based layers of `stage` it acts in. `label`: the setting's name in result tables.
    """

    stage: str = "llm"
    layers: tuple[int, ...] = ()
    label: str = ""
    # False: positions removed stay out until the last layer (and the KV cache), as FastV does.
    reenter: bool = True

    def columns(self) -> dict:
        """What identifies this setting in a result table (the baseline has no layers: -1)."""
        return {
            "setting": self.label,
            "stage": self.stage,
            "first_layer": min(self.layers) if self.layers else -1,
            "last_layer": max(self.layers) if self.layers else -1,
        }

    def blocked(
        self, layer: int, tokens: Tokens, n_queries: int, n_keys: int, offset: int | None = None
    ) -> torch.Tensor | None:
        """[B, n_queries, n_keys] bool, True = the edge is cut (-inf logit), or None for no mask edit.

        The queries are positions `offset` .. `offset + n_queries - 1` of the keys (default: the last
        `n_queries`, the new tokens of a dynamic KV cache; a static cache is longer than what it holds)."""
        return None

    def removed(self, tokens: Tokens) -> torch.Tensor | None:
        """[B, N] bool: positions that leave the sequence in `layers`, or None (no sequence edit)."""
        return None

    def removes_tokens(self) -> bool:
        """Whether this intervention edits the sequence (skip / prune) rather than only the mask."""
        return False

    def observe(
        self, layer: int, module, query, key, attention_mask, scaling, tokens: Tokens
    ) -> torch.Tensor | None:
        """Called in every layer before the edit: interventions that decide from the forward itself
        (FastV ranks image tokens by the attention of layer K-1) return their `removed` [B, N] here."""
        return None

    def check(self, n_layers: int, labels: list[str]) -> None:
        """One-line errors for settings that cannot apply to a model (before any work)."""
        if not self.layers:
            raise ProbeError(f"{self.label or type(self).__name__}: empty layer window")
        bad = [layer for layer in self.layers if not 0 <= layer < n_layers]
        if bad:
            raise ProbeError(
                f"{self.label}: layer {bad[0]} is past the {self.stage} stage's depth "
                f"({n_layers} layers, 0-{n_layers - 1})"
            )


class BlockEdges(Intervention):
    """Cut every attention edge from the `source` tokens (keys) to the `target` tokens (queries)."""

    def __init__(self, source: str, target: str, layers, stage: str = "llm", label: str = "") -> None:
        self.source, self.target = source, target
        self.layers = tuple(sorted(set(layers)))
        self.stage = stage
        self.label = label or f"{source}->{target}"

    def check(self, n_layers: int, labels: list[str]) -> None:
        super().check(n_layers, labels)
        check_selector(self.source, labels)
        check_selector(self.target, labels)

    def target_mask(self, tokens: Tokens, length: int) -> torch.Tensor:
        return tokens.select(self.target, length)

    def blocked(
        self, layer: int, tokens: Tokens, n_queries: int, n_keys: int, offset: int | None = None
    ) -> torch.Tensor | None:
        if layer not in self.layers:
            return None
        offset = n_keys - n_queries if offset is None else offset
        src = tokens.select(self.source, n_keys)  # [B, Nk]
        tgt = self.target_mask(tokens, n_keys)[:, offset : offset + n_queries]  # [B, Nq]
        return tgt[:, :, None] & src[:, None, :]


class Baseline(Intervention):
    """No edit: the model's own forward (every table's reference row), observed in `stage`."""

    label = "baseline"

    def __init__(self, stage: str = "llm") -> None:
        self.stage = stage

    def check(self, n_layers: int, labels: list[str]) -> None:
        pass


BASELINE = Baseline()
