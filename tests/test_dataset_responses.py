"""Where a run's response tokens come from, and what samples.csv says about them.

A dataset's answers can be teacher-forced (`--response-from answer`); a run with no response tokens says
so (one line and the manifest) instead of silently dropping the response role; samples.csv's response
is the text of exactly the response tokens, legible even when a random model emits control characters.
"""

from __future__ import annotations

import json

import pandas as pd

import probe.attention_job as job
from probe.inputs import make_sample
from tests.conftest import invoke

ANSWERS = {"a": "A woman in a white space suit.", "b": "Coffee."}


def write_dataset(tmp_path, with_answers=True):
    lines = [
        {"id": "a", "image": "skimage:astronaut", "prompt": "<image> Who is this?"},
        {"id": "b", "image": "skimage:coffee", "prompt": "<image> What drink?"},
    ]
    for line in lines:
        if with_answers:
            line["answer"] = ANSWERS[line["id"]]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def attention(capsys, data, out, *extra):
    args = ["attention", "--model", "tiny-llava", "--dataset", str(data), "--out", str(out), *extra]
    return invoke(capsys, *args)


def test_teacher_forced_answers_are_the_response_tokens(tmp_path, capsys, tiny_llava):
    out = tmp_path / "run"
    code, stdout, err = attention(capsys, write_dataset(tmp_path), out, "--response-from", "answer")
    assert code == 0, err
    assert "note:" not in stdout
    table = pd.read_parquet(out / "attention.parquet")
    samples = pd.read_csv(out / "samples.csv", dtype=str)
    tokenizer = tiny_llava.processor.tokenizer
    for sample_id, answer in ANSWERS.items():
        # the reply follows 'ASSISTANT:', so it is tokenised with its leading space
        expected_ids = tokenizer(" " + answer, add_special_tokens=False).input_ids
        rows = table[
            (table["sample"] == sample_id)
            & (table["grouping"] == "paper")
            & (table["tgt"] == "response")
            & (table["src"] == "vision")
        ]
        assert set(rows["n_targets"]) == {len(expected_ids)}
        row = samples[samples["sample"] == sample_id].iloc[0]
        assert [int(t) for t in row["response_ids"].split()] == expected_ids
        assert row["response"].strip() == answer and row["answer"] == answer
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["options"]["response_from"] == "answer"
    assert manifest["response"]["samples_with_response"] == 2 and "note" not in manifest["response"]


def test_a_run_without_response_tokens_says_so(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = attention(capsys, write_dataset(tmp_path), out)  # answers, but not forced
    assert code == 0, err
    notes = [line for line in stdout.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "no response role" in notes[0] and "--response-from answer" in notes[0]
    table = pd.read_parquet(out / "attention.parquet")
    assert "response" not in set(table["tgt"]) | set(table["src"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["response"]["samples_with_response"] == 0
    assert "no response role" in manifest["response"]["note"]


def test_forcing_answers_a_line_lacks_is_one_line_before_any_work(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = attention(
        capsys, write_dataset(tmp_path, with_answers=False), out, "--response-from", "answer"
    )
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "data.jsonl line 1" in lines[0] and "'answer'" in lines[0]
    assert not out.exists()
    code, _, err = attention(
        capsys, write_dataset(tmp_path), out, "--response-from", "answer", "--generate", "2"
    )
    assert code == 2 and "either --response-from or --generate" in err and not out.exists()


def test_samples_csv_response_is_the_text_of_the_response_tokens(tmp_path, tiny_llava_next, monkeypatch):
    """tiny-llava-next greedily emits form feeds (token 205 = byte 0x0c), which samples.csv showed as an
    empty response. The generation is pinned to such tokens plus `</s>` (a special token, which the old
    decoding dropped) so the check does not hang on the random model's choice."""
    tokenizer = tiny_llava_next.processor.tokenizer
    generated = [205, 205, tokenizer.eos_token_id, tokenizer(" one", add_special_tokens=False).input_ids[0]]
    assert tokenizer.decode(generated[:2]) == "\x0c\x0c"
    monkeypatch.setattr(tiny_llava_next.adapter, "generate", lambda sample, n: generated[:n])
    sample = make_sample("<image> Say something.", ["skimage:astronaut"])
    options = job.AttentionOptions(generate=4)
    job.run_attention(tiny_llava_next, [sample], tmp_path / "run", options, progress=False)
    row = pd.read_csv(tmp_path / "run" / "samples.csv", dtype=str).iloc[0]
    assert int(row["n_response_tokens"]) == 4
    assert [int(t) for t in row["response_ids"].split()] == generated
    assert row["response"] == "\\x0c\\x0c</s> one"  # every token, legible
