"""probe: interpretability and ablation toolkit for efficient vision-language models.

The notebook API is three calls:

    import probe
    model = probe.load("tiny-llava")
    table = probe.attention(model, image="skimage:astronaut", prompt="<image> What is shown?")
    probe.plot(table)
"""

from __future__ import annotations

import importlib.metadata
from typing import TYPE_CHECKING

from probe.errors import ProbeError

if TYPE_CHECKING:
    from probe.zoo import LoadedModel, load

__all__ = ["ProbeError", "LoadedModel", "load", "attention", "attention_maps", "plot"]
try:
    __version__ = importlib.metadata.version("probe-vlm")
except importlib.metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"


def __getattr__(name: str):
    """`probe.load` / `probe.LoadedModel` import torch on first use, so `import probe.cli` stays fast."""
    if name in ("load", "LoadedModel"):
        from probe import zoo

        return getattr(zoo, name)
    raise AttributeError(f"module 'probe' has no attribute '{name}'")


def attention(
    model: LoadedModel,
    image: str | list[str] | None = None,
    prompt: str | None = None,
    response: str | None = None,
    dataset: str | None = None,
    backend: str = "native",
    per_head: bool = False,
    generate: int | None = None,
    response_from: str = "response",
):
    """Tidy per-layer attention table for one image + prompt, or a JSONL dataset (nothing written).

    `response_from` picks the dataset key teacher-forced as the response: response, answer or none."""
    import pandas as pd

    from probe.attention_job import AttentionOptions, probe_sample
    from probe.inputs import make_sample, read_dataset

    # importing the submodule `probe.attention` rebinds the package attribute to the module: undo that
    globals()["attention"] = _attention_api

    if dataset is not None:
        samples = read_dataset(dataset, response_from)
    else:
        images = [image] if isinstance(image, str) else list(image or [])
        samples = [make_sample(prompt or "", images, response=response)]
    options = AttentionOptions(backend=backend, per_head=per_head, generate=generate)
    return pd.concat([probe_sample(model, s, options).table for s in samples], ignore_index=True)


_attention_api = attention


def attention_maps(
    model: LoadedModel,
    image: str | list[str],
    prompt: str,
    queries: str = "-1",
    response: str | None = None,
    backend: str = "native",
    generate: int | None = None,
):
    """Tidy grid table (paper Fig. 4): where the `queries` tokens ('-1', 'response', '12,-3', ...) look
    on each image's patch grid, per layer. Draw it with `analyses.attention_maps.plot_grid_attention`."""
    from probe.attention_job import AttentionOptions, check_grid_options, probe_sample
    from probe.inputs import make_sample

    globals()["attention"] = _attention_api  # see `attention`
    images = [image] if isinstance(image, str) else list(image)
    sample = make_sample(prompt, images, response=response)
    options = AttentionOptions(backend=backend, generate=generate, grid_queries=queries)
    check_grid_options(options, [sample])
    return probe_sample(model, sample, options).grid


def plot(table, value: str = "mass", stage: str = "llm"):
    """Paper Fig. 2 (value='mass') or Fig. 3 (value='entropy') from a tidy table."""
    from analyses.attention_profile import plot_by_layer

    return plot_by_layer(table, value, stage)
