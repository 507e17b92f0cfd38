"""The `last` role: the last prompt token, whose output predicts the first response token.

Checked on the trained organism (its answer positions attend sharply to the image, so a wrong position
or a wrong reduction shows) against the eager attention probabilities read directly, with the position
found independently: the token right before the response, whose logits' argmax is the greedy first token.
"""

from __future__ import annotations

import math

import pytest
import torch

import probe
import probe.attention_job as job
from probe.inputs import make_sample

PROMPT = "<image> What colour is the square?"


@pytest.fixture(scope="module")
def organism(probe_home):
    return probe.load("organism-llava", device="cpu")


@pytest.fixture(scope="module")
def scene_image(tmp_path_factory) -> str:
    """A scene from the organism's own distribution (on a photo it may answer with `</s>` at once)."""
    from probe.organism import data as D

    path = tmp_path_factory.mktemp("scene") / "square.png"
    objects = [D.Obj("square", "red", "big", 1, 1), D.Obj("circle", "blue", "small", 0, 2)]
    D.render(objects).save(path)
    return str(path)


@pytest.fixture(scope="module")
def case(organism, scene_image):
    """(probe result with grid query `last`, prepared inputs, eager head-averaged attention [L, N, N],
    position of `last`, image positions)."""
    sample = make_sample(PROMPT, [scene_image], response="red")
    prepared = organism.adapter.prepare(sample)
    with torch.no_grad(), organism.adapter.attention_implementation("eager"):
        out = organism.adapter.forward(dict(prepared.inputs), output_attentions=True)
    attn = torch.stack([a[0].double().mean(0) for a in out.attentions])  # [L, N, N], heads averaged
    ids = prepared.inputs["input_ids"][0]
    n_response = len(organism.processor.tokenizer(" red", add_special_tokens=False).input_ids)
    last = len(ids) - n_response - 1  # the token before the response
    image = (ids == organism.model.config.image_token_id).nonzero().flatten()
    # that position is the one that predicts the first response token
    generated = organism.adapter.generate(make_sample(PROMPT, [scene_image]), 1)
    assert int(out.logits[0, last].argmax()) == generated[0]
    probed = job.probe_sample(organism, sample, job.AttentionOptions(grid_queries="last"))  # native engine
    return probed, prepared, attn, last, image


def test_last_is_one_token_right_before_the_response(case):
    _, prepared, _, last, _ = case
    roles = prepared.roles["llm"]
    positions = (roles.role_ids[0] == roles.labels.index("last")).nonzero().flatten().tolist()
    assert positions == [last]


def test_table_rows_of_last_equal_the_eager_attention_row(case):
    probed, _, attn, last, image = case
    table = probed.table
    fine = table[(table.grouping == "fine") & table["head"].isna()]
    response = list(range(last + 1, attn.shape[-1]))
    for layer in range(attn.shape[0]):
        rows = fine[fine.layer == layer].set_index(["tgt", "src"])
        row = attn[layer, last]
        on_image = row[image]
        assert rows.loc[("last", "image:0"), "mass"] == pytest.approx(float(on_image.sum()), abs=1e-5)
        assert rows.loc[("last", "image:0"), "n_targets"] == 1
        p = on_image / on_image.sum()
        entropy = -float((p * p.clamp_min(1e-300).log()).sum())
        assert rows.loc[("last", "image:0"), "entropy"] == pytest.approx(entropy, abs=1e-4)
        assert rows.loc[("last", "last"), "mass"] == pytest.approx(float(row[last]), abs=1e-5)
        # the response tokens' attention onto the last prompt token, averaged over response tokens
        expected = float(attn[layer, response, last].mean())
        assert rows.loc[("response", "last"), "mass"] == pytest.approx(expected, abs=1e-5)
    # the organism's last position really looks at the image (a peaked case, not near-uniform)
    assert float(attn[:, last, image].sum(-1).max()) > 0.5
    paper = table[(table.grouping == "paper") & table["head"].isna()]
    assert set(paper.tgt) == {"instruction", "vision", "response"}  # the paper's roles are unchanged
    n_prompt_text = last + 1 - len(image)
    assert set(paper[(paper.tgt == "instruction") & (paper.src == "vision")].n_targets) == {
        n_prompt_text - int(image[0])  # text tokens after the image see it: the last one included
    }


def test_grid_query_last_is_that_row_on_the_patch_grid(case):
    probed, _, attn, last, image = case
    grid = probed.grid
    assert set(grid["query"]) == {last} and set(grid["query_role"]) == {"last"}
    cells = image.view(24, 24)
    for layer in (0, 5):
        part = grid[grid.layer == layer].sort_values(["row", "col"])
        expected = attn[layer, last, cells.flatten()].numpy()
        assert abs(part["weight"].to_numpy() - expected).max() < 1e-5
    assert not math.isnan(grid["weight"].sum())
