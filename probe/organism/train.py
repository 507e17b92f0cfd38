"""LLaVA-style training of model organisms on the synthetic VQA, on CPU, resumable and deterministic.

Stages (each a list of steps; the run is one global step counter):
  0. `vision`    pretraining of the random-initialised CLIP tower (LLaVA starts from a pretrained CLIP;
                 ours has none, so it gets this warm-up instead). A linear probe on the layer -2 patch
                 features (the ones the projector reads) predicts each patch's colour and grid cell, and
                 from the features averaged over each object's patches, the object's shape and size.
                 The pooled targets matter: the inside of a circle and of a square look the same, so
                 shape is only in the edges, and a per-patch shape target asks for the impossible
                 (it plateaued at ~50 % per patch) while the pooled one teaches the tower to put shape
                 evidence where attention can sum it. The probe head is thrown away.
  1. `projector` LLaVA stage 1: only the multimodal projector trains.
  2. `easy`      LLaVA stage 2 on scenes of 1-2 objects: a curriculum step. With one object every question
                 can be answered from the average of the vision tokens, so the LLM first learns to read
                 shape / size / colour features before it has to find the object they belong to.
  3. `full`      LLaVA stage 2: end to end, vision tower included (it was random-initialised).
Stages 1-3 are teacher-forced through the model's real `forward(input_ids, pixel_values,
attention_mask, labels)` with the loss on answer tokens (and their `</s>`) only. Each training image is
one multi-turn conversation over its questions (as in LLaVA's instruction data), so the 576 vision
tokens are paid once for several answers. Any model with that forward can be trained (stage `full`),
which is how `organism-llava-mini` is trained.

The loop, its schedule, checkpoints (safetensors) and resume are `probe.training.loop`'s, shared with
`probe sweep`: killing a run and rerunning the same command continues from the last checkpoint and ends
with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from probe.errors import ProbeError
from probe.organism import data as D
from probe.organism.model import MICRO, OrganismSize, build_organism_llava
from probe.training.checkpoint import save_trained
from probe.training.loop import Schedule, Stage, run_stages

EASY_OBJECTS = (1, 2)  # objects per scene in stage `easy`
# vision warm-up probe: colour, shape, size (each + background), grid row, grid column
HEAD_SIZES = [len(D.COLOURS) + 1, len(D.SHAPES) + 1, len(D.SIZES) + 1, D.GRID, D.GRID]


@dataclass
class TrainConfig:
    seed: int = 0
    n_train: int = 6000
    batch_size: int = 8
    vision_batch_size: int = 16
    stages: tuple[tuple[str, int], ...] = (("vision", 600), ("projector", 100), ("easy", 400), ("full", 900))
    lr: dict = field(default_factory=lambda: {"vision": 2e-3, "projector": 1e-3, "easy": 1e-3, "full": 1e-3})
    warmup: int = 30
    vision_lr_scale: float = 0.2  # the vision tower trains in stages `easy` / `full` too, 5x slower
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
        )

    def to_json(self) -> dict:
        d = asdict(self)
        d["stages"] = [list(s) for s in self.stages]
        return d


def micro_config(seed: int = 0) -> TrainConfig:
    """A few steps of every stage on a micro model: for tests of determinism and resume."""
    return TrainConfig(
        seed=seed,
        n_train=16,
        batch_size=2,
        vision_batch_size=2,
        stages=(("vision", 2), ("projector", 2), ("easy", 1), ("full", 3)),
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
    processor, image, turns: list[tuple[str, str]]
) -> tuple[list[int], list[int], torch.Tensor]:
    """(input ids, labels, pixel values) of a conversation about `image` over (question, answer) turns, in
    the processor's chat template; labels on answer tokens and their </s> only. The image goes in the
    first turn. LLaVA-v1.5: 576 expanded image tokens, pixel values [3, H, W]; LLaVA-Mini: C^2 placeholder
    ids (-200) per image, pixel values [T=1, V=1, 3, H, W] (its processor's own layout)."""
    tokenizer = processor.tokenizer
    ids: list[int] = []
    labels: list[int] = []
    pixel_values = None
    for k, (question, answer) in enumerate(turns):
        if k == 0:
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
    pixel_values = torch.stack([r[2] for r in rows])
    return {"input_ids": input_ids, "pixel_values": pixel_values, "attention_mask": mask, "labels": labels}


class Batcher:
    """Turns scenes into model inputs with the model's own processor and chat template."""

    def __init__(self, processor, scenes: list[D.Scene]) -> None:
        self.processor = processor
        self.scenes = scenes

    def conversation(self, scene: D.Scene, order: list[int]) -> tuple[list[int], list[int], torch.Tensor]:
        """-> (input ids, labels, pixel values) of one multi-turn conversation; labels on answers + </s>."""
        turns = [(scene.questions[i].prompt, scene.questions[i].answer) for i in order]
        return encode_dialogue(self.processor, scene.image(), turns)

    def text_batch(self, indices: list[int], rng: np.random.Generator) -> dict:
        rows = []
        for i in indices:
            scene = self.scenes[i]
            rows.append(self.conversation(scene, list(rng.permutation(len(scene.questions)))))
        return pad_batch(rows, self.processor.tokenizer.pad_token_id)

    def vision_batch(self, indices: list[int], grid: int) -> dict:
        scenes = [self.scenes[i] for i in indices]
        pixel_values = self.processor.image_processor([s.image() for s in scenes], return_tensors="pt")[
            "pixel_values"
        ]
        targets = torch.stack([patch_targets(s.objects, grid) for s in scenes])
        return {"pixel_values": pixel_values, "targets": targets}


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


def parameter_groups(model, stage: str, head: torch.nn.Module | None, config: TrainConfig) -> list[dict]:
    """Trainable parameters of a stage as optimiser groups with an lr `scale` (the tower learns slower
    in `easy` / `full`)."""
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
        groups = [g for g in groups if g["params"]]
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


def vision_loss(model, head, batch) -> torch.Tensor:
    """Per-patch colour / row / column over all patches, plus shape and size of each object from its
    patches' mean feature (and, at a quarter weight, per object patch)."""
    F = torch.nn.functional
    hidden = model.model.vision_tower(batch["pixel_values"], output_hidden_states=True).hidden_states[
        model.config.vision_feature_layer
    ][:, 1:]  # CLS dropped, as the projector sees it
    targets = batch["targets"]
    colour, shape, size, row, col = torch.split(head(hidden), HEAD_SIZES, dim=-1)
    on_object = targets[..., 0] > 0
    loss = sum(
        F.cross_entropy(logits.flatten(0, 1), targets[..., k].flatten())
        for k, logits in ((0, colour), (3, row), (4, col))
    )
    loss = loss + 0.25 * (
        F.cross_entropy(shape[on_object], targets[..., 1][on_object])
        + F.cross_entropy(size[on_object], targets[..., 2][on_object])
    )
    pooled, labels = object_means(hidden, targets)
    _, pooled_shape, pooled_size, _, _ = torch.split(head(pooled), HEAD_SIZES, dim=-1)
    loss = loss + 2 * (
        F.cross_entropy(pooled_shape, labels[:, 1]) + F.cross_entropy(pooled_size, labels[:, 2])
    )
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
    raise ProbeError(f"unknown organism '{model_name}': use organism-llava or organism-llava-mini")


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
        config.stages = (("full", 800),)  # ~0.7-0.85 s/step on 2 cores: ~10 min
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
        head = torch.nn.Linear(model.config.vision_config.hidden_size, sum(HEAD_SIZES))
    stages = organism_stages(model, processor, head, scenes, config)
    state = run_stages(
        model,
        stages,
        out,
        config.schedule(),
        extra_modules={"head": head} if head is not None else None,
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


def organism_stages(model, processor, head, scenes: list[D.Scene], config: TrainConfig) -> list[Stage]:
    """`config.stages` as loop stages: what each trains, on which batches, with which loss."""
    batcher = Batcher(processor, scenes)
    batchers = {"easy": Batcher(processor, D.make_split(config.seed, "train", config.n_train, EASY_OBJECTS))}
    vision_config = getattr(model.config, "vision_config", None)
    grid = vision_config.image_size // vision_config.patch_size if vision_config is not None else 24

    def make(stage: str, n_steps: int) -> Stage:
        size = config.vision_batch_size if stage == "vision" else config.batch_size

        def loss(rng):
            indices = [int(i) for i in rng.choice(len(scenes), size=size, replace=False)]
            if stage == "vision":
                return vision_loss(model, head, batcher.vision_batch(indices, grid))
            return model(**batchers.get(stage, batcher).text_batch(indices, rng)).loss

        start = (lambda: standardise_projector_input(model, batcher)) if stage == "projector" else None
        return Stage(
            name=stage,
            steps=n_steps,
            lr=config.lr[stage],
            groups=lambda: parameter_groups(model, stage, head, config),
            loss=loss,
            start=start,
        )

    return [make(stage, n) for stage, n in config.stages]
