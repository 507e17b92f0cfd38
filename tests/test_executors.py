"""`probe attention --executor ray` shards samples over Ray workers and merges into a local run's tables."""

from __future__ import annotations

import json
from functools import partial

import pandas as pd
import pytest
from PIL import Image


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray instance (2 CPUs) for the module: starting one costs seconds."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_attention_on_ray_equals_the_local_run(tmp_path, tiny_llava, ray_session):
    import probe
    from probe.attention_job import AttentionOptions, run_attention
    from probe.inputs import read_dataset

    colours = [(200, 30, 30), (20, 160, 60), (30, 60, 220), (240, 230, 40)]
    lines = []
    for k, colour in enumerate(colours):
        Image.new("RGB", (336, 336), colour).save(tmp_path / f"{k}.png")
        lines.append(
            {"id": f"q{k}", "image": f"{k}.png", "prompt": "What colour?", "response": "red" * (k + 1)}
        )
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    samples = read_dataset(tmp_path / "q.jsonl")
    options = AttentionOptions(response_from="response", grid_queries="last")
    local = run_attention(tiny_llava, samples, tmp_path / "local", options, progress=False)
    sharded = run_attention(
        tiny_llava,
        samples,
        tmp_path / "ray",
        options,
        progress=False,
        executor="ray",
        reload=partial(probe.load, "tiny-llava", device="cpu"),
    )
    # every sample has its parts, written by the Ray workers (this process only merged them)
    assert sorted(p.name for p in (tmp_path / "ray" / ".parts").glob("*[0-9].parquet")) == [
        f"{k:07d}.parquet" for k in range(4)
    ]
    pd.testing.assert_frame_equal(local, sharded)
    for name in ("summary", "grid"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(tmp_path / "local" / f"{name}.parquet"),
            pd.read_parquet(tmp_path / "ray" / f"{name}.parquet"),
        )


def test_drop_on_ray_equals_the_local_run(tmp_path, capsys, ray_session):
    from probe.organism.data import ensure_split
    from tests.conftest import invoke

    common = ["--model", "organism-llava", "--dataset", str(ensure_split("test")), "--limit", "3"]
    common += ["--layers", "0-1,2-5", "--max-new-tokens", "2", "--device", "cpu"]
    for name, extra in (("local", []), ("ray", ["--executor", "ray"])):
        code, _, err = invoke(capsys, "drop", *common, "--out", str(tmp_path / name), *extra)
        assert code == 0, err
    local = pd.read_parquet(tmp_path / "local" / "results.parquet")
    sharded = pd.read_parquet(tmp_path / "ray" / "results.parquet")
    assert len(local) == 3 * 3  # samples x (baseline + 2 windows)
    # a worker runs with its own thread count: float sums round differently in the last bits
    pd.testing.assert_frame_equal(local, sharded, check_exact=False, rtol=1e-4)
    for column in ("sample", "generated", "correct", "tokens_processed"):
        assert local[column].tolist() == sharded[column].tolist()
