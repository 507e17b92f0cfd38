"""A Llama-style SentencePiece tokenizer and a tiny LLaVA-v1.5 saved like a llava-hf checkpoint, offline.

Real LLaVA-v1.5 checkpoints use Llama's SentencePiece BPE (`▁` marks a word's leading space, byte
fallback, BOS added, `<image>` an added special token): a template or role bug around spaces shows there
and not under the byte-level BPE of the built-in models. The model is trained by `sentencepiece` on a
small fixed corpus (deterministic, under a second) and loaded by transformers' `LlamaTokenizer`; the
checkpoint carries the verbatim llava-hf chat template (tests/fixtures/llava-hf-llava-1.5-7b).
"""

from __future__ import annotations

import json
from pathlib import Path

import sentencepiece as spm
import torch
from transformers import LlamaTokenizer, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

from probe.builtin.tiny import PATCH_SIZE, clip_image_processor, tiny_text_config, tiny_vision_config

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "llava-hf-llava-1.5-7b" / "chat_template.json"
CORPUS = [
    "A chat between a curious user and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "USER: What is in the image? ASSISTANT: A cat on a red mat.",
    "Compare the two pictures: what are the differences? One versus the other.",
    "What colour is the square? How many circles are there? Is it left of the star?",
]


def llava_hf_template() -> str:
    return json.loads(FIXTURE.read_text())["chat_template"]


def build_sentencepiece_tokenizer(directory: Path) -> LlamaTokenizer:
    """Train a byte-fallback SentencePiece BPE (Llama's settings) and load it as llava-hf's tokenizer."""
    directory.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 8),
        model_prefix=str(directory / "tokenizer"),
        vocab_size=400,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        split_digits=True,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    tokenizer = LlamaTokenizer.from_pretrained(directory, add_bos_token=True, legacy=False)
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    return tokenizer


def save_llava_hf_like(directory: Path) -> Path:
    """A tiny `LlavaForConditionalGeneration` + processor with the SentencePiece tokenizer and llava-hf's
    chat template, saved with `save_pretrained` (what `probe.load(DIR)` reads)."""
    tokenizer = build_sentencepiece_tokenizer(directory / "spm")
    processor = LlavaProcessor(
        image_processor=clip_image_processor(),
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=llava_hf_template(),
    )
    config = LlavaConfig(
        vision_config=tiny_vision_config(hidden=32, layers=1),
        text_config=tiny_text_config(len(tokenizer), hidden=32, layers=2),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    target = directory / "model"
    model.save_pretrained(target)
    processor.save_pretrained(target)
    return target
