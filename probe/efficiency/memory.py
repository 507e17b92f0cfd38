"""Memory without weights: parameters per component (from the meta model), KV cache per token / vision token /
image / frame, an activation-peak estimate, and how many frames fit in a GPU's memory.

Accounting (stated in every row's `convention`):
- `kv-only`: the LLM's KV cache alone, layers x 2 x kv_heads x head_dim x bytes per token. This is the
  quantity behind "memory per image" claims; LLaVA-Mini's pre-fusion and compressor keep no cache.
- `weights+kv+activations`: the budget minus all weights (every component, in the dtype), minus the text's
  KV and minus the activation peak of encoding one frame; what is left holds frames' KV.
"""

from __future__ import annotations

from torch import nn

from probe.efficiency.setups import Setup

BUDGETS_GIB = (24, 40, 80)
GIB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def component_modules(setup: Setup, model: nn.Module) -> dict[str, list[nn.Module]]:
    """The modules holding each component's parameters (the names `flops.COMPONENTS` uses)."""
    body = model.model
    if setup.family == "llava_mini":
        return {
            "vision_encoder": [body.vision_tower],
            "projector": [body.mm_projector],
            "compressor": [body.compressor],
            "prefusion": [body.prefusion_layers],
            "llm": [body.embed_tokens, body.layers, body.norm],
            "lm_head": [model.lm_head],
        }
    projector = [body.multi_modal_projector]
    if getattr(body, "image_newline", None) is not None:
        projector.append(_ParameterHolder(body.image_newline))
    return {
        "vision_encoder": [body.vision_tower],
        "projector": projector,
        "llm": [body.language_model],
        "lm_head": [model.lm_head],
    }


class _ParameterHolder(nn.Module):
    def __init__(self, parameter: nn.Parameter) -> None:
        super().__init__()
        self.parameter = parameter


def parameter_counts(setup: Setup, model: nn.Module) -> dict[str, int]:
    counts = {}
    for component, modules in component_modules(setup, model).items():
        seen = {id(p): p for m in modules for p in m.parameters()}
        counts[component] = sum(p.numel() for p in seen.values())
    return counts


def kv_bytes_per_token(setup: Setup, dtype_bytes: int) -> int:
    """layers x (K and V) x kv_heads x head_dim x bytes: one token in the LLM's cache."""
    text = setup.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    return text.num_hidden_layers * 2 * kv_heads * head_dim * dtype_bytes


def activation_peak_bytes(setup: Setup, dtype_bytes: int, frames: int | None = None) -> int:
    """Rough peak of live activations in the widest stage (SDPA / flash attention: no N x N score matrix):
    tokens x (2 x hidden + 2 x intermediate) x bytes, i.e. residual, normed input and the MLP's two
    up-projections. `frames` defaults to the request's (LLaVA-Mini's pre-fusion runs all frames as a batch)."""
    frames = setup.request.frames if frames is None else frames
    vision, text = setup.vision_config, setup.text_config
    stages = [
        (frames * setup.views * (setup.patches_per_view + 1), vision.hidden_size, vision.intermediate_size),
        (_llm_tokens(setup, frames), text.hidden_size, text.intermediate_size),
    ]
    if setup.prefusion_tokens:
        stages.append((frames * setup.prefusion_tokens, text.hidden_size, text.intermediate_size))
    return max(tokens * (2 * hidden + 2 * inter) for tokens, hidden, inter in stages) * dtype_bytes


def _llm_tokens(setup: Setup, frames: int) -> int:
    return frames * setup.llm_vision_tokens + setup.request.prompt_tokens


def memory_rows(setup: Setup, model: nn.Module, dtypes: list[str]) -> list[dict]:
    params = parameter_counts(setup, model)
    rows = [_row("params", c, "", n, "params") for c, n in params.items()]
    rows.append(_row("params", "total", "", sum(params.values()), "params"))
    text = setup.text_config
    for dtype in dtypes:
        size = DTYPE_BYTES[dtype]
        weights = sum(params.values()) * size
        rows += [_row("weights_bytes", c, "", n * size, "bytes", dtype) for c, n in params.items()]
        rows.append(_row("weights_bytes", "total", "", weights, "bytes", dtype))
        per_token = kv_bytes_per_token(setup, size)
        per_frame = per_token * setup.llm_vision_tokens
        kv = "kv-only"
        rows += [
            _row("kv_bytes_per_token", "llm", kv, per_token, "bytes", dtype),
            _row("kv_bytes_per_vision_token", "llm", kv, per_token, "bytes", dtype),
            _row("kv_bytes_per_image", "llm", kv, per_frame, "bytes", dtype),
            _row("kv_bytes_per_frame", "llm", kv, per_frame, "bytes", dtype),
            _row("kv_bytes_request", "llm", kv, per_token * setup.llm_tokens, "bytes", dtype),
            _row(
                "activation_peak_bytes",
                "total",
                "estimate",
                activation_peak_bytes(setup, size),
                "bytes",
                dtype,
            ),
            _row(  # what --measure's measured_peak_bytes (above weights) is compared with
                "estimated_peak_bytes",
                "total",
                "kv+activations, above weights",
                per_token * setup.llm_tokens + activation_peak_bytes(setup, size),
                "bytes",
                dtype,
            ),
        ]
        fixed = (
            weights + per_token * setup.request.prompt_tokens + activation_peak_bytes(setup, size, frames=1)
        )
        for budget in BUDGETS_GIB:
            quantity = f"frames_fit_{budget}gib"
            rows.append(_row(quantity, "total", kv, budget * GIB // per_frame, "frames", dtype))
            left = max(budget * GIB - fixed, 0)
            rows.append(_row(quantity, "total", "weights+kv+activations", left // per_frame, "frames", dtype))
    context = (text.max_position_embeddings - setup.request.prompt_tokens) // setup.llm_vision_tokens
    rows.append(_row("frames_fit_context", "llm", "max_position_embeddings", max(context, 0), "frames"))
    return rows


def _row(quantity: str, component: str, convention: str, value: float, unit: str, dtype: str = "") -> dict:
    return {
        "quantity": quantity,
        "component": component,
        "convention": convention,
        "value": float(value),
        "unit": unit,
        "dtype": dtype,
    }
