"""A LLaVA-Mini run prints its result and nothing else: no FutureWarning / deprecation noise from the KV
cache rename, no transformers warning that a model of one type instantiates another."""

from __future__ import annotations

import json
import shutil

from tests.conftest import run_cli


def test_llava_mini_run_has_a_clean_stderr(tmp_path, probe_home):
    """A checkpoint spelling the release's model_type as `llava_mini` (the alias the loader accepts),
    generating (the path that reads the KV cache back from transformers' outputs)."""
    from probe.zoo import REGISTRY, materialise

    checkpoint = tmp_path / "llava-mini-alias"
    shutil.copytree(materialise(REGISTRY["tiny-llava-mini"]), checkpoint)
    config = json.loads((checkpoint / "config.json").read_text())
    config["model_type"] = "llava_mini"
    (checkpoint / "config.json").write_text(json.dumps(config))

    result = run_cli(
        "attention",
        "--model",
        str(checkpoint),
        "--image",
        "skimage:astronaut",
        "--prompt",
        "<image> What is shown?",
        "--generate",
        "2",
        "--out",
        str(tmp_path / "run"),
    )
    assert result.returncode == 0, result.stderr
    assert " rows (1 sample(s)" in result.stdout
    for noise in ("FutureWarning", "DeprecationWarning", "deprecated", "to instantiate a model of type"):
        assert noise not in result.stderr, result.stderr
