"""Synthetic vision-language task families for the miniature zoo: seeded images, Q/A, MC and open splits.

Five families, each with exactly four single-word answers, drawn on a 32×32 black canvas (see
:mod:`uqmerge.zoo.images`), sized for a 2-layer LLaVA whose CLIP sees 4×4 patches of 8 px:

| family     | image                                                 | answers                      |
|------------|-------------------------------------------------------|------------------------------|
| ``colour`` | one shape, 10-16 px, anywhere, at 45-100 % brightness | red, orange, yellow, green   |
| ``shape``  | one shape, 14-16 px, centred on a patch corner ±1 px  | circle, square, triangle, cross |
| ``count``  | 1-4 small squares, each inside its own 8 px patch     | one, two, three, four        |
| ``position`` | one shape, 7-10 px, near the left/right/top/bottom edge | left, right, top, bottom  |
| ``size``   | one shape whose edge is 5-6, 10-11, 15-16 or 21-23 px | small, medium, large, huge   |

Splits (sizes in :data:`DEFAULT_SPLIT_SIZES`, per family):

- ``train``: instruction-style pairs (question, one-word answer) in the training phrasings;
- ``held_in``: multiple choice in the training phrasings, written as uqmerge's MC JSONL (docs/uq.md): the four
  answers of the family, then "I don't know" and "None of the above" (the paper's UQ format). The UQ
  sets and MC accuracy use this split;
- ``held_out``: open-ended, exact-match answers, asked in questions never seen in training but made of
  training words (each family's question cores in a new frame; see :data:`QUESTION_CORES`).

Option order: by default (``shuffle_options=False``) the four real options are the family's answers
in a fixed order, so a letter always means the same answer within a family. A prototype showed a
2-layer LM within the CPU budget stays at chance (MI ≡ 0) when options are shuffled per item: it
cannot learn to read the options. ``shuffle_options=True`` permutes the four real options per item
(seeded), for models that can read them; the two extra options always stay last.

Determinism: every item draws from ``random.Random`` seeded by
``sha256(f"{seed}:{family}:{split}:{i}")`` (never Python's salted ``hash()``), so the same seed gives
byte-identical PNGs and JSONL on every run.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from uqmerge.core.errors import ConfigError, DataError
from uqmerge.zoo.images import COLOURS, IMAGE_SIZE, SHAPES, draw_shape, new_canvas

FAMILIES: tuple[str, ...] = ("colour", "shape", "count", "position", "size")
SPLITS: tuple[str, ...] = ("train", "held_in", "held_out")
DEFAULT_SPLIT_SIZES: dict[str, int] = {"train": 4096, "held_in": 100, "held_out": 100}
EXTRA_OPTIONS: tuple[str, ...] = ("I don't know", "None of the above")

COUNT_WORDS: tuple[str, ...] = ("one", "two", "three", "four")
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom")
COLOUR_BRIGHTNESS = 0.45
"""Lowest brightness of a colour-family shape: with saturated colours alone a base learns colour at once."""
SIZES: dict[str, tuple[int, int]] = {"small": (5, 6), "medium": (10, 11), "large": (15, 16), "huge": (21, 23)}

ANSWERS: dict[str, tuple[str, ...]] = {
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "count": COUNT_WORDS,
    "position": POSITIONS,
    "size": tuple(SIZES),
}

# Each family's question cores carry its cue words. Training asks every core in frames shared by all families,
# so no word outside a core tells the families apart; held-out asks each core in a frame no training question
# uses. Every held-out word occurs in training questions: with a word-level tokenizer an unseen word has an
# untrained embedding, and a prototype whose held-out questions had such words, or ended like another family's
# training questions, measured phrasing luck instead of skill (asked "in which part of the image is the
# object?", its base answered "triangle"). ``tests/test_zoo_tasks.py`` checks both properties.
QUESTION_CORES: dict[str, tuple[str, ...]] = {
    "colour": ("what colour is the shape", "what is the colour of the shape", "which colour is the shape"),
    "shape": ("what shape is this", "what is the shape", "which shape is it"),
    "count": ("how many shapes are there", "what is the number of shapes", "how many shapes are shown"),
    "position": ("where is the shape", "which side is the shape on", "on which side is the shape"),
    "size": ("how big is the shape", "what size is the shape", "which size is the shape"),
}
# Six training frames, not two: a 2-layer LM trained on two frames answered a third, unseen frame by luck of the
# seed (zoo v2's position specialists: 100 % training-phrased, 64-67 % held-out on some seeds).
TRAIN_FRAMES: tuple[str, ...] = (
    "{}?",
    "{} in the image?",
    "look at the image. {}?",
    "{}? answer with one word.",
    "question: {}?",
    "tell me {}.",
)
HELD_OUT_FRAME = "in the image {}?"

# Training phrasings (also used by the held-in MC split) and held-out phrasings: disjoint sets.
TRAIN_QUESTIONS: dict[str, tuple[str, ...]] = {
    family: tuple(frame.format(core) for core in cores for frame in TRAIN_FRAMES)
    for family, cores in QUESTION_CORES.items()
}
HELD_OUT_QUESTIONS: dict[str, tuple[str, ...]] = {
    family: tuple(HELD_OUT_FRAME.format(core) for core in cores) for family, cores in QUESTION_CORES.items()
}

_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?|[0-9]+|[^\sA-Za-z0-9]")


@dataclass(frozen=True)
class TaskItem:
    """One generated example; ``options`` is set for the multiple-choice (``held_in``) split only."""

    id: str
    family: str
    split: str
    image: Image.Image
    question: str
    answer: str
    options: tuple[str, ...] | None = None


def tokenize_words(text: str) -> list[str]:
    """Word-level tokens as :func:`vocabulary` counts them: words (with apostrophes), digits, punctuation."""
    return _WORD.findall(text)


def vocabulary() -> list[str]:
    """Every token (see :func:`tokenize_words`) a question, answer or option of any family can contain."""
    texts: list[str] = list(EXTRA_OPTIONS)
    for family in FAMILIES:
        texts += ANSWERS[family]
        texts += TRAIN_QUESTIONS[family]
        texts += HELD_OUT_QUESTIONS[family]
    return sorted({token for text in texts for token in tokenize_words(text)})


def _stable_seed(*parts: object) -> int:
    """A 64-bit seed from sha256 of the parts joined by ``:`` (stable across runs and platforms)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def mc_options(family: str, answer: str, *, shuffle: bool = False, key: str = "") -> tuple[str, ...]:
    """The MC options for an item: the family's four answers, then :data:`EXTRA_OPTIONS`.

    Unshuffled, the real options keep the family's fixed order; ``shuffle=True`` permutes them with a
    seed derived from ``key`` (use the item id). The answer appears exactly once.
    """
    answers = _answers(family)
    if answer not in answers:
        raise DataError(f"{answer!r} is not an answer of family {family!r} (answers: {', '.join(answers)})")
    real = list(answers)
    if shuffle:
        random.Random(_stable_seed(key, "options")).shuffle(real)
    return (*real, *EXTRA_OPTIONS)


def _answers(family: str) -> tuple[str, ...]:
    if family not in ANSWERS:
        raise ConfigError(f"unknown task family {family!r}; known families: {', '.join(FAMILIES)}")
    return ANSWERS[family]


def _random_box(rng: random.Random, side: int) -> tuple[int, int]:
    return rng.randint(0, IMAGE_SIZE - side), rng.randint(0, IMAGE_SIZE - side)


def _draw_colour(rng: random.Random) -> tuple[Image.Image, str]:
    """A shape in one of :data:`COLOURS` dimmed to 45-100 % brightness: naming it takes channel ratios."""
    colour, shape, side = rng.choice(tuple(COLOURS)), rng.choice(SHAPES), rng.randint(10, 16)
    brightness = rng.uniform(COLOUR_BRIGHTNESS, 1.0)
    rgb = tuple(round(channel * brightness) for channel in COLOURS[colour])
    image = new_canvas()
    draw_shape(image, shape, *_random_box(rng, side), side, rgb)
    return image, colour


def _draw_shape(rng: random.Random) -> tuple[Image.Image, str]:
    """A 14-16 px shape centred within 1 px of a corner shared by four 8 px patches.

    Each of the four patches then holds one quarter of the shape, which a 2-layer CLIP can read; a shape
    anywhere (zoo v2) straddled patches at random offsets, and specialists stalled at 55-66 %.
    """
    shape, colour, side = rng.choice(SHAPES), rng.choice(tuple(COLOURS)), rng.randint(14, 16)
    corners = range(8, IMAGE_SIZE, 8)
    x_centre, y_centre = rng.choice(corners), rng.choice(corners)
    x0 = min(max(x_centre - side // 2 + rng.randint(-1, 1), 0), IMAGE_SIZE - side)
    y0 = min(max(y_centre - side // 2 + rng.randint(-1, 1), 0), IMAGE_SIZE - side)
    image = new_canvas()
    draw_shape(image, shape, x0, y0, side, COLOURS[colour])
    return image, shape


def _draw_count(rng: random.Random) -> tuple[Image.Image, str]:
    """1-4 squares of 3-5 px, each inside its own 8 px cell with a 1 px margin, so none touch."""
    count = rng.randint(1, len(COUNT_WORDS))
    cells_per_row = IMAGE_SIZE // 8
    image = new_canvas()
    for cell in rng.sample(range(cells_per_row * cells_per_row), count):
        side = rng.randint(3, 5)
        cx, cy = (cell % cells_per_row) * 8, (cell // cells_per_row) * 8
        x0, y0 = cx + rng.randint(1, 7 - side), cy + rng.randint(1, 7 - side)
        draw_shape(image, "square", x0, y0, side, COLOURS[rng.choice(tuple(COLOURS))])
    return image, COUNT_WORDS[count - 1]


def _draw_position(rng: random.Random) -> tuple[Image.Image, str]:
    """A shape within 3 px of one edge and within 2 px of the centre line along that edge."""
    where, shape, colour = rng.choice(POSITIONS), rng.choice(SHAPES), rng.choice(tuple(COLOURS))
    side = rng.randint(7, 10)
    near, far = rng.randint(0, 3), IMAGE_SIZE - side - rng.randint(0, 3)
    centred = (IMAGE_SIZE - side) // 2 + rng.randint(-2, 2)
    x0, y0 = {
        "left": (near, centred),
        "right": (far, centred),
        "top": (centred, near),
        "bottom": (centred, far),
    }[where]
    image = new_canvas()
    draw_shape(image, shape, x0, y0, side, COLOURS[colour])
    return image, where


def _draw_size(rng: random.Random) -> tuple[Image.Image, str]:
    size, shape, colour = rng.choice(tuple(SIZES)), rng.choice(SHAPES), rng.choice(tuple(COLOURS))
    side = rng.randint(*SIZES[size])
    image = new_canvas()
    draw_shape(image, shape, *_random_box(rng, side), side, COLOURS[colour])
    return image, size


_DRAW = {
    "colour": _draw_colour,
    "shape": _draw_shape,
    "count": _draw_count,
    "position": _draw_position,
    "size": _draw_size,
}


def generate_family(family: str, split: str, n: int, seed: int, *, shuffle_options: bool = False) -> list[TaskItem]:
    """``n`` items of ``family`` for ``split`` (``train``, ``held_in`` or ``held_out``).

    Item ``i`` depends only on ``(seed, family, split, i)``: growing ``n`` keeps the earlier items.
    ``held_in`` items carry MC options (see :func:`mc_options`); the other splits have none.
    Ids are ``{family}-{split}-s{seed}-{i:05d}``, unique across families, splits and seeds.
    """
    _answers(family)
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; known splits: {', '.join(SPLITS)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ConfigError(f"the number of items must be a non-negative integer, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    phrasings = HELD_OUT_QUESTIONS[family] if split == "held_out" else TRAIN_QUESTIONS[family]
    items = []
    for i in range(n):
        rng = random.Random(_stable_seed(seed, family, split, i))
        image, answer = _DRAW[family](rng)
        item_id = f"{family}-{split}-s{seed}-{i:05d}"
        options = mc_options(family, answer, shuffle=shuffle_options, key=item_id) if split == "held_in" else None
        items.append(TaskItem(item_id, family, split, image, rng.choice(phrasings), answer, options))
    return items


def _write_items(items: Iterable[TaskItem], out_dir: str | os.PathLike[str], name: str, mc: bool) -> Path:
    """Write PNGs under ``out_dir/images/`` and the JSONL ``out_dir/name`` (atomically replaced)."""
    out = Path(out_dir)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    lines = []
    for item in items:
        if item.id in seen:
            raise DataError(f"item id {item.id!r} appears twice; ids must be unique within {out / name}")
        seen.add(item.id)
        if mc and not item.options:
            raise DataError(f"item {item.id!r} has no options; generate it with split 'held_in'")
        relative = f"images/{item.id}.png"
        item.image.save(out / relative, format="PNG")
        record: dict[str, object] = {"id": item.id, "image": relative, "question": item.question}
        if mc:
            record["options"] = list(item.options or ())
        record["answer"] = item.answer
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    path = out / name
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(lines), encoding="utf-8")
    tmp.replace(path)
    return path


def write_mc_jsonl(items: Iterable[TaskItem], out_dir: str | os.PathLike[str], *, name: str = "mc.jsonl") -> Path:
    """Write MC items as uqmerge's MC JSONL (``id, image, question, options, answer``); return its path.

    ``answer`` is the correct option's text (it occurs exactly once in ``options``), ``image`` the
    PNG's path relative to the JSONL file.
    """
    return _write_items(items, out_dir, name, mc=True)


def write_open_jsonl(items: Iterable[TaskItem], out_dir: str | os.PathLike[str], *, name: str = "open.jsonl") -> Path:
    """Write open-ended items as JSONL (``id, image, question, answer``); return its path."""
    return _write_items(items, out_dir, name, mc=False)


def write_eval_sets(
    out_dir: str | os.PathLike[str],
    seed: int,
    *,
    families: Sequence[str] = FAMILIES,
    sizes: Mapping[str, int] | None = None,
    shuffle_options: bool = False,
) -> dict[str, dict[str, Path]]:
    """Write one held-in MC and one held-out open JSONL per family (each family is one dataset).

    Layout: ``out_dir/held_in/{family}.jsonl`` and ``out_dir/held_out/{family}.jsonl`` with their
    PNGs in ``images/`` beside them. Returns ``{split: {family: path}}``.
    """
    split_sizes = {**DEFAULT_SPLIT_SIZES, **(sizes or {})}
    out = Path(out_dir)
    paths: dict[str, dict[str, Path]] = {"held_in": {}, "held_out": {}}
    for family in families:
        mc = generate_family(family, "held_in", split_sizes["held_in"], seed, shuffle_options=shuffle_options)
        paths["held_in"][family] = write_mc_jsonl(mc, out / "held_in", name=f"{family}.jsonl")
        open_items = generate_family(family, "held_out", split_sizes["held_out"], seed)
        paths["held_out"][family] = write_open_jsonl(open_items, out / "held_out", name=f"{family}.jsonl")
    return paths
