"""`probe efficiency`: memory against hand formulas, the real configs offline, --measure on CPU, bad input."""

from __future__ import annotations

import pandas as pd
import pytest

from probe.efficiency.flops import build_meta_model
from probe.efficiency.memory import kv_bytes_per_token, memory_rows
from probe.efficiency.setups import Request, make_setup
from tests.conftest import invoke


def memory_table(model: str, **knobs) -> pd.DataFrame:
    setup = make_setup(model, Request(prompt_tokens=64), **knobs)
    rows = memory_rows(setup, build_meta_model(setup), ["float16", "float32"])
    return pd.DataFrame(rows)


def test_kv_bytes_per_frame_is_layers_x_2_x_kv_heads_x_head_dim_x_bytes_x_tokens():
    v15, mini = memory_table("llava-v1.5-7b"), memory_table("llava-mini-8b")
    mini_hd = memory_table("llava-v1.5-7b", queries=8)  # a 64-token LLaVA-Mini on Vicuna-7B

    def get(table, quantity, dtype="float16", convention=None):
        sel = table[(table.quantity == quantity) & (table.dtype == dtype)]
        sel = sel if convention is None else sel[sel.convention == convention]
        return sel[sel.component.isin(["llm", "total"])].value.iloc[0]

    # Vicuna-7B: 32 layers, 32 KV heads of 128; 576 tokens per frame
    assert get(v15, "kv_bytes_per_frame") == 32 * 2 * 32 * 128 * 2 * 576
    assert get(v15, "kv_bytes_per_frame", "float32") == 32 * 2 * 32 * 128 * 4 * 576
    # Llama-3.1-8B: 32 layers, 8 KV heads of 128 (GQA); C = 1 -> one token per frame
    assert get(mini, "kv_bytes_per_frame") == 32 * 2 * 8 * 128 * 2 * 1
    assert get(mini_hd, "kv_bytes_per_frame") == 32 * 2 * 32 * 128 * 2 * 64
    assert get(mini, "frames_fit_24gib", convention="kv-only") == 24 * 2**30 // (32 * 2 * 8 * 128 * 2)
    after_weights = get(mini, "frames_fit_24gib", convention="weights+kv+activations")
    assert 10_000 < after_weights < get(mini, "frames_fit_24gib", convention="kv-only")
    assert (
        get(v15, "frames_fit_context", dtype="") == (4096 - 64) // 576
    )  # Vicuna's 4096-token window: 7 images
    params = v15[(v15.quantity == "params") & (v15.component == "total")].value.iloc[0]
    assert 7.0e9 < params < 7.1e9  # LLaVA-v1.5-7B: ~7.06B parameters


@pytest.mark.parametrize("model", ["llava-v1.5-13b", "llava-v1.6-mistral-7b", "llava-v1.6-vicuna-7b"])
def test_real_configs_load_offline_with_their_published_sizes(model):
    setup = make_setup(model, Request(resolution=336 if "v1.5" in model else 672))
    text = setup.text_config
    expected = {
        "llava-v1.5-13b": (5120, 40, 40, 13824),
        "llava-v1.6-mistral-7b": (4096, 32, 8, 14336),
        "llava-v1.6-vicuna-7b": (4096, 32, 32, 11008),
    }[model]
    assert (
        text.hidden_size,
        text.num_hidden_layers,
        text.num_key_value_heads,
        text.intermediate_size,
    ) == expected
    if setup.family == "llava_next":  # 672 x 672 anyres: 576 base + 48 x 48 tiles + 48 newlines
        assert setup.llm_vision_tokens == 576 + 48 * 48 + 48 and setup.views == 5
    assert kv_bytes_per_token(setup, 2) == text.num_hidden_layers * 2 * text.num_key_value_heads * 128 * 2


def test_llava_next_token_count_matches_the_processor(tiny_llava_next):
    from PIL import Image

    from probe.efficiency.setups import llava_next_image_tokens

    processor = tiny_llava_next.processor
    config = tiny_llava_next.model.config
    for side in (336, 672):
        ids = processor(images=Image.new("RGB", (side, side)), text="<image>", return_tensors="pt")[
            "input_ids"
        ]
        assert (ids == config.image_token_index).sum().item() == llava_next_image_tokens(config, side)


def test_measure_on_cpu_gives_latency_rows_and_a_ratio(tmp_path, capsys):
    code, out, err = invoke(
        capsys,
        "efficiency",
        "--model",
        "tiny-llava",
        "--compare",
        "tiny-llava-mini",
        "--measure",
        "--repeats",
        "2",
        "--prompt-tokens",
        "8",
        "--response-tokens",
        "3",
        "--device",
        "cpu",
        "--out",
        str(tmp_path),
    )
    assert code == 0, err
    table = pd.read_parquet(tmp_path / "efficiency.parquet")
    latency = table[table.quantity.isin(["latency_first_token_ms", "latency_per_token_ms"])]
    assert set(latency.model) == {"tiny-llava", "tiny-llava-mini"}
    medians = latency[latency.convention == "median"]
    assert len(medians) == 4 and (medians.value > 0).all()
    spread = latency.pivot_table(index=["model", "quantity"], columns="convention", values="value")
    assert (spread.p25 <= spread["median"]).all() and (spread["median"] <= spread.p75).all()
    # the ratio pairs the two models round by round: median of mini_i / llava_i
    rounds = latency[latency.convention.str.startswith("round ")]
    rounds = rounds[rounds.quantity == "latency_first_token_ms"].pivot_table(
        index="convention", columns="model", values="value"
    )
    assert len(rounds) == 2
    ratio = table[table.quantity == "latency_first_token_ratio"].set_index("convention").value
    assert ratio["vs tiny-llava"] == pytest.approx(
        (rounds["tiny-llava-mini"] / rounds["tiny-llava"]).median()
    )
    assert ratio["vs tiny-llava p25"] <= ratio["vs tiny-llava"] <= ratio["vs tiny-llava p75"]
    for figure in (
        "flops_vs_vision_tokens",
        "flops_by_component",
        "memory_vs_video_length",
        "latency_vs_vision_tokens",
    ):
        assert (tmp_path / f"{figure}.png").stat().st_size > 0
    assert (tmp_path / "manifest.json").is_file() and (tmp_path / "efficiency.csv").is_file()
    assert "latency first token ratio" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "llava-v1.5-7b", "--component", "decoder"], "unknown component 'decoder'"),
        (["--model", "llava-v1.5-7b", "--queries", "0"], "--queries must be >= 1"),
        (["--model", "llava-v1.5-7b", "--frames", "-1"], "--frames must be >= 1"),
        (["--model", "llava-v1.5-7b", "--resolution", "672"], "takes 336 px images only"),
        (["--model", "llava-mini-8b", "--resolution", "500"], "--resolution must be one of 336, 672"),
        (["--model", "no-such-model"], "unknown model 'no-such-model'"),
        (["--model", "llava-v1.6-vicuna-7b", "--queries", "1"], "LLaVA-Mini variants need a LLaVA-v1.5 base"),
        (["--model", "llava-v1.5-7b", "--kind", "mean"], "--kind must be one of query, pool"),
        (
            ["--model", "llava-v1.5-7b", "--measure", "--device", "cpu"],
            "--measure on CPU needs a model with weights",
        ),
    ],
)
def test_bad_input_gives_one_line_and_no_files(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    code, _out, err = invoke(capsys, "efficiency", *args, "--out", str(out))
    assert code != 0
    assert err.strip().count("\n") == 0 and message in err and "Traceback" not in err
    assert not out.exists()
