"""The probe's mass and entropy against an independent, plain computation from eager attentions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import probe
from probe.engines import get_engine
from probe.inputs import make_sample

PROMPTS = [
    ("<image> What is shown in this picture?", None),
    ("<image> Describe the picture.", "A person in a white suit standing in front of a flag."),
    ("Look at this: <image> and tell me the colour of the object.", "red"),
]


def reference_table(model, prepared) -> dict:
    """Paper Eq. 4-5 from output_attentions, written out with loops and numpy (no probe code)."""
    with torch.no_grad():
        model.set_attn_implementation({"text_config": "eager"})
        try:
            out = model(**prepared.inputs, output_attentions=True)
        finally:
            model.set_attn_implementation({"text_config": "sdpa"})
    ids = prepared.inputs["input_ids"][0].numpy()
    image_token = model.config.image_token_id
    n = len(ids)
    role = np.array(["instruction"] * n, dtype=object)
    role[ids == image_token] = "vision"
    role[prepared.prompt_length :] = "response"
    result = {}
    for layer, att in enumerate(out.attentions):
        a = att[0].double().mean(0).numpy()  # heads averaged first
        for tgt in ("instruction", "vision", "response"):
            for src in ("instruction", "vision", "response"):
                masses, entropies = [], []
                for i in np.flatnonzero(role == tgt):
                    keys = [j for j in range(i + 1) if role[j] == src]
                    if not keys:
                        continue  # token i cannot see the source set: not in the denominator
                    row = a[i, keys]
                    m = row.sum()
                    masses.append(m)
                    p = row / m
                    entropies.append(-sum(x * math.log(x) for x in p if x > 0))
                if masses:
                    result[(layer, tgt, src)] = (np.mean(masses), np.mean(entropies), len(masses))
    return result


@pytest.mark.parametrize("prompt,response", PROMPTS)
def test_mass_and_entropy_match_independent_eager_computation(tiny_llava, prompt, response):
    sample = make_sample(prompt, ["skimage:astronaut"], response=response)
    table = probe.attention(
        tiny_llava, image="skimage:astronaut", prompt=prompt, response=response, backend="eager"
    )
    prepared = tiny_llava.adapter.prepare(sample)
    expected = reference_table(tiny_llava.model, prepared)
    rows = table[(table["grouping"] == "paper") & table["head"].isna()]
    got = {(r.layer, r.tgt, r.src): (r.mass, r.entropy, r.n_targets) for r in rows.itertuples()}
    assert set(got) == set(expected)
    for key, (mass, entropy, n) in expected.items():
        assert got[key][2] == n, key
        assert got[key][0] == pytest.approx(mass, abs=1e-5), key
        assert got[key][1] == pytest.approx(entropy, abs=1e-4), key
    assert ("response" in set(rows["tgt"])) == (response is not None)


def test_mass_over_all_sources_sums_to_one_for_every_target(tiny_llava):
    sample = make_sample("<image> What is this?", ["skimage:coffee"], response="A cup of coffee.")
    prepared = tiny_llava.adapter.prepare(sample)
    for stats in get_engine("eager")(tiny_llava.adapter, prepared, per_head=True):
        valid = prepared.roles["llm"].role_ids >= 0
        torch.testing.assert_close(stats.mass.sum(-1)[valid], torch.ones(int(valid.sum())), atol=1e-5, rtol=0)
        head_sums = stats.head_mass.sum(-1)
        torch.testing.assert_close(head_sums, torch.ones_like(head_sums), atol=1e-5, rtol=0)
        # invisible roles carry no mass: the mask, not underflow, decides visibility
        assert float(stats.mass[~stats.visible].abs().max()) == 0.0


def test_per_head_rows_average_to_head_averaged_mass(tiny_llava):
    table = probe.attention(
        tiny_llava,
        image="skimage:astronaut",
        prompt="<image> Hi?",
        response="yes",
        per_head=True,
        backend="eager",
    )
    paper = table[table["grouping"] == "paper"]
    per_head = paper[paper["head"].notna()].groupby(["layer", "tgt", "src"])["mass"].mean()
    averaged = paper[paper["head"].isna()].set_index(["layer", "tgt", "src"])["mass"]
    n_heads = tiny_llava.model.config.text_config.num_attention_heads
    assert paper["head"].dropna().nunique() == n_heads
    # mass is linear in the attention row, so the mean of per-head masses is the head-averaged mass
    np.testing.assert_allclose(per_head.loc[averaged.index].to_numpy(), averaged.to_numpy(), atol=1e-6)


def test_fine_roles_regroup_to_the_papers_three(tiny_llava):
    table = probe.attention(
        tiny_llava,
        image=["skimage:astronaut", "skimage:coffee"],
        prompt="<image> and <image>: which is a drink?",
        response="the second",
        backend="eager",
    )
    fine = table[(table["grouping"] == "fine") & table["head"].isna()]
    assert {"system", "image:0", "image:1", "instruction", "last", "response"} <= set(fine["src"])
    paper = table[(table["grouping"] == "paper") & table["head"].isna()]
    # response tokens see every source, so their paper-role masses add up over fine roles exactly
    for layer in sorted(paper["layer"].unique()):
        f = fine[(fine["layer"] == layer) & (fine["tgt"] == "response")].set_index("src")["mass"]
        p = paper[(paper["layer"] == layer) & (paper["tgt"] == "response")].set_index("src")["mass"]
        assert p["vision"] == pytest.approx(f["image:0"] + f["image:1"], abs=1e-6)
        assert p["instruction"] == pytest.approx(f["system"] + f["instruction"] + f["last"], abs=1e-6)
