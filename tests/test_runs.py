"""`probe attention` run directories: contents, averaging over a dataset, resume, generation."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import probe.attention_job as job
from probe.errors import ProbeError
from probe.inputs import read_dataset
from tests.conftest import invoke


def write_dataset(tmp_path, n=3):
    lines = [
        {"id": f"s{k}", "image": img, "prompt": q, "answer": "x"}
        for k, (img, q) in enumerate(
            [
                ("skimage:astronaut", "Who is this?"),
                ("skimage:coffee", "What drink?"),
                ("skimage:chelsea", "What animal?"),
                ("skimage:rocket", "What is it?"),
            ][:n]
        )
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_single_image_run_writes_table_manifest_and_figures(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = invoke(
        capsys,
        "attention",
        "--model",
        "tiny-llava",
        "--image",
        "skimage:astronaut",
        "--prompt",
        "<image> What is shown?",
        "--response",
        "An astronaut.",
        "--out",
        str(out),
        "--backend",
        "eager",
    )
    assert code == 0, err
    for name in (
        "attention.parquet",
        "attention.csv",
        "summary.parquet",
        "samples.csv",
        "manifest.json",
        "mass.png",
        "entropy.png",
    ):
        assert (out / name).is_file(), name
    table = pd.read_parquet(out / "attention.parquet")
    csv = pd.read_csv(out / "attention.csv")
    assert len(table) == len(csv)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["name"] == "tiny-llava"
    assert manifest["options"]["seed"] == 0 and "transformers" in manifest["versions"]
    assert manifest["model_config"]["text_config"]["num_hidden_layers"] == table["layer"].nunique()
    # one row per sample x layer x grouping x tgt x src (x head): no duplicates
    keys = ["sample", "stage", "layer", "grouping", "tgt", "src", "head"]
    assert not table.duplicated(keys).any()
    # a finished run is not silently overwritten
    code, _, err = invoke(
        capsys,
        "attention",
        "--model",
        "tiny-llava",
        "--image",
        "skimage:astronaut",
        "--prompt",
        "<image> What is shown?",
        "--out",
        str(out),
    )
    assert code == 2 and "holds a finished run" in err


def test_dataset_run_resumes_without_redoing_or_duplicating(tmp_path, tiny_llava, monkeypatch):
    data = write_dataset(tmp_path, n=3)
    samples = read_dataset(data)
    options = job.AttentionOptions(backend="eager")
    reference = job.run_attention(tiny_llava, samples, tmp_path / "ref", options, progress=False)

    calls = []
    real = job.probe_sample

    def flaky(loaded, sample, opts):
        calls.append(sample.sample_id)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the user pressed Ctrl-C during the second sample
        return real(loaded, sample, opts)

    monkeypatch.setattr(job, "probe_sample", flaky)
    with pytest.raises(KeyboardInterrupt):
        job.run_attention(tiny_llava, samples, tmp_path / "run", options, progress=False)
    assert not (tmp_path / "run" / "attention.parquet").exists()  # nothing half-written
    assert not (tmp_path / "run" / "manifest.json").exists()
    calls.clear()
    monkeypatch.setattr(job, "probe_sample", lambda *a: (calls.append(a[1].sample_id), real(*a))[1])
    table = job.run_attention(tiny_llava, samples, tmp_path / "run", options, progress=False)
    assert calls == ["s1", "s2"]  # s0 was finished before the interruption
    pd.testing.assert_frame_equal(table, reference)
    summary = pd.read_parquet(tmp_path / "run" / "summary.parquet")
    assert set(summary["n_samples"]) == {3}


def test_resume_refuses_a_different_run(tmp_path, tiny_llava):
    data = write_dataset(tmp_path, n=2)
    samples = read_dataset(data)
    parts = tmp_path / "run" / ".parts"
    job.prepare_run_dir(
        tmp_path / "run", job.manifest_for(tiny_llava, job.AttentionOptions(), samples), samples, False
    )
    assert parts.is_dir()
    other = job.manifest_for(tiny_llava, job.AttentionOptions(per_head=True), samples)
    with pytest.raises(
        ProbeError, match=r"unfinished run with other settings \(options.per_head: False -> True\)"
    ):
        job.prepare_run_dir(tmp_path / "run", other, samples, False)


def test_summary_is_the_mean_over_samples(tmp_path, tiny_llava):
    samples = read_dataset(write_dataset(tmp_path, n=2))
    table = job.run_attention(
        tiny_llava, samples, tmp_path / "run", job.AttentionOptions(backend="eager"), progress=False
    )
    summary = pd.read_parquet(tmp_path / "run" / "summary.parquet")
    row = summary[
        (summary["layer"] == 1)
        & (summary["tgt"] == "instruction")
        & (summary["src"] == "vision")
        & (summary["grouping"] == "paper")
    ].iloc[0]
    per_sample = table[
        (table["layer"] == 1)
        & (table["tgt"] == "instruction")
        & (table["src"] == "vision")
        & (table["grouping"] == "paper")
    ]
    assert len(per_sample) == 2
    assert row["mass"] == pytest.approx(per_sample["mass"].mean())
    assert row["n_samples"] == 2


def test_generated_response_is_the_greedy_continuation(tiny_llava):
    from probe.attention_job import AttentionOptions, probe_sample
    from probe.inputs import make_sample

    sample = make_sample("<image> Say something.", ["skimage:astronaut"])
    table, info = probe_sample(tiny_llava, sample, AttentionOptions(backend="eager", generate=4))
    generated = tiny_llava.adapter.generate(sample, 4)
    assert info["n_response_tokens"] == len(generated) <= 4
    n_targets = table[
        (table["tgt"] == "response") & (table["src"] == "instruction") & (table["grouping"] == "paper")
    ]
    assert set(n_targets["n_targets"]) == {len(generated)}
    # the response tokens are the model's own greedy choices: teacher-forcing them reproduces the argmax
    prepared = tiny_llava.adapter.prepare(sample, response_ids=generated)
    import torch

    with torch.no_grad():
        logits = tiny_llava.model(**prepared.inputs).logits[0]
    start = prepared.prompt_length
    predicted = logits[start - 1 : start - 1 + len(generated)].argmax(-1).tolist()
    assert predicted == generated
