"""Prompt template, image / video preprocessing and tokenisation the way the release does them.

- Prompt: Llama-3.1 chat format with the release's system prompt (conversation `llava_llama_3`).
- Images: padded to a square with the CLIP mean colour (`image_aspect_ratio = "pad"`), then CLIP's
  336 px preprocessing. High resolution (`resolution_ratio` n): the padded image is resized to
  336n x 336n and cut into n x n crops (row-major), followed by the whole image (the release's order).
- Video: frames at 1 fps (the middle of T uniform segments), each resized to 336 x 336.
- Tokens: each `<image>` slot becomes C^2 `image_token_index` ids per image / frame, so `input_ids` has
  exactly the LLM's length (as transformers' LLaVA processors expand the image token).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image

from llava_mini.configuration import IMAGE_TOKEN_INDEX

IMAGE_SLOT = "<image>"
SYSTEM_PROMPT = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the "
    "user provides, and assist the user with a variety of tasks using natural language."
)
LLAMA3_SPECIAL_TOKENS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
EOT_TOKEN = "<|eot_id|>"  # id 128009 in the Llama-3.1 vocabulary

# Llama-3.1 chat format with the release's default system prompt; content may be a string or
# transformers' multimodal parts ({"type": "image"} / {"type": "text"}).
LLAVA_MINI_CHAT_TEMPLATE = (
    "{{ '<|begin_of_text|>' }}"
    "{% if messages[0]['role'] != 'system' %}"
    "<|start_header_id|>system<|end_header_id|>\n\n" + SYSTEM_PROMPT + "<|eot_id|>"
    "{% endif %}"
    "{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|eot_id|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
PROCESSOR_FILE = "llava_mini_processor.json"
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def clip_image_processor(size: int = 336):
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )


def expand2square(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """The release's padding: centre the image on a square canvas of the background colour."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), background)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


# --- processor --------------------------------------------------------------------------------------
class LlavaMiniProcessor:
    """Tokenizer + CLIP image processor + the release's prompt template and image layout."""

    def __init__(
        self,
        image_processor,
        tokenizer,
        compressor_size: int = 1,
        resolution_ratio: int = 1,
        image_aspect_ratio: str = "pad",
        image_token_index: int = IMAGE_TOKEN_INDEX,
        chat_template: str = LLAVA_MINI_CHAT_TEMPLATE,
    ) -> None:
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.compressor_size = compressor_size
        self.resolution_ratio = resolution_ratio
        self.image_aspect_ratio = image_aspect_ratio
        self.image_token_index = image_token_index
        self.chat_template = chat_template

    @classmethod
    def from_config(cls, tokenizer, config, image_processor=None) -> LlavaMiniProcessor:
        return cls(
            image_processor=image_processor or clip_image_processor(),
            tokenizer=tokenizer,
            compressor_size=config.compressor_size,
            resolution_ratio=config.resolution_ratio,
            image_aspect_ratio=config.image_aspect_ratio,
            image_token_index=config.image_token_index,
        )

    @classmethod
    def from_pretrained(cls, path: str | Path, config=None, **kwargs) -> LlavaMiniProcessor:
        """Tokenizer from the checkpoint; CLIP preprocessing from it when saved there, else CLIP-L/336's."""
        from transformers import CLIPImageProcessorPil, PreTrainedTokenizerFast

        from llava_mini.configuration import LlavaMiniConfig

        path = Path(path)
        config = config or LlavaMiniConfig.from_checkpoint(path)
        # tokenizer.json directly: AutoTokenizer would parse config.json, whose model_type it does not know
        tokenizer = PreTrainedTokenizerFast.from_pretrained(path, **kwargs)
        image_processor = None
        if (path / "preprocessor_config.json").is_file():
            image_processor = CLIPImageProcessorPil.from_pretrained(path)
        processor = cls.from_config(tokenizer, config, image_processor)
        extra = path / PROCESSOR_FILE
        if extra.is_file():
            processor.chat_template = json.loads(extra.read_text()).get(
                "chat_template", processor.chat_template
            )
        return processor

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        self.tokenizer.save_pretrained(path)
        self.image_processor.save_pretrained(path)
        (path / PROCESSOR_FILE).write_text(json.dumps({"chat_template": self.chat_template}, indent=2) + "\n")

    # --- prompt -------------------------------------------------------------------------------------
    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(
            messages,
            chat_template=self.chat_template,
            add_generation_prompt=add_generation_prompt,
            tokenize=False,
        )

    @property
    def eos_token_id(self) -> int:
        eot = self.tokenizer.convert_tokens_to_ids(EOT_TOKEN)
        return (
            eot
            if isinstance(eot, int) and eot != self.tokenizer.unk_token_id
            else self.tokenizer.eos_token_id
        )

    def tokenize(self, text: str, frames_per_slot: list[int]) -> list[int]:
        """Text with `<image>` slots -> ids, slot k expanded to frames_per_slot[k] x C^2 image ids."""
        chunks = text.split(IMAGE_SLOT)
        if len(chunks) - 1 != len(frames_per_slot):
            raise ValueError(
                f"text has {len(chunks) - 1} {IMAGE_SLOT} slot(s) but {len(frames_per_slot)} were filled"
            )
        ids: list[int] = []
        for k, chunk in enumerate(chunks):
            if chunk:
                ids.extend(self.tokenizer(chunk, add_special_tokens=False).input_ids)
            if k < len(frames_per_slot):
                ids.extend([self.image_token_index] * (frames_per_slot[k] * self.compressor_size**2))
        return ids

    # --- pixels -------------------------------------------------------------------------------------
    def _normalise(self, images: list[Image.Image]) -> torch.Tensor:
        return self.image_processor(images=images, return_tensors="pt")["pixel_values"]

    def image_views(self, image: Image.Image) -> torch.Tensor:
        """[V, 3, 336, 336]: V = 1, or n^2 crops (row-major) + the whole image for resolution_ratio n."""
        image = image.convert("RGB")
        if self.image_aspect_ratio == "pad":
            image = expand2square(image, tuple(int(255 * m) for m in self.image_processor.image_mean))
        size = self.image_processor.crop_size["height"]
        n = self.resolution_ratio
        views = []
        if n > 1:
            big = image.resize((size * n, size * n), Image.BICUBIC)
            views = [
                big.crop((c * size, r * size, (c + 1) * size, (r + 1) * size))
                for r in range(n)
                for c in range(n)
            ]
        return self._normalise([*views, image])

    def video_views(self, frames: list[Image.Image]) -> torch.Tensor:
        """[T, 1, 3, 336, 336]: each frame resized to 336 x 336 (no padding, no crops)."""
        size = self.image_processor.crop_size["height"]
        return self._normalise(
            [f.convert("RGB").resize((size, size), Image.BICUBIC) for f in frames]
        ).unsqueeze(1)

    def __call__(
        self,
        text: str,
        images: list[Image.Image] | None = None,
        video: list[Image.Image] | None = None,
        return_tensors: str = "pt",
    ) -> dict[str, torch.Tensor]:
        """One prompt with either images (one `<image>` slot each) or one video (one slot, T frames)."""
        if images and video:
            raise ValueError("give images or a video, not both")
        slots = text.count(IMAGE_SLOT)
        if video is not None:
            pixel_values = self.video_views(video)
            per_slot = [len(video)] if slots == 1 else None
        elif images:
            pixel_values = torch.stack([self.image_views(img) for img in images])
            per_slot = [1] * len(images) if slots == len(images) else None
        else:
            pixel_values, per_slot = None, [] if slots == 0 else None
        if per_slot is None:
            n = len(video) if video is not None else len(images or [])
            raise ValueError(f"text has {slots} {IMAGE_SLOT} slot(s) for {n} image(s) / frame(s)")
        ids = self.tokenize(text, per_slot)
        out = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
        if pixel_values is not None:
            out["pixel_values"] = pixel_values.unsqueeze(0)  # [1, T, V, 3, 336, 336]
        return out
