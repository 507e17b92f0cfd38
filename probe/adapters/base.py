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
from probe.templates import ChatTemplate, resolve_template
from probe.video import is_video_source, video_given_to_still_model

# Stands for the user's content when a template is rendered to find where that content starts.
USER_CONTENT_SENTINEL = "\u2063PROBE_USER_CONTENT\u2063"


def common_prefix_length(a: list[int], b: list[int]) -> int:
    """How many leading tokens two id lists share (where a separately tokenised prefix stops matching)."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


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

    @property
    def forward_order(self) -> tuple[str, ...]:
        """The stages in the order the forward runs them (tracing libraries read outputs in that order)."""
        return self.stages

    def __init__(self, model: torch.nn.Module, processor) -> None:
        self.model = model
        self.processor = processor
        self._template: ChatTemplate | None = None

    takes_video: bool = False

    # --- the prompt's conversation (probe.templates) ------------------------------------------------
    def own_chat_template(self) -> str | None:
        """The chat template shipped with the model (its processor's, else its tokenizer's)."""
        own = getattr(self.processor, "chat_template", None)
        return own or getattr(getattr(self.processor, "tokenizer", None), "chat_template", None) or None

    def use_template(self, spec: str | ChatTemplate | None, model_name: str = "this model") -> None:
        """Render prompts with `spec`: 'model', 'llava_v1', a template file or None (the family's default)."""
        self._template = resolve_template(spec, self.family, self.own_chat_template(), model_name)

    @property
    def template(self) -> ChatTemplate:
        if self._template is None:
            self.use_template(None)
        return self._template

    def render(self, prompt: str) -> str:
        """The prompt (with `<image>` slots) as the model reads it, up to the start of the answer."""
        return self.template.render(self.processor.tokenizer, prompt)

    def text_before_user_content(self) -> str | None:
        """What the template puts before the user's content (BOS text, system prompt, 'USER:'), or None
        when the template does not keep the content in one piece."""
        rendered = self.render(USER_CONTENT_SENTINEL)
        cut = rendered.find(USER_CONTENT_SENTINEL)
        return rendered[:cut] if cut >= 0 else None

    def validate(self, sample: Sample) -> None:
        """Model-specific checks that need no forward pass, run on every sample before any file is written."""
        if not self.takes_video:
            for source in sample.image_sources:
                if is_video_source(source):
                    raise video_given_to_still_model(source)

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
    def generate(self, sample: Sample, max_new_tokens: int, use_cache: bool = True) -> list[int]:
        """Greedy continuation of the prompt, as token ids (end-of-sequence excluded); `use_cache=False`
        re-runs the whole sequence at every step."""

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


def collate_left_padded(items: list[Prepared], pad_token_id: int) -> Prepared:
    """Batch several prepared samples of one family, left-padded to the longest (padding role id -1).

    Image inputs are concatenated in sample order (the order the model consumes them). All samples must
    have the same role labels; image grids are kept only for a single sample (they have no batch axis).
    """
    from probe.errors import ProbeError

    labels = items[0].roles["llm"].labels
    if any(p.roles["llm"].labels != labels for p in items):
        raise ProbeError("samples in one batch must have the same roles (same number of images)")
    length = max(int(p.inputs["input_ids"].shape[-1]) for p in items)
    ids, mask, role_ids = [], [], []
    for p in items:
        pad = length - int(p.inputs["input_ids"].shape[-1])
        ids.append(torch.nn.functional.pad(p.inputs["input_ids"], (pad, 0), value=pad_token_id))
        mask.append(torch.nn.functional.pad(p.inputs["attention_mask"], (pad, 0), value=0))
        role_ids.append(torch.nn.functional.pad(p.roles["llm"].role_ids, (pad, 0), value=-1))
    inputs = {"input_ids": torch.cat(ids), "attention_mask": torch.cat(mask)}
    for key in items[0].inputs:
        if key not in inputs:
            inputs[key] = torch.cat([p.inputs[key] for p in items])
    grids = items[0].roles["llm"].grids if len(items) == 1 else []
    roles = StageRoles(labels=list(labels), role_ids=torch.cat(role_ids), grids=grids)
    return Prepared(
        inputs=inputs,
        roles={"llm": roles},
        prompt_length=max(p.prompt_length for p in items),
        response_ids=items[0].response_ids,
    )
