"""What every model family must tell the engines.

An adapter turns a `Sample` into model inputs plus token roles per stage, runs the model's own
forward, and can switch the attention implementation of its language model only. Engines never look
inside a model family; they only use this interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from probe.inputs import Sample
from probe.roles import StageRoles


@dataclass
class Prepared:
    """Model inputs for one sample, and the roles of every stage's sequence."""

    inputs: dict[str, torch.Tensor]
    roles: dict[str, StageRoles]
    prompt_length: int
    response_ids: list[int]
    # Stages whose forward runs several sequences for one sample (e.g. LLaVA-Mini's pre-fusion, once per
    # frame): roles per sequence [S, N]; `roles[stage]` is then their concatenation [1, S * N].
    sequence_roles: dict[str, StageRoles] = field(default_factory=dict)


class Adapter(ABC):
    family: str = ""
    stages: tuple[str, ...] = ("llm",)

    def __init__(self, model: torch.nn.Module, processor) -> None:
        self.model = model
        self.processor = processor

    @abstractmethod
    def prepare(self, sample: Sample, response_ids: list[int] | None = None) -> Prepared:
        """Inputs and roles for `sample`; the response (teacher-forced) is `response_ids` or sample.response."""

    @abstractmethod
    def num_layers(self, stage: str = "llm") -> int: ...

    @abstractmethod
    def attention_modules(self, stage: str = "llm") -> list[torch.nn.Module]:
        """The attention modules of a stage, in layer order (for hooks and layer tagging)."""

    @abstractmethod
    def set_attention(self, implementation: str) -> None:
        """Route the attention of every probed stage (never the vision tower) through `implementation`."""

    @abstractmethod
    def current_attention(self) -> str: ...

    def forward(self, inputs: dict[str, torch.Tensor], **kwargs):
        """The model's own forward pass, nothing re-implemented."""
        return self.model(**inputs, **kwargs)

    def attention_stages(self, output) -> dict[str, tuple[torch.Tensor, ...]]:
        """Attention probabilities per stage from a forward with output_attentions=True (eager)."""
        return {"llm": output.attentions}

    @abstractmethod
    def generate(self, sample: Sample, max_new_tokens: int) -> list[int]:
        """Greedy continuation of the prompt, as token ids (end-of-sequence excluded)."""

    @contextmanager
    def attention_implementation(self, implementation: str):
        """Temporarily route the probed stages through `implementation`, restoring the previous one."""
        previous = self.current_attention()
        self.set_attention(implementation)
        try:
            yield
        finally:
            self.set_attention(previous)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device
