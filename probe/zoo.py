"""The model zoo: short names -> hub ids, local directories, or models `probe` builds itself.

Everything, built-in models included, is loaded through `from_pretrained` from a directory or hub id,
so the path a user's download takes is the path the tests take. Built-in models are materialised
once into a cache directory (`$PROBE_HOME`, default `~/.cache/probe`) and loaded back from there.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch

from probe.errors import ProbeError
from probe.results import new_temp_dir


@dataclass(frozen=True)
class ModelSpec:
    """A zoo entry. Exactly one of `hub_id`, `builder` and `path` says where the weights come from."""

    name: str
    family: str
    hub_id: str | None = None
    builder: Callable[[], tuple] | None = None
    build_version: str = "1"
    path: Path | None = None
    description: str = ""


@dataclass
class LoadedModel:
    """A model ready to probe: the HF model, its processor and the adapter for its family."""

    name: str
    source: str
    family: str
    model: torch.nn.Module
    processor: object
    adapter: object
    revision: str | None = None
    extra: dict = field(default_factory=dict)


REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    REGISTRY[spec.name] = spec
    return spec


def _register_defaults() -> None:
    from probe.builtin.tiny import build_tiny_llava, build_tiny_llava_next

    for name, hub_id, family in [
        ("llava-v1.5-7b", "llava-hf/llava-1.5-7b-hf", "llava"),
        ("llava-v1.5-13b", "llava-hf/llava-1.5-13b-hf", "llava"),
        ("llava-v1.6-mistral-7b", "llava-hf/llava-v1.6-mistral-7b-hf", "llava_next"),
        ("llava-v1.6-vicuna-7b", "llava-hf/llava-v1.6-vicuna-7b-hf", "llava_next"),
        ("llava-mini-8b", "ICTNLP/llava-mini-llama-3.1-8b", "llava_mini"),
    ]:
        register(
            ModelSpec(name=name, family=family, hub_id=hub_id, description=f"{hub_id} (download required)")
        )
    register(
        ModelSpec(
            name="tiny-llava",
            family="llava",
            builder=build_tiny_llava,
            description="seeded random LlavaForConditionalGeneration, 336 px / patch 14, 576 vision tokens",
        )
    )
    organisms = {  # trained by `probe organism train`, shipped in probe/organism/weights/
        "organism-llava": (
            "llava",
            "LlavaForConditionalGeneration trained on synthetic VQA (probe organism), uses the image",
        ),
        "organism-llava-mini": (
            "llava_mini",
            "LLaVA-Mini (C=1, 2 pre-fusion layers) built on organism-llava and trained on its VQA",
        ),
        "organism-llava-instruct": (
            "llava",
            "organism-llava fine-tuned on instruction-heavy turns (varied wording, text-only questions)",
        ),
    }
    for name, (family, description) in organisms.items():
        weights = Path(__file__).resolve().parent / "organism" / "weights" / name
        register(ModelSpec(name=name, family=family, path=weights, description=description))
    register(
        ModelSpec(
            name="tiny-llava-next",
            family="llava_next",
            builder=build_tiny_llava_next,
            description="seeded random LlavaNextForConditionalGeneration (anyres tiling)",
        )
    )


_register_defaults()


# --- families: how a directory of each kind is loaded ---------------------------------------------
def _load_hf_llava(source: str, family: str, dtype: torch.dtype, **kwargs):
    from transformers import AutoProcessor, LlavaForConditionalGeneration, LlavaNextForConditionalGeneration

    model_cls = LlavaNextForConditionalGeneration if family == "llava_next" else LlavaForConditionalGeneration
    model = model_cls.from_pretrained(source, dtype=dtype, attn_implementation="sdpa", **kwargs)
    processor = AutoProcessor.from_pretrained(source, **kwargs)
    return model, processor


@dataclass(frozen=True)
class Family:
    """How a model family is loaded from a directory / hub id, and which adapter probes it."""

    loader: Callable  # (source, family, dtype, **from_pretrained_kwargs) -> (model, processor)
    adapter: Callable  # (model, processor) -> Adapter


FAMILIES: dict[str, Family] = {}
MODEL_TYPE_TO_FAMILY = {
    "llava": "llava",
    "llava_next": "llava_next",
    "llava_mini_llama": "llava_mini",
    "llava_mini": "llava_mini",
}


def register_family(name: str, family: Family) -> None:
    FAMILIES[name] = family


def _register_hf_families() -> None:
    from probe.adapters.llava import LlavaAdapter, LlavaNextAdapter

    register_family("llava", Family(loader=_load_hf_llava, adapter=LlavaAdapter))
    register_family("llava_next", Family(loader=_load_hf_llava, adapter=LlavaNextAdapter))


def hub_offline() -> bool:
    """HF_HUB_OFFLINE set: use the local cache only, never try the network."""
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")


def probe_home() -> Path:
    return Path(os.environ.get("PROBE_HOME", Path.home() / ".cache" / "probe"))


def materialise(spec: ModelSpec) -> Path:
    """Build a built-in model once and save it like a download; later loads reuse the directory."""
    target = probe_home() / "models" / f"{spec.name}-v{spec.build_version}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = new_temp_dir(target.parent, prefix=f".{spec.name}-")  # mkdtemp's 0700 would hide it
    try:
        model, processor = spec.builder()
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        try:
            staging.rename(target)
        except OSError:  # another process finished first: use theirs
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


class Resolved(NamedTuple):
    source: str  # what from_pretrained gets: a directory or a hub id
    family: str
    spec: ModelSpec | None  # the registry entry, if any
    local_only: bool  # load from disk / the HF cache without asking the hub


def resolve(name_or_path: str) -> Resolved:
    """Where a zoo name, hub id or directory lives, decided before anything heavy loads."""
    if name_or_path in REGISTRY:
        spec = REGISTRY[name_or_path]
        if spec.builder is not None:
            return Resolved(str(materialise(spec)), spec.family, spec, True)
        if spec.path is not None:
            return Resolved(str(spec.path), spec.family, spec, True)
        _, local_only = hub_config(spec.hub_id)
        return Resolved(spec.hub_id, spec.family, spec, local_only)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return Resolved(str(path), _family_from_config(_read_local_config(path), name_or_path), None, True)
    if looks_like_path(name_or_path):
        if path.exists():
            raise ProbeError(f"{name_or_path} is a file; --model takes a model directory")
        raise ProbeError(f"model directory {name_or_path} does not exist")
    if name_or_path.count("/") == 1:
        config, local_only = hub_config(name_or_path)
        return Resolved(name_or_path, _family_from_config(config, name_or_path), None, local_only)
    known = ", ".join(sorted(REGISTRY))
    raise ProbeError(
        f"unknown model '{name_or_path}': use one of {known}, a hub id (org/name) or a local directory"
    )


def looks_like_path(name: str) -> bool:
    """`/x`, `./x`, `../x`, `~/x`, `a/b/c` or an existing file: meant as a directory, never a hub id."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name or Path(name).exists()


def _read_local_config(path: Path) -> dict:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ProbeError(f"{path} is not a model directory (no config.json)")
    try:
        return json.loads(config_file.read_text())
    except json.JSONDecodeError:
        raise ProbeError(f"{config_file} is not valid JSON") from None


def _missing_weights(hub_id: str, why: str | None = None) -> ProbeError:
    if why is None:
        why = "HF_HUB_OFFLINE is set" if hub_offline() else "they could not be downloaded"
    return ProbeError(
        f"weights for '{hub_id}' are not available locally and {why}; download them where the hub is reachable "
        f"(hf download {hub_id} --local-dir DIR) and pass --model DIR"
        + ("" if hub_offline() else "; with HF_HUB_OFFLINE=1 the hub is never asked")
    )


HUB_CHECK_TIMEOUT_S = 3.0  # one HEAD request; huggingface_hub's own retries take ~27 s to give up


def hub_config(hub_id: str) -> tuple[dict, bool]:
    """-> (config.json, local_only) for a hub id: the local cache first, then one quick quiet request.

    The request tells the cases apart before transformers starts its retry loop: an unreachable hub
    (use the cache, or say the weights are missing), a gated or unknown repository, or another hub
    error, each as one line. `local_only` is True when the hub must not be asked again.
    """
    from huggingface_hub import errors as hub_errors
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url, try_to_load_from_cache

    cached = try_to_load_from_cache(hub_id, "config.json")
    config = json.loads(Path(cached).read_text()) if isinstance(cached, str) else None
    if hub_offline():
        if config is None:
            raise _missing_weights(hub_id)
        return config, True
    try:
        get_hf_file_metadata(hf_hub_url(hub_id, "config.json"), timeout=HUB_CHECK_TIMEOUT_S)
    except hub_errors.GatedRepoError:
        raise ProbeError(
            f"'{hub_id}' is a gated model and this login has no access to it: accept its terms on "
            f"https://huggingface.co/{hub_id}, log in (hf auth login), or pass --model DIR"
        ) from None
    except hub_errors.RepositoryNotFoundError:
        raise ProbeError(
            f"no model '{hub_id}' on the Hugging Face hub (or it is private: log in with hf auth login)"
        ) from None
    except hub_errors.RemoteEntryNotFoundError:
        raise ProbeError(f"'{hub_id}' on the hub has no config.json: not a transformers model") from None
    except hub_errors.HfHubHTTPError as exc:
        raise ProbeError(f"the hub answered '{hub_id}' with an error: {_first_line(exc)}") from None
    except Exception as exc:  # connection refused, DNS, timeout, proxy, TLS: the hub is unreachable
        if config is None:
            reason = f"the hub is unreachable ({exc.__class__.__name__}: {_first_line(exc)})"
            raise _missing_weights(hub_id, reason) from None
        return config, True
    if config is None:
        config = json.loads(Path(hf_hub_download(hub_id, "config.json")).read_text())
    return config, False


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else exc.__class__.__name__


def _family_from_config(config: dict, name: str) -> str:
    model_type = config.get("model_type", "")
    if model_type not in MODEL_TYPE_TO_FAMILY:
        raise ProbeError(
            f"'{name}' is a '{model_type}' model; probe supports {sorted(set(MODEL_TYPE_TO_FAMILY))}"
        )
    return MODEL_TYPE_TO_FAMILY[model_type]


def parse_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if dtype not in table:
        raise ProbeError(f"unknown dtype '{dtype}': use auto, float32, bfloat16 or float16")
    return table[dtype]


def parse_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ProbeError("--device cuda was asked for but no CUDA device is available")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ProbeError(f"unknown device '{device}': use cpu, cuda or auto") from None


def load(
    name_or_path: str,
    device: str = "auto",
    dtype: str = "auto",
    attn: str | None = None,
    template: str | None = None,
) -> LoadedModel:
    """Load a zoo name, hub id or local directory, ready to probe.

    Weights go straight to `device` (a 13B fits a host with less RAM than its weights). `attn` sets the
    language model's attention implementation (default: SDPA); the vision tower keeps its own.
    `template`: the conversation prompts are rendered in, 'model', 'llava_v1' or a template file (default:
    the family's, see probe.templates); change it later with `loaded.adapter.use_template(...)`.
    """
    from probe.templates import parse_template

    template = parse_template(template)  # a bad name or file fails before the weights load
    source, family, spec, local_only = resolve(name_or_path)
    torch_device = parse_device(device)
    torch_dtype = parse_dtype(dtype, torch_device)
    family_impl = get_family(family)
    placement = {"device_map": str(torch_device)} if torch_device.type != "cpu" else {}
    try:
        model, processor = family_impl.loader(
            source, family, torch_dtype, local_files_only=local_only, **placement
        )
    except ProbeError:
        raise
    except OSError as exc:
        if Path(source).is_dir():
            raise ProbeError(f"cannot load model from {source}: {_first_line(exc)}") from None
        raise _missing_weights(
            source, None if local_only else f"the download failed ({_first_line(exc)})"
        ) from None
    model = model.to(torch_device).eval()
    adapter = family_impl.adapter(model, processor)
    adapter.use_template(template, name_or_path)
    if attn is not None:
        set_attention_implementation(adapter, attn)
    revision = getattr(model.config, "_commit_hash", None)
    return LoadedModel(
        name=name_or_path,
        source=source,
        family=family,
        model=model,
        processor=processor,
        adapter=adapter,
        revision=revision,
    )


def set_attention_implementation(adapter, attn: str) -> None:
    """Route the probed stages through `attn`; one line if this machine or model cannot run it."""
    try:
        adapter.set_attention(attn)
    except (ImportError, ValueError, RuntimeError) as exc:
        raise ProbeError(f"cannot use attention implementation '{attn}': {_first_line(exc)}") from None


def get_family(family: str) -> Family:
    """Families living in other packages (e.g. `llava_mini`) register themselves on import."""
    if "llava" not in FAMILIES:
        _register_hf_families()
    if family == "llava_mini" and family not in FAMILIES:
        try:
            import llava_mini.zoo  # noqa: F401
        except ImportError:
            pass
    if family not in FAMILIES:
        raise ProbeError(f"model family '{family}' is not supported yet")
    return FAMILIES[family]


def _register_plugins() -> None:
    """Model families living in other packages of this project register their zoo entries on import."""
    try:
        import llava_mini.zoo  # noqa: F401
    except ImportError:
        pass


_register_plugins()
