"""The probe's mass and entropy against an independent, plain computation from eager attentions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import probe
from probe.engines import get_engine
from probe.inputs import make_sample
from tests.reference import paper_roles, paper_table

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
    role = paper_roles(
        prepared.inputs["input_ids"][0].numpy(), model.config.image_token_id, prepared.prompt_length
    )
    result = {}
    for layer, att in enumerate(out.attentions):
        a = att[0].double().mean(0).numpy()  # heads averaged first
        for (tgt, src), value in paper_table(a, role).items():
            result[(layer, tgt, src)] = value
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


def test_per_head_rows_match_each_heads_own_attention(tiny_llava):
    """Per-head rows against each head's row of output_attentions, summed by hand (no probe code)."""
    prompt, response = "<image> Hi?", "yes it is"
    table = probe.attention(
        tiny_llava,
        image="skimage:astronaut",
        prompt=prompt,
        response=response,
        per_head=True,
        backend="eager",
    )
    prepared = tiny_llava.adapter.prepare(make_sample(prompt, ["skimage:astronaut"], response=response))
    model = tiny_llava.model
    with torch.no_grad():
        model.set_attn_implementation({"text_config": "eager"})
        try:
            attentions = model(**prepared.inputs, output_attentions=True).attentions
        finally:
            model.set_attn_implementation({"text_config": "sdpa"})
    ids = prepared.inputs["input_ids"][0]
    vision = (ids == model.config.image_token_id).nonzero().flatten()
    targets = range(prepared.prompt_length, len(ids))  # response tokens see every image token
    heads = table[(table["grouping"] == "paper") & table["head"].notna()]
    n_heads = model.config.text_config.num_attention_heads
    assert heads["head"].nunique() == n_heads
    for layer, att in enumerate(attentions):
        for h in range(n_heads):
            expected = np.mean([float(att[0, h, i, vision].double().sum()) for i in targets])
            row = heads[(heads["layer"] == layer) & (heads["head"] == h)]
            got = row[(row["tgt"] == "response") & (row["src"] == "vision")]["mass"].item()
            assert got == pytest.approx(expected, abs=1e-5), (layer, h)


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


def test_targets_whose_source_underflowed_count_in_mass_not_in_entropy():
    from probe.intermediate import LayerStats
    from probe.roles import StageRoles
    from probe.stats import layer_rows, to_table

    # tokens: system, image, image, instruction, instruction; the last one's image probabilities underflowed
    roles = StageRoles(labels=["system", "image:0", "instruction"], role_ids=torch.tensor([[0, 1, 1, 2, 2]]))
    nan = float("nan")
    mass = torch.tensor([[[1, 0, 0], [0.2, 0.8, 0], [0.1, 0.9, 0], [0.3, 0.6, 0.1], [0.5, 0.0, 0.5]]])
    entropy = torch.tensor([[[0, nan, nan], [0, 0, nan], [0, 0.6, nan], [0, 0.5, 0], [0, nan, 0]]])
    visible = torch.tensor([[[1, 0, 0], [1, 1, 0], [1, 1, 0], [1, 1, 1], [1, 1, 1]]], dtype=torch.bool)
    stats = LayerStats(stage="llm", layer=0, mass=mass, entropy=entropy, visible=visible)
    table = to_table(layer_rows(stats, roles, ["s"], groupings=("paper",)))
    row = table[(table["tgt"] == "instruction") & (table["src"] == "vision")].iloc[0]
    # targets seeing vision: tokens 3 and 4 (system, token 0, cannot see it)
    assert row["n_targets"] == 2 and row["n_entropy"] == 1
    assert row["mass"] == pytest.approx((0.6 + 0.0) / 2)
    assert row["entropy"] == pytest.approx(0.5)
