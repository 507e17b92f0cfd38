"""What the user asks about: images, a prompt with `<image>` slots, an optional response.

Everything here is validated before a model runs or a file is written, so bad input fails fast with
one line that says what to fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from probe.dataset_formats import DatasetSource, dataset_records, embedded_image, is_embedded
from probe.errors import ProbeError
from probe.notes import note
from probe.video import FRAME_EXTENSIONS, is_video_source, verify_video, video_given_to_still_model

IMAGE_SLOT = "<image>"
SKIMAGE_PREFIX = "skimage:"


@dataclass
class Sample:
    """One question about one or more images. `prompt` marks each image's place with `<image>`."""

    sample_id: str
    prompt: str
    image_sources: list[str]
    response: str | None = None
    answer: str | None = None
    meta: dict = field(default_factory=dict)
    choices: list[str] | None = None  # multiple choice: the options (answer = the option's letter)

    @property
    def scoring(self) -> str:
        """How a generated answer is scored against `answer` (`probe.interventions.metrics`)."""
        return "option letter" if self.choices else "exact match"

    def load_images(self) -> list[Image.Image]:
        """Decode the images now (datasets are validated up front but decoded one sample at a time)."""
        return [load_image(src) for src in self.image_sources]


def verify_image(source: str | Path) -> None:
    """Check that an image (or a video: file or folder of frames) exists and decodes, keeping no pixels."""
    if is_video_source(source):
        verify_video(source)
    else:
        load_image(source).close()


def load_image(source: str | Path) -> Image.Image:
    """Open an image file, or a scikit-image sample given as `skimage:NAME` (e.g. `skimage:astronaut`)."""
    source = str(source)
    if source.startswith(SKIMAGE_PREFIX):
        return _skimage_sample(source[len(SKIMAGE_PREFIX) :])
    if is_embedded(source):  # stored inside a dataset file (MMBench base64, a datasets image feature)
        return _decoded(embedded_image(source), source)
    path = Path(source)
    if is_video_source(path):
        raise video_given_to_still_model(source)
    if path.is_dir():
        raise ProbeError(
            f"{source} is a directory, not an image file (a folder is read as video frames only when it holds "
            f"{', '.join(sorted(FRAME_EXTENSIONS))} files)"
        )
    if not path.is_file():
        raise ProbeError(f"image not found: {source}")
    try:
        img = Image.open(path)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ProbeError(
            f"cannot read image {source}: not a valid image file ({exc.__class__.__name__})"
        ) from None
    return _decoded(img, source)


def _decoded(img: Image.Image, source: str) -> Image.Image:
    """Decode now (a broken file fails here, with its name) and hand back RGB."""
    try:
        with img:
            img.load()
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ProbeError(
            f"cannot read image {source}: not a valid image file ({exc.__class__.__name__})"
        ) from None


def _skimage_sample(name: str) -> Image.Image:
    from skimage import data

    fn = getattr(data, name, None)
    if fn is None or not callable(fn) or name.startswith("_"):
        raise ProbeError(
            f"unknown scikit-image sample '{name}' (try skimage:astronaut, skimage:coffee, skimage:chelsea)"
        )
    array = np.asarray(fn())
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.dtype != np.uint8:
        array = (255 * (array.astype(np.float64) - array.min()) / max(np.ptp(array), 1e-9)).astype(np.uint8)
    return Image.fromarray(array[..., :3]).convert("RGB")


def place_images(prompt: str, n_images: int, where: str = "prompt") -> str:
    """The one rule for `<image>` slots, for `--prompt` and dataset prompts alike.

    A prompt without any slot gets one per image placed before the text, the LLaVA training convention
    (`<image>\\n` + question), so plain VQA questions work as written. A prompt that has slots must have
    exactly one per image: a mismatch is an error, never guessed at.
    """
    if n_images == 0:
        raise ProbeError("no image given: probe studies how the model attends to images")
    slots = prompt.count(IMAGE_SLOT)
    if slots == 0:
        return f"{IMAGE_SLOT}\n" * n_images + prompt
    if slots != n_images:
        raise ProbeError(f"{where} has {slots} {IMAGE_SLOT} slot(s) but {n_images} image(s) were given")
    return prompt


def note_images_placed(count: int, total: int) -> None:
    """Say once per prompt / dataset that images were placed for the user (stderr, so tables stay clean)."""
    if count:
        which = "the prompt has" if total == 1 else f"{count} of {total} prompts have"
        note(f"{which} no {IMAGE_SLOT} slot: the image(s) go before the text (LLaVA convention)")


def make_sample(
    prompt: str,
    images: list[str],
    response: str | None = None,
    sample_id: str = "0",
    where: str = "prompt",
    answer: str | None = None,
    note: bool = True,
) -> Sample:
    """Validate slots first (cheap), then check that every image decodes. `note`: say when images were
    placed before a prompt without slots (off where the caller says it once for many samples)."""
    placed = place_images(prompt, len(images), where)
    for src in images:
        verify_image(src)
    if note:
        note_images_placed(int(placed != prompt), 1)
    return Sample(
        sample_id=sample_id,
        prompt=placed,
        image_sources=[str(src) for src in images],
        response=response,
        answer=answer,
    )


RESPONSE_FROM = ("response", "answer", "none")


def read_dataset(
    path: str | Path,
    response_from: str = "response",
    source: DatasetSource | None = None,
    limit: int | None = None,
) -> list[Sample]:
    """Read a dataset: probe's JSONL (one object per line with `image` (or `images`), `prompt`, optional
    `answer` and optional `response`, a per-sample response to teacher-force), a LLaVA evaluation
    question file (+ `source.answers`), an MMBench TSV, or a directory written by `datasets`'
    `save_to_disk` (columns named in `source`); see `probe.dataset_formats`. `limit`: the first N only.

    Relative image paths are taken relative to the file (or `source.image_folder`). `response_from` says
    which key becomes the teacher-forced response: `response` (lines without one get none), `answer`
    (every line must have one), or `none` (prompts only).
    Prompts follow `place_images`: without `<image>` the images go first; slots must match the images.
    """
    if response_from not in RESPONSE_FROM:
        raise ProbeError(f"unknown response source '{response_from}': use one of {', '.join(RESPONSE_FROM)}")
    path = Path(path).expanduser()
    if not path.exists():
        raise ProbeError(f"dataset not found: {path}")
    samples: list[Sample] = []
    placed = 0  # prompts that had no <image> slot
    for record in dataset_records(path, source or DatasetSource()):
        if limit is not None and len(samples) >= limit:
            break
        where = record.where
        if response_from == "answer" and record.answer is None:
            raise ProbeError(f"{where}: has no 'answer' to teacher-force (--response-from answer)")
        try:
            sample = make_sample(
                record.prompt,
                record.images,
                response={"response": record.response, "answer": record.answer}.get(response_from),
                sample_id=record.sample_id,
                where=where,
                answer=record.answer,
                note=False,
            )
        except ProbeError as exc:
            msg = str(exc)
            raise ProbeError(msg if msg.startswith(where) else f"{where}: {msg}") from None
        sample.choices = record.choices
        sample.meta = record.meta
        samples.append(sample)
        placed += IMAGE_SLOT not in record.prompt and not record.slotless_format
    if not samples:
        raise ProbeError(f"dataset {path} is empty")
    note_images_placed(placed, len(samples))
    return samples
