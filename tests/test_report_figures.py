"""The report's figure and table functions on small hand-made tables: the plotted numbers are the
table's, intervals are the Student-t intervals computed by hand, runs are not mixed."""

from __future__ import annotations

import json

import matplotlib
import numpy as np
import pandas as pd
import pytest
from PIL import Image

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

T_975 = {3: 3.182446305284263, 2: 4.302652729911275}  # Student-t quantiles (tables), by degrees of freedom


def attention_rows(model, values_by_layer, tgt="instruction", src="vision", grouping="paper", stage="llm"):
    rows = []
    for layer, values in values_by_layer.items():
        for k, value in enumerate(values):
            rows.append(
                {"model": model, "sample": f"s{k}", "stage": stage, "layer": layer, "grouping": grouping}
                | {"tgt": tgt, "src": src, "head": pd.NA, "mass": value, "entropy": value * 2}
            )
    table = pd.DataFrame(rows)
    table["head"] = table["head"].astype("Int64")
    return table


def hand_interval(values):
    values = np.array([v for v in values if not np.isnan(v)])
    n = len(values)
    sd = np.sqrt(((values - values.mean()) ** 2).sum() / (n - 1))
    half = T_975[n - 1] * sd / np.sqrt(n)
    return values.mean(), values.mean() - half, values.mean() + half


A = {0: [0.1, 0.5, 0.9, 0.3], 1: [0.2, 0.2, 0.4, np.nan]}  # a sample without a value is left out
B = {0: [0.7, 0.8, 0.9, 0.6], 1: [0.05, 0.1, 0.15, 0.1]}


def test_profile_means_and_t_intervals_per_run_without_mixing():
    from analyses.attention_profile import label_runs, plot_profile, profile_by_layer

    # two runs of the same model must stay apart
    table = label_runs({"run A": attention_rows("m", A), "run B": attention_rows("m", B)})
    profile = profile_by_layer(table, "mass")
    for run, data in (("run A", A), ("run B", B)):
        for layer, values in data.items():
            row = profile[(profile.run == run) & (profile.layer == layer)].iloc[0]
            mean, low, high = hand_interval(values)
            assert (row["mean"], row["ci_low"], row["ci_high"]) == pytest.approx((mean, low, high), rel=1e-8)
            assert row["n"] == sum(not np.isnan(v) for v in values)

    fig = plot_profile(table, "mass")
    axes = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in axes] == ["run A (n = 4 samples)", "run B (n = 4 samples)"]
    for ax, data in zip(axes, (A, B), strict=True):
        (line,) = ax.get_lines()
        assert line.get_label() == "instruction -> vision"
        expected = [hand_interval(data[layer])[0] for layer in (0, 1)]
        assert list(line.get_xdata()) == [0, 1]
        assert np.allclose(line.get_ydata(), expected)
        (band,) = ax.collections
        ys = band.get_paths()[0].vertices[:, 1]
        for layer in (0, 1):
            _, low, high = hand_interval(data[layer])
            assert np.isclose(ys, low).any() and np.isclose(ys, high).any()
    plt.close(fig)


def test_profile_from_a_summary_table_has_no_band_and_fine_roles_keep_images_apart():
    from analyses.attention_profile import plot_profile
    from probe.stats import average_over_samples

    summary = average_over_samples(attention_rows("m", B))
    fig = plot_profile(summary, "entropy")
    ax = fig.axes[0]
    assert np.allclose(ax.get_lines()[0].get_ydata(), [2 * np.mean(B[0]), 2 * np.mean(B[1])])
    assert len(ax.collections) == 0 and "entropy" in ax.get_ylabel()
    plt.close(fig)

    fine = pd.concat(
        [
            attention_rows("m", A, tgt="last", src="image:0", grouping="fine"),
            attention_rows("m", B, tgt="last", src="image:1", grouping="fine"),
        ]
    )
    fig = plot_profile(fine, "mass", grouping="fine")
    labels = sorted(line.get_label() for line in fig.axes[0].get_lines())
    assert labels == ["last -> image:0", "last -> image:1"]
    plt.close(fig)


def test_token_map_shows_the_matrix_on_a_log_scale_with_role_boundaries():
    from analyses.attention_maps import plot_token_map

    roles = ["system", "image:0", "image:0", "response"]
    matrix = np.array(
        [[1.0, 0, 0, 0], [0.9, 0.1, 0, 0], [0.5, 0.3, 0.2, 0], [0.001, 0.6, 0.099, 0.3]], dtype=float
    )
    query, key = np.tril_indices(4)
    table = pd.DataFrame(
        {"sample": "s0", "layer": 3, "query": query, "key": key}
        | {
            "query_role": np.array(roles)[query],
            "key_role": np.array(roles)[key],
            "weight": matrix[query, key],
        }
    )
    fig = plot_token_map(table)
    ax = fig.axes[0]
    shown = ax.images[0].get_array()
    assert shown.mask[np.triu_indices(4, 1)].all()  # keys a query cannot see are blank
    lower = np.tril_indices(4)
    assert np.allclose(shown.data[lower], matrix[lower])
    norm = ax.images[0].norm
    assert isinstance(norm, LogNorm) and norm.vmax == 1.0
    # boundaries between system | image:0 | response, i.e. before positions 1 and 3
    vertical = sorted(
        {line.get_xdata()[0] for line in ax.get_lines() if line.get_xdata()[0] == line.get_xdata()[1]}
    )
    assert vertical == [0.5, 2.5]
    assert ax.get_title() == "layer 3"
    with pytest.raises(Exception, match="layer"):
        plot_token_map(table, layers=[7])
    plt.close(fig)


def efficiency_rows():
    base = {"quantity": "flops_prefill", "convention": "dense+attention", "resolution": 336}
    rows = [
        {
            "label": "big",
            "setting": "main",
            "component": "vision_encoder",
            "value": 1e9,
            "llm_vision_tokens": 576,
        },
        {"label": "big", "setting": "main", "component": "llm", "value": 3e9, "llm_vision_tokens": 576},
        {"label": "big", "setting": "main", "component": "total", "value": 4e9, "llm_vision_tokens": 576},
        {"label": "mini", "setting": "main", "component": "llm", "value": 1e9, "llm_vision_tokens": 1},
        {"label": "mini", "setting": "main", "component": "total", "value": 1e9, "llm_vision_tokens": 1},
        {
            "label": "mini C=2",
            "setting": "sweep",
            "component": "total",
            "value": 1.2e9,
            "llm_vision_tokens": 4,
        },
        {"label": "big", "setting": "main", "component": "total", "value": 9e9, "llm_vision_tokens": 576}
        | {"convention": "dense"},
    ]
    return pd.DataFrame([base | row for row in rows])


def test_paper_tables_from_an_efficiency_table():
    from analyses.tables import flops_by_component_table, vision_tokens_table

    table14 = flops_by_component_table(efficiency_rows())
    assert list(table14.columns) == ["model", "vision_encoder (GFLOPs)", "llm (GFLOPs)", "total (GFLOPs)"]
    assert table14.set_index("model").loc["big"].tolist() == [1.0, 3.0, 4.0]
    assert table14.set_index("model").loc["mini"].tolist() == [0.0, 1.0, 1.0]

    table7 = vision_tokens_table(efficiency_rows())
    assert table7["vision tokens / image"].tolist() == [1, 4, 576]
    assert table7["prefill GFLOPs"].tolist() == pytest.approx([1.0, 1.2, 4.0])
    assert table7["vs big"].tolist() == pytest.approx([0.25, 0.3, 1.0])


def test_ablation_table_and_table_pages():
    from analyses.tables import ROWS_PER_PAGE, ablation_table, render_table

    summary = pd.DataFrame(
        [
            {
                "setting": "baseline",
                "metric": "correct",
                "n": 4,
                "mean": 0.5,
                "ci_low": 0.25,
                "ci_high": 0.75,
            },
            {"setting": "drop 0-1", "metric": "correct", "n": 4, "mean": 0.25, "ci_low": 0.0, "ci_high": 0.5},
            {
                "setting": "drop 0-1",
                "metric": "gold_logprob",
                "n": 4,
                "mean": -1.0,
                "ci_low": -2,
                "ci_high": 0,
            },
        ]
    )
    table = ablation_table(summary, metrics=("correct",))
    assert table.to_dict("records") == [
        {"setting": "baseline", "n": 4, "correct": "0.5 [0.25, 0.75]"},
        {"setting": "drop 0-1", "n": 4, "correct": "0.25 [0, 0.5]"},
    ]
    long = pd.DataFrame({"x": range(2 * ROWS_PER_PAGE + 1)})
    pages = render_table(long, "T")
    assert len(pages) == 3 and pages[-1].axes[0].get_title(loc="left") == "T (3/3)"
    for page in pages:
        plt.close(page)


def test_compression_map_redrawn_from_a_saved_run(tmp_path):
    import torch

    from analyses.compression_map import compression_table, plot_saved_compression_map

    weights = torch.tensor(
        [[[[0.1, 0.2], [0.3, 0.4]], [[0.7, 0.1], [0.1, 0.1]]]]
    )  # [frames, C^2, rows, cols]
    compression_table(weights).to_parquet(tmp_path / "compression.parquet")
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "image.png")
    (tmp_path / "manifest.json").write_text(
        json.dumps({"command": "compression-map", "model": {"name": "m"}})
    )
    fig = plot_saved_compression_map(tmp_path)
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["image", "query 0 (max 0.400)", "query 1 (max 0.700)"]
    assert np.allclose(axes[2].images[1].get_array(), weights[0, 1].numpy())
    plt.close(fig)


def test_per_head_token_maps_are_each_heads_own_attention(tiny_llava):
    """Per-head rows against the model's own eager `output_attentions` (an independent forward): a swapped
    head index, a transposed matrix or an average in place of a head would show."""
    import torch

    from probe.inputs import make_sample
    from probe.token_map import token_map_table

    sample = make_sample("<image> What colour is it?", ["skimage:coffee"], response="brown")
    table = token_map_table(tiny_llava, sample, layers=[1], per_head=True)
    adapter = tiny_llava.adapter
    prepared = adapter.prepare(sample)
    with torch.no_grad(), adapter.attention_implementation("eager"):
        out = tiny_llava.model(**prepared.inputs, output_attentions=True)
    reference = out.attentions[1][0].float()  # [heads, N, N]
    n_heads = reference.shape[0]
    assert sorted(table["head"].dropna().unique()) == list(range(n_heads))
    query, key = np.tril_indices(reference.shape[-1])
    for head in (0, n_heads - 1):
        rows = table[table["head"] == head].sort_values(["query", "key"])
        np.testing.assert_allclose(rows["weight"], reference[head][query, key].numpy(), atol=1e-6)
    averaged = table[table["head"].isna()].sort_values(["query", "key"])
    np.testing.assert_allclose(averaged["weight"], reference.mean(0)[query, key].numpy(), atol=1e-6)
    from analyses.attention_maps import plot_token_map

    fig = plot_token_map(table, head=n_heads - 1)
    shown = fig.axes[0].images[0].get_array().data
    np.testing.assert_allclose(shown[query, key], reference[n_heads - 1][query, key].numpy(), atol=1e-6)
    plt.close(fig)
