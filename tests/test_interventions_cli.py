"""`probe drop | knockout | prune`: tidy rows, baseline included, resume, and one-line errors before work."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.conftest import invoke


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from probe.organism.data import Obj, render

    root = tmp_path_factory.mktemp("ds")
    lines = []
    for k, (shape, colour) in enumerate([("circle", "red"), ("square", "blue")]):
        render([Obj(shape, colour, "big", 1, 1)]).save(root / f"{k}.png")
        lines.append(
            {
                "image": f"{k}.png",
                "prompt": f"<image>\nWhat colour is the {shape}?",
                "answer": colour,
                "id": k,
            }
        )
    path = root / "qa.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    (root / "no_answer.jsonl").write_text(json.dumps({"image": "0.png", "prompt": "<image> What?"}) + "\n")
    return path


def test_drop_writes_one_row_per_sample_and_setting(capsys, tmp_path, dataset, probe_home):
    out = tmp_path / "run"
    code, stdout, err = invoke(
        capsys, "drop", "--model", "organism-llava", "--dataset", str(dataset), "--layers", "0-2,3-5",
        "--max-new-tokens", "2", "--out", str(out), "--device", "cpu",
    )  # fmt: skip
    assert code == 0, err
    results = pd.read_parquet(out / "results.parquet")
    assert len(results) == 2 * 3
    assert list(results["setting"].unique()) == ["baseline", "drop 0-2", "drop 3-5"]
    base = results[results["setting"] == "baseline"]
    assert (base["first_gold_rel_change_pct"] == 0).all() and (base["kl_first_token"].abs() < 1e-12).all()
    assert (
        results["tokens_processed"].nunique() == 1
    )  # mask mode: every token in every layer, as the baseline
    dropped = results[results["setting"] != "baseline"]
    assert (dropped["kl_first_token"] > 0).all()  # removing the image changes the answer distribution
    summary = pd.read_parquet(out / "summary.parquet")
    acc = summary[summary["metric"] == "correct"]
    assert ((acc["ci_low"] <= acc["mean"]) & (acc["mean"] <= acc["ci_high"])).all()
    assert (out / "drop.png").stat().st_size > 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["scoring"].startswith("normalised exact match")


def test_ablation_resumes_without_redoing_finished_samples(tmp_path, dataset, monkeypatch, probe_home):
    import probe
    from probe.inputs import read_dataset
    from probe.interventions import job
    from probe.interventions.knockout import Knockout

    loaded = probe.load("organism-llava", device="cpu")
    samples = read_dataset(dataset)
    settings = [Knockout("vision", "last", centre=2, window=3, n_layers=6)]
    options = job.AblationOptions(command="knockout", max_new_tokens=1)
    real, calls = job.sample_rows, []

    def interrupted(loaded, sample, settings, options):
        calls.append(sample.sample_id)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(loaded, sample, settings, options)

    monkeypatch.setattr(job, "sample_rows", interrupted)
    with pytest.raises(KeyboardInterrupt):
        job.run_ablation(loaded, samples, settings, tmp_path / "run", options, progress=False)
    calls.clear()
    results = job.run_ablation(loaded, samples, settings, tmp_path / "run", options, progress=False)
    assert calls == ["1"]  # only the unfinished sample ran again
    assert sorted(results["sample"]) == ["0", "0", "1", "1"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["drop", "--layers", "4-9"], "past the model's depth"),
        (["drop", "--layers", "3-1"], "empty"),
        (["drop", "--window", "7"], "past the model's depth"),
        (["drop", "--window", "2", "--stage", "prefusion"], "no prefusion stage"),
        (["knockout", "--block", "colour->last"], "unknown role 'colour'"),
        (["knockout", "--block", "vision"], "SOURCE->TARGET"),
        (["prune", "--layer", "2", "--keep", "0"], "outside (0, 1]"),
        (["prune", "--layer", "2", "--keep", "1.5"], "outside (0, 1]"),
        (["prune", "--layer", "0", "--keep", "0.5"], "1 <= K"),
    ],
)
def test_bad_input_is_one_line_before_any_work(capsys, tmp_path, dataset, probe_home, args, message):
    out = tmp_path / "run"
    code, _, err = invoke(
        capsys,
        *args,
        "--model",
        "organism-llava",
        "--dataset",
        str(dataset),
        "--out",
        str(out),
        "--device",
        "cpu",
    )
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_metrics_without_gold_answers_fail_before_loading(capsys, tmp_path, dataset):
    out = tmp_path / "run"
    code, _, err = invoke(
        capsys, "drop", "--model", "organism-llava", "--dataset", str(dataset.parent / "no_answer.jsonl"),
        "--out", str(out),
    )  # fmt: skip
    assert code == 2 and "gold 'answer'" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
