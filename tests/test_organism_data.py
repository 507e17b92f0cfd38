"""Model organisms (issue 5): synthetic VQA generator, training determinism and resume, llava-mini hook."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from probe.errors import ProbeError
from probe.organism import data as D
from tests.conftest import run_cli

# sha256 of the regenerated default test split (JSONL text + decoded pixels): it must not drift.
TEST_SPLIT_DIGEST = "0944cfc53892a62d15ff464604e270fbf0cedddc4480f6514a1857d23a98456e"

# --- an independent reading of the pictures: connected components of each colour's exact RGB ---------
POSITIONS = {
    "top left": (0, 0),
    "top": (0, 1),
    "top right": (0, 2),
    "left": (1, 0),
    "centre": (1, 1),
    "right": (1, 2),
    "bottom left": (2, 0),
    "bottom": (2, 1),
    "bottom right": (2, 2),
}
NUMBER_WORDS = ["zero", "one", "two", "three", "four"]


def parse_image(path) -> list[dict]:
    """Objects seen in the pixels: colour from RGB, shape from how much of its bounding box it fills."""
    pixels = np.asarray(Image.open(path).convert("RGB"))
    found = []
    for name, rgb in D.COLOURS.items():
        labels, n = ndimage.label((pixels == rgb).all(-1))
        for k in range(1, n + 1):
            ys, xs = np.nonzero(labels == k)
            width, height = np.ptp(xs) + 1, np.ptp(ys) + 1
            fill = len(xs) / (width * height)
            shape = (
                "square" if fill > 0.9 else "circle" if fill > 0.7 else "triangle" if fill > 0.46 else "star"
            )
            found.append(
                {
                    "colour": name,
                    "shape": shape,
                    "size": "big" if width > 62 else "small",
                    "row": int(ys.mean() // 112),
                    "col": int(xs.mean() // 112),
                    "x": xs.mean(),
                }
            )
    return found


def answer_from_pixels(prompt: str, objects: list[dict]) -> str:
    def one(**match):
        hits = [o for o in objects if all(o[k] == v for k, v in match.items())]
        assert len(hits) == 1, (prompt, hits)
        return hits[0]

    if m := re.fullmatch(r"What colour is the shape in the (.+)\?", prompt):
        row, col = POSITIONS[m[1]]
        return one(row=row, col=col)["colour"]
    if m := re.fullmatch(r"What shape is in the (.+)\?", prompt):
        row, col = POSITIONS[m[1]]
        return one(row=row, col=col)["shape"]
    if m := re.fullmatch(r"What colour is the (\w+)\?", prompt):
        return one(shape=m[1])["colour"]
    if m := re.fullmatch(r"What shape is the (\w+) object\?", prompt):
        return one(colour=m[1])["shape"]
    if m := re.fullmatch(r"How many (\w+)s are there\?", prompt):
        return NUMBER_WORDS[sum(o["shape"] == m[1] for o in objects)]
    if m := re.fullmatch(r"Is the (\w+) shape left of the (\w+) one\?", prompt):
        return "yes" if one(colour=m[1])["x"] < one(colour=m[2])["x"] else "no"
    if m := re.fullmatch(r"Is the (\w+) (\w+) big or small\?", prompt):
        return one(colour=m[1], shape=m[2])["size"]
    raise AssertionError(f"unexpected question {prompt}")


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("organism-data")
    D.write_dataset(out, seed=3, sizes={"train": 40, "val": 5, "test": 30, "heldout": 30})
    return out


def test_answers_match_the_pixels(small_dataset):
    checked = set()
    for split in ("train", "test", "heldout"):
        for line in (small_dataset / f"{split}.jsonl").read_text().splitlines():
            record = json.loads(line)
            objects = parse_image(small_dataset / record["image"])
            assert len(objects) == len(record["objects"])
            assert answer_from_pixels(record["prompt"], objects) == record["answer"], record
            checked.add(record["type"])
    assert checked == set(D.QUESTION_TYPES)


def test_heldout_pairs_only_in_heldout(small_dataset):
    for split in ("train", "val", "test", "heldout"):
        for line in (small_dataset / f"{split}.jsonl").read_text().splitlines():
            record = json.loads(line)
            pairs = {(o["colour"], o["shape"]) for o in record["objects"]}
            if split == "heldout":
                assert pairs & D.HELD_OUT_PAIRS
            else:
                assert not pairs & D.HELD_OUT_PAIRS


def test_generator_is_deterministic(tmp_path, small_dataset):
    D.write_split(tmp_path, seed=3, split="test", n=30)
    assert D.split_digest(tmp_path / "test.jsonl") == D.split_digest(small_dataset / "test.jsonl")
    # an image does not depend on how many were asked for, and seeds differ
    assert D.make_scene(3, "train", 7) == D.make_split(3, "train", 40)[7]
    assert D.make_scene(4, "train", 7) != D.make_scene(3, "train", 7)


def test_dataset_reads_with_probe_inputs(small_dataset):
    from probe.inputs import read_dataset

    samples = read_dataset(small_dataset / "test.jsonl")
    assert samples[0].prompt.startswith("<image>") and samples[0].answer
    assert samples[0].meta["type"] in D.QUESTION_TYPES


def test_regenerated_test_split_does_not_drift(probe_home):
    path = D.ensure_split("test", seed=0)
    assert path.is_relative_to(probe_home)
    assert D.split_digest(path) == TEST_SPLIT_DIGEST


def test_data_cli(tmp_path):
    result = run_cli(
        "organism",
        "data",
        "--out",
        str(tmp_path),
        "--n-train",
        "3",
        "--n-val",
        "1",
        "--n-test",
        "2",
        "--n-heldout",
        "2",
        "--seed",
        "1",
    )
    assert result.returncode == 0, result.stderr
    assert len((tmp_path / "test.jsonl").read_text().splitlines()) >= 2
    assert len(list((tmp_path / "images" / "train").glob("*.png"))) == 3


# --- training -----------------------------------------------------------------------------------------
def _weights(final):
    from safetensors.torch import load_file

    return load_file(str(final / "model.safetensors"))


def test_conversation_tokens_match_the_chat_template():
    from probe.organism.model import build_processor
    from probe.organism.train import encode_dialogue

    processor = build_processor()
    scene = D.make_scene(0, "train", 0)
    turns = [(q.prompt, q.answer) for q in scene.questions[:2]]
    ids, labels, _ = encode_dialogue(processor, scene.image(), turns)
    # text-only encoding (training on cached tower features) expands the image token by hand: same ids
    assert encode_dialogue(processor, None, turns, image_tokens=576)[:2] == (ids, labels)
    messages = []
    for k in (0, 1):
        q = scene.questions[k]
        messages.append(
            {
                "role": "user",
                "content": ([{"type": "image"}] if k == 0 else []) + [{"type": "text", "text": q.prompt}],
            }
        )
        messages.append({"role": "assistant", "content": [{"type": "text", "text": q.answer}]})
    text = processor.apply_chat_template(messages, tokenize=False)
    assert list(processor(images=[scene.image()], text=text)["input_ids"][0]) == ids
    answered = processor.tokenizer.decode([t for t in labels if t >= 0])
    assert answered == f" {scene.questions[0].answer}</s> {scene.questions[1].answer}</s>"
    assert ids.count(processor.tokenizer.convert_tokens_to_ids("<image>")) == 576


def test_resume_gives_the_same_weights(tmp_path):
    from probe.organism.train import micro_config, train

    straight = train("organism-llava", tmp_path / "a", micro_config(), progress=False)
    assert train("organism-llava", tmp_path / "b", micro_config(), stop_after=3, progress=False) is None
    assert train("organism-llava", tmp_path / "b", micro_config(), stop_after=2, progress=False) is None
    resumed = train("organism-llava", tmp_path / "b", micro_config(), progress=False)
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    assert all((a[k] == b[k]).all() for k in a)
    from transformers import LlavaForConditionalGeneration

    trained = LlavaForConditionalGeneration.from_pretrained(straight).state_dict()
    untrained = _weights_of_untrained()
    assert trained.keys() == untrained.keys()
    assert any((trained[k] != untrained[k]).any() for k in untrained)  # it did train


def _weights_of_untrained():
    from probe.organism.model import MICRO, build_organism_llava

    model, _ = build_organism_llava(0, MICRO)
    return {k: v for k, v in model.state_dict().items()}


def test_resume_refuses_other_settings(tmp_path):
    from probe.organism.train import micro_config, train

    train("organism-llava", tmp_path, micro_config(), stop_after=1, progress=False)
    with pytest.raises(ProbeError, match="different settings"):
        train("organism-llava", tmp_path, micro_config(seed=1), progress=False)


def test_llava_mini_organism_trains_from_the_organism(tmp_path):
    """organism-llava-mini: LLaVA-Mini (C=1, n_fusion=2) built on the organism, trained on its own batches."""
    from llava_mini.modeling import LlavaMiniForConditionalGeneration
    from llava_mini.processing import LlavaMiniProcessor
    from probe.organism.train import Batcher, build_model, micro_config, train
    from probe.zoo import load

    config = micro_config()
    config.stages = (("full", 3),)
    model, processor = build_model("organism-llava-mini", config)
    assert isinstance(model, LlavaMiniForConditionalGeneration) and isinstance(processor, LlavaMiniProcessor)
    assert (model.config.compressor_size, model.config.prefusion_layer_num) == (1, 2)
    scenes = D.make_split(0, "train", 2)
    batch = Batcher(processor, scenes).text_batch([0, 1], np.random.default_rng(0))
    # LLaVA-Mini layout: one placeholder id per image (C^2 = 1), not 576 expanded image tokens
    assert ((batch["input_ids"] == processor.image_token_index).sum(1) == 1).all()
    assert batch["pixel_values"].shape == (2, 1, 1, 3, D.IMAGE_SIZE, D.IMAGE_SIZE)
    answers = batch["labels"] != -100
    assert ((batch["input_ids"] == processor.image_token_index) & answers).sum() == 0
    assert answers.sum(1).min() > 0  # loss on answers (+ </s>) only

    final = train("organism-llava-mini", tmp_path / "run", config, progress=False)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and all(np.isfinite(losses))
    loaded = load(str(final), dtype="float32")
    assert isinstance(loaded.model, LlavaMiniForConditionalGeneration)
    assert loaded.model.config.compressor_size == 1


def test_vision_warmup_targets_and_object_means_match_the_pixels():
    """Each patch's object index points at the object whose colour it has; pooled features equal a loop."""
    import torch

    from probe.organism.train import object_means, patch_targets

    scenes = D.make_split(0, "train", 3)
    targets = torch.stack([patch_targets(s.objects, 24) for s in scenes])
    for scene, t in zip(scenes, targets, strict=True):
        on = t[:, 5] > 0
        assert on.any()
        owners = [scene.objects[int(i) - 1] for i in t[on, 5]]
        assert [list(D.COLOURS).index(o.colour) + 1 for o in owners] == t[on, 0].tolist()
        assert [D.SHAPES.index(o.shape) + 1 for o in owners] == t[on, 1].tolist()
    hidden = torch.randn(3, 24 * 24, 5, generator=torch.Generator().manual_seed(0))
    pooled, labels = object_means(hidden, targets)
    expected, expected_labels = [], []
    for b in range(3):
        for k in range(1, int(targets[b, :, 5].max()) + 1):
            member = targets[b, :, 5] == k
            if member.any():
                expected.append(hidden[b, member].mean(0))
                expected_labels.append(targets[b, member][0])
    torch.testing.assert_close(pooled, torch.stack(expected))
    assert torch.equal(labels, torch.stack(expected_labels))


def test_curriculum_scenes_have_one_or_two_objects_and_answers_still_match():
    """Stage `easy` draws 1-2 objects per scene; the questions stay answerable from the objects."""
    scenes = D.make_split(0, "train", 40, n_objects=(1, 2))
    assert {len(s.objects) for s in scenes} == {1, 2}
    assert all((o.colour, o.shape) not in D.HELD_OUT_PAIRS for s in scenes for o in s.objects)
    for scene in scenes:
        asked = {q.prompt: q.answer for q in scene.questions}
        every = {q.prompt: q.answer for qs in D.all_questions(list(scene.objects)).values() for q, _ in qs}
        assert asked and all(every[p] == a for p, a in asked.items())
    assert [len(s.objects) for s in D.make_split(0, "train", 40)] != [len(s.objects) for s in scenes]


def test_drawn_questions_are_distinct_answerable_and_cover_the_types():
    """A training conversation draws k distinct questions afresh; each answer is the scene's own."""
    scenes = D.make_split(0, "train", 30)
    rng = np.random.default_rng(0)
    types = set()
    for scene in scenes:
        every = {q.prompt: q.answer for qs in D.all_questions(list(scene.objects)).values() for q, _ in qs}
        drawn = D.sample_questions(rng, scene.objects, 12)
        assert len({q.prompt for q in drawn}) == len(drawn) and 0 < len(drawn) <= 12
        assert all(every[q.prompt] == q.answer for q in drawn)
        types |= {q.type for q in drawn}
    assert types == set(D.QUESTION_TYPES)


def test_training_on_cached_tower_features_is_the_models_own_forward():
    """`forward_with_features` (frozen tower, features computed once) gives the loss and logits of
    `forward(pixel_values=...)` on the same conversations."""
    import torch

    from probe.organism.model import MICRO, build_organism_llava
    from probe.organism.train import Batcher, forward_with_features, tower_features

    model, processor = build_organism_llava(0, MICRO)
    model.eval()
    scenes = D.make_split(0, "train", 3)
    with_pixels = Batcher(processor, scenes, questions_per_image=5).text_batch(
        [2, 0], np.random.default_rng(1)
    )
    text_only = Batcher(processor, scenes, 5, image_tokens=576).text_batch([2, 0], np.random.default_rng(1))
    assert "pixel_values" not in text_only
    assert torch.equal(text_only["input_ids"], with_pixels["input_ids"])
    features = tower_features(model, processor, scenes)
    assert features.shape == (3, 576, MICRO.vision_hidden)
    with torch.no_grad():
        reference = model(**with_pixels)
        cached = forward_with_features(model, text_only, features[[2, 0]])
    torch.testing.assert_close(cached.logits, reference.logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(cached.loss, reference.loss)


def test_shape_counts_count_objects_per_shape():
    from probe.organism.train import shape_counts

    scenes = D.make_split(0, "train", 20)
    counts = shape_counts(scenes)
    for scene, row in zip(scenes, counts.tolist(), strict=True):
        for shape, n in zip(D.SHAPES, row, strict=True):
            assert n == len([o for o in scene.objects if o.shape == shape])
    assert counts.sum(1).tolist() == [len(s.objects) for s in scenes]


def test_instruction_turns_have_the_answers_their_text_and_image_give():
    """organism-llava-instruct's turns: text-only answers follow from the words alone, conditional and
    two-word answers from the objects, and wrapped image questions keep the scene's answer."""
    from probe.organism.instructions import instruction_questions

    colours = set(D.COLOURS)
    rng = np.random.default_rng(0)
    kinds = set()
    for scene in D.make_split(0, "train", 60):
        every = {q.prompt: q.answer for qs in D.all_questions(list(scene.objects)).values() for q, _ in qs}
        for q in instruction_questions(rng, scene.objects, 12):
            kinds.add(q.type)
            words = q.prompt.rstrip("?.").split()
            if q.type in ("is_colour", "is_shape"):  # "Is <word> a <colour|shape>?"
                word, asked = words[1], words[-1]
                assert q.answer == ("yes" if (word in colours) == (asked == "colour") else "no")
            elif q.type == "say_word":
                assert q.answer == words[-1]
            elif q.type == "next_number":
                assert D.NUMBERS.index(q.answer) == D.NUMBERS.index(words[-1]) + 1
            elif q.type == "conditional":  # "What colour is the <shape>? If it is <colour>, ..."
                shape, named = words[4].rstrip("?"), words[8].rstrip(",")
                (obj,) = [o for o in scene.objects if o.shape == shape]
                assert q.answer == ("yes" if obj.colour == named else "no")
            elif q.type == "colour_and_shape":
                colour, shape = q.answer.split()
                where = q.prompt.split(" in the ")[1].rstrip("?")
                (obj,) = [o for o in scene.objects if D.position_name(o.row, o.col) == where]
                assert (obj.colour, obj.shape) == (colour, shape)
            else:
                core = [p for p in every if p in q.prompt]
                assert core and every[max(core, key=len)] == q.answer
    assert {"is_colour", "say_word", "next_number", "conditional", "colour_and_shape"} <= kinds


def test_grounding_keys_point_at_each_turns_own_key_word():
    """Every grounding position holds the last token of its question's key phrase, inside that turn's
    prompt, and its targets are the named object's attributes (count: the number of that shape)."""
    from probe.organism.grounding import IGNORE
    from probe.organism.model import build_processor
    from probe.organism.train import Batcher

    processor = build_processor()
    tokenizer = processor.tokenizer
    scenes = D.make_split(0, "train", 6)
    batcher = Batcher(processor, scenes, questions_per_image=12, image_tokens=576, grounding=True)
    rng = np.random.default_rng(3)
    batch = batcher.text_batch(list(range(6)), rng)
    replay = np.random.default_rng(3)
    seen_types = set()
    for b, scene in enumerate(scenes):
        questions = batcher.questions(scene, replay)
        ids = batch["input_ids"][b].tolist()
        labels = batch["labels"][b].tolist()
        answer_starts = [k for k in range(1, len(labels)) if labels[k] != -100 and labels[k - 1] == -100]
        keys = iter(batch["grounding"][b])
        for question, answer_at in zip(questions, answer_starts, strict=True):
            seen_types.add(question.type)
            n_keys = 2 if question.type == "left_of" else 1
            for k in range(n_keys):
                position, targets = next(keys)
                previous_answer = max([a for a in answer_starts if a < answer_at], default=0)
                assert previous_answer < position < answer_at  # in this turn's prompt
                word = tokenizer.decode([ids[position]]).strip()
                if question.type == "count":
                    assert word == question.prompt.split()[2] and targets[:5] == [IGNORE] * 5
                    assert D.NUMBERS[targets[5]] == question.answer
                    continue
                obj = scene.objects[question.about[k]]
                assert targets == [
                    list(D.COLOURS).index(obj.colour),
                    D.SHAPES.index(obj.shape),
                    list(D.SIZES).index(obj.size),
                    obj.row,
                    obj.col,
                    IGNORE,
                ]
                assert word in (obj.colour, obj.shape, D.position_name(obj.row, obj.col).split()[-1])
        assert next(keys, None) is None
    assert seen_types == set(D.QUESTION_TYPES)


def test_grounding_loss_is_the_mean_cross_entropy_of_the_applicable_targets():
    import math

    import torch

    from probe.organism.grounding import IGNORE, TARGET_SIZES, grounding_loss

    head = torch.nn.Identity()
    hidden = torch.zeros(2, 4, sum(TARGET_SIZES))
    hidden[0, 1, 0] = 3.0  # colour logits of key (0, 1): class 0 strongly preferred
    keys = [[(1, [0, 1, 0, 2, 1, IGNORE])], [(3, [IGNORE] * 5 + [2])]]
    loss = grounding_loss(head, hidden, keys)
    colour = -math.log(math.exp(3) / (math.exp(3) + 5))
    uniform = [math.log(n) for n in TARGET_SIZES]
    expected = (colour + sum(uniform[1:5]) + uniform[5]) / 6
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_instruct_variant_trains_on_instruction_heavy_turns(tmp_path):
    """organism-llava-instruct: the LLaVA organism fine-tuned with stage `instruct`; its batches carry the
    variant's turns (text-only questions among them) and the result loads as a LLaVA model."""
    from transformers import LlavaForConditionalGeneration

    from probe.organism.train import micro_config, train
    from probe.zoo import load

    config = micro_config()
    config.stages = (("instruct", 2),)
    config.lr = {**config.lr, "instruct": 1e-3}
    final = train("organism-llava-instruct", tmp_path / "run", config, progress=False)
    settings = json.loads((tmp_path / "run" / "train.json").read_text())["settings"]
    assert settings["model"] == "organism-llava-instruct"
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert isinstance(load(str(final), dtype="float32").model, LlavaForConditionalGeneration)


# --- recipe v5: colour-invariant shape features in the warm-up, more left_of answers ----------------------
# written out by hand (not read from D.HELD_OUT_PAIRS): the colour a shape must never be drawn near
HELD_OUT_COLOUR_OF = {"triangle": "red", "square": "blue", "star": "green", "circle": "yellow"}


def test_off_palette_fills_never_come_near_a_held_out_pair_and_stand_out_from_white():
    """No warm-up fill of a shape has the held-out colour of that shape as its nearest palette colour
    (the tower never sees a held-out pair, even approximately); every fill has a channel >= 100 below
    white, light fills (a channel above 230, like the palette's yellow) occur, and the fills are spread
    over colour space, not a handful of values."""
    palette = np.array(list(D.COLOURS.values()), dtype=float)
    names = list(D.COLOURS)
    rng = np.random.default_rng(0)
    for shape, excluded in HELD_OUT_COLOUR_OF.items():
        fills = np.array([D.off_palette_colour(rng, shape) for _ in range(400)], dtype=float)
        nearest = [names[i] for i in ((fills[:, None] - palette[None]) ** 2).sum(-1).argmin(1)]
        assert excluded not in nearest
        assert set(nearest) == set(names) - {excluded}  # every other region of colour space is used
        assert (fills.min(1) <= 155).all() and (fills.max(1) > 230).any()
        assert len({tuple(f) for f in fills}) > 390


def test_recoloured_warmup_objects_keep_shape_targets_and_lose_colour_targets():
    """With recolour = 1 every object is painted in its off-palette fill (no palette pixel is left) and
    its patches keep their shape / size / object targets with the colour target ignored; with
    recolour = 0 the batch is the plain one."""
    import torch

    from probe.organism.model import build_processor
    from probe.organism.train import Batcher, patch_targets

    scenes = D.make_split(0, "train", 4)
    batcher = Batcher(build_processor(), scenes)
    plain = batcher.vision_batch([0, 1, 2, 3], 24)
    painted = batcher.vision_batch([0, 1, 2, 3], 24, np.random.default_rng(5), recolour=1.0)
    for b, scene in enumerate(scenes):
        expected = patch_targets(scene.objects, 24)
        on = expected[:, 5] > 0
        assert torch.equal(painted["targets"][b][:, 1:], expected[:, 1:])
        assert (painted["targets"][b][on, 0] == -100).all() and (painted["targets"][b][~on, 0] == 0).all()
        assert torch.equal(plain["targets"][b], expected)
    assert not torch.equal(plain["pixel_values"], painted["pixel_values"])
    # the fills themselves: replay the draws and look at the pixels of each object
    rng = np.random.default_rng(5)
    for scene in scenes:
        rng.random(len(scene.objects))
        fills = [D.off_palette_colour(rng, o.shape) for o in scene.objects]
        pixels = np.asarray(D.render(scene.objects, fills=dict(enumerate(fills))))
        owner = D.object_map(scene.objects)
        for k, fill in enumerate(fills):
            assert (pixels[owner == k + 1] == fill).all()
        palette = {tuple(v) for v in D.COLOURS.values()}
        assert not palette & {tuple(p) for p in pixels.reshape(-1, 3)}


def test_type_weights_give_left_of_the_share_its_weight_asks_for():
    """One question per draw: left_of comes with probability w / (w + other askable types), here 2 / 8
    on scenes where all seven types are askable (measured over 3000 draws, 4 sigma); unweighted 1 / 7."""
    scenes = [s for s in D.make_split(0, "train", 200) if all(D.all_questions(list(s.objects)).values())]
    assert len(scenes) >= 20
    for weights, expected in (({"left_of": 2.0}, 2 / 8), (None, 1 / 7)):
        rng = np.random.default_rng(1)
        draws = [
            D.sample_questions(rng, scenes[i % len(scenes)].objects, 1, weights)[0].type for i in range(3000)
        ]
        share = draws.count("left_of") / len(draws)
        assert abs(share - expected) < 4 * np.sqrt(expected * (1 - expected) / len(draws)), (share, expected)


def test_recoloured_scenes_ask_no_colour_of_unnamed_objects_and_count_them_by_shape():
    """Stage `recolour`'s scenes: a painted object shows its fill in the pixels, and that fill is never
    nearest to a colour another object of the scene is named by, nor to its shape's held-out colour. No
    question names or asks for a painted object's colour; count and shape_at still cover it, with
    answers derived here from the objects (count over every object of the shape, painted or not)."""
    from probe.organism.grounding import IGNORE, key_phrases

    rng = np.random.default_rng(3)
    scenes = [D.recoloured(s, rng, 0.5) for s in D.make_split(0, "train", 60)]
    painted_types: set[str] = set()
    n_painted = 0
    for scene in scenes:
        objects = list(scene.objects)
        fills = dict(scene.fills)
        named = {o.colour for o in objects if o.colour != D.UNNAMED}
        pixels, owner = np.asarray(scene.image()), D.object_map(objects)
        for k, obj in enumerate(objects):
            if k in fills:
                n_painted += 1
                assert obj.colour == D.UNNAMED and (pixels[owner == k + 1] == fills[k]).all()
                assert D.nearest_colour(fills[k]) not in named | {HELD_OUT_COLOUR_OF[obj.shape]}
            else:
                assert (pixels[owner == k + 1] == D.COLOURS[obj.colour]).all()
        for qs in D.all_questions(objects).values():
            for q, who in qs:
                if any(objects[i].colour == D.UNNAMED for i in who):
                    painted_types.add(q.type)
                    assert q.type in ("count", "shape_at"), q
                    if q.type == "shape_at":
                        assert key_phrases(q, objects)[0][1][0] == IGNORE  # no colour target either
                if q.type == "count":
                    shape = q.prompt.split()[2][:-1]  # "How many circles are there?"
                    assert q.answer == D.NUMBERS[sum(o.shape == shape for o in objects)]
                for word in D.COLOURS:
                    if f" {word} " in f" {q.prompt} ":
                        assert word in named, q
    assert n_painted > 40 and painted_types == {"count", "shape_at"}
