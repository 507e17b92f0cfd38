"""probe on LLaVA-Mini: the eager engine reports the LLM and the pre-fusion stage in one table."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from probe.errors import ProbeError
from probe.inputs import Sample, make_sample


@pytest.fixture(scope="module")
def tiny_mini(probe_home):
    import probe

    return probe.load("tiny-llava-mini", device="cpu")


def check_mass_sums_to_one(stats_list, prepared):
    stages = {s.stage for s in stats_list}
    assert stages == {"llm", "prefusion"}
    for stats in stats_list:
        roles = prepared.roles[stats.stage]
        targets = roles.role_ids[0] >= 0
        assert stats.mass.shape[1] == roles.role_ids.shape[1]
        total = stats.mass[0, targets].sum(-1)
        torch.testing.assert_close(total, torch.ones_like(total), atol=1e-4, rtol=0)


def test_eager_probe_gives_both_stages(tiny_mini):
    from probe.engines import get_engine

    adapter = tiny_mini.adapter
    sample = make_sample("<image> What is shown?", ["skimage:astronaut"], response="A person in a suit.")
    prepared = adapter.prepare(sample)
    stats = get_engine("eager")(adapter, prepared)
    assert len([s for s in stats if s.stage == "llm"]) == adapter.num_layers("llm") == 4
    assert len([s for s in stats if s.stage == "prefusion"]) == adapter.num_layers("prefusion") == 2
    check_mass_sums_to_one(stats, prepared)
    llm = prepared.roles["llm"]
    assert llm.labels == ["system", "image:0", "instruction", "last", "response"]
    assert int((llm.role_ids == 1).sum()) == 4  # C^2 compressed tokens
    pre = prepared.roles["prefusion"]
    assert pre.labels == ["global:0", "compressed:0", "text"]
    assert int((pre.role_ids == 0).sum()) == 576 and int((pre.role_ids == 1).sum()) == 4
    assert adapter.current_attention() == "sdpa"  # restored after the eager run


def test_eager_probe_on_video_frames(tiny_mini, tmp_path):

    from probe.engines import get_engine

    folder = tmp_path / "frames"
    folder.mkdir()
    for k in range(2):
        Image.new("RGB", (80, 60), (40 * k, 90, 200)).save(folder / f"{k}.png")
    sample = Sample(sample_id="v", prompt="<image> What happens?", image_sources=[str(folder)])
    prepared = tiny_mini.adapter.prepare(sample)
    assert prepared.roles["llm"].labels[:3] == ["system", "image:0", "image:1"]
    assert prepared.sequence_roles["prefusion"].role_ids.shape[0] == 2
    check_mass_sums_to_one(get_engine("eager")(tiny_mini.adapter, prepared), prepared)


def test_attention_run_tags_prefusion_stage(tiny_mini, tmp_path):
    from probe.attention_job import AttentionOptions, run_attention

    sample = make_sample("<image> What colour is it?", ["skimage:coffee"], response="Brown.")
    table = run_attention(tiny_mini, [sample], tmp_path / "run", AttentionOptions(), progress=False)
    assert set(table["stage"]) == {"llm", "prefusion"}
    pre = table[(table.stage == "prefusion") & (table.grouping == "paper")]
    assert set(pre["src"]) <= {"vision", "instruction"}
    assert (tmp_path / "run" / "manifest.json").is_file()
    assert (tmp_path / "run" / "mass_prefusion.png").is_file() and (tmp_path / "run" / "mass.png").is_file()


def test_compression_map_png(tiny_mini, tmp_path):
    from analyses.compression_map import save_compression_maps

    sample = make_sample("<image> Describe.", ["skimage:chelsea"])
    weights = save_compression_maps(tiny_mini.adapter, sample, tmp_path / "map.png")
    assert weights.shape == (1, 4, 24, 24)
    torch.testing.assert_close(weights.sum((-1, -2)), torch.ones(1, 4))
    assert (tmp_path / "map.png").stat().st_size > 1000


def assert_same_stats(a_list, b_list):
    assert [(s.stage, s.layer) for s in a_list] == [(s.stage, s.layer) for s in b_list]
    for a, b in zip(a_list, b_list, strict=True):
        torch.testing.assert_close(a.mass, b.mass, atol=1e-4, rtol=0)
        torch.testing.assert_close(a.entropy, b.entropy, atol=1e-4, rtol=0, equal_nan=True)
        assert torch.equal(a.visible, b.visible)


@pytest.mark.parametrize("backend", ["native", "nnsight"])
def test_backend_matches_eager_on_both_stages(tiny_mini, tmp_path, backend):
    from probe.engines import get_engine

    adapter = tiny_mini.adapter
    sample = make_sample("<image> What is shown?", ["skimage:astronaut"], response="A person.")
    prepared = adapter.prepare(sample)
    got = get_engine(backend)(adapter, prepared)
    assert {s.stage for s in got} == {"llm", "prefusion"}
    assert_same_stats(got, get_engine("eager")(adapter, prepared))
    # video: the pre-fusion stage runs one sequence per frame
    folder = tmp_path / "frames"
    folder.mkdir()
    for k in range(3):
        Image.new("RGB", (90, 60), (60 * k, 20, 200 - 40 * k)).save(folder / f"{k}.png")
    video = Sample(
        sample_id="v", prompt="<image> What changes?", image_sources=[str(folder)], response="Colour."
    )
    prepared = adapter.prepare(video)
    assert_same_stats(get_engine(backend)(adapter, prepared), get_engine("eager")(adapter, prepared))


def test_cli_probes_a_video_folder_and_rejects_video_for_image_models(tiny_mini, tmp_path, capsys):
    from tests.conftest import invoke

    folder = tmp_path / "clip"
    folder.mkdir()
    for k in range(2):
        Image.new("RGB", (64, 48), (100, 30 * k, 50)).save(folder / f"{k:03d}.jpg")
    out = tmp_path / "run"
    code, _, err = invoke(
        capsys,
        "attention",
        "--model",
        "tiny-llava-mini",
        "--image",
        str(folder),
        "--prompt",
        "<image> What happens?",
        "--response",
        "Nothing.",
        "--out",
        str(out),
    )
    assert code == 0, err
    import pandas as pd

    table = pd.read_parquet(out / "attention.parquet")
    fine = table[(table["grouping"] == "fine") & (table["stage"] == "llm")]
    assert {"image:0", "image:1"} <= set(fine["src"])  # one compressed span per frame
    code, _, err = invoke(
        capsys,
        "attention",
        "--model",
        "tiny-llava",
        "--image",
        str(folder),
        "--prompt",
        "<image> What happens?",
        "--out",
        str(tmp_path / "run2"),
    )
    assert code == 2 and "is a folder of video frames; this model takes still images" in err
    assert not (tmp_path / "run2").exists()


def test_cli_compression_map_and_its_errors(tiny_mini, tmp_path, capsys):
    from tests.conftest import invoke

    out = tmp_path / "map.png"
    code, stdout, err = invoke(
        capsys,
        "compression-map",
        "--model",
        "tiny-llava-mini",
        "--image",
        "skimage:chelsea",
        "--out",
        str(out),
    )
    assert code == 0, err
    assert out.stat().st_size > 0 and "4 queries over a 24 x 24 grid" in stdout
    code, _, err = invoke(
        capsys,
        "compression-map",
        "--model",
        "tiny-llava-mini",
        "--image",
        "skimage:chelsea",
        "--frame",
        "3",
        "--out",
        str(tmp_path / "x.png"),
    )
    assert code == 2 and "frame 3 is out of range" in err and not (tmp_path / "x.png").exists()
    code, _, err = invoke(
        capsys,
        "compression-map",
        "--model",
        "tiny-llava",
        "--image",
        "skimage:chelsea",
        "--out",
        str(tmp_path / "y.png"),
    )
    assert code == 2 and "has no compressor" in err


def test_several_images_and_over_long_sequences_are_refused_in_one_line(tiny_mini):
    adapter = tiny_mini.adapter
    two = make_sample("<image> and <image>?", ["skimage:astronaut", "skimage:coffee"])
    with pytest.raises(ProbeError, match="one image or one video per prompt"):
        adapter.validate(two)
    sample = make_sample("<image> What is shown?", ["skimage:astronaut"], response="A person.")
    length = adapter.prepare(sample).inputs["input_ids"].shape[1]
    adapter.config.tokenizer_model_max_length = length - 1
    try:
        with pytest.raises(ProbeError, match=f"{length} tokens, longer than .*\\({length - 1}\\)"):
            adapter.prepare(sample)
    finally:
        adapter.config.tokenizer_model_max_length = None
    assert adapter.prepare(sample).inputs["input_ids"].shape[1] == length
