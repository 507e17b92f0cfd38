"""A real, offline-built byte-level BPE tokenizer for the built-in models.

Built-in models must go through the same `from_pretrained` path as a downloaded one, so they need a
real `PreTrainedTokenizerFast` with special tokens and a chat template. Training a small BPE on a
fixed corpus is deterministic, takes milliseconds and needs no network.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]

# The LLaVA-v1.5 conversation format ("USER: <image>\n... ASSISTANT: ..."), as a chat template taking
# transformers' multimodal message format ({"type": "image"} / {"type": "text"} content parts).
LLAVA_V15_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'][0]['text'] }} "
    "{% elif message['role'] == 'user' %}USER: "
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %} "
    "{% else %}ASSISTANT: "
    "{% for part in message['content'] %}{{ part['text'] }}{% endfor %}</s>"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

BASE_CORPUS = [
    "USER: ASSISTANT: What is in the image? Describe the picture in detail.",
    "What colour is the object? How many objects are there? Is it left of the other one?",
    "A person standing in front of a building. A cat sitting on a red mat near the window.",
    "The answer is yes. The answer is no. red green blue yellow white black orange purple",
    "circle square triangle star one two three four five six seven eight nine ten",
    "astronaut coffee camera rocket horse chelsea the a an of in on at to is are what where why",
]


def build_tokenizer(extra_corpus: Iterable[str] = (), vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train a deterministic byte-level BPE and wrap it as a transformers fast tokenizer (adds BOS)."""
    backend = Tokenizer(models.BPE(unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = list(BASE_CORPUS) + list(extra_corpus)
    backend.train_from_iterator(corpus * 4, trainer)
    bos_id = backend.token_to_id("<s>")
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        padding_side="left",
    )
