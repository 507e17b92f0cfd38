"""Which conversation turns a prompt into the text a model reads: `--template model|llava_v1|FILE`.

The template decides what surrounds the user's words (a system prompt, role names, separators) and so
which tokens the `system` and `instruction` roles hold: masses measured under different templates are
not comparable. Three sources:

- `llava_v1`: the conversation LLaVA-v1.5 was trained and evaluated with (the release's `conv_vicuna_v1`:
  `--version v1` in its fine-tuning scripts, `--conv-mode vicuna_v1` in its evaluation scripts), the
  format the LLaVA-Mini paper measured: its system prompt, then `USER: {prompt} ASSISTANT:` (separator
  " " after the system prompt and each user turn, "</s>" after each answer). The user's message is the
  prompt as written, every `<image>` where the user put it; whitespace right after a slot becomes one
  newline, LLaVA's `<image>\\n` + question.
- `model`: the model's own chat template (for llava-hf checkpoints: the conversion's, which moves every
  image to the front of the message, joins the text parts with spaces and has no system prompt).
- FILE: a Jinja chat template (a `.jinja` file, or a `chat_template.json` holding `{"chat_template": ...}`)
  taking transformers' multimodal message parts (`{"type": "image"}` / `{"type": "text", "text": ...}`).

Defaults (`default_template_name`): `llava_v1` for LLaVA-v1.5 checkpoints; `model` for LLaVA-NeXT
(each v1.6 checkpoint has its own format: Vicuna, Mistral, ChatML), for LLaVA-Mini (its own template is
the release's Llama-3.1 conversation with its system prompt) and for models whose own template is
probe's (the built-in and organism models, trained or built with it).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from probe.builtin.tokenizer import LLAVA_V15_CHAT_TEMPLATE
from probe.errors import ProbeError
from probe.inputs import IMAGE_SLOT

MODEL = "model"
LLAVA_V1 = "llava_v1"
FILE = "file"
NAMES = (MODEL, LLAVA_V1)

# conv_vicuna_v1's system prompt, as in haotian-liu/LLaVA llava/conversation.py.
LLAVA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

# conv_vicuna_v1 as a chat template (separator style TWO: sep " ", sep2 "</s>"). The user's content is a
# string with the slots in place (see `ChatTemplate.messages`); parts are accepted too, for other callers.
LLAVA_V1_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}" + LLAVA_V1_SYSTEM + " {% endif %}"
    "{% for message in messages %}"
    "{% if message['content'] is string %}{% set text = message['content'] %}"
    "{% else %}{% set text = namespace(value='') %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{% set text.value = text.value + '<image>\\n' %}"
    "{% else %}{% set text.value = text.value + part['text'] %}{% endif %}"
    "{% endfor %}{% set text = text.value %}{% endif %}"
    "{% if message['role'] == 'system' %}{{ text }} "
    "{% elif message['role'] == 'user' %}USER: {{ text }} "
    "{% else %}ASSISTANT: {{ text }}</s>"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

# Templates probe's own models were built or trained with: for them `model` is what they know.
PROBE_TEMPLATES = frozenset({LLAVA_V15_CHAT_TEMPLATE})


def prompt_to_content(prompt: str) -> list[dict]:
    """'<image> What is it?' -> transformers' multimodal message content parts (text parts stripped)."""
    parts: list[dict] = []
    for k, text in enumerate(prompt.split(IMAGE_SLOT)):
        if k > 0:
            parts.append({"type": "image"})
        if text.strip():
            parts.append({"type": "text", "text": text.strip()})
    return parts


def llava_v1_message(prompt: str) -> str:
    """The user's message in LLaVA's own layout: the prompt as written, slots in place, and whitespace
    right after a slot as one newline ('<image> What?' -> '<image>\\nWhat?', as LLaVA builds it)."""
    return re.sub(re.escape(IMAGE_SLOT) + r"\s+", IMAGE_SLOT + "\n", prompt.strip())


@dataclass(frozen=True)
class ChatTemplate:
    """A chat template chosen for a run. `plain_text`: the user's message is a string (`llava_v1`), not
    content parts; `file`: where a FILE template was read from."""

    name: str
    text: str
    plain_text: bool = False
    file: str | None = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def messages(self, prompt: str) -> list[dict]:
        content = llava_v1_message(prompt) if self.plain_text else prompt_to_content(prompt)
        return [{"role": "user", "content": content}]

    def render(self, tokenizer, prompt: str) -> str:
        """The prompt as the model reads it, ready for the generation of the answer."""
        try:
            return tokenizer.apply_chat_template(
                self.messages(prompt), chat_template=self.text, add_generation_prompt=True, tokenize=False
            )
        except Exception as exc:  # jinja2 raises many types (undefined variables, raise_exception, ...)
            raise ProbeError(
                f"chat template '{self.label}' cannot render the prompt: {exc.__class__.__name__}: {exc}"
            ) from None

    @property
    def label(self) -> str:
        return self.file if self.file else self.name

    def manifest_entries(self) -> dict:
        """A run manifest's record of the template. `template` (name, sha256 of the text) is part of the
        run's resume key, so another template or an edited file is another setting; the text is kept whole."""
        return {
            "template": {"name": self.name, "sha256": self.sha256},
            "template_text": self.text,
            **({"template_file": self.file} if self.file else {}),
        }


LLAVA_V1_TEMPLATE = ChatTemplate(LLAVA_V1, LLAVA_V1_CHAT_TEMPLATE, plain_text=True)


def read_template_file(path: str | Path) -> ChatTemplate:
    """A FILE template: a Jinja file, or JSON with a 'chat_template' string; checked to compile."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ProbeError(
            f"--template {path}: no such file (use 'model', 'llava_v1' or a Jinja chat template file)"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProbeError(f"cannot read template {path}: {exc.__class__.__name__}") from None
    if path.suffix == ".json":
        try:
            text = json.loads(text).get("chat_template")
        except (json.JSONDecodeError, AttributeError):
            text = None
        if not isinstance(text, str):
            raise ProbeError(f"{path} is not a chat_template.json (no 'chat_template' string)")
    if not text.strip():
        raise ProbeError(f"template {path} is empty")
    from jinja2 import TemplateSyntaxError
    from transformers.utils.chat_template_utils import _compile_jinja_template

    try:
        _compile_jinja_template(text)
    except TemplateSyntaxError as exc:
        raise ProbeError(f"template {path} is not valid Jinja (line {exc.lineno}: {exc.message})") from None
    return ChatTemplate(FILE, text, file=str(path))


def parse_template(spec: str | ChatTemplate | None) -> str | ChatTemplate | None:
    """`--template` checked before any model loads: a name stays a name, a FILE is read and compiled."""
    if spec is None or isinstance(spec, ChatTemplate) or spec in NAMES:
        return spec
    return read_template_file(spec)


def default_template_name(family: str, own: str | None) -> str:
    """The paper's format for LLaVA-v1.5; every other model (and probe's own) reads its own template."""
    if own is None:
        return LLAVA_V1
    if family == "llava" and own not in PROBE_TEMPLATES:
        return LLAVA_V1
    return MODEL


def resolve_template(
    spec: str | ChatTemplate | None, family: str, own: str | None, model_name: str = "this model"
) -> ChatTemplate:
    """The template a run uses: `spec` (None = the family's default) against the model's own template."""
    spec = parse_template(spec)
    if isinstance(spec, ChatTemplate):
        return spec
    name = spec or default_template_name(family, own)
    if name == LLAVA_V1:
        return LLAVA_V1_TEMPLATE
    if own is None:
        raise ProbeError(
            f"{model_name} has no chat template of its own: use --template llava_v1 or --template FILE"
        )
    return ChatTemplate(MODEL, own)
