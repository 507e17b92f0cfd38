"""probe adapter for LLaVA-Mini: two stages of attention layers.

- stage "llm": the LLM's sequence. Roles: `system` (template prefix), `image:K` (the C^2 compressed
  tokens of image / frame K), `instruction` (the user's prompt tokens, all pre-fused), `last` (the last
  prompt token, which predicts the first response token; see probe.roles), `response`.
- stage "prefusion": the pre-fusion layers, run once per image / frame over
  [global vision tokens (n^2 x 576 crop tokens first at high resolution), C^2 compressed, text].
  Roles: `global:K`, `compressed:K`, `text` (the prompt's tokens; response tokens are not pre-fused and
  are masked out). The T per-frame sequences are reported as one sequence (statistics are per target
  token, so this pools the frames' target tokens).

Inputs: `sample.image_sources` is one or more images (one `<image>` slot each), or a single video file /
folder of frames (one slot; frames at 1 fps).
"""

from __future__ import annotations

import torch

from probe.adapters.base import Adapter, Prepared, common_prefix_length
from probe.errors import ProbeError
from probe.inputs import IMAGE_SLOT, Sample
from probe.roles import ImageGrid, StageRoles, spans_to_role_ids, text_labels, text_spans
from probe.video import is_video_source, load_video_frames


class LlavaMiniAdapter(Adapter):
    family = "llava_mini"
    stages = ("llm", "prefusion")
    forward_order = ("prefusion", "llm")

    def __init__(self, model, processor) -> None:
        super().__init__(model, processor)
        self.tokenizer = processor.tokenizer
        self.config = model.config
        self.per_frame = self.config.compressor_size**2
        self.max_frames: int | None = None

    # --- inputs (the prompt is rendered by `Adapter.render`, see probe.templates) ----------------------
    takes_video = True

    def validate(self, sample: Sample) -> None:
        sources = sample.image_sources
        if any(is_video_source(s) for s in sources) and (
            len(sources) != 1 or sample.prompt.count(IMAGE_SLOT) != 1
        ):
            raise ProbeError("LLaVA-Mini takes one video (file or folder of frames) with one <image> slot")
        if len(sources) > 1:
            # the model would pre-fuse the text with each image and average it, as for video frames: not the
            # release's behaviour for images, so not something to measure silently
            raise ProbeError(
                f"LLaVA-Mini takes one image or one video per prompt (as the release), got {len(sources)} images; "
                "to compare several stills as a video, put them in a folder of frames"
            )

    def load_visual(self, sample: Sample) -> tuple[list, bool]:
        """-> (images or frames, is_video)."""
        self.validate(sample)
        sources = sample.image_sources
        if is_video_source(sources[0]):
            return load_video_frames(sources[0], max_frames=self.max_frames), True
        return sample.load_images(), False

    def system_prefix_length(self, ids: list[int]) -> int:
        prefix = self.text_before_user_content()
        return common_prefix_length(self.processor.tokenize(prefix, []) if prefix else [], ids)

    def encode_response(self, response: str) -> list[int]:
        """The response as the model writes it after its prompt: a template ending in a separator word
        (Vicuna's `ASSISTANT:`, as LLaVA-v1.5 and the organisms use) is answered after a space, one ending
        in a newline (Llama-3's header) is not. Tokenised without the space, " triangle" becomes other
        tokens than the model generates."""
        if not response[:1].isspace() and not self.render("")[-1:].isspace():
            response = " " + response
        return self.tokenizer(response, add_special_tokens=False).input_ids

    def prepare(self, sample: Sample, response_ids: list[int] | None = None) -> Prepared:
        visual, is_video = self.load_visual(sample)
        text = self.render(sample.prompt)
        try:
            encoded = self.processor(text, video=visual) if is_video else self.processor(text, images=visual)
        except ValueError as exc:
            raise ProbeError(str(exc)) from None
        prompt_ids = encoded["input_ids"][0].tolist()
        if response_ids is None and sample.response:
            response_ids = self.encode_response(sample.response)
        response_ids = list(response_ids or [])
        ids = prompt_ids + response_ids
        limit = self.config.tokenizer_model_max_length
        if limit is not None and len(ids) > limit:
            raise ProbeError(
                f"the sequence is {len(ids)} tokens, longer than this model's tokenizer_model_max_length ({limit}); "
                "the release truncates there: shorten the prompt or the response"
            )
        inputs = {
            "input_ids": torch.tensor([ids]),
            "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
            "fusion_mask": torch.ones(1, len(prompt_ids), dtype=torch.bool),  # only the prompt is pre-fused
        }
        if "pixel_values" in encoded:
            inputs["pixel_values"] = encoded["pixel_values"]
        n_frames = len(visual)
        roles = {"llm": self._llm_roles(prompt_ids, len(ids), n_frames)}
        per_sequence = self._prefusion_roles(prompt_ids, len(ids), n_frames, encoded.get("pixel_values"))
        roles["prefusion"] = per_sequence.concat_sequences()
        return Prepared(
            inputs=inputs,
            roles=roles,
            prompt_length=len(prompt_ids),
            response_ids=response_ids,
            sequence_roles={"prefusion": per_sequence},
        )

    def _llm_roles(self, prompt_ids: list[int], length: int, n_frames: int) -> StageRoles:
        image_positions = [i for i, t in enumerate(prompt_ids) if t == self.config.image_token_index]
        first_image = image_positions[0] if image_positions else len(prompt_ids)
        n_system = min(self.system_prefix_length(prompt_ids), first_image)
        labels = text_labels(n_frames)
        spans = text_spans(n_system, len(prompt_ids), length)
        for k in range(n_frames):
            for p in image_positions[k * self.per_frame : (k + 1) * self.per_frame]:
                spans.append((f"image:{k}", p, p + 1))
        return StageRoles(labels=labels, role_ids=spans_to_role_ids(length, spans, labels).unsqueeze(0))

    def _prefusion_roles(self, prompt_ids: list[int], length: int, n_frames: int, pixel_values) -> StageRoles:
        """Roles of each frame's pre-fusion sequence [global..., compressed, text], batch = frames."""
        views = 1 if pixel_values is None else pixel_values.shape[2]
        side = self.config.vision_config.image_size // self.config.vision_config.patch_size
        n_global = views * side * side
        n_text = length - n_frames * self.per_frame  # every non-image token; response tokens are masked out
        n_prompt_text = len(prompt_ids) - n_frames * self.per_frame
        labels = (
            [f"global:{k}" for k in range(n_frames)] + [f"compressed:{k}" for k in range(n_frames)] + ["text"]
        )
        rows, grids = [], []
        total = n_global + self.per_frame + n_text
        for k in range(n_frames):
            spans = [
                (f"global:{k}", 0, n_global),
                (f"compressed:{k}", n_global, n_global + self.per_frame),
                ("text", n_global + self.per_frame, n_global + self.per_frame + n_prompt_text),
            ]
            rows.append(spans_to_role_ids(total, spans, labels))
            whole = torch.arange(n_global - side * side, n_global).view(side, side) + k * total
            grids.append(ImageGrid(image_index=k, positions=whole))  # positions in the concatenated sequence
        return StageRoles(labels=labels, role_ids=torch.stack(rows), grids=grids)

    # --- structure ----------------------------------------------------------------------------------
    def _layers(self, stage: str):
        if stage == "llm":
            return self.model.model.layers
        if stage == "prefusion":
            return self.model.model.prefusion_layers
        raise ProbeError(f"LLaVA-Mini has stages 'llm' and 'prefusion', not '{stage}'")

    def num_layers(self, stage: str = "llm") -> int:
        return len(self._layers(stage))

    def attention_modules(self, stage: str = "llm") -> list[torch.nn.Module]:
        return [layer.self_attn for layer in self._layers(stage)]

    def set_attention(self, implementation: str) -> None:
        # "" = the top-level (LLM) config, shared by the pre-fusion layers; CLIP keeps its own.
        self.model.set_attn_implementation({"": implementation})

    def current_attention(self) -> str:
        return self.model.config._attn_implementation

    def attention_stages(self, output) -> dict[str, tuple[torch.Tensor, ...]]:
        return {"llm": output.attentions or (), "prefusion": output.prefusion_attentions or ()}

    # --- extras -------------------------------------------------------------------------------------
    @torch.no_grad()
    def compression_map(self, sample: Sample) -> tuple[torch.Tensor, list]:
        """-> (weights [T, C^2, rows, cols] of the compressor's queries over each image / frame grid, visuals)."""
        prepared = self.prepare(sample, response_ids=[])
        inputs = {k: v.to(self.device) for k, v in prepared.inputs.items()}
        out = self.model(**inputs)
        visual, _ = self.load_visual(sample)
        return out.compression_weights[0].float().cpu(), visual

    @torch.no_grad()
    def generate(self, sample: Sample, max_new_tokens: int, use_cache: bool = True) -> list[int]:
        prepared = self.prepare(sample, response_ids=[])
        inputs = {k: v.to(self.device) for k, v in prepared.inputs.items()}
        eos = self.processor.eos_token_id
        out = self.model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            use_cache=use_cache,
            eos_token_id=eos,
            pad_token_id=self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos,
        )
        new = out[0, prepared.prompt_length :].tolist()
        return new[: new.index(eos)] if eos in new else new
