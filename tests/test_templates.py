"""`--template model|llava_v1|FILE`: the conversation a prompt is rendered in, and the roles it gives.

Expected strings are written out by hand from the LLaVA release's `conv_vicuna_v1` (system prompt, then
"USER: ... ASSISTANT:" with separators " " and "</s>") and from the llava-hf chat template (a verbatim
fixture). Roles are checked under a Llama-style SentencePiece tokenizer, where a leading-space (`▁`)
mistake at a role boundary changes the text a role holds.
"""

from __future__ import annotations

import hashlib
import itertools
import json

import pandas as pd
import pytest

import probe
from probe.builtin.tokenizer import LLAVA_V15_CHAT_TEMPLATE
from probe.inputs import make_sample
from probe.templates import default_template_name
from tests.conftest import invoke
from tests.llama_sentencepiece import FIXTURE, llava_hf_template, save_llava_hf_like

SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
TWO_IMAGES = "<image> vs <image>: differences?"


@pytest.fixture(scope="module")
def llava_hf_dir(tmp_path_factory, probe_home):
    return save_llava_hf_like(tmp_path_factory.mktemp("llava-hf-like"))


@pytest.fixture(scope="module")
def llava_hf(llava_hf_dir):
    return probe.load(str(llava_hf_dir), device="cpu")


def role_texts(loaded, sample) -> list[tuple[str, str]]:
    """[(role label, text of its tokens)] in sequence order, from the SentencePiece pieces (▁ = space)."""
    prepared = loaded.adapter.prepare(sample)
    ids = prepared.inputs["input_ids"][0].tolist()
    roles = prepared.roles["llm"]
    pieces = loaded.processor.tokenizer.convert_ids_to_tokens(ids)
    image_id = loaded.model.config.image_token_id
    out = []
    for role, positions in itertools.groupby(range(len(ids)), key=lambda i: int(roles.role_ids[0, i])):
        positions = list(positions)
        label = roles.labels[role]
        if label.startswith("image:"):
            assert all(ids[i] == image_id for i in positions)
            out.append((label, f"{len(positions)} image tokens"))
        else:
            text = "".join(pieces[i] for i in positions)
            out.append((label, text.replace("▁", " ").replace("<0x0A>", "\n")))
    return out


def test_llava_v1_is_the_release_conversation_with_the_images_where_the_user_put_them(llava_hf):
    llava_hf.adapter.use_template("llava_v1")
    rendered = llava_hf.adapter.render(TWO_IMAGES)
    assert rendered == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
        "helpful, detailed, and polite answers to the user's questions. USER: <image>\nvs <image>: "
        "differences? ASSISTANT:"
    )
    # a plain question reads exactly as LLaVA-v1.5 was evaluated: '<image>\n' + question
    assert llava_hf.adapter.render("<image> What is shown?").endswith(
        "questions. USER: <image>\nWhat is shown? ASSISTANT:"
    )


def test_the_llava_hf_template_moves_every_image_to_the_front(llava_hf):
    """What `--template model` gives on a llava-hf checkpoint: no system prompt, images first, text parts
    joined by spaces (so llava_v1, not this, is the default for LLaVA-v1.5)."""
    llava_hf.adapter.use_template("model")
    assert llava_hf.adapter.render(TWO_IMAGES) == "USER: <image>\n<image>\nvs : differences? ASSISTANT:"


def test_roles_land_on_the_right_tokens_under_a_sentencepiece_tokenizer(llava_hf):
    sample = make_sample(TWO_IMAGES, ["skimage:astronaut", "skimage:coffee"], response="The colours.")
    llava_hf.adapter.use_template("llava_v1")
    assert role_texts(llava_hf, sample) == [
        ("system", "<s> " + SYSTEM + " USER:"),
        ("instruction", " "),
        ("image:0", "576 image tokens"),
        ("instruction", "\nvs "),
        ("image:1", "576 image tokens"),
        ("instruction", ": differences? ASSISTANT"),
        ("last", ":"),
        ("response", " The colours."),
    ]
    llava_hf.adapter.use_template("model")
    assert role_texts(llava_hf, sample) == [
        ("system", "<s> USER:"),
        ("instruction", " "),
        ("image:0", "576 image tokens"),
        ("instruction", "\n"),
        ("image:1", "576 image tokens"),
        ("instruction", "\nvs : differences? ASSISTANT"),
        ("last", ":"),
        ("response", " The colours."),
    ]


def test_defaults_paper_format_for_llava_v15_own_template_elsewhere(llava_hf_dir):
    assert probe.load(str(llava_hf_dir), device="cpu").adapter.template.name == "llava_v1"
    assert default_template_name("llava", llava_hf_template()) == "llava_v1"
    assert default_template_name("llava", None) == "llava_v1"
    assert default_template_name("llava", LLAVA_V15_CHAT_TEMPLATE) == "model"  # built-in / organism models
    assert default_template_name("llava_next", llava_hf_template()) == "model"
    assert default_template_name("llava_mini", "any") == "model"


def test_organisms_keep_the_template_they_were_trained_with(probe_home):
    organism = probe.load("organism-llava", device="cpu")
    assert organism.adapter.template.name == "model"
    assert organism.adapter.render("<image>\nWhat colour is the square?") == (
        "USER: <image>\nWhat colour is the square? ASSISTANT:"
    )


def test_llava_mini_keeps_its_own_system_prompt_in_the_system_role(probe_home):
    mini = probe.load("tiny-llava-mini", device="cpu")
    assert mini.adapter.template.name == "model"
    sample = make_sample("<image> What is shown?", ["skimage:astronaut"])
    prepared = mini.adapter.prepare(sample)
    roles = prepared.roles["llm"]
    system = [
        i for i in range(roles.role_ids.shape[1]) if roles.labels[int(roles.role_ids[0, i])] == "system"
    ]
    text = mini.processor.tokenizer.decode(prepared.inputs["input_ids"][0, system])
    assert text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful language and vision "
        "assistant. You are able to understand the visual content that the user provides, and assist the user "
        "with a variety of tasks using natural language.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
    )


def test_the_template_is_in_the_manifest_and_a_change_is_refused_on_resume(tmp_path, capsys, probe_home):
    args = ["attention", "--model", "tiny-llava", "--image", "skimage:astronaut", "--prompt", "<image> What?"]
    out = tmp_path / "run"
    code, _, err = invoke(capsys, *args, "--template", "llava_v1", "--out", str(out))
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["template"]["name"] == "llava_v1"
    assert SYSTEM in manifest["template_text"]
    samples = pd.read_csv(out / "samples.csv")
    n_llava_v1 = int(samples["n_prompt_tokens"][0])

    code, _, err = invoke(capsys, *args, "--out", str(out))  # tiny-llava's default: its own template
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert "template.name: llava_v1 -> model" in lines[0]

    code, _, err = invoke(capsys, *args, "--template", str(FIXTURE), "--out", str(out), "--overwrite")
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    text = json.loads(FIXTURE.read_text())["chat_template"]
    assert manifest["template"] == {"name": "file", "sha256": hashlib.sha256(text.encode()).hexdigest()}
    assert manifest["template_file"] == str(FIXTURE) and manifest["template_text"] == text
    # the system prompt is gone: fewer prompt tokens than under llava_v1
    assert int(pd.read_csv(out / "samples.csv")["n_prompt_tokens"][0]) < n_llava_v1


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        (None, "missing.jinja", "no such file"),
        ("{% for m in messages %}{{ m['role'] }", "broken.jinja", "is not valid Jinja"),
        ('{"template": "x"}', "chat_template.json", "no 'chat_template' string"),
    ],
)
def test_a_bad_template_is_one_line_before_any_work(tmp_path, capsys, content, name, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    out = tmp_path / "run"
    code, _, err = invoke(
        capsys, "attention", "--model", "tiny-llava", "--image", "skimage:astronaut", "--prompt", "<image> Hi?",
        "--template", str(path), "--out", str(out),
    )  # fmt: skip
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and message in lines[0], err
    assert not out.exists()


def test_ablations_take_the_template(tmp_path, capsys, probe_home):
    from probe.organism.data import Obj, render

    render([Obj("circle", "red", "big", 1, 1)]).save(tmp_path / "0.png")
    line = {"image": "0.png", "prompt": "<image>\nWhat colour is the circle?", "answer": "red"}
    (tmp_path / "qa.jsonl").write_text(json.dumps(line) + "\n")
    base = {}
    for template in ("model", "llava_v1"):
        out = tmp_path / template
        code, _, err = invoke(
            capsys, "drop", "--model", "organism-llava", "--dataset", str(tmp_path / "qa.jsonl"), "--layers", "0",
            "--max-new-tokens", "1", "--device", "cpu", "--template", template, "--out", str(out),
        )  # fmt: skip
        assert code == 0, err
        assert json.loads((out / "manifest.json").read_text())["template"]["name"] == template
        results = pd.read_parquet(out / "results.parquet")
        base[template] = float(results[results["setting"] == "baseline"]["first_gold_prob"].iloc[0])
    # another prompt, another forward: compared on the miss probability, as the organism is near-certain
    assert 1 - base["model"] != pytest.approx(1 - base["llava_v1"], rel=1e-2)
