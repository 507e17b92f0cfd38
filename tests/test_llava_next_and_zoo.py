"""LLaVA-NeXT token spans for images of different aspect ratios, and the zoo's load path."""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
import pytest
import torch
from PIL import Image

import probe
from analyses.attention_maps import plot_grid_attention
from probe.errors import ProbeError
from probe.inputs import make_sample
from probe.zoo import REGISTRY, get_family, materialise


@pytest.fixture
def images(tmp_path):
    """A wide, a tall and a square picture (different anyres tilings)."""
    from skimage import data

    base = Image.fromarray(data.astronaut())
    paths = []
    for name, size in [("wide", (600, 200)), ("tall", (180, 520)), ("square", (400, 400))]:
        path = tmp_path / f"{name}.png"
        base.resize(size).save(path)
        paths.append(str(path))
    return paths


def test_llava_next_vision_role_covers_every_crop_and_newline(tiny_llava_next, images):
    adapter = tiny_llava_next.adapter
    model = tiny_llava_next.model
    sample = make_sample("<image> first, <image> second, <image> third: which is widest?", images)
    prepared = adapter.prepare(sample)
    roles = prepared.roles["llm"]
    inputs = prepared.inputs
    with torch.no_grad():
        features = model.model.get_image_features(
            pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"]
        )
    features = getattr(features, "pooler_output", features)
    expected_counts = [
        f.shape[0] for f in features
    ]  # the model's own feature count per image, newlines included
    assert len(set(expected_counts)) == 3  # three aspect ratios, three different token counts
    labels = roles.labels
    ids = roles.role_ids[0]
    for k, count in enumerate(expected_counts):
        assert int((ids == labels.index(f"image:{k}")).sum()) == count
    image_positions = inputs["input_ids"][0] == model.config.image_token_id
    vision = torch.isin(ids, torch.tensor([labels.index(f"image:{k}") for k in range(3)]))
    assert torch.equal(vision, image_positions)
    # each image's base 24 x 24 view is recorded for attention maps, inside that image's span
    assert [g.image_index for g in roles.grids] == [0, 1, 2]
    for grid in roles.grids:
        assert grid.positions.shape == (24, 24)
        assert bool((ids[grid.positions.flatten()] == labels.index(f"image:{grid.image_index}")).all())


def test_llava_next_probe_runs_and_masses_sum_to_one(tiny_llava_next, images):
    table = probe.attention(
        tiny_llava_next, image=images[0], prompt="<image> Describe.", response="ok", backend="eager"
    )
    assert set(table["tgt"]) >= {"instruction", "vision", "response"}
    assert table["layer"].nunique() == tiny_llava_next.model.config.text_config.num_hidden_layers
    # response tokens see every source, so their masses over all sources add up to 1 in every layer
    for grouping in ("paper", "fine"):
        rows = table[(table["grouping"] == grouping) & table["head"].isna() & (table["tgt"] == "response")]
        sums = rows.groupby("layer")["mass"].sum()
        assert len(sums) == table["layer"].nunique()
        assert sums.to_numpy() == pytest.approx(1.0, abs=1e-5), grouping


def test_builtin_model_is_saved_once_and_loaded_like_a_download(probe_home, tiny_llava):
    directory = materialise(REGISTRY["tiny-llava"])
    assert directory.parent == probe_home / "models"
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= set(
        os.listdir(directory)
    )
    stamp = (directory / "model.safetensors").stat().st_mtime_ns
    again = probe.load(str(directory), device="cpu")  # a local directory goes through the same loader
    assert (directory / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt
    assert again.family == "llava"
    for (name, a), (_, b) in zip(
        again.model.state_dict().items(), tiny_llava.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_zoo_names_and_errors(tmp_path):
    for spec in REGISTRY.values():  # every entry is loadable: a family with a loader and an adapter
        family = get_family(spec.family)
        assert callable(family.loader) and family.adapter is not None, spec.name
        assert spec.hub_id is None or spec.hub_id.count("/") == 1, spec.name
    with pytest.raises(ProbeError, match="llava-hf/llava-1.5-7b-hf"):  # offline, weights absent: one line
        probe.load("llava-v1.5-7b", device="cpu")
    with pytest.raises(ProbeError, match="not a model directory"):
        probe.load(str(tmp_path), device="cpu")
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ProbeError, match="is a 'bert' model"):
        probe.load(str(tmp_path), device="cpu")
    with pytest.raises(ProbeError, match="unknown dtype"):
        probe.load("tiny-llava", device="cpu", dtype="int3")


def test_grid_rows_say_how_much_of_the_images_attention_the_grid_shows(tiny_llava, tiny_llava_next, images):
    """LLaVA-NeXT's grid is the base 24 x 24 view; its crops and newline tokens hold the rest of the image."""
    kwargs = dict(prompt="<image> Describe.", queries="response", response="a red square", backend="eager")
    for loaded, picture in ((tiny_llava, "skimage:astronaut"), (tiny_llava_next, images[0])):
        grid = probe.attention_maps(loaded, picture, **kwargs)
        table = probe.attention(loaded, image=picture, prompt=kwargs["prompt"], response=kwargs["response"])
        per_query = grid.groupby(["layer", "query"]).agg(
            shown=("weight", "sum"), mass=("image_mass", "first")
        )
        # image_mass of the response queries, averaged, is the table's response -> image mass
        rows = table[(table["grouping"] == "fine") & table["head"].isna() & (table["tgt"] == "response")]
        expected = rows[rows["src"] == "image:0"].set_index("layer")["mass"]
        got = per_query.groupby("layer")["mass"].mean()
        assert got.to_numpy() == pytest.approx(expected.loc[got.index].to_numpy(), abs=1e-5)
        share = per_query["shown"] / per_query["mass"]
        figure = plot_grid_attention(grid)
        labels = " ".join(ax.get_ylabel() + ax.get_title() for ax in figure.axes)
        plt.close(figure)
        if loaded is tiny_llava:
            assert share.to_numpy() == pytest.approx(1.0, abs=1e-5)  # the grid is the whole image
            assert "grid shows" not in labels
        else:
            assert (share < 0.5).all() and (share > 0).all()  # base view of 576 among ~2900 image tokens
            assert f"grid shows {share.min():.0%} of its attention" in labels


def test_images_are_told_apart_without_the_processors_token_count(tiny_llava_next, images, monkeypatch):
    """A processor without `_get_num_multimodal_tokens`: each image is its run of image tokens (never an
    equal split: LLaVA-NeXT images of different shapes have different token counts)."""
    adapter = tiny_llava_next.adapter
    sample = make_sample("<image> and then <image>: same?", [images[0], images[1]], response="no")
    expected = adapter.prepare(sample).roles["llm"].role_ids
    monkeypatch.setattr(type(adapter.processor), "_get_num_multimodal_tokens", None, raising=False)
    got = adapter.prepare(sample).roles["llm"].role_ids
    labels = adapter.prepare(sample).roles["llm"].labels
    counts = [int((got == labels.index(f"image:{k}")).sum()) for k in range(2)]
    assert counts[0] != counts[1]  # the two pictures differ in shape, so an equal split would be wrong
    assert torch.equal(got, expected)
    pictures = [Image.open(p) for p in images[:2]]
    with pytest.raises(ProbeError, match="put text between the <image> slots"):  # one run, two images
        adapter.tokens_per_image(pictures, list(range(10, 30)))
