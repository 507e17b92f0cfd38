"""Resuming `probe attention` runs: which setting differs, a longer --limit, a finished rerun, SIGTERM.

Work done is counted by the calls to `probe_sample` (the per-sample computation), never by timing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

import probe.attention_job as job
from probe.errors import ProbeError
from probe.inputs import read_dataset
from tests.conftest import REPO, invoke

IMAGES = ["skimage:astronaut", "skimage:coffee", "skimage:chelsea", "skimage:rocket", "skimage:camera"]
KEYS = ["sample", "stage", "layer", "grouping", "tgt", "src", "head"]


def write_dataset(tmp_path, n=5, name="data.jsonl"):
    lines = [
        {"id": f"s{k}", "image": IMAGES[k % len(IMAGES)], "prompt": f"<image> Question {k}?", "answer": "x"}
        for k in range(n)
    ]
    path = tmp_path / name
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@pytest.fixture
def counted(monkeypatch):
    """The ids of the samples actually computed."""
    calls: list[str] = []
    real = job.probe_sample

    def counting(loaded, sample, options):
        calls.append(sample.sample_id)
        return real(loaded, sample, options)

    monkeypatch.setattr(job, "probe_sample", counting)
    return calls


def test_a_longer_limit_keeps_the_finished_samples(tmp_path, tiny_llava, counted):
    samples = read_dataset(write_dataset(tmp_path))
    options = job.AttentionOptions()
    first = job.run_attention(tiny_llava, samples[:3], tmp_path / "run", options, progress=False)
    assert counted == ["s0", "s1", "s2"]
    counted.clear()
    table = job.run_attention(tiny_llava, samples[:5], tmp_path / "run", options, progress=False)
    assert counted == ["s3", "s4"]  # only the two new samples are computed
    assert list(dict.fromkeys(table["sample"])) == ["s0", "s1", "s2", "s3", "s4"]
    assert not table.duplicated(KEYS).any()
    pd.testing.assert_frame_equal(
        table[table["sample"].isin(["s0", "s1", "s2"])].reset_index(drop=True), first
    )
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["n_samples"] == 5
    assert len(pd.read_csv(tmp_path / "run" / "samples.csv")) == 5
    assert set(pd.read_parquet(tmp_path / "run" / "summary.parquet")["n_samples"]) == {5}
    # fewer samples than the finished run would silently shrink it: refused
    with pytest.raises(ProbeError, match="finished run of 5 sample"):
        job.run_attention(tiny_llava, samples[:2], tmp_path / "run", options, progress=False)


def test_rerunning_a_finished_command_says_complete_and_computes_nothing(tmp_path, capsys, counted):
    data = write_dataset(tmp_path, n=2)
    args = ["attention", "--model", "tiny-llava", "--dataset", str(data), "--out", str(tmp_path / "run")]
    code, _, err = invoke(capsys, *args)
    assert code == 0, err
    assert counted == ["s0", "s1"]
    manifest = tmp_path / "run" / "manifest.json"
    before = manifest.read_bytes()
    counted.clear()
    code, stdout, err = invoke(capsys, *args)
    assert code == 0, err
    assert counted == []
    assert "already holds this finished run" in stdout and "nothing to do" in stdout
    assert manifest.read_bytes() == before


def test_a_refusal_names_the_setting_that_differs(tmp_path, capsys):
    data = write_dataset(tmp_path, n=1)
    args = ["attention", "--model", "tiny-llava", "--dataset", str(data), "--out", str(tmp_path / "run")]
    code, _, err = invoke(capsys, *args, "--backend", "eager")
    assert code == 0, err
    code, _, err = invoke(capsys, *args, "--per-head")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1
    assert "finished run with other settings" in lines[0]
    assert "options.backend: eager -> native" in lines[0] and "options.per_head: False -> True" in lines[0]


def test_a_changed_dataset_line_under_an_unfinished_run_is_named(tmp_path, tiny_llava, monkeypatch):
    samples = read_dataset(write_dataset(tmp_path, n=3))
    options = job.AttentionOptions()
    real = job.probe_sample

    def stop_at_second(loaded, sample, opts):
        if sample.sample_id == "s1":
            raise KeyboardInterrupt
        return real(loaded, sample, opts)

    monkeypatch.setattr(job, "probe_sample", stop_at_second)
    with pytest.raises(KeyboardInterrupt):
        job.run_attention(tiny_llava, samples, tmp_path / "run", options, progress=False)
    samples[0].prompt = "<image> Another question?"
    with pytest.raises(ProbeError, match="sample 1 \\('s0'\\) computed from other input"):
        job.run_attention(tiny_llava, samples, tmp_path / "run", options, progress=False)


def test_sigterm_leaves_a_resumable_run_like_ctrl_c(tmp_path):
    """A real `probe attention` process is sent SIGTERM once its first sample is done; it says how to
    resume, and the rerun finishes the run without recomputing or duplicating the finished samples."""
    n = 4  # SIGTERM comes within 50 ms of the first finished sample, long before the last
    data = write_dataset(tmp_path, n=n)
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-c",
        "from probe.cli import main; main()",
        "attention",
        "--model",
        "tiny-llava",
        "--dataset",
        str(data),
        "--out",
        str(out),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not (out / ".parts" / "0000000.parquet").exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert err.strip().splitlines()[-1] == "interrupted: rerun the same command to resume"
    done = len(list((out / ".parts").glob("*[0-9].parquet")))
    assert 1 <= done < n and not (out / "manifest.json").exists()
    assert not list((out / ".parts").glob("*.tmp"))  # nothing half-written

    rerun = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resuming: {done} of {n} samples already done" in rerun.stdout
    table = pd.read_parquet(out / "attention.parquet")
    assert list(dict.fromkeys(table["sample"])) == [f"s{k}" for k in range(n)]
    assert not table.duplicated(KEYS).any()
