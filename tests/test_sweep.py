"""`probe sweep` on a micro LLaVA-v1.5 base: bad configs, resume after SIGKILL, Ray == local, figures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import REPO, invoke

STEPS = 8


@pytest.fixture(scope="module")
def micro(tmp_path_factory) -> Path:
    """A saved micro organism-llava (the real LlavaForConditionalGeneration) and a small organism dataset."""
    from probe.organism.data import write_dataset
    from probe.organism.model import MICRO, build_organism_llava

    root = tmp_path_factory.mktemp("sweep")
    model, processor = build_organism_llava(0, MICRO)
    model.save_pretrained(root / "base")
    processor.save_pretrained(root / "base")
    write_dataset(root / "data", sizes={"train": 8, "val": 0, "test": 4, "heldout": 0})
    return root


def write_config(root: Path, name: str = "sweep.yaml", **overrides) -> Path:
    config = {
        "base": "./base",
        "dataset": {"train": "data/train.jsonl", "eval": "data/test.jsonl"},
        "grid": [
            {"compressor_size": [1, 2], "prefusion_layers": [1], "kind": ["query"]},
            {"compressor_size": [2], "prefusion_layers": [0], "kind": ["pool"]},
        ],
        "train": {"steps": STEPS, "lr": 1e-3, "batch_size": 2, "warmup": 1, "checkpoint_every": 2},
        "eval": {"limit": 4, "attention_limit": 1, "latency_samples": 1, "max_new_tokens": 2},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    path = root / name
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


@pytest.mark.parametrize(
    "override, message",
    [
        ({"train": {"stpes": 3}}, "unknown key 'train.stpes'"),
        ({"grid": {"compressor_size": [0], "prefusion_layers": [0], "kind": ["query"]}}, "from 1 to 24"),
        ({"grid": {"compressor_size": [25], "prefusion_layers": [0], "kind": ["query"]}}, "from 1 to 24"),
        ({"grid": {"compressor_size": [1], "prefusion_layers": [-1], "kind": ["query"]}}, ">= 0, got -1"),
        ({"grid": {"compressor_size": [1], "prefusion_layers": [0], "kind": ["conv"]}}, "got 'conv'"),
        ({"grid": {"compressor_size": [1], "prefusion_layers": [3], "kind": ["query"]}}, "LLM's 2 layers"),
        ({"base": "no-such-model"}, "no-such-model"),
        ({"base": "tiny-llava-mini"}, "from a LLaVA-v1.5 model"),
        ({"train": {"loss": "mse"}}, "train.loss"),
        ({"train": {"trainable": ["compressor", "eyes"]}}, "'eyes'"),
    ],
)
def test_bad_config_is_one_line_before_any_work(micro, capsys, override, message):
    out = micro / "never"
    code, stdout, err = invoke(
        capsys, "sweep", "--config", str(write_config(micro, "bad.yaml", **override)), "--out", str(out)
    )
    assert code == 2, err
    assert message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_dataset_without_answers_is_refused(micro, capsys):
    lines = [json.loads(line) for line in (micro / "data" / "test.jsonl").read_text().splitlines()]
    lines[2].pop("answer")
    (micro / "data" / "no_answers.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    dataset = {"train": "data/train.jsonl", "eval": "data/no_answers.jsonl"}
    code, _, err = invoke(capsys, "sweep", "--config", str(write_config(micro, "bad.yaml", dataset=dataset)))
    assert code == 2 and "without an answer" in err.splitlines()[-1] and err.count("error") == 1, err
    assert "Traceback" not in err


def _sweep(micro: Path, out: Path, **kwargs) -> pd.DataFrame:
    from probe.sweep.config import read_config
    from probe.sweep.runner import run_sweep

    return run_sweep(read_config(write_config(micro)), out, threads=1, progress=False, **kwargs)


@pytest.fixture(scope="module")
def straight(micro) -> Path:
    out = micro / "straight"
    _sweep(micro, out)
    return out


STABLE = [
    "cell",
    "kind",
    "compressor_size",
    "prefusion_layers",
    "train_loss",
    "accuracy",
    "blank_accuracy",
    "vision_tokens",
    "flops_prefill",
    "kv_mib_per_image_fp16",
]


def test_sweep_writes_one_row_per_cell_with_the_base(straight):
    cells = pd.read_parquet(straight / "cells.parquet")
    assert list(cells["cell"]) == ["base", "query-C1-N1", "query-C2-N1", "pool-C2-N0"]
    assert list(cells["vision_tokens"]) == [576, 1, 4, 4]
    # the compressed students do less prefill work than the 576-token base; pre-fusion costs something
    flops = cells.set_index("cell")["flops_prefill"]
    assert flops["query-C2-N1"] < flops["base"] and flops["pool-C2-N0"] < flops["query-C2-N1"]
    for column in ("accuracy", "blank_accuracy"):
        assert (
            (cells[f"{column}_ci_low"] <= cells[column]) & (cells[column] <= cells[f"{column}_ci_high"])
        ).all()
    questions = pd.read_parquet(straight / "questions.parquet")
    assert len(questions) == 4 * 4 * 2  # cells x questions x (image, blank)
    attention = pd.read_parquet(straight / "attention.parquet")
    assert set(attention.loc[attention["cell"] == "query-C2-N1", "stage"]) == {"llm", "prefusion"}
    manifest = json.loads((straight / "manifest.json").read_text())
    assert manifest["command"] == "sweep" and manifest["cells"] == list(cells["cell"])
    # the student's checkpoint is the shipped layout, readable by probe.load
    import probe

    student = probe.load(
        str(straight / cells.set_index("cell").loc["query-C2-N1", "checkpoint"]), device="cpu"
    )
    assert student.model.config.compressor_size == 2 and student.model.config.prefusion_layer_num == 1


def test_changed_config_is_refused_with_the_key(micro, straight, capsys):
    config = write_config(micro, "changed.yaml", train={"lr": 2e-3})
    code, _, err = invoke(capsys, "sweep", "--config", str(config), "--out", str(straight))
    assert code == 2 and "train.lr: 0.001 -> 0.002" in err, err


def test_sigkill_mid_cell_resumes_from_its_checkpoint(micro, straight, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "killed"
    command = [
        sys.executable,
        "-c",
        "from probe.cli import main; main()",
        "sweep",
        "--config",
        str(write_config(micro, "kill.yaml")),
        "--out",
        str(out),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    log = out / "cells" / "query-C2-N1" / "train" / "log.jsonl"
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and (not log.is_file() or len(log.read_text().splitlines()) < 5):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert log.is_file() and not (out / "cells" / "query-C2-N1" / "result.json").exists()
    killed_at = len(log.read_text().splitlines())
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr
    assert "resuming: 2 of 4 cells already done" in finished.stdout
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    # the second run started from the last checkpoint (an even step), not from zero, and finished
    restart = steps[killed_at]
    assert 0 < restart <= killed_at and restart % 2 == 0 and sorted(set(steps)) == list(range(STEPS))
    a, b = pd.read_parquet(straight / "cells.parquet"), pd.read_parquet(out / "cells.parquet")
    pd.testing.assert_frame_equal(a[STABLE], b[STABLE])
    for cell in ("query-C1-N1", "query-C2-N1", "pool-C2-N0"):
        x = load_file(str(straight / "cells" / cell / "model" / "model.safetensors"))
        y = load_file(str(out / "cells" / cell / "model" / "model.safetensors"))
        assert all(torch.equal(x[k], y[k]) for k in x), cell


def test_ray_executor_gives_the_local_rows(micro, straight, tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        table = _sweep(micro, tmp_path / "ray", executor="ray")
    finally:
        ray.shutdown()
    local = pd.read_parquet(straight / "cells.parquet")
    pd.testing.assert_frame_equal(local[STABLE], table[STABLE])
    qa, qb = (
        pd.read_parquet(straight / "questions.parquet"),
        pd.read_parquet(tmp_path / "ray" / "questions.parquet"),
    )
    pd.testing.assert_frame_equal(qa, qb)


def test_distillation_loss_is_kl_of_teacher_to_student_on_aligned_answers():
    from probe.sweep.student import distill_loss

    torch.manual_seed(0)
    vocab = 5
    # student: 4 tokens, answer tokens at 2, 3; teacher: 7 tokens (more vision tokens), answers at 5, 6
    student_labels = torch.tensor([[-100, -100, 3, 1]])
    teacher_labels = torch.tensor([[-100, -100, -100, -100, -100, 3, 1]])
    student_logits = torch.randn(1, 4, vocab) * 3
    teacher_logits = torch.randn(1, 7, vocab) * 3
    expected = 0.0
    for s_pos, t_pos in ((1, 4), (2, 5)):  # position t predicts token t + 1
        p = torch.softmax(teacher_logits[0, t_pos], -1)
        q = torch.softmax(student_logits[0, s_pos], -1)
        expected += float((p * (p.log() - q.log())).sum())
    got = distill_loss(student_logits, student_labels, teacher_logits, teacher_labels, temperature=1.0)
    assert got.item() == pytest.approx(expected / 2, rel=1e-5)


def test_sweep_figures_show_the_table(straight):
    from analyses.sweep import plot_accuracy_grid, plot_accuracy_vs_flops, plot_query_vs_pool

    cells = pd.DataFrame(
        {
            "cell": ["base", "query-C1-N0", "query-C1-N1", "query-C2-N0", "query-C2-N1", "pool-C1-N0"],
            "kind": ["base", "query", "query", "query", "query", "pool"],
            "compressor_size": [None, 1, 1, 2, 2, 1],
            "prefusion_layers": [None, 0, 1, 0, 1, 0],
            "accuracy": [0.9, 0.4, 0.6, 0.5, 0.8, 0.3],
            "flops_prefill": [9e9, 1e9, 2e9, 1.1e9, 2.1e9, 0.9e9],
        }
    )
    cells["accuracy_ci_low"] = cells["accuracy"] - 0.1
    cells["accuracy_ci_high"] = cells["accuracy"] + 0.05
    grid = plot_accuracy_grid(cells, "query").axes[0].images[0].get_array()
    np.testing.assert_allclose(np.asarray(grid), [[0.4, 0.6], [0.5, 0.8]])  # rows C = 1, 2; columns N = 0, 1
    ax = plot_accuracy_vs_flops(cells).axes[0]
    pool_points = ax.containers[2].lines[0].get_xydata()  # base, query, pool
    np.testing.assert_allclose(pool_points, [[0.9, 0.3]])
    bars = plot_query_vs_pool(cells).axes[0].containers
    heights = [[b.get_height() for b in c.patches] for c in bars if hasattr(c, "patches")]
    assert heights == [[0.4], [0.3]]  # only (C=1, N=0) ran both kinds


def test_report_draws_a_sweep(straight, tmp_path, capsys):
    pdfium = pytest.importorskip("pypdfium2")
    pdf = tmp_path / "sweep.pdf"
    code, out, err = invoke(capsys, "report", str(straight), "-o", str(pdf))
    assert code == 0, err
    # title page, accuracy vs FLOPs, the query and pool grids (no (C, N) ran both kinds: no Table 8 figure),
    # the cells table
    document = pdfium.PdfDocument(str(pdf))
    assert len(document) == 5 and "(3 figures, 1 tables)" in out
    text = "\n".join(document[i].get_textpage().get_text_range() for i in range(len(document)))
    document.close()
    assert "paper Table 8" not in text and "4 eval questions" in text
    for cell in ("base", "query-C1-N1", "query-C2-N1", "pool-C2-N0"):
        assert cell in text


def test_resuming_under_other_code_says_which_cells_continue(micro, straight, tmp_path, capsys):
    import shutil

    from probe.sweep.config import Cell
    from probe.sweep.runner import CODE_FILE, warn_code_changed

    out = tmp_path / "copy"
    shutil.copytree(straight, out)
    warn_code_changed(out, [Cell("query", 2, 1)])
    assert capsys.readouterr().err == ""  # same code: nothing to say
    (out / CODE_FILE).write_text(json.dumps({"probe": "0.0.1", "git": None}))
    warn_code_changed(out, [Cell("query", 2, 1)])
    err = capsys.readouterr().err
    assert err.startswith("note: ") and "query-C2-N1 resume from checkpoints the older code wrote" in err


def test_distillation_trains_end_to_end_with_a_frozen_teacher(micro, tmp_path):
    """loss 'both' with the LLM training runs end to end (CE + KL on aligned answer tokens; the teacher is
    then a second copy of the base, which the student's shared modules do not touch)."""
    from safetensors.torch import load_file

    from probe.sweep.config import Cell, read_config
    from probe.sweep.runner import run_cell

    config = read_config(
        write_config(
            micro, "distill.yaml", train={"steps": 2, "loss": "both", "trainable": ["llm", "compressor"]}
        )
    )
    row = run_cell(config, Cell("query", 1, 0), tmp_path, threads=1, progress=False)
    losses = [
        json.loads(line)["loss"]
        for line in (tmp_path / "cells" / "query-C1-N0" / "train" / "log.jsonl").open()
    ]
    assert len(losses) == 2 and all(np.isfinite(losses)) and row["train_steps"] == 2
    # the LLM trained (its weights moved away from the base's), so the teacher had to be a separate copy
    base = load_file(str(micro / "base" / "model.safetensors"))
    student = load_file(str(tmp_path / "cells" / "query-C1-N0" / "model" / "model.safetensors"))
    base_norm = [v for k, v in base.items() if k.endswith("layers.0.self_attn.q_proj.weight")][0]
    student_norm = [v for k, v in student.items() if k.endswith("layers.0.self_attn.q_proj.weight")]
    assert student_norm and not torch.equal(student_norm[-1], base_norm)
