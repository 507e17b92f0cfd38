"""A run's manifest traces its numbers back to the command, the data, the code and the weights."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import probe
from probe.provenance import HASH_CACHE, cached_sha256, hub_revision
from tests.conftest import REPO, invoke


def test_manifest_records_command_data_code_and_weights(tmp_path, capsys, tiny_llava):
    data = tmp_path / "data.jsonl"
    data.write_text(
        json.dumps({"id": "a", "image": "skimage:astronaut", "prompt": "<image> Who?", "answer": "x"})
        + "\n"
        + json.dumps({"id": "b", "image": "skimage:coffee", "prompt": "<image> What?", "answer": "y"})
        + "\n"
    )
    out = tmp_path / "run dir"  # a space: the recorded command line must quote it
    args = ["attention", "--model", "tiny-llava", "--dataset", str(data), "--limit", "1", "--out", str(out)]
    started = datetime.now(timezone.utc).replace(microsecond=0)
    code, _, err = invoke(capsys, *args)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    prov = manifest["provenance"]
    assert shlex.split(prov["command_line"]) == ["probe", *args]
    assert prov["dataset"] == {
        "path": str(data.resolve()),
        "sha256": hashlib.sha256(data.read_bytes()).hexdigest(),
    }
    assert prov["limit"] == 1 and manifest["n_samples"] == 1
    stamp = datetime.fromisoformat(prov["timestamp_utc"])
    assert stamp.utcoffset() == timedelta(0) and started <= stamp <= datetime.now(timezone.utc)
    assert prov["probe_version"] == probe.__version__
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert prov["git"]["commit"] == head.stdout.strip() and isinstance(prov["git"]["dirty"], bool)
    else:
        assert prov["git"] is None
    weights = Path(tiny_llava.source) / "model.safetensors"
    assert prov["weights"]["kind"] == "local"
    assert prov["weights"]["sha256"] == {
        "model.safetensors": hashlib.sha256(weights.read_bytes()).hexdigest()
    }
    assert manifest["dtype"] == "float32"


def test_shipped_organism_weights_hash_matches_its_shipped_manifest(tmp_path):
    from probe.provenance import weights_identity
    from probe.zoo import REGISTRY

    folder = REGISTRY["organism-llava"].path
    shipped = {}
    for line in (folder.parent / "weights.sha256").read_text().splitlines():
        digest, name = line.split()
        shipped[name] = digest
    identity = weights_identity(str(folder), None, tmp_path / HASH_CACHE)
    assert identity["sha256"] == {"model.safetensors": shipped["organism-llava/model.safetensors"]}


def test_weight_hashes_are_cached_by_size_and_mtime(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"0123456789")
    cache = tmp_path / HASH_CACHE
    real = hashlib.sha256(b"0123456789").hexdigest()
    assert cached_sha256(weights, cache) == real
    entries = json.loads(cache.read_text())
    entries[str(weights.resolve())]["sha256"] = (
        "cached"  # what the cache says wins while the file is unchanged
    )
    cache.write_text(json.dumps(entries))
    assert cached_sha256(weights, cache) == "cached"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # touched: hashed again
    assert cached_sha256(weights, cache) == real


def test_hub_revision_is_the_snapshot_commit_in_the_hf_cache(tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--org--name"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    assert hub_revision("org/name", cache_dir=tmp_path) == commit
    assert hub_revision("org/other", cache_dir=tmp_path) is None
