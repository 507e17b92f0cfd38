"""LLaVA-v1.5 (`LlavaForConditionalGeneration`) and LLaVA-NeXT / v1.6 (`LlavaNextForConditionalGeneration`).

The processor and chat template place the image tokens; this adapter only reads where they landed.
For LLaVA-NeXT the vision role covers the base image, every high-resolution crop and the image-newline
tokens; the attention-map grid is the base 24 x 24 view.
"""

from __future__ import annotations

import torch

from probe.adapters.base import Adapter, Prepared, common_prefix_length
from probe.errors import ProbeError
from probe.inputs import Sample
from probe.roles import ImageGrid, StageRoles, spans_to_role_ids, text_labels, text_spans


def contiguous_runs(positions: list[int]) -> list[tuple[int, int]]:
    """[3, 4, 5, 9, 10] -> [(3, 6), (9, 11)]: half-open spans of consecutive positions."""
    runs: list[tuple[int, int]] = []
    for p in positions:
        if runs and runs[-1][1] == p:
            runs[-1] = (runs[-1][0], p + 1)
        else:
            runs.append((p, p + 1))
    return runs


class LlavaAdapter(Adapter):
    family = "llava"

    def __init__(self, model, processor) -> None:
        super().__init__(model, processor)
        self.tokenizer = processor.tokenizer
        self.image_token_id = int(model.config.image_token_id)
        vision = model.config.vision_config
        self.grid_side = vision.image_size // vision.patch_size

    # --- prompt and roles (the prompt is rendered by `Adapter.render`, see probe.templates) ------------
    def system_prefix_length(self, input_ids: list[int]) -> int:
        """Tokens the template puts before the user's content (BOS, system prompt, 'USER:'); the space
        that ends it belongs to the user's turn, so the system role ends at 'USER:'."""
        prefix = self.text_before_user_content()
        if prefix is None:
            return 0
        prefix_ids = self.tokenizer(prefix.rstrip(), add_special_tokens=True).input_ids
        return common_prefix_length(prefix_ids, input_ids)

    def tokens_per_image(self, images, positions: list[int]) -> list[int]:
        """How many of the prompt's image tokens belong to each image: the processor's own count where it
        has one, else one run of consecutive image tokens per image (refused when that is ambiguous)."""
        n_positions = len(positions)
        sizes = [(img.height, img.width) for img in images]
        helper = getattr(self.processor, "_get_num_multimodal_tokens", None)
        try:
            counts = list(helper(image_sizes=sizes)["num_image_tokens"]) if helper is not None else None
        except (TypeError, KeyError, ValueError):  # a processor whose helper wants other arguments
            counts = None
        if counts is None:
            runs = contiguous_runs(positions)
            if len(runs) != len(images):
                raise ProbeError(
                    f"cannot tell which of the {n_positions} image tokens belong to which of {len(images)} images "
                    f"(they form {len(runs)} run(s)): put text between the <image> slots"
                )
            counts = [end - start for start, end in runs]
        if sum(counts) != n_positions:
            raise ProbeError(
                f"found {n_positions} image tokens but expected {sum(counts)} for {len(images)} image(s)"
            )
        return counts

    def encode_response(self, response: str) -> list[int]:
        text = response if response[:1].isspace() else " " + response
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def prepare(self, sample: Sample, response_ids: list[int] | None = None) -> Prepared:
        images = sample.load_images()
        encoded = self.processor(images=images, text=self.render(sample.prompt), return_tensors="pt")
        prompt_ids = encoded["input_ids"][0].tolist()
        if response_ids is None and sample.response:
            response_ids = self.encode_response(sample.response)
        response_ids = list(response_ids or [])
        ids = prompt_ids + response_ids
        inputs = {k: v for k, v in encoded.items() if k not in ("input_ids", "attention_mask")}
        inputs["input_ids"] = torch.tensor([ids])
        inputs["attention_mask"] = torch.ones(1, len(ids), dtype=torch.long)
        roles = self._roles(prompt_ids, len(ids), images)
        return Prepared(
            inputs=inputs, roles={"llm": roles}, prompt_length=len(prompt_ids), response_ids=response_ids
        )

    def _roles(self, prompt_ids: list[int], length: int, images) -> StageRoles:
        positions = [i for i, t in enumerate(prompt_ids) if t == self.image_token_id]
        counts = self.tokens_per_image(images, positions)
        labels = text_labels(len(images))
        n_system = min(self.system_prefix_length(prompt_ids), positions[0] if positions else len(prompt_ids))
        spans = text_spans(n_system, len(prompt_ids), length)
        grids, start = [], 0
        for k, count in enumerate(counts):
            image_positions = positions[start : start + count]
            for run_start, run_end in contiguous_runs(image_positions):
                spans.append((f"image:{k}", run_start, run_end))
            side = self.grid_side
            if count >= side * side:
                grid = torch.tensor(image_positions[: side * side]).view(side, side)
                grids.append(ImageGrid(image_index=k, positions=grid))
            start += count
        role_ids = spans_to_role_ids(length, spans, labels)
        return StageRoles(labels=labels, role_ids=role_ids.unsqueeze(0), grids=grids)

    # --- model structure --------------------------------------------------------------------------
    def language_model(self) -> torch.nn.Module:
        return self.model.model.language_model

    def num_layers(self, stage: str = "llm") -> int:
        return self.model.config.text_config.num_hidden_layers

    def attention_modules(self, stage: str = "llm") -> list[torch.nn.Module]:
        return [layer.self_attn for layer in self.language_model().layers]

    def set_attention(self, implementation: str) -> None:
        self.model.set_attn_implementation({"text_config": implementation})

    def current_attention(self) -> str:
        return self.model.config.text_config._attn_implementation

    @torch.no_grad()
    def generate(self, sample: Sample, max_new_tokens: int, use_cache: bool = True) -> list[int]:
        prepared = self.prepare(sample, response_ids=[])
        inputs = {k: v.to(self.device) for k, v in prepared.inputs.items()}
        out = self.model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            use_cache=use_cache,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        new = out[0, prepared.prompt_length :].tolist()
        eos = self.tokenizer.eos_token_id
        return new[: new.index(eos)] if eos in new else new


class LlavaNextAdapter(LlavaAdapter):
    family = "llava_next"
