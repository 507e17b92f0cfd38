"""Where a run's numbers came from, recorded in its manifest: the command, the input data's hash, the
code's version and git commit, and the identity of the weights (file hashes or a hub revision).

A result can only be trusted later if it can be traced back to exactly these inputs; the hashes make
"same dataset / same weights" checkable rather than remembered. Hashing multi-GB weights takes a while,
so weight hashes are cached in $PROBE_HOME, keyed by the file's path, size and modification time.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from probe.results import write_json

CHUNK = 1 << 20
HASH_CACHE = "weights-sha256.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def dataset_sha256(path: Path) -> str:
    """sha256 of a dataset file; for a directory (a `save_to_disk` dataset), of its files' names and hashes."""
    path = Path(path)
    if not path.is_dir():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(f for f in path.rglob("*") if f.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def cached_sha256(path: Path, cache_file: Path) -> str:
    """sha256 of `path`, reused from `cache_file` while the file's size and mtime are unchanged."""
    path = Path(path).resolve()
    stat = path.stat()
    try:
        cache = json.loads(Path(cache_file).read_text())
    except (OSError, json.JSONDecodeError):
        cache = {}
    entry = cache.get(str(path))
    if entry and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
        return entry["sha256"]
    digest = sha256_file(path)
    cache[str(path)] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
    try:
        write_json(Path(cache_file), cache)
    except OSError:  # a read-only cache directory only costs the next run a rehash
        pass
    return digest


def weight_hashes(directory: Path, cache_file: Path) -> dict[str, str]:
    """{relative path: sha256} of every safetensors file under a local model directory."""
    directory = Path(directory)
    return {
        str(f.relative_to(directory)): cached_sha256(f, cache_file)
        for f in sorted(directory.rglob("*.safetensors"))
    }


def hub_revision(hub_id: str, cache_dir: str | Path | None = None) -> str | None:
    """The commit of the hub snapshot the model was loaded from (its directory name in the HF cache)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(hub_id, "config.json", cache_dir=cache_dir)
    return Path(found).parent.name if isinstance(found, str) else None


def weights_identity(source: str, revision: str | None, cache_file: Path) -> dict:
    """Local directory (built-in and shipped models included): file hashes; hub id: the snapshot commit."""
    if Path(source).is_dir():
        return {
            "kind": "local",
            "path": str(Path(source).resolve()),
            "sha256": weight_hashes(source, cache_file),
        }
    return {"kind": "hub", "id": source, "revision": revision or hub_revision(source)}


def git_commit(path: Path | None = None) -> dict | None:
    """{'commit', 'dirty'} of the git checkout `probe` runs from; None when it is not run from one."""
    path = Path(path or Path(__file__).resolve().parent)

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, timeout=10)
        if done.returncode != 0:
            raise OSError(done.stderr.strip())
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def utc_timestamp() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed (program name shortened to `probe`), quoted so it can be pasted back."""
    argv = sys.argv if argv is None else argv
    return shlex.join(["probe", *argv[1:]])


def run_provenance(
    source: str,
    revision: str | None,
    cache_dir: Path,
    dataset: Path | None = None,
    limit: int | None = None,
    command: str | None = None,
) -> dict:
    from probe import __version__

    return {
        "command_line": command,
        "dataset": None
        if dataset is None
        else {"path": str(Path(dataset).resolve()), "sha256": dataset_sha256(Path(dataset))},
        "limit": limit,
        "timestamp_utc": utc_timestamp(),
        "probe_version": __version__,
        "git": git_commit(),
        "weights": weights_identity(source, revision, Path(cache_dir) / HASH_CACHE),
    }
