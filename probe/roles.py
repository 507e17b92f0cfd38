"""Token roles: which positions of a sequence are system prefix, which image, instruction, response.

Roles are kept fine (one label per image / frame, system prefix apart from the user's instruction) so
users can regroup them; `paper_group` maps every fine label onto the paper's three roles.

Fine labels of the LLM sequence are `system`, `image:K` (K-th image or frame), `instruction`, `last`,
`response`, and for other stages of a model (e.g. LLaVA-Mini's pre-fusion) `global:K`, `compressed:K`,
`text`.

`last` is the last prompt token (in LLaVA's template the ':' of 'ASSISTANT:'): the position whose output
predicts the first response token, the "last position" of the attention-knockout literature. It is
carved out of the prompt's text, so the fine `instruction` is the user's text up to, not including, that
token; the paper grouping folds `last` back into `instruction`, keeping the paper's three roles as they
were. (Each response token's row, in turn, is the step that predicts the *next* response token.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

PAPER_ROLES = ("instruction", "vision", "response")

# Fine label stem -> the paper's role. The paper counts every non-vision prompt token as instruction.
_PAPER_GROUP = {
    "system": "instruction",
    "instruction": "instruction",
    "last": "instruction",
    "text": "instruction",
    "image": "vision",
    "frame": "vision",
    "global": "vision",
    "compressed": "vision",
    "response": "response",
}


def label_stem(label: str) -> str:
    return label.split(":", 1)[0]


def paper_group(label: str) -> str:
    """The paper's role (instruction / vision / response) of a fine label."""
    return _PAPER_GROUP[label_stem(label)]


@dataclass
class ImageGrid:
    """Where one image's patch grid sits in the sequence, for attention maps onto the picture.

    `positions[r, c]` is the sequence position of grid cell (r, c); cells with no token are -1.
    """

    image_index: int
    positions: torch.Tensor  # [rows, cols] long


@dataclass
class StageRoles:
    """Roles of the sequence seen by one stack of attention layers (a "stage").

    `role_ids[b, n]` indexes `labels`; -1 marks padding (a token nobody attends to and that is not a
    target). Batch size is usually 1.
    """

    labels: list[str]
    role_ids: torch.Tensor  # [B, N] long
    grids: list[ImageGrid] = field(default_factory=list)

    @property
    def num_roles(self) -> int:
        return len(self.labels)

    def onehot(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """[B, N, R] one-hot role matrix; padding rows are all zero."""
        ids = self.role_ids.clamp(min=0)
        onehot = torch.nn.functional.one_hot(ids, self.num_roles).to(dtype)
        return onehot * (self.role_ids >= 0).unsqueeze(-1).to(dtype)

    def concat_sequences(self) -> StageRoles:
        """The S sequences of one sample [S, N] as one sequence [1, S * N] (grid positions already refer to it)."""
        return StageRoles(
            labels=list(self.labels), role_ids=self.role_ids.reshape(1, -1), grids=list(self.grids)
        )

    def causal_visibility(self) -> torch.Tensor:
        """[B, N, R] bool: can query i attend to at least one key of role r under a plain causal mask.

        Not from "mass > 0", which underflow can fake. Engines that see the forward's own mask read
        visibility there (`probe.intermediate.visibility_from_mask`); this is for those that cannot
        (TransformerLens builds its own causal mask).
        """
        seen = self.onehot(torch.int32).cumsum(dim=1) > 0
        return seen & (self.role_ids >= 0).unsqueeze(-1)


def text_labels(n_images: int) -> list[str]:
    """Fine labels of an LLM sequence with `n_images` images (or frames)."""
    return ["system"] + [f"image:{k}" for k in range(n_images)] + ["instruction", "last", "response"]


def text_spans(n_system: int, prompt_length: int, length: int) -> list[tuple[str, int, int]]:
    """`system`, `instruction`, `last` (the last prompt token) and `response` spans of an LLM sequence.

    Image spans are added after these by the adapter, so they win: an image token is always vision (a
    prompt ending in an image token, which no chat template does, would then have no `last`).
    """
    last = max(prompt_length - 1, n_system)
    return [
        ("system", 0, n_system),
        ("instruction", n_system, last),
        ("last", last, prompt_length),
        ("response", prompt_length, length),
    ]


def spans_to_role_ids(length: int, spans: list[tuple[str, int, int]], labels: list[str]) -> torch.Tensor:
    """Build a [N] role-id vector from (label, start, end) half-open spans; unspecified positions are -1."""
    role_ids = torch.full((length,), -1, dtype=torch.long)
    for label, start, end in spans:
        role_ids[start:end] = labels.index(label)
    return role_ids
