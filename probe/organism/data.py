"""Seeded synthetic VQA for model organisms: questions that can only be answered by looking.

Each 336 x 336 image holds 2-4 flat shapes (circle, square, triangle, star) in six colours, big or
small, one per cell of a 3 x 3 grid (one cell = 112 px = 8 x 8 patches of 14 px). Questions about
colour, shape, count, position, size and left/right relations have single-word answers.

Splits: `train`, `val`, `test` share one distribution; `heldout` asks about objects whose colour x
shape pair never occurs in the other splits (`HELD_OUT_PAIRS`), so it measures composition rather
than memorised pairs. Every image is drawn from its own generator seeded by (seed, split, index), so
an image does not depend on how many others are asked for, and a split is the same on every machine.

Written in the `--dataset` JSONL format: {"image": "images/<split>/<id>.png", "prompt", "answer", "id",
"type", "split", "objects"} with image paths relative to the JSONL file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from probe.results import atomic_write

IMAGE_SIZE = 336
GRID = 3
CELL = IMAGE_SIZE // GRID
BACKGROUND = (255, 255, 255)
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (235, 200, 20),
    "purple": (140, 50, 180),
    "orange": (250, 130, 20),
}
SHAPES = ("circle", "square", "triangle", "star")
SIZES = {"small": 24, "big": 42}  # half-extent in px
ROWS = ("top", "middle", "bottom")
COLS = ("left", "centre", "right")
NUMBERS = ("zero", "one", "two", "three", "four")
# the colour of an object painted in an off-palette fill (`recoloured`): no colour word names it, so no
# question asks for or refers to its colour; count and shape_at questions still cover it
UNNAMED = "unnamed"
HELD_OUT_PAIRS = frozenset({("red", "triangle"), ("blue", "square"), ("green", "star"), ("yellow", "circle")})
SPLITS = ("train", "val", "test", "heldout")
SPLIT_IDS = {name: k for k, name in enumerate(SPLITS)}
QUESTION_TYPES = ("colour_of_shape", "shape_of_colour", "count", "shape_at", "colour_at", "left_of", "size")
ANSWERS: dict[str, tuple[str, ...]] = {
    "colour_of_shape": tuple(COLOURS),
    "shape_of_colour": SHAPES,
    "count": NUMBERS,
    "shape_at": SHAPES,
    "colour_at": tuple(COLOURS),
    "left_of": ("yes", "no"),
    "size": ("big", "small"),
}
DEFAULT_SIZES = {"train": 6000, "val": 200, "test": 300, "heldout": 300}
QUESTIONS_PER_IMAGE = {"train": 6, "val": 2, "test": 2, "heldout": 2}
FORMAT_VERSION = "1"


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str
    row: int
    col: int
    dx: int = 0
    dy: int = 0

    @property
    def centre(self) -> tuple[int, int]:
        return CELL * self.col + CELL // 2 + self.dx, CELL * self.row + CELL // 2 + self.dy


@dataclass(frozen=True)
class Question:
    type: str
    prompt: str
    answer: str
    about: tuple[int, ...] = ()  # indices of the objects it names (training's grounding targets)


def position_name(row: int, col: int) -> str:
    """3 x 3 cell -> 'top left', 'top', 'centre', 'bottom right', ..."""
    if row == 1 and col == 1:
        return "centre"
    if row == 1:
        return COLS[col]
    if col == 1:
        return ROWS[row]
    return f"{ROWS[row]} {COLS[col]}"


# --- drawing ---------------------------------------------------------------------------------------
def _star(cx: int, cy: int, r: int) -> list[tuple[float, float]]:
    points = []
    for k in range(10):
        radius = r if k % 2 == 0 else r * 0.45
        angle = -np.pi / 2 + k * np.pi / 5
        points.append((cx + radius * np.cos(angle), cy + radius * np.sin(angle)))
    return points


def _draw(draw: ImageDraw.ImageDraw, obj: Obj, fill) -> None:
    cx, cy = obj.centre
    r = SIZES[obj.size]
    if obj.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif obj.shape == "square":
        s = int(round(r * 0.85))
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=fill)
    elif obj.shape == "star":
        draw.polygon(_star(cx, cy, r), fill=fill)
    else:
        raise ValueError(obj.shape)


def render(
    objects: list[Obj] | tuple[Obj, ...],
    blank: bool = False,
    fills: dict[int, tuple[int, int, int]] | None = None,
) -> Image.Image:
    """Draw the scene (no anti-aliasing: every shape pixel has exactly its colour's RGB value).

    `fills` ({object index: RGB}) paints some objects in other colours than their palette one
    (`paint_objects`: the vision warm-up and stage `recolour`); stored splits never use it."""
    img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND)
    if not blank:
        draw = ImageDraw.Draw(img)
        fills = fills or {}
        for k, obj in enumerate(objects):
            _draw(draw, obj, fills[k] if k in fills else COLOURS[obj.colour])
    return img


def nearest_colour(rgb: tuple[int, int, int]) -> str:
    """The palette colour closest to `rgb` (Euclidean in RGB)."""
    return min(COLOURS, key=lambda c: sum((a - b) ** 2 for a, b in zip(COLOURS[c], rgb, strict=True)))


def off_palette_colour(
    rng: np.random.Generator, shape: str, avoid: frozenset[str] = frozenset()
) -> tuple[int, int, int]:
    """A random RGB fill for a `shape` that stands out from the white background (one channel at least
    100 below 255) and is not close to any held-out pair's colour of that shape (its nearest palette
    colour is another one), so shapes in new colours teach the tower colour-invariant shape features
    without ever showing a held-out colour x shape pair. Light fills are allowed on purpose: the palette's
    yellow and orange have a channel above 230, and a tower that only ever saw dark fills recognised no
    yellow circle. `avoid`: palette colours the fill must not be nearest to either (the named colours of
    the other objects in a scene, so that "the red object" stays unique)."""
    excluded = {colour for colour, held_shape in HELD_OUT_PAIRS if held_shape == shape} | set(avoid)
    while True:
        rgb = tuple(int(v) for v in rng.integers(0, 256, size=3))
        if min(rgb) <= 155 and nearest_colour(rgb) not in excluded:
            return rgb


def object_map(objects: list[Obj] | tuple[Obj, ...]) -> np.ndarray:
    """(336, 336) uint8 map: 0 = background, k + 1 = pixel of objects[k] (same geometry as `render`)."""
    img = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
    draw = ImageDraw.Draw(img)
    for k, obj in enumerate(objects):
        _draw(draw, obj, k + 1)
    return np.asarray(img)


def blank_image() -> Image.Image:
    return render((), blank=True)


# --- scenes and questions --------------------------------------------------------------------------
def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLIT_IDS[split], index])


OBJECTS_PER_SCENE = (2, 4)


def draw_scene(
    rng: np.random.Generator, split: str, n_objects: tuple[int, int] = OBJECTS_PER_SCENE
) -> list[Obj]:
    """n_objects[0]..n_objects[1] objects in distinct cells (2-4 in every stored split); `heldout` scenes
    contain at least one held-out pair, others none."""
    while True:
        n = int(rng.integers(n_objects[0], n_objects[1] + 1))
        cells = rng.choice(GRID * GRID, size=n, replace=False)
        objects = []
        for cell in cells:
            objects.append(
                Obj(
                    shape=str(rng.choice(SHAPES)),
                    colour=str(rng.choice(list(COLOURS))),
                    size=str(rng.choice(list(SIZES))),
                    row=int(cell) // GRID,
                    col=int(cell) % GRID,
                    dx=int(rng.integers(-8, 9)),
                    dy=int(rng.integers(-8, 9)),
                )
            )
        held = [(o.colour, o.shape) in HELD_OUT_PAIRS for o in objects]
        if (split == "heldout") == any(held):
            return objects


def all_questions(objects: list[Obj]) -> dict[str, list[tuple[Question, tuple[int, ...]]]]:
    """Every askable question by type, each with the indices of the objects it is about."""
    by_shape = {s: [i for i, o in enumerate(objects) if o.shape == s] for s in SHAPES}
    by_colour = {c: [i for i, o in enumerate(objects) if o.colour == c] for c in COLOURS}
    out: dict[str, list[tuple[Question, tuple[int, ...]]]] = {t: [] for t in QUESTION_TYPES}
    for shape, idx in by_shape.items():
        if len(idx) == 1 and objects[idx[0]].colour != UNNAMED:
            o = objects[idx[0]]
            out["colour_of_shape"].append(
                (Question("colour_of_shape", f"What colour is the {shape}?", o.colour), (idx[0],))
            )
        # present shapes weighted 3:1 so that "zero" does not dominate the count answers
        count = (Question("count", f"How many {shape}s are there?", NUMBERS[len(idx)]), tuple(idx))
        out["count"].extend([count] * (3 if idx else 1))
    for colour, idx in by_colour.items():
        if len(idx) == 1:
            o = objects[idx[0]]
            out["shape_of_colour"].append(
                (Question("shape_of_colour", f"What shape is the {colour} object?", o.shape), (idx[0],))
            )
    for i, o in enumerate(objects):
        where = position_name(o.row, o.col)
        out["shape_at"].append((Question("shape_at", f"What shape is in the {where}?", o.shape), (i,)))
        if o.colour == UNNAMED:
            continue
        out["colour_at"].append(
            (Question("colour_at", f"What colour is the shape in the {where}?", o.colour), (i,))
        )
        pair = [j for j, p in enumerate(objects) if p.colour == o.colour and p.shape == o.shape]
        if len(pair) == 1:
            out["size"].append((Question("size", f"Is the {o.colour} {o.shape} big or small?", o.size), (i,)))
    unique = [idx[0] for idx in by_colour.values() if len(idx) == 1]
    for i in unique:
        for j in unique:
            a, b = objects[i], objects[j]
            if i != j and a.col != b.col:
                answer = "yes" if a.col < b.col else "no"
                out["left_of"].append(
                    (
                        Question("left_of", f"Is the {a.colour} shape left of the {b.colour} one?", answer),
                        (i, j),
                    )
                )
    return {t: [(replace(q, about=who), who) for q, who in qs] for t, qs in out.items()}


def draw_questions(rng: np.random.Generator, objects: list[Obj], k: int, split: str) -> list[Question]:
    """Up to k questions of distinct types (types uniformly shuffled, so every type is balanced)."""
    candidates = all_questions(objects)
    if split == "heldout":  # only questions about a held-out colour x shape object
        held = {i for i, o in enumerate(objects) if (o.colour, o.shape) in HELD_OUT_PAIRS}
        candidates = {t: [(q, who) for q, who in qs if held & set(who)] for t, qs in candidates.items()}
    chosen = []
    for t in rng.permutation(len(QUESTION_TYPES)):
        options = candidates[QUESTION_TYPES[int(t)]]
        if options and len(chosen) < k:
            chosen.append(options[int(rng.integers(len(options)))][0])
    return chosen


def sample_questions(
    rng: np.random.Generator, objects, k: int, type_weights: dict[str, float] | None = None
) -> list[Question]:
    """k distinct questions about `objects` for one training conversation, drawn afresh at every step:
    a type among the askable ones (uniformly, or in proportion to `type_weights`, default 1), then one of
    its questions. A scene's stored questions are a fixed handful; drawing anew gives the trainer every
    question a scene affords, and weights give the harder types (left_of) more of the answers."""
    candidates = all_questions(list(objects))
    types = [t for t in QUESTION_TYPES if candidates[t]]
    weights = np.array([(type_weights or {}).get(t, 1.0) for t in types], dtype=float)
    seen: set[str] = set()
    chosen: list[Question] = []
    for _ in range(3 * k):
        if len(chosen) == k:
            break
        if type_weights:
            options = candidates[types[int(rng.choice(len(types), p=weights / weights.sum()))]]
        else:  # the plain draw, kept bit-equal to earlier recipes'
            options = candidates[types[int(rng.integers(len(types)))]]
        question = options[int(rng.integers(len(options)))][0]
        if question.prompt not in seen:
            seen.add(question.prompt)
            chosen.append(question)
    return chosen


@dataclass(frozen=True)
class Scene:
    split: str
    index: int
    objects: tuple[Obj, ...]
    questions: tuple[Question, ...]
    fills: tuple[tuple[int, tuple[int, int, int]], ...] = ()  # (object index, RGB) of UNNAMED objects

    @property
    def image_id(self) -> str:
        return f"{self.split}-{self.index:05d}"

    def image(self) -> Image.Image:
        return render(self.objects, fills=dict(self.fills))


def recoloured(scene: Scene, rng: np.random.Generator, fraction: float) -> Scene:
    """The scene with each object, with probability `fraction`, painted in an off-palette fill and its
    colour UNNAMED (questions about it then never use a colour word; `sample_questions` draws them).

    Why: the LLM stages otherwise only ever see each shape in its training colours and learn to read shape
    through colour-specific features (shape_at on a held-out red triangle fell to chance although a linear
    probe finds the triangle in the tower's features); shapes in any colour teach a colour-blind readout.
    The fills avoid held-out pairs (`off_palette_colour`) and the scene's other colours."""
    fills = paint_objects(rng, scene.objects, fraction)
    objects = tuple(replace(o, colour=UNNAMED) if k in fills else o for k, o in enumerate(scene.objects))
    return replace(scene, objects=objects, questions=(), fills=tuple(fills.items()))


def paint_objects(
    rng: np.random.Generator, objects, fraction: float, keep_named_apart: bool = True
) -> dict[int, tuple[int, int, int]]:
    """{object index: off-palette RGB} for each object chosen with probability `fraction` (one uniform
    draw per object, then the fills in object order). `keep_named_apart`: a fill is never nearest to the
    colour of an object left unpainted (`recoloured`: those colours are still named in questions); the
    vision warm-up, which names no colour of a painted object, passes False."""
    draws = rng.random(len(objects))
    named = frozenset(o.colour for k, o in enumerate(objects) if draws[k] >= fraction and keep_named_apart)
    return {
        k: off_palette_colour(rng, o.shape, avoid=named) for k, o in enumerate(objects) if draws[k] < fraction
    }


def make_scene(
    seed: int,
    split: str,
    index: int,
    k: int | None = None,
    n_objects: tuple[int, int] = OBJECTS_PER_SCENE,
) -> Scene:
    rng = image_rng(seed, split, index)
    objects = draw_scene(rng, split, n_objects)
    questions = draw_questions(rng, objects, QUESTIONS_PER_IMAGE[split] if k is None else k, split)
    return Scene(split=split, index=index, objects=tuple(objects), questions=tuple(questions))


def make_split(seed: int, split: str, n: int, n_objects: tuple[int, int] = OBJECTS_PER_SCENE) -> list[Scene]:
    """`n_objects` other than 2-4 is for training curricula only (the eval splits keep 2-4)."""
    if split not in SPLIT_IDS:
        raise ValueError(f"unknown split {split}")
    return [make_scene(seed, split, i, n_objects=n_objects) for i in range(n)]


def records(scene: Scene) -> list[dict]:
    """The scene's JSONL lines (one per question), image path relative to the JSONL file."""
    objects = [asdict(o) for o in scene.objects]
    return [
        {
            "id": f"{scene.image_id}-q{k}",
            "image": f"images/{scene.split}/{scene.image_id}.png",
            "prompt": q.prompt,
            "answer": q.answer,
            "type": q.type,
            "split": scene.split,
            "objects": objects,
        }
        for k, q in enumerate(scene.questions)
    ]


def write_split(out: Path, seed: int, split: str, n: int, progress: bool = False) -> Path:
    """Write `<out>/<split>.jsonl` and `<out>/images/<split>/*.png`; the JSONL is renamed in last."""
    out = Path(out)
    image_dir = out / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    scenes = make_split(seed, split, n)
    iterator = scenes
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(scenes, desc=f"{split}", unit="img")
    lines = []
    for scene in iterator:
        path = image_dir / f"{scene.image_id}.png"
        if not path.is_file():
            atomic_write(path, lambda p, scene=scene: scene.image().save(p, format="PNG"))
        lines.extend(json.dumps(r, sort_keys=True) for r in records(scene))
    target = out / f"{split}.jsonl"
    atomic_write(target, lambda p: p.write_text("\n".join(lines) + "\n", encoding="utf-8"))
    return target


def write_dataset(
    out: Path, seed: int = 0, sizes: dict[str, int] | None = None, progress: bool = False
) -> dict:
    sizes = {**DEFAULT_SIZES, **(sizes or {})}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {split: str(write_split(out, seed, split, n, progress)) for split, n in sizes.items() if n > 0}
    meta = {
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "sizes": sizes,
        "held_out_pairs": sorted(HELD_OUT_PAIRS),
    }
    atomic_write(
        out / "dataset.json", lambda p: p.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    )
    return paths


def split_digest(jsonl: Path) -> str:
    """sha256 over the JSONL text and the decoded pixels of every image (PNG bytes may vary by zlib)."""
    jsonl = Path(jsonl)
    h = hashlib.sha256(jsonl.read_bytes())
    seen = set()
    for line in jsonl.read_text().splitlines():
        image = json.loads(line)["image"]
        if image in seen:
            continue
        seen.add(image)
        with Image.open(jsonl.parent / image) as img:
            h.update(np.asarray(img.convert("RGB")).tobytes())
    return h.hexdigest()


def ensure_split(split: str, seed: int = 0, n: int | None = None, root: Path | None = None) -> Path:
    """The split's JSONL under $PROBE_HOME/organism-data/seed<seed>, generated on first use."""
    from probe.zoo import probe_home

    n = DEFAULT_SIZES[split] if n is None else n
    root = (
        Path(root)
        if root is not None
        else probe_home() / "organism-data" / f"v{FORMAT_VERSION}-seed{seed}-n{n}"
    )
    target = root / f"{split}.jsonl"
    if not target.is_file():
        write_split(root, seed, split, n)
    return target


def vocabulary_corpus() -> list[str]:
    """Every question template and answer word, for the tokenizer's training corpus."""
    corpus = []
    for colour in COLOURS:
        for shape in SHAPES:
            corpus.append(
                f"What colour is the {shape}? What shape is the {colour} object? How many {shape}s are there?"
            )
            corpus.append(
                f"Is the {colour} {shape} big or small? Is the {colour} shape left of the {colour} one?"
            )
    for row in range(GRID):
        for col in range(GRID):
            where = position_name(row, col)
            corpus.append(f"What shape is in the {where}? What colour is the shape in the {where}?")
    answers = sorted({a for values in ANSWERS.values() for a in values})
    corpus.append(" ".join(answers))
    corpus.extend(f"ASSISTANT: {a}" for a in answers)
    return corpus
