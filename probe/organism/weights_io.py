"""Shipping trained organism weights inside the package, with a sha256 manifest that tests check."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MANIFEST = WEIGHTS_DIR / "weights.sha256"
SHIPPED_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "train.json",
    # LLaVA-Mini organisms (llava_mini.loading.save_llava_mini): CLIP preprocessing and chat template
    "preprocessor_config.json",
    "llava_mini_processor.json",
)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(manifest: Path = MANIFEST) -> dict[str, str]:
    """`sha256sum` format: '<hex>  <path relative to the weights directory>' per line."""
    entries = {}
    for line in Path(manifest).read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            entries[name.strip()] = digest
    return entries


def ship(final_dir: Path, name: str = "organism-llava", weights_dir: Path = WEIGHTS_DIR) -> Path:
    """Copy a finished training run's `final/` into the package and rewrite the manifest."""
    final_dir, weights_dir = Path(final_dir), Path(weights_dir)
    dest = weights_dir / name
    dest.mkdir(parents=True, exist_ok=True)
    for file in SHIPPED_FILES:
        if (final_dir / file).is_file():
            shutil.copy(final_dir / file, dest / file)
    manifest = weights_dir / "weights.sha256"
    entries = read_manifest(manifest) if manifest.is_file() else {}
    entries = {k: v for k, v in entries.items() if not k.startswith(f"{name}/")}
    for file in sorted(dest.iterdir()):
        entries[f"{name}/{file.name}"] = sha256_file(file)
    manifest.write_text("".join(f"{digest}  {path}\n" for path, digest in sorted(entries.items())))
    return dest
