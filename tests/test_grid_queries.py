"""`probe attention --grid-queries`: attention of chosen query tokens onto each image's patch grid (Fig. 4).

The weights are checked against the eager attention probabilities read independently (image tokens found
from the input ids, not from the adapter's roles), native against eager, and the run directory
(resume, manifest, figure) end to end.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

import probe.attention_job as job
from probe.errors import ProbeError
from probe.grid import GRID_COLUMNS, parse_grid_queries, resolve_grid_queries
from probe.inputs import make_sample, read_dataset
from tests.conftest import invoke

TWO = (
    "<image> What is shown? <image> And in this one?",
    ["skimage:astronaut", "skimage:coffee"],
    "A person and a cup.",
)
SPEC = "-1,-4,7,response,instruction"
KEYS = ["model", "sample", "stage", "layer", "image", "query", "row", "col"]


@pytest.fixture(scope="module")
def two_images(tiny_llava):
    sample = make_sample(TWO[0], TWO[1], response=TWO[2])
    prepared = tiny_llava.adapter.prepare(sample)
    native = job.probe_sample(tiny_llava, sample, job.AttentionOptions(backend="native", grid_queries=SPEC))
    eager = job.probe_sample(tiny_llava, sample, job.AttentionOptions(backend="eager", grid_queries=SPEC))
    return prepared, native.grid.sort_values(KEYS), eager.grid.sort_values(KEYS)


def test_native_grid_table_equals_eager(tiny_llava, two_images):
    prepared, native, eager = two_images
    n_layers = tiny_llava.adapter.num_layers()
    n_queries = len(resolve_grid_queries(parse_grid_queries(SPEC), prepared.roles["llm"]))
    assert len(native) == n_layers * 2 * n_queries * 24 * 24
    assert not native.duplicated(KEYS).any()
    assert set(native["image"]) == {0, 1} and set(native["layer"]) == set(range(n_layers))
    assert (
        native[KEYS + ["query_role", "query_token"]]
        .reset_index(drop=True)
        .equals(eager[KEYS + ["query_role", "query_token"]].reset_index(drop=True))
    )
    assert abs(native["weight"].to_numpy() - eager["weight"].to_numpy()).max() < 1e-5


def test_grid_weights_are_the_eager_probabilities_on_image_tokens(tiny_llava, two_images):
    prepared, native, eager = two_images
    adapter = tiny_llava.adapter
    with torch.no_grad(), adapter.attention_implementation("eager"):
        attentions = adapter.forward(dict(prepared.inputs), output_attentions=True).attentions
    ids = prepared.inputs["input_ids"][0]
    image_positions = (ids == tiny_llava.model.config.image_token_id).nonzero().flatten()
    assert len(image_positions) == 2 * 576  # LLaVA-v1.5: 576 tokens per image, row-major patches
    cells = image_positions.view(2, 24, 24)
    for table, tol in ((eager, 1e-6), (native, 1e-5)):
        layer = torch.tensor(table["layer"].to_numpy())
        query = torch.tensor(table["query"].to_numpy())
        key = cells[
            torch.tensor(table["image"].to_numpy()),
            torch.tensor(table["row"].to_numpy()),
            torch.tensor(table["col"].to_numpy()),
        ]
        mean = torch.stack([a[0].double().mean(0) for a in attentions])  # [L, N, N]: heads averaged
        expected = mean[layer, query, key]
        got = torch.tensor(table["weight"].to_numpy())
        assert torch.allclose(got, expected, atol=tol, rtol=0)
    # a query's weights summed over a grid = its attention mass on that image (nothing renormalised)
    last = native[(native["query"] == len(ids) - 1) & (native["image"] == 1) & (native["layer"] == 2)]
    assert last["weight"].sum() == pytest.approx(float(mean[2, -1, cells[1].flatten()].sum()), abs=1e-5)


def test_role_selectors_pick_exactly_their_tokens(tiny_llava, two_images):
    prepared, native, _ = two_images
    roles = prepared.roles["llm"]
    ids = prepared.inputs["input_ids"][0]
    n = len(ids)
    response = resolve_grid_queries(("response",), roles)
    assert response == list(range(prepared.prompt_length, n))
    assert tiny_llava.processor.tokenizer.decode(ids[response]).strip() == TWO[2]
    image_token = tiny_llava.model.config.image_token_id
    instruction = resolve_grid_queries(("instruction",), roles)
    assert instruction == [p for p in range(prepared.prompt_length) if int(ids[p]) != image_token]
    picked = native.drop_duplicates("query").set_index("query")["query_role"]
    assert set(picked[response]) == {"response"}
    assert set(picked[instruction]) <= {"system", "instruction", "last"}


def test_negative_positions_count_from_the_end(two_images):
    prepared, native, _ = two_images
    roles = prepared.roles["llm"]
    n = roles.role_ids.shape[1]
    assert resolve_grid_queries((-1, -4, 2), roles) == [2, n - 4, n - 1]
    assert resolve_grid_queries((-n, n - 1), roles) == [0, n - 1]
    for bad in (n, -n - 1):
        with pytest.raises(ProbeError, match=f"position {bad} is out of range"):
            resolve_grid_queries((bad,), roles)
    assert {n - 1, n - 4, 7} <= set(native["query"])


def test_parse_grid_queries():
    assert parse_grid_queries(" -1, Response ,3,-1") == (-1, "response", 3)
    for bad, message in (
        ("foo", "unknown --grid-queries selector 'foo'"),
        ("vision", "unknown --grid-queries selector 'vision'"),
        ("1.5", "unknown --grid-queries selector '1.5'"),
        ("1,,2", "empty selector"),
        ("", "empty selector"),
    ):
        with pytest.raises(ProbeError, match=message):
            parse_grid_queries(bad)


def test_llava_mini_llm_sequence_has_no_grid(probe_home):
    import probe

    mini = probe.load("tiny-llava-mini", device="cpu")
    prepared = mini.adapter.prepare(make_sample("<image> What?", ["skimage:coffee"], response="Brown."))
    assert prepared.roles["llm"].grids == []  # compressed tokens: no patch grid to map onto


BASE = ["--image", "skimage:astronaut", "--prompt", "<image> What is shown?"]
BAD = {
    "unknown selector": (["--model", "tiny-llava", *BASE, "--grid-queries", "foo"], "selector 'foo'"),
    "out of range": (
        ["--model", "tiny-llava", *BASE, "--response", "A suit.", "--grid-queries", "-1,5000"],
        "position 5000 is out of range for sample '0'",
    ),
    "unsupported backend": (
        ["--model", "tiny-llava", *BASE, "--backend", "nnsight", "--grid-queries", "-1"],
        "not supported by the nnsight backend",
    ),
    "response without response": (
        ["--model", "tiny-llava", *BASE, "--grid-queries", "response"],
        "sample '0' has no response",
    ),
    "no grid (LLaVA-Mini)": (
        ["--model", "tiny-llava-mini", *BASE, "--grid-queries", "-1"],
        "needs image patch grids in the LLM sequence",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_grid_queries_one_line_exit_2_no_output(case, tmp_path, capsys):
    args, message = BAD[case]
    out = tmp_path / "run"
    code, _, err = invoke(capsys, "attention", *args, "--out", str(out))
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: ") and message in lines[0], lines[0]
    assert not out.exists()


def test_resume_keeps_grid_rows_without_duplicates(tmp_path, tiny_llava, monkeypatch):
    lines = [
        {"id": "a", "image": "skimage:astronaut", "prompt": "Who?", "response": "A woman."},
        {"id": "b", "image": "skimage:coffee", "prompt": "What drink?", "response": "Coffee."},
    ]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    samples = read_dataset(tmp_path / "d.jsonl")
    options = job.AttentionOptions(grid_queries="-1,response")
    job.run_attention(tiny_llava, samples, tmp_path / "ref", options, progress=False)
    reference = job.load_grid(tmp_path / "ref")

    real = job.probe_sample
    calls = []

    def flaky(loaded, sample, opts):
        calls.append(sample.sample_id)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(loaded, sample, opts)

    monkeypatch.setattr(job, "probe_sample", flaky)
    with pytest.raises(KeyboardInterrupt):
        job.run_attention(tiny_llava, samples, tmp_path / "run", options, progress=False)
    assert (tmp_path / "run" / ".parts" / "0000000.grid.parquet").is_file()
    assert not (tmp_path / "run" / "grid.parquet").exists()
    calls.clear()
    monkeypatch.setattr(job, "probe_sample", lambda *a: (calls.append(a[1].sample_id), real(*a))[1])
    job.run_attention(tiny_llava, samples, tmp_path / "run", options, progress=False)
    assert calls == ["b"]
    grid = job.load_grid(tmp_path / "run")
    pd.testing.assert_frame_equal(grid, reference)
    assert set(grid["sample"]) == {"a", "b"} and not grid.duplicated(KEYS).any()
    assert len(pd.read_csv(tmp_path / "run" / "grid.csv")) == len(grid)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["options"]["grid_queries"] == "-1,response"
    assert manifest["grid"]["queries"] == "-1,response" and manifest["grid"]["stage"] == "llm"


def test_cli_writes_grid_table_and_figure_redrawable_from_the_table(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["attention", "--model", "tiny-llava", *BASE, "--response", "An astronaut.", "--out", str(out)]
    code, stdout, err = invoke(capsys, *args, "--grid-queries", "-1,response", "--backend", "eager")
    assert code == 0, err
    for name in ("grid.parquet", "grid.csv", "grid.png", "attention.parquet", "manifest.json"):
        assert (out / name).is_file(), name
    assert (out / "grid.png").stat().st_size > 10_000 and "grid.png" in stdout
    from analyses.attention_maps import plot_grid_attention, plot_run_grid

    fig = plot_run_grid(out, layers=[0, 3], overlay=False)  # from the saved table alone
    assert len([ax for ax in fig.axes if ax.get_title().startswith("layer")]) == 2
    grid = pd.read_parquet(out / "grid.parquet")
    last = int(grid["query"].max())
    fig = plot_grid_attention(grid, query=last, pictures=["skimage:astronaut"])
    assert fig.axes[0].get_title().startswith("image 0 (1 query)")
    fig.savefig(tmp_path / "one.png")
    assert (tmp_path / "one.png").stat().st_size > 0


def test_empty_generation_gives_an_empty_grid_table(tmp_path, tiny_llava, monkeypatch):
    monkeypatch.setattr(tiny_llava.adapter, "generate", lambda sample, n: [])  # EOS straight away
    sample = make_sample("<image> Hi?", ["skimage:astronaut"])
    options = job.AttentionOptions(generate=2, grid_queries="response")
    job.run_attention(tiny_llava, [sample], tmp_path / "run", options, progress=False)
    grid = job.load_grid(tmp_path / "run")
    assert grid.empty and list(grid.columns) == ["model", *GRID_COLUMNS]
    assert not (tmp_path / "run" / "grid.png").exists()


def test_notebook_attention_maps_sum_to_the_response_mass_on_each_image(tiny_llava):
    """probe.attention_maps: a one-token response's grid weights summed over an image's patches equal that
    token's mass on the image in the attention table (same forward, independent reduction)."""
    import probe

    prompt, images, _ = TWO
    grid = probe.attention_maps(tiny_llava, images, prompt, queries="response", response="cup")
    table = probe.attention(tiny_llava, images, prompt, response="cup")
    n_response = grid["query"].nunique()
    assert n_response >= 1 and set(grid["query_role"]) == {"response"}
    per_image = grid.groupby(["layer", "image"])["weight"].sum() / n_response  # mean over response tokens
    fine = table[(table.grouping == "fine") & (table.tgt == "response") & table["head"].isna()]
    for (layer, image), total in per_image.items():
        expected = fine[(fine.layer == layer) & (fine.src == f"image:{image}")]["mass"].item()
        assert abs(total - expected) < 1e-5, (layer, image, total, expected)
    with pytest.raises(ProbeError, match="grid-queries"):
        probe.attention_maps(tiny_llava, images, prompt, queries="vision")


def test_layers_beyond_the_model_are_an_error_naming_the_valid_range(two_images):
    """The paper's layers [0, 8, 16, 31] on a 4-layer model: one clear error, not a figure missing panels."""
    from analyses.attention_maps import plot_grid_attention

    _, native, _ = two_images
    with pytest.raises(
        ProbeError, match=r"layer\(s\) \[8, 16, 31\] are not in the grid table: it has layers 0\.\.3"
    ):
        plot_grid_attention(native, layers=[0, 8, 16, 31])
