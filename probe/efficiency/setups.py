"""Which model, in which configuration, seeing how many tokens at each stage.

A `Setup` is everything the FLOP counter, the memory estimate and the latency measurement need: the
model's config (a shipped JSON config for the real sizes, or the config.json of a zoo / local model), the
LLaVA-Mini knobs (C, N_fusion, kind, resolution ratio) and the request shape (frames, prompt and
response tokens). Every check on user input lives here, so bad input fails before any work starts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from probe.errors import ProbeError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
RESOLUTIONS = (336, 672)
KINDS = ("query", "pool")


def shipped_configs() -> list[str]:
    """Real model sizes that work offline without weights (probe/efficiency/configs/*.json)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


@dataclass(frozen=True)
class Request:
    """The request shape shared by every model of a run."""

    resolution: int = 336
    frames: int = 1
    prompt_tokens: int = 64  # L: text tokens of the prompt (system + instruction), image tokens excluded
    response_tokens: int = 32  # R: generated tokens (the first comes out of the prefill)


@dataclass(frozen=True)
class Setup:
    """One model in one configuration. `config` is a transformers config object of the model's family."""

    model: str  # the name the user gave
    family: str  # llava | llava_next | llava_mini
    config: object
    request: Request
    has_weights: bool = False
    source: str = ""  # where the config came from

    @property
    def label(self) -> str:
        """Model name plus the LLaVA-Mini knobs where the user built a variant."""
        if self.family != "llava_mini":
            return self.model
        c = self.config
        return f"{self.model} [C={c.compressor_size}, N={c.prefusion_layer_num}, {c.compression_kind}]"

    @property
    def text_config(self):
        return self.config if self.family == "llava_mini" else self.config.text_config

    @property
    def vision_config(self):
        return self.config.vision_config

    @property
    def views(self) -> int:
        """336 px crops the vision encoder sees per image / frame."""
        if self.family == "llava_mini":
            n = self.config.resolution_ratio
            return 1 if n == 1 else n * n + 1
        if self.family == "llava_next":
            from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

            side = self.request.resolution
            return int(
                image_size_to_num_patches((side, side), self.config.image_grid_pinpoints, self.patch_grid_px)
            )
        return 1

    @property
    def patch_grid_px(self) -> int:
        return self.vision_config.image_size

    @property
    def grid_side(self) -> int:
        """Patches per side of one 336 px view (24 for CLIP ViT-L/14-336)."""
        return self.vision_config.image_size // self.vision_config.patch_size

    @property
    def patches_per_view(self) -> int:
        return self.grid_side**2

    @property
    def llm_vision_tokens(self) -> int:
        """Vision tokens the LLM sees per image / frame."""
        if self.family == "llava_mini":
            return self.config.compressor_size**2
        if self.family == "llava_next":
            return llava_next_image_tokens(self.config, self.request.resolution)
        return self.patches_per_view

    @property
    def llm_tokens(self) -> int:
        """Prefill length of the LLM: every frame's vision tokens plus the text."""
        return self.request.frames * self.llm_vision_tokens + self.request.prompt_tokens

    @property
    def prefusion_tokens(self) -> int:
        """Sequence length of each frame's pre-fusion call: [crops, global, compressed, text]."""
        if self.family != "llava_mini" or self.config.prefusion_layer_num == 0:
            return 0
        n = self.config.resolution_ratio
        crops = 0 if n == 1 else n * n * self.patches_per_view
        return crops + self.patches_per_view + self.config.compressor_size**2 + self.request.prompt_tokens


def llava_next_image_tokens(config, resolution: int) -> int:
    """LLaVA-v1.6 "anyres" tokens of a square image: transformers' own processor arithmetic (base grid +
    unpadded high-res grid + one newline per row), CLS dropped."""
    from types import SimpleNamespace

    from transformers import LlavaNextProcessor

    vision = config.vision_config
    shim = SimpleNamespace(
        image_processor=SimpleNamespace(image_grid_pinpoints=config.image_grid_pinpoints),
        patch_size=vision.patch_size,
        num_additional_image_tokens=1,
    )
    shim._get_unpadded_features = lambda *args: LlavaNextProcessor._get_unpadded_features(shim, *args)
    side = vision.image_size
    tokens = LlavaNextProcessor._get_number_of_features(shim, resolution, resolution, side, side)
    return tokens - (1 if config.vision_feature_select_strategy == "default" else 0)


# --- configs ----------------------------------------------------------------------------------------
def _config_from_dict(data: dict, name: str):
    data = {k: v for k, v in data.items() if not k.startswith("_")}
    model_type = data.get("model_type", "")
    if model_type in ("llava_mini_llama", "llava_mini"):
        from llava_mini.configuration import LlavaMiniConfig

        data.pop("model_type")
        return "llava_mini", LlavaMiniConfig(**data)
    if model_type in ("llava", "llava_next"):
        from transformers import AutoConfig

        return model_type, AutoConfig.for_model(data.pop("model_type"), **data)
    raise ProbeError(
        f"'{name}' is a '{model_type}' model; probe efficiency supports llava, llava_next, llava_mini"
    )


def load_config(name: str) -> tuple[str, object, bool, str]:
    """-> (family, config, has_weights, source). Shipped real-size configs first, then the zoo / a directory."""
    shipped = CONFIG_DIR / f"{name}.json"
    if shipped.is_file():
        family, config = _config_from_dict(json.loads(shipped.read_text()), name)
        return family, config, False, f"probe/efficiency/configs/{shipped.name}"
    from probe.zoo import REGISTRY, resolve

    if name not in REGISTRY and not Path(name).expanduser().is_dir():
        known = ", ".join(shipped_configs() + sorted(n for n in REGISTRY if n not in shipped_configs()))
        raise ProbeError(f"unknown model '{name}': use one of {known} or a local model directory")
    source = resolve(name).source
    config_file = Path(source) / "config.json"
    if not config_file.is_file():
        raise ProbeError(f"no config for '{name}' ({config_file} missing)")
    family, config = _config_from_dict(json.loads(config_file.read_text()), name)
    return family, config, True, str(source)


def make_setup(
    name: str,
    request: Request,
    queries: int | None = None,
    prefusion: int | None = None,
    kind: str | None = None,
) -> Setup:
    """The model `name` at `request`; any of queries / prefusion / kind turns a LLaVA-v1.5 base into the
    LLaVA-Mini built on it (paper defaults for the knobs not given: C = 1, N_fusion = 4, query)."""
    check_request(request)
    if queries is not None and queries < 1:
        raise ProbeError(f"--queries must be >= 1 (C x C compressed tokens per image), got {queries}")
    if prefusion is not None and prefusion < 0:
        raise ProbeError(f"--prefusion must be >= 0, got {prefusion}")
    if kind is not None and kind not in KINDS:
        raise ProbeError(f"--kind must be one of {', '.join(KINDS)}, got '{kind}'")
    family, config, has_weights, source = load_config(name)
    mini_knobs = (queries, prefusion, kind) != (None, None, None)
    if mini_knobs and family == "llava_next":
        raise ProbeError(f"'{name}' is a LLaVA-v1.6 model: LLaVA-Mini variants need a LLaVA-v1.5 base")
    if mini_knobs and family == "llava":
        from llava_mini.build import mini_config_from_llava

        config = mini_config_from_llava(
            config, queries or 1, 4 if prefusion is None else prefusion, kind or "query"
        )
        family, has_weights = "llava_mini", False
    elif mini_knobs:
        config = config.__class__(
            **{
                **config.to_dict(),
                "compressor_size": queries or config.compressor_size,
                "prefusion_layer_num": config.prefusion_layer_num if prefusion is None else prefusion,
                "compression_kind": kind or config.compression_kind,
            }
        )
        has_weights = False
    setup = Setup(name, family, config, request, has_weights, source)
    return with_resolution(setup)


def with_resolution(setup: Setup) -> Setup:
    """Check the resolution against what the model can take; set LLaVA-Mini's resolution ratio."""
    res, side = setup.request.resolution, setup.vision_config.image_size
    if setup.family == "llava" and res != side:
        raise ProbeError(
            f"'{setup.model}' (LLaVA-v1.5) takes {side} px images only; for {res} px use a LLaVA-v1.6 model "
            "or a LLaVA-Mini variant (--queries / --prefusion)"
        )
    if res % side:
        raise ProbeError(f"--resolution must be a multiple of {side} px for '{setup.model}', got {res}")
    if setup.family == "llava_next":
        largest = max(max(p) for p in setup.config.image_grid_pinpoints)
        if res > largest:
            raise ProbeError(f"'{setup.model}' tiles images up to {largest} px, got --resolution {res}")
    if setup.family == "llava_mini" and setup.config.resolution_ratio != res // side:
        config = setup.config.__class__(**{**setup.config.to_dict(), "resolution_ratio": res // side})
        setup = replace(setup, config=config, has_weights=False)
    return setup


def check_request(request: Request) -> None:
    if request.resolution not in RESOLUTIONS:
        raise ProbeError(
            f"--resolution must be one of {', '.join(map(str, RESOLUTIONS))}, got {request.resolution}"
        )
    if request.frames < 1:
        raise ProbeError(f"--frames must be >= 1, got {request.frames}")
    if request.prompt_tokens < 1:
        raise ProbeError(f"--prompt-tokens must be >= 1, got {request.prompt_tokens}")
    if request.response_tokens < 1:
        raise ProbeError(f"--response-tokens must be >= 1, got {request.response_tokens}")


def with_queries(setup: Setup, queries: int) -> Setup:
    """The same LLaVA-Mini with C = queries (for the FLOPs-vs-vision-tokens sweep)."""
    config = setup.config.__class__(**{**setup.config.to_dict(), "compressor_size": queries})
    return replace(setup, config=config, has_weights=False)
