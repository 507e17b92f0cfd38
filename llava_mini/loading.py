"""Load and save LLaVA-Mini checkpoints in the release's layout.

A checkpoint directory (or hub id) holds `config.json` (flat Llama keys + `mm_*`, `compressor_size`,
`prefusion_layer_num`, `resolution_ratio`), safetensors weights (one file or shards listed in
`model.safetensors.index.json`) under the release's state-dict names, and the tokenizer. CLIP is
loaded from its own id (`mm_vision_tower`) when the checkpoint has no `model.vision_tower.*` tensors,
as the release does. Every tensor is checked by name and shape before anything is loaded, so a
missing or mis-shaped tensor fails with a `ProbeError` that names it.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from llava_mini.configuration import LlavaMiniConfig
from llava_mini.modeling import LlavaMiniForConditionalGeneration, LlavaMiniVisionTower
from llava_mini.processing import LlavaMiniProcessor
from probe.errors import ProbeError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
VISION_PREFIX = "model.vision_tower."
RELEASE_ARCHITECTURE = "LlavaMiniLlamaForCausalLM"
# Buffers some checkpoints carry that the model recomputes (never an error).
IGNORED_SUFFIXES = ("rotary_emb.inv_freq", "embeddings.position_ids")


def checkpoint_dir(source: str, local_files_only: bool = False) -> Path:
    """A local directory as is; a hub id through the local cache (or a download when allowed)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                source,
                local_files_only=local_files_only,
                allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"],
            )
        )
    except Exception:
        from probe.zoo import _missing_weights

        raise _missing_weights(source) from None


def weight_files(path: Path) -> dict[str, Path]:
    """tensor name -> file holding it, from the index (sharded) or the single safetensors file."""
    from safetensors import safe_open

    index = path / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError):
            raise ProbeError(f"{index} is not a valid safetensors index (no 'weight_map')") from None
        missing_files = sorted({f for f in weight_map.values() if not (path / f).is_file()})
        if missing_files:
            raise ProbeError(
                f"{path}: shard(s) listed in {INDEX_FILE} are missing: {', '.join(missing_files)}"
            )
        return {name: path / f for name, f in weight_map.items()}
    single = path / SINGLE_FILE
    if single.is_file():
        with safe_open(single, "pt") as fh:
            return dict.fromkeys(fh.keys(), single)
    raise ProbeError(
        f"{path} has no weights ({SINGLE_FILE} or {INDEX_FILE}); LLaVA-Mini needs safetensors weights"
    )


def tensor_shapes(files: dict[str, Path]) -> dict[str, tuple[int, ...]]:
    """Shapes from the safetensors headers, without reading the tensors."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    by_file: dict[Path, list[str]] = {}
    for name, file in files.items():
        by_file.setdefault(file, []).append(name)
    for file, names in by_file.items():
        with safe_open(file, "pt") as fh:
            present = set(fh.keys())
            for name in names:
                if name not in present:
                    raise ProbeError(
                        f"tensor '{name}' is listed in {INDEX_FILE} but missing from {file.name}"
                    )
                shapes[name] = tuple(fh.get_slice(name).get_shape())
    return shapes


def expected_shapes(config: LlavaMiniConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = LlavaMiniForConditionalGeneration(config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def check_tensors(
    expected: dict[str, tuple], found: dict[str, tuple], where: str, tied: bool = False
) -> None:
    """ProbeError naming every missing or mis-shaped tensor; unexpected ones are only warned about."""
    missing = [n for n in expected if n not in found and not (tied and n == "lm_head.weight")]
    if missing:
        shown = ", ".join(missing[:8]) + (f" (and {len(missing) - 8} more)" if len(missing) > 8 else "")
        raise ProbeError(f"{where}: missing tensor(s) {shown}")
    wrong = [
        f"'{n}' has shape {list(found[n])}, expected {list(s)}"
        for n, s in expected.items()
        if n in found and tuple(found[n]) != tuple(s)
    ]
    if wrong:
        raise ProbeError(f"{where}: mis-shaped tensor(s): " + "; ".join(wrong[:8]))
    unexpected = [n for n in found if n not in expected and not n.endswith(IGNORED_SUFFIXES)]
    if unexpected:
        warnings.warn(
            f"{where}: ignoring {len(unexpected)} unexpected tensor(s), e.g. {unexpected[:3]}", stacklevel=3
        )


def _clip_config(config: LlavaMiniConfig, local_files_only: bool):
    from transformers import CLIPVisionConfig

    try:
        return CLIPVisionConfig.from_pretrained(config.mm_vision_tower, local_files_only=local_files_only)
    except Exception:
        raise ProbeError(
            f"the vision tower '{config.mm_vision_tower}' (mm_vision_tower) is not available locally; "
            f"download it (hf download {config.mm_vision_tower}) or point mm_vision_tower at a local CLIP directory"
        ) from None


def attach_vision_tower(model: LlavaMiniForConditionalGeneration, local_files_only: bool = False) -> None:
    """Load CLIP from `mm_vision_tower` into `model.model.vision_tower` (the release's way)."""
    from transformers import CLIPVisionModel

    config = model.config
    clip_config = _clip_config(config, local_files_only)
    dtype = next(model.parameters()).dtype
    tower = LlavaMiniVisionTower(clip_config, config.mm_vision_select_layer, config.mm_vision_select_feature)
    tower.vision_tower = CLIPVisionModel.from_pretrained(
        config.mm_vision_tower, dtype=dtype, local_files_only=local_files_only
    )
    model.model.vision_tower = tower.to(next(model.parameters()).device)
    model.config.vision_config = clip_config


def load_llava_mini(
    source: str,
    family: str = "llava_mini",
    dtype: torch.dtype = torch.float32,
    local_files_only: bool = False,
    device_map: str | None = None,
    **_,
):
    """-> (LlavaMiniForConditionalGeneration, LlavaMiniProcessor) from a directory or hub id (zoo loader);
    `device_map` (e.g. "cuda") loads the weights straight onto that device."""
    path = checkpoint_dir(str(source), local_files_only)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ProbeError(f"{path} is not a model directory (no config.json)")
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type not in ("llava_mini_llama", "llava_mini"):
        raise ProbeError(f"{path} holds a '{model_type}' model, not LLaVA-Mini ('llava_mini_llama')")
    config = LlavaMiniConfig.from_checkpoint(path)
    found = tensor_shapes(weight_files(path))
    has_vision = any(n.startswith(VISION_PREFIX) for n in found)
    if has_vision and config.vision_config is None:
        config.vision_config = _clip_config(config, local_files_only)
    expected = expected_shapes(config)
    if not has_vision:
        expected = {n: s for n, s in expected.items() if not n.startswith(VISION_PREFIX)}
    check_tensors(expected, found, str(path), tied=bool(config.tie_word_embeddings))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = LlavaMiniForConditionalGeneration.from_pretrained(
            path,
            config=config,
            dtype=dtype,
            local_files_only=True,
            attn_implementation="sdpa",
            **({"device_map": device_map} if device_map else {}),
        )
    if model.model.vision_tower is None:
        attach_vision_tower(model, local_files_only)
    processor = LlavaMiniProcessor.from_pretrained(path, config=model.config)
    return model.eval(), processor


def save_llava_mini(model, processor, path: str | Path, max_shard_size: str | int = "5GB") -> Path:
    """Write the release's layout: config.json, (sharded) safetensors + index, tokenizer, preprocessing."""
    path = Path(path)
    model.save_pretrained(path, max_shard_size=max_shard_size)
    config = json.loads((path / "config.json").read_text())
    config["architectures"] = [RELEASE_ARCHITECTURE]
    (path / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if processor is not None:
        processor.save_pretrained(path)
    return path
