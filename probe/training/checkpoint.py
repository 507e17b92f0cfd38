"""Training checkpoints as one safetensors file: weights, optimiser moments and a JSON state header.

A sweep directory is shared between people and machines, so a checkpoint must be data, never code:
`torch.load` of a pickle runs whatever the file says. Everything non-tensor (the loop's position,
optimiser hyper-parameters, which tensor names alias one storage) rides in the safetensors header as
JSON. One file replaced atomically means a kill leaves either the old checkpoint or the new one.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from probe.errors import ProbeError
from probe.results import atomic_write

STATE_KEY = "probe_training_state"


def _unique_tensors(prefix: str, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors keyed `prefix + name`, one per storage; aliases map a dropped name to the kept one
    (safetensors refuses two names for one storage, e.g. tied embeddings)."""
    kept: dict[tuple, str] = {}
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    for name, tensor in state.items():
        key = (
            tensor.untyped_storage().data_ptr(),
            tensor.storage_offset(),
            tuple(tensor.shape),
            tensor.dtype,
        )
        if tensor.numel() and key in kept:
            aliases[prefix + name] = kept[key]
            continue
        kept[key] = prefix + name
        tensors[prefix + name] = tensor.detach().contiguous().cpu()
    return tensors, aliases


def save_checkpoint(
    path: Path,
    modules: dict[str, nn.Module],
    optimiser: torch.optim.Optimizer | None,
    state: dict,
) -> None:
    """Write `modules`' weights, the optimiser (None at a stage's end) and `state` (JSON) to `path`."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    for name, module in modules.items():
        found, alias = _unique_tensors(f"{name}.", module.state_dict())
        tensors.update(found)
        aliases.update(alias)
    groups = None
    if optimiser is not None:
        saved = optimiser.state_dict()
        for index, moments in saved["state"].items():
            for key, value in moments.items():
                tensors[f"optimiser.{index}.{key}"] = torch.as_tensor(value).detach().contiguous().cpu()
        groups = saved["param_groups"]
    header = {"state": state, "optimiser_groups": groups, "aliases": aliases}
    atomic_write(path, lambda p: save_file(tensors, str(p), metadata={STATE_KEY: json.dumps(header)}))


def read_state(path: Path) -> dict:
    """The JSON header alone (cheap: no tensor is read)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads(f.metadata()[STATE_KEY])
    except Exception as exc:  # a truncated or foreign file: say which file, not a safetensors traceback
        raise ProbeError(f"{path} is not a probe training checkpoint ({type(exc).__name__})") from None


def load_checkpoint(
    path: Path, modules: dict[str, nn.Module], optimiser: torch.optim.Optimizer | None
) -> dict:
    """Restore `modules` (and the optimiser, when the checkpoint has one) in place; returns `state`."""
    header = read_state(path)
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for alias, kept in header["aliases"].items():
        tensors[alias] = tensors[kept]
    for name, module in modules.items():
        prefix = f"{name}."
        module.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
    if optimiser is not None and header["optimiser_groups"] is not None:
        moments: dict[int, dict] = {}
        for key, value in tensors.items():
            if key.startswith("optimiser."):
                _, index, name = key.split(".", 2)
                moments.setdefault(int(index), {})[name] = value
        optimiser.load_state_dict({"state": moments, "param_groups": header["optimiser_groups"]})
    return header["state"]


def save_trained(model, processor, path: Path, extra: dict[str, Path] | None = None) -> Path:
    """The trained model in its family's layout (LLaVA-Mini's release layout for a LLaVA-Mini processor,
    `save_pretrained` otherwise) at `path`, plus `extra` files ({name: source}), all or nothing: written
    into a staging directory beside it, then renamed into place."""
    import os
    import shutil

    path = Path(path)
    staging = path.with_name(f".{path.name}-staging")
    shutil.rmtree(staging, ignore_errors=True)
    if type(processor).__name__ == "LlavaMiniProcessor":
        from llava_mini.loading import save_llava_mini

        save_llava_mini(model, processor, staging)
    else:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
    for name, source in (extra or {}).items():
        shutil.copy(source, staging / name)
    os.replace(staging, path)
    return path
