"""LLaVA-style training of model organisms on the synthetic VQA, on CPU, resumable and deterministic.

Stages (each a list of steps; the run is one global step counter):
  0. `vision`    pretraining of the random-initialised CLIP tower (LLaVA starts from a pretrained CLIP;
                 ours has none, so it gets this warm-up instead). A linear probe on the layer -2 patch
                 features (the ones the projector reads) predicts each patch's colour and grid cell, and
                 from the features averaged over each object's patches, the object's shape and size.
                 The pooled targets matter: the inside of a circle and of a square look the same, so
                 shape is only in the edges, and a per-patch shape target asks for the impossible
                 (it plateaued at ~50 % per patch) while the pooled one teaches the tower to put shape
                 evidence where attention can sum it. The probe head is thrown away. After this stage
                 the tower is frozen (as LLaVA freezes CLIP), so the later stages compute its features
                 once per training image instead of once per step.
  1. `projector` (optional) LLaVA stage 1: only the multimodal projector trains. The first stage after
                 `vision` starts with a data-dependent init of the projector (`standardise_projector_input`).
  2. `easy`      LLaVA stage 2 on scenes of 1-2 objects: a curriculum step. With one object every question
                 can be answered from the average of the vision tokens, so the LLM first learns to read
                 shape / size / colour features before it has to find the object they belong to.
  3. `full`      LLaVA stage 2 on the 2-4-object scenes: projector and LLM.
  4. `recolour`  `full` on the same scenes with half the objects painted off-palette and their colour
                 unnamed (`data.recoloured`): the LLM learns to read shape without going through colour,
                 which is what a held-out colour x shape pair needs.
Stages 1-4 are teacher-forced through the model's forward with the loss on answer tokens (and their
`</s>`) only. Each training image is one multi-turn conversation over 12 questions drawn afresh at every
step (as in LLaVA's instruction data, one image per conversation), so the 576 vision tokens are paid
once for many answers. In stages 2-4 a throw-away grounding head on the LLM's last hidden state makes
each question's key word predict the attributes of the object it names (`probe.organism.grounding`:
why). Any model with a LLaVA forward can be trained with stage `full` (no cache, no grounding), which is
how `organism-llava-mini` is trained; `organism-llava-instruct` is organism-llava fine-tuned with stage
`instruct` on instruction-heavy turns (`probe.organism.instructions`).

The loop, its schedule, checkpoints (safetensors) and resume are `probe.training.loop`'s, shared with
`probe sweep`: killing a run and rerunning the same command continues from the last checkpoint and ends
with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from probe.errors import ProbeError
from probe.organism import data as D
from probe.organism.grounding import TARGET_SIZES, grounding_loss, key_positions
from probe.organism.instructions import instruction_questions
from probe.organism.model import MICRO, OrganismSize, build_organism_llava
from probe.training.checkpoint import save_trained
from probe.training.loop import Schedule, Stage, run_stages

EASY_OBJECTS = (1, 2)  # objects per scene in stage `easy`
GROUNDED_STAGES = ("easy", "full", "recolour")  # stages whose loss includes the grounding head
# vision warm-up probe: colour, shape, size (each + background), grid row, grid column, and the number of
# objects of each shape in the whole image (read from every patch)
HEAD_SIZES = [len(D.COLOURS) + 1, len(D.SHAPES) + 1, len(D.SIZES) + 1, D.GRID, D.GRID]
COUNT_CLASSES = len(D.NUMBERS)
IGNORE_TARGET = -100  # cross_entropy's ignore_index: a patch target that does not apply
RECOLOUR_STREAM = 7  # seeds stage `recolour`'s fills apart from the scenes' own RNG streams


@dataclass
class TrainConfig:
    seed: int = 0
    n_train: int = 6000
    batch_size: int = 8
    vision_batch_size: int = 16
    n_easy: int = 3000
    stages: tuple[tuple[str, int], ...] = (("vision", 600), ("easy", 500), ("full", 2300), ("recolour", 600))
    lr: dict = field(
        default_factory=lambda: {
            "vision": 2e-3,
            "projector": 1e-3,
            "easy": 2e-3,
            "full": 2e-3,
            "recolour": 1e-3,
        }
    )
    warmup: int = 30
    # 0: the tower is frozen after its warm-up (as LLaVA freezes CLIP), so its features are computed once
    # per training image; > 0: it trains on in the later stages at this fraction of the learning rate
    vision_lr_scale: float = 0.0
    questions_per_image: int | None = 12  # drawn afresh each step; None: the scene's stored questions
    grounding_weight: float = 1.0  # key tokens predict their object's attributes (LLaVA-v1.5 organism only)
    count_weight: float = 0.0  # vision warm-up: per-shape object counts of the image, from every patch
    # vision warm-up: the fraction of objects drawn in a random off-palette colour (`D.off_palette_colour`,
    # never near a held-out pair's), with their colour target dropped: shape features that hold in any
    # colour, so a held-out colour x shape pair still looks like its shape
    # (also the fraction of objects in stage `recolour`'s scenes painted off-palette: `D.recoloured`)
    recolour: float = 0.5
    # relative frequency of question types in the LLM stages' conversations (others 1): left_of is the one
    # relation between two objects and the slowest type to learn
    type_weights: dict = field(default_factory=lambda: {"left_of": 2.0})
    betas: tuple[float, float] = (0.9, 0.95)
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    checkpoint_every: int = 50
    threads: int = 2
    size: OrganismSize = field(default_factory=OrganismSize)

    def schedule(self) -> Schedule:
        return Schedule(
            seed=self.seed,
            warmup=self.warmup,
            min_lr_ratio=self.min_lr_ratio,
            weight_decay=self.weight_decay,
            grad_clip=self.grad_clip,
            checkpoint_every=self.checkpoint_every,
            betas=self.betas,
        )

    def to_json(self) -> dict:
        d = asdict(self)
        d["stages"] = [list(s) for s in self.stages]
        d["betas"] = list(self.betas)
        return d


def micro_config(seed: int = 0) -> TrainConfig:
    """A few steps of every stage on a micro model: for tests of determinism and resume."""
    return TrainConfig(
        seed=seed,
        n_train=16,
        n_easy=8,
        batch_size=2,
        vision_batch_size=2,
        stages=(("vision", 2), ("projector", 2), ("easy", 1), ("full", 3), ("recolour", 1)),
        questions_per_image=4,
        warmup=1,
        checkpoint_every=1,
        size=MICRO,
    )


# --- batches ---------------------------------------------------------------------------------------
def _is_mini_processor(processor) -> bool:
    return type(processor).__name__ == "LlavaMiniProcessor"


def _turn(processor, question: str, first: bool) -> str:
    content = ([{"type": "image"}] if first else []) + [{"type": "text", "text": question}]
    messages = [{"role": "user", "content": content}]
    if _is_mini_processor(processor):  # LlavaMiniProcessor renders text only (no `tokenize`)
        return processor.apply_chat_template(messages, add_generation_prompt=True)
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def encode_dialogue(
    processor, image, turns: list[tuple[str, str]], image_tokens: int | None = None
) -> tuple[list[int], list[int], torch.Tensor | None]:
    """(input ids, labels, pixel values) of a conversation about `image` over (question, answer) turns, in
    the processor's chat template; labels on answer tokens and their </s> only. The image goes in the
    first turn. LLaVA-v1.5: 576 expanded image tokens, pixel values [3, H, W]; LLaVA-Mini: C^2 placeholder
    ids (-200) per image, pixel values [T=1, V=1, 3, H, W] (its processor's own layout).

    With `image_tokens` (LLaVA-v1.5 layout only) the image is not processed: the `<image>` token is
    expanded to that many ids by hand and pixel values are None, for training on cached tower features."""
    tokenizer = processor.tokenizer
    ids: list[int] = []
    labels: list[int] = []
    pixel_values = None
    for k, (question, answer) in enumerate(turns):
        if k == 0 and image_tokens is not None:
            prompt = tokenizer(_turn(processor, question, True)).input_ids
            at = prompt.index(tokenizer.convert_tokens_to_ids(processor.image_token))
            prompt = prompt[:at] + prompt[at : at + 1] * image_tokens + prompt[at + 1 :]
        elif k == 0:
            enc = processor(images=[image], text=_turn(processor, question, True), return_tensors="pt")
            prompt = enc["input_ids"][0].tolist()
            pixel_values = enc["pixel_values"][0]
        else:
            prompt = tokenizer(_turn(processor, question, False), add_special_tokens=False).input_ids
        answer_ids = tokenizer(" " + answer, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        ids += prompt + answer_ids
        labels += [-100] * len(prompt) + answer_ids
    return ids, labels, pixel_values


def pad_batch(rows: list[tuple[list[int], list[int], torch.Tensor]], pad: int) -> dict:
    """Right-padded `forward` inputs of encoded dialogues."""
    length = max(len(r[0]) for r in rows)
    input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
    labels = torch.full((len(rows), length), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for b, (ids, lab, _) in enumerate(rows):
        input_ids[b, : len(ids)] = torch.tensor(ids)
        labels[b, : len(lab)] = torch.tensor(lab)
        mask[b, : len(ids)] = 1
    batch = {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
    if rows[0][2] is not None:
        batch["pixel_values"] = torch.stack([r[2] for r in rows])
    return batch


class Batcher:
    """Turns scenes into model inputs with the model's own processor and chat template.

    `questions_per_image`: each conversation asks that many questions drawn afresh from everything the
    scene affords (None: the scene's stored questions in a random order). `image_tokens`: encode text
    only, with the image token expanded by hand (the tower's features come from a cache). `grounding`:
    batches carry each question's key tokens and their objects' attributes (`probe.organism.grounding`)."""

    def __init__(
        self,
        processor,
        scenes: list[D.Scene],
        questions_per_image: int | None = None,
        image_tokens: int | None = None,
        draw=D.sample_questions,
        grounding: bool = False,
    ) -> None:
        self.processor = processor
        self.scenes = scenes
        self.questions_per_image = questions_per_image
        self.image_tokens = image_tokens
        self.draw = draw  # (rng, objects, k) -> questions
        self.grounding = grounding

    def questions(self, scene: D.Scene, rng: np.random.Generator) -> list[D.Question]:
        if self.questions_per_image is None:
            return [scene.questions[i] for i in rng.permutation(len(scene.questions))]
        return self.draw(rng, scene.objects, self.questions_per_image)

    def conversation(
        self, scene: D.Scene, questions: list[D.Question]
    ) -> tuple[list[int], list[int], torch.Tensor | None]:
        """-> (input ids, labels, pixel values) of one multi-turn conversation; labels on answers + </s>."""
        turns = [(q.prompt, q.answer) for q in questions]
        image = None if self.image_tokens is not None else scene.image()
        return encode_dialogue(self.processor, image, turns, self.image_tokens)

    def text_batch(self, indices: list[int], rng: np.random.Generator) -> dict:
        rows, keys = [], []
        for i in indices:
            scene = self.scenes[i]
            questions = self.questions(scene, rng)
            rows.append(self.conversation(scene, questions))
            if self.grounding:
                keys.append(self._key_tokens(rows[-1][0], rows[-1][1], questions, scene.objects))
        batch = pad_batch(rows, self.processor.tokenizer.pad_token_id)
        if self.grounding:
            batch["grounding"] = keys
        return batch

    def _key_tokens(self, ids, labels, questions, objects) -> list[tuple[int, list[int]]]:
        """Key tokens of every turn's question, found in that turn's prompt (the k-th run of unlabelled
        tokens) so that an earlier turn's identical word is never picked."""
        starts = [k for k in range(len(labels)) if labels[k] == -100 and (k == 0 or labels[k - 1] != -100)]
        keys = []
        for question, start in zip(questions, starts, strict=True):
            end = start
            while end < len(labels) and labels[end] == -100:
                end += 1
            for position, targets in key_positions(
                self.processor.tokenizer, ids[start:end], question, objects
            ):
                keys.append((start + position, targets))
        return keys

    def vision_batch(
        self, indices: list[int], grid: int, rng: np.random.Generator | None = None, recolour: float = 0.0
    ) -> dict:
        """Images and patch targets of the vision warm-up; with `recolour` > 0 each object is, with that
        probability (drawn from `rng`), painted in an off-palette colour and its patches get no colour
        target (-100), only shape, size and position."""
        scenes = [self.scenes[i] for i in indices]
        images, targets = [], []
        for scene in scenes:
            fills = (
                D.paint_objects(rng, scene.objects, recolour, keep_named_apart=False) if recolour > 0 else {}
            )
            images.append(D.render(scene.objects, fills=fills))
            target = patch_targets(scene.objects, grid)
            for k in fills:
                target[target[:, 5] == k + 1, 0] = IGNORE_TARGET
            targets.append(target)
        pixel_values = self.processor.image_processor(images, return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixel_values, "targets": torch.stack(targets), "counts": shape_counts(scenes)}


def shape_counts(scenes: list[D.Scene]) -> torch.Tensor:
    """[B, n_shapes]: how many objects of each shape every scene holds."""
    return torch.tensor([[sum(o.shape == shape for o in s.objects) for shape in D.SHAPES] for s in scenes])


@torch.no_grad()
def tower_features(model, processor, scenes: list[D.Scene], batch_size: int = 16) -> torch.Tensor:
    """[n_scenes, 576, D] layer -2 patch features (CLS dropped), what the projector reads. With the tower
    frozen they are the same at every step, so the LLM stages compute them once instead of per batch
    (a quarter of a step's time)."""
    tower = _vision_tower(model)
    chunks = []
    for start in tqdm(range(0, len(scenes), batch_size), desc="tower features", unit="batch", leave=False):
        images = [s.image() for s in scenes[start : start + batch_size]]
        pixel_values = processor.image_processor(images, return_tensors="pt")["pixel_values"]
        hidden = tower(pixel_values, output_hidden_states=True).hidden_states[
            model.config.vision_feature_layer
        ]
        chunks.append(hidden[:, 1:])
    return torch.cat(chunks)


def forward_with_features(model, batch: dict, features: torch.Tensor, hidden_states: bool = False):
    """The model's forward on a text batch whose image tokens take `features` through the projector:
    what `forward(pixel_values=...)` computes when the tower's output is already known."""
    input_ids = batch["input_ids"]
    embeds = model.get_input_embeddings()(input_ids)
    image = model.model.multi_modal_projector(features).to(embeds.dtype)
    slots = (input_ids == model.config.image_token_index).unsqueeze(-1).expand_as(embeds)
    embeds = embeds.masked_scatter(slots, image)
    return model(
        inputs_embeds=embeds,
        attention_mask=batch["attention_mask"],
        labels=batch["labels"],
        output_hidden_states=hidden_states,
    )


def patch_targets(objects, grid: int) -> torch.Tensor:
    """(grid*grid, 6) per patch: colour, shape, size of the object on it (0 = background), grid row, column,
    and the index + 1 of that object in `objects` (0 = background)."""
    patch = D.IMAGE_SIZE // grid
    omap = (
        D.object_map(objects).reshape(grid, patch, grid, patch).transpose(0, 2, 1, 3).reshape(grid * grid, -1)
    )
    colours, shapes = list(D.COLOURS), list(D.SHAPES)
    sizes = list(D.SIZES)
    out = torch.zeros(grid * grid, 6, dtype=torch.long)
    for p in range(grid * grid):
        out[p, 3] = (p // grid) * D.GRID // grid
        out[p, 4] = (p % grid) * D.GRID // grid
        counts = np.bincount(omap[p], minlength=len(objects) + 1)
        k = int(np.argmax(counts[1:])) if len(counts) > 1 else 0
        if counts[1:].size and counts[1 + k] >= 0.2 * omap.shape[1]:
            obj = objects[k]
            out[p, :3] = torch.tensor(
                [colours.index(obj.colour) + 1, shapes.index(obj.shape) + 1, sizes.index(obj.size) + 1]
            )
            out[p, 5] = k + 1
    return out


# --- stages ------------------------------------------------------------------------------------------
def _vision_tower(model):
    inner = getattr(model, "model", None)
    return getattr(inner, "vision_tower", None)


def parameter_groups(
    model, stage: str, head: torch.nn.Module | None, config: TrainConfig, grounding_head=None
) -> list[dict]:
    """Trainable parameters of a stage as optimiser groups with an lr `scale` (the tower is frozen or
    learns slower in the LLM stages; the grounding head trains with the LLM)."""
    if stage == "vision":
        groups = [{"params": list(_vision_tower(model).parameters()) + list(head.parameters()), "scale": 1.0}]
    elif stage == "projector":
        groups = [{"params": list(model.model.multi_modal_projector.parameters()), "scale": 1.0}]
    else:
        tower = _vision_tower(model)
        tower_ids = {id(p) for p in tower.parameters()} if tower is not None else set()
        groups = [
            {"params": [p for p in model.parameters() if id(p) not in tower_ids], "scale": 1.0},
            {
                "params": [p for p in model.parameters() if id(p) in tower_ids],
                "scale": config.vision_lr_scale,
            },
        ]
        if grounding_head is not None and stage != "projector":
            groups.append({"params": list(grounding_head.parameters()), "scale": 1.0})
        groups = [g for g in groups if g["params"] and g["scale"] > 0]
    return groups


@torch.no_grad()
def standardise_projector_input(model, batcher: Batcher, n_images: int = 16) -> None:
    """Data-dependent init of the projector's first layer at the start of stage 1.

    The layer -2 CLIP features are pre-LayerNorm residuals: a common offset (norm ~100) dwarfs the
    per-patch signal (std ~2), so after the LLM's RMSNorm every vision token would look alike and the
    LLM has nothing to attend to. Folding a per-feature standardisation (mean and std over the patches
    of the first training images) into `linear_1` fixes that without changing the architecture.
    """
    tower = _vision_tower(model)
    pixel_values = batcher.processor.image_processor(
        [batcher.scenes[i].image() for i in range(min(n_images, len(batcher.scenes)))], return_tensors="pt"
    )["pixel_values"]
    hidden = tower(pixel_values, output_hidden_states=True).hidden_states[model.config.vision_feature_layer]
    hidden = hidden[:, 1:].reshape(-1, hidden.shape[-1])
    mean, std = hidden.mean(0), hidden.std(0) + 1e-5
    linear = model.model.multi_modal_projector.linear_1
    weight = linear.weight / std
    linear.weight.copy_(weight)
    linear.bias.copy_(linear.bias - weight @ mean)


def vision_loss(model, head, batch, count_weight: float = 0.0) -> torch.Tensor:
    """Per-patch colour / row / column over all patches, plus shape and size of each object from its
    patches' mean feature (and, at a quarter weight, per object patch), plus (`count_weight`) the image's
    number of objects of each shape from every patch: a global property the LLM can then read anywhere."""
    F = torch.nn.functional
    hidden = model.model.vision_tower(batch["pixel_values"], output_hidden_states=True).hidden_states[
        model.config.vision_feature_layer
    ][:, 1:]  # CLS dropped, as the projector sees it
    targets = batch["targets"]
    logits = head(hidden)
    colour, shape, size, row, col = torch.split(logits[..., : sum(HEAD_SIZES)], HEAD_SIZES, dim=-1)
    on_object = targets[..., 5] > 0  # (colour may be IGNORE_TARGET on a recoloured object)
    loss = sum(
        F.cross_entropy(logits.flatten(0, 1), targets[..., k].flatten())
        for k, logits in ((0, colour), (3, row), (4, col))
    )
    loss = loss + 0.25 * (
        F.cross_entropy(shape[on_object], targets[..., 1][on_object])
        + F.cross_entropy(size[on_object], targets[..., 2][on_object])
    )
    pooled, labels = object_means(hidden, targets)
    _, pooled_shape, pooled_size, _, _ = torch.split(head(pooled)[..., : sum(HEAD_SIZES)], HEAD_SIZES, dim=-1)
    loss = loss + 2 * (
        F.cross_entropy(pooled_shape, labels[:, 1]) + F.cross_entropy(pooled_size, labels[:, 2])
    )
    if count_weight:
        counts = logits[..., sum(HEAD_SIZES) :].unflatten(-1, (len(D.SHAPES), COUNT_CLASSES))  # [B, P, 4, 5]
        expected = batch["counts"][:, None, :].expand(-1, counts.shape[1], -1)
        loss = loss + count_weight * F.cross_entropy(counts.flatten(0, 2), expected.flatten())
    return loss / 7.5


def object_means(hidden: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean patch feature of every object ([n_objects, D]) and its patch targets ([n_objects, 6])."""
    n_slots = int(targets[..., 5].max()) + 1
    member = torch.nn.functional.one_hot(targets[..., 5], n_slots)[..., 1:].float()  # [B, P, slots]
    counts = member.sum(1)  # [B, slots]
    sums = torch.einsum("bpo,bpd->bod", member, hidden)
    present = counts > 0
    first = member.argmax(1)  # a patch of each object, for its labels
    labels = torch.gather(targets, 1, first.unsqueeze(-1).expand(-1, -1, targets.shape[-1]))
    return (sums / counts.clamp(min=1).unsqueeze(-1))[present], labels[present]


# --- the run -----------------------------------------------------------------------------------------
def build_model(model_name: str, config: TrainConfig):
    """-> (model, processor) to train. `organism-llava-mini` is built from organism-llava by `llava_mini`."""
    if model_name == "organism-llava":
        return build_organism_llava(config.seed, config.size)
    if model_name == "organism-llava-mini":
        # LLaVA-Mini (C=1, n_fusion=2) sharing the trained organism's tower, projector and LLM; the
        # pre-fusion layers start as copies of its first two LLM layers. Batches use LLaVA-Mini's processor.
        from llava_mini.build import build_from_llava, processor_from_llava

        base, base_processor = _base_organism(config)
        mini = build_from_llava(base, C=1, n_fusion=2, init_prefusion_from_llm=True, seed=config.seed)
        return mini, processor_from_llava(base_processor, mini.config)
    if model_name == "organism-llava-instruct":  # organism-llava fine-tuned on instruction-heavy turns
        return _base_organism(config)
    raise ProbeError(
        f"unknown organism '{model_name}': use organism-llava, organism-llava-mini or organism-llava-instruct"
    )


def _base_organism(config: TrainConfig):
    """The starting point of organism-llava-mini: the shipped organism-llava, or (micro configs, for tests)
    a seeded untrained organism of the config's size."""
    if config.size == OrganismSize():
        from probe.zoo import load

        loaded = load("organism-llava", dtype="float32")
        return loaded.model, loaded.processor
    return build_organism_llava(config.seed, config.size)


def default_config(model_name: str) -> TrainConfig:
    config = TrainConfig()
    if model_name == "organism-llava-mini":  # starts from the trained organism: stage 2 only
        config.stages = (("full", 700),)  # ~0.8 s/step on 2 cores with 12 questions per image: ~9 min
    if model_name == "organism-llava-instruct":  # starts from the trained organism
        config.stages = (("instruct", 400),)
        config.lr = {**config.lr, "instruct": 1e-3}
    return config


def train(
    model_name: str,
    out: Path,
    config: TrainConfig | None = None,
    stop_after: int | None = None,
    progress: bool = True,
) -> Path | None:
    """Train (or resume) into `out`; returns `out/final` when done, None when stopped by `stop_after`."""
    config = config or default_config(model_name)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    final = out / "final"
    if (final / "config.json").is_file():
        return final
    torch.set_num_threads(config.threads)
    settings = {"model": model_name, "config": config.to_json()}
    settings_file = out / "train.json"
    if settings_file.is_file():
        previous = json.loads(settings_file.read_text())
        if previous.get("settings") != json.loads(json.dumps(settings)):
            raise ProbeError(f"{out} holds a run with different settings; use another --out or delete it")
    else:
        settings_file.write_text(json.dumps({"settings": settings}, indent=2))

    model, processor = build_model(model_name, config)
    model.float().train()
    scenes = D.make_split(config.seed, "train", config.n_train)
    head = None
    if any(s == "vision" for s, _ in config.stages):
        torch.manual_seed(config.seed + 1)
        head = torch.nn.Linear(
            model.config.vision_config.hidden_size, sum(HEAD_SIZES) + len(D.SHAPES) * COUNT_CLASSES
        )
    grounding_head = None
    if uses_grounding(model, config):
        torch.manual_seed(config.seed + 2)
        grounding_head = torch.nn.Linear(model.config.text_config.hidden_size, sum(TARGET_SIZES))
    stages = organism_stages(model, processor, head, scenes, config, grounding_head)
    extra = {"head": head, "grounding_head": grounding_head}
    state = run_stages(
        model,
        stages,
        out,
        config.schedule(),
        extra_modules={k: m for k, m in extra.items() if m is not None} or None,
        stop_after=stop_after,
        progress=progress,
        desc=model_name,
    )
    if state is None:
        return None
    meta = json.loads(settings_file.read_text())
    meta["train_seconds"] = round(state["elapsed_s"], 1)
    settings_file.write_text(json.dumps(meta, indent=2))
    return save_trained(model.eval(), processor, final, extra={"train.json": settings_file})


def uses_grounding(model, config: TrainConfig) -> bool:
    """Grounding targets need the LLM's own sequence: the LLaVA-v1.5 organism on cached tower features."""
    grounded = any(name in GROUNDED_STAGES for name, _ in config.stages)
    return config.grounding_weight > 0 and grounded and _cached_features(model, config)


def _cached_features(model, config: TrainConfig) -> bool:
    return config.vision_lr_scale == 0 and hasattr(getattr(model, "model", None), "multi_modal_projector")


def organism_stages(
    model, processor, head, scenes: list[D.Scene], config: TrainConfig, grounding_head=None
) -> list[Stage]:
    """`config.stages` as loop stages: what each trains, on which batches, with which loss.

    With a frozen tower (`vision_lr_scale == 0`) a LLaVA-v1.5 organism trains its projector and LLM on
    tower features computed once per training image (at a stage's first step, so a resumed run computes
    the same ones again from the checkpointed tower)."""
    vision_config = getattr(model.config, "vision_config", None)
    grid = vision_config.image_size // vision_config.patch_size if vision_config is not None else 24
    cached = _cached_features(model, config)
    text_scenes = {
        "easy": D.make_split(config.seed, "train", config.n_easy, EASY_OBJECTS),
        "projector": scenes,
        "full": scenes,
        "instruct": scenes,
        # stage `full` again on the same scenes with some objects painted off-palette (`D.recoloured`,
        # fixed per scene so that the tower's features are still computed once per image)
        "recolour": [
            D.recoloured(s, np.random.default_rng([config.seed, RECOLOUR_STREAM, s.index]), config.recolour)
            for s in scenes
        ],
    }
    batchers = {
        name: Batcher(
            processor,
            group,
            config.questions_per_image,
            grid * grid if cached else None,
            instruction_questions
            if name == "instruct"
            else functools.partial(D.sample_questions, type_weights=config.type_weights),
            grounding=grounding_head is not None and name in GROUNDED_STAGES,
        )
        for name, group in text_scenes.items()
    }
    features: dict[int, torch.Tensor] = {}
    names = [name for name, _ in config.stages]
    # the projector's data-dependent init opens the first stage after the tower's warm-up
    first_text = names[names.index("vision") + 1] if "vision" in names and names[-1] != "vision" else None

    def make(stage: str, n_steps: int) -> Stage:
        size = config.vision_batch_size if stage == "vision" else config.batch_size
        batcher = batchers.get(stage, batchers["full"])

        def loss(rng):
            pool = scenes if stage == "vision" else batcher.scenes
            indices = [int(i) for i in rng.choice(len(pool), size=size, replace=False)]
            if stage == "vision":
                vision = Batcher(processor, scenes)
                batch = vision.vision_batch(indices, grid, rng, config.recolour)
                return vision_loss(model, head, batch, config.count_weight)
            batch = batcher.text_batch(indices, rng)
            if not cached:
                return model(**batch).loss
            group = id(batcher.scenes)  # stages on the same scenes share their features
            if group not in features:
                features.clear()  # one scene set's features in memory at a time
                features[group] = tower_features(model, processor, batcher.scenes)
            keys = batch.pop("grounding", None)
            out = forward_with_features(model, batch, features[group][indices], keys is not None)
            if keys is None:
                return out.loss
            return out.loss + config.grounding_weight * grounding_loss(
                grounding_head, out.hidden_states[-1], keys
            )

        start = (
            (lambda: standardise_projector_input(model, Batcher(processor, scenes)))
            if stage == first_text
            else None
        )
        return Stage(
            name=stage,
            steps=n_steps,
            lr=config.lr[stage],
            groups=lambda: parameter_groups(model, stage, head, config, grounding_head),
            loss=loss,
            start=start,
        )

    return [make(stage, n) for stage, n in config.stages]
