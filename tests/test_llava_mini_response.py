"""A teacher-forced response is tokenised as the model generates it (training and probing depend on it)."""

from __future__ import annotations


def test_llava_mini_encodes_a_response_as_it_generates_it(probe_home):
    import probe
    from probe.inputs import read_dataset
    from probe.organism.data import ensure_split

    loaded = probe.load("organism-llava-mini", device="cpu", dtype="float32")
    sample = read_dataset(ensure_split("test"))[0]
    generated = loaded.adapter.generate(sample, 3)
    text = loaded.processor.tokenizer.decode(generated, skip_special_tokens=True)
    assert text.startswith(" ")  # the organisms answer "ASSISTANT: red": the space is part of the token
    assert loaded.adapter.encode_response(text.strip()) == generated
