"""Synthetic zoo tasks: determinism, answers checked by reading pixels back, splits, options, vocabulary."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from uqmerge.core.errors import ConfigError, DataError
from uqmerge.zoo.tasks import (
    DEFAULT_SPLIT_SIZES,
    EXTRA_OPTIONS,
    FAMILIES,
    SPLITS,
    TRAIN_QUESTIONS,
    TaskItem,
    generate_family,
    mc_options,
    tokenize_words,
    vocabulary,
    write_eval_sets,
    write_mc_jsonl,
    write_open_jsonl,
)

N = 100  # items per family and split in the pixel checks


# --- Independent readers of an image: nothing below uses the generator's drawing code. ---


def foreground(image: Image.Image) -> dict[tuple[int, int], tuple[int, int, int]]:
    """Non-black pixels by (x, y)."""
    rgb = image.convert("RGB")
    w, h = rgb.size
    return {(x, y): rgb.getpixel((x, y)) for y in range(h) for x in range(w) if rgb.getpixel((x, y)) != (0, 0, 0)}


def colour_name(rgb: tuple[int, int, int]) -> str:
    """Name a (possibly dimmed) zoo colour by its channel ratios."""
    r, g, _ = rgb
    if g > r:
        return "green"
    ratio = g / r
    return "red" if ratio < 0.35 else "orange" if ratio < 0.75 else "yellow"


def components(pixels: set[tuple[int, int]]) -> list[set[tuple[int, int]]]:
    """8-connected components by flood fill."""
    left, found = set(pixels), []
    while left:
        stack, comp = [left.pop()], set()
        while stack:
            x, y = stack.pop()
            comp.add((x, y))
            for dx in (-1, 0, 1):
                for dy in (-1, 0, 1):
                    if (x + dx, y + dy) in left:
                        left.remove((x + dx, y + dy))
                        stack.append((x + dx, y + dy))
        found.append(comp)
    return found


def bbox(pixels) -> tuple[int, int, int, int]:
    xs, ys = [p[0] for p in pixels], [p[1] for p in pixels]
    return min(xs), min(ys), max(xs), max(ys)


def shape_name(pixels: set[tuple[int, int]]) -> str:
    x0, y0, x1, y1 = bbox(pixels)
    width = x1 - x0 + 1
    fill = len(pixels) / (width * (y1 - y0 + 1))
    row = [sum((x, y) in pixels for x in range(x0, x1 + 1)) for y in range(y0, y1 + 1)]
    if fill > 0.95:
        return "square"
    if row[-1] == width and row[0] <= width / 3:
        return "triangle"  # narrow apex on top, full base at the bottom
    return "circle" if fill > 0.68 else "cross"


def read_answer(family: str, image: Image.Image) -> str:
    fg = foreground(image)
    pixels = set(fg)
    if family == "colour":
        return colour_name(Counter(fg.values()).most_common(1)[0][0])
    if family == "shape":
        return shape_name(pixels)
    if family == "count":
        return ["zero", "one", "two", "three", "four", "five"][len(components(pixels))]
    if family == "position":
        cx = sum(p[0] for p in pixels) / len(pixels) - (image.width - 1) / 2
        cy = sum(p[1] for p in pixels) / len(pixels) - (image.height - 1) / 2
        if abs(cx) > abs(cy):
            return "left" if cx < 0 else "right"
        return "top" if cy < 0 else "bottom"
    if family == "size":
        x0, y0, x1, y1 = bbox(pixels)
        edge = max(x1 - x0, y1 - y0) + 1
        return "small" if edge < 8 else "medium" if edge < 13 else "large" if edge < 19 else "huge"
    raise AssertionError(family)


# --- Tests ---


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("split", SPLITS)
def test_answer_matches_image(family, split):
    items = generate_family(family, split, N, seed=3)
    assert len(items) == N
    for item in items:
        assert item.image.size == (32, 32) and item.image.mode == "RGB"
        assert read_answer(family, item.image) == item.answer, item.id


@pytest.mark.parametrize("split", SPLITS)
def test_shape_family_centres_each_shape_on_a_corner_of_four_patches(split):
    # The 2-layer CLIP reads 8 px patches: each of the four patches around the corner must hold part of the shape.
    for item in generate_family("shape", split, N, seed=5):
        pixels = set(foreground(item.image))
        x0, y0, x1, y1 = bbox(pixels)
        assert 14 <= max(x1 - x0, y1 - y0) + 1 <= 16, item.id
        corner_x, corner_y = round((x0 + x1 + 1) / 2 / 8) * 8, round((y0 + y1 + 1) / 2 / 8) * 8
        assert corner_x in (8, 16, 24) and corner_y in (8, 16, 24), item.id
        assert abs((x0 + x1 + 1) / 2 - corner_x) <= 1.5 and abs((y0 + y1 + 1) / 2 - corner_y) <= 1.5, item.id
        quarters = {(x >= corner_x, y >= corner_y) for x, y in pixels}
        assert len(quarters) == 4, item.id


@pytest.mark.parametrize("family", FAMILIES)
def test_every_answer_occurs(family):
    answers = Counter(item.answer for item in generate_family(family, "train", 200, seed=0))
    assert len(answers) == 4
    assert min(answers.values()) >= 20


def test_same_seed_gives_identical_files(tmp_path: Path):
    def write(root: Path) -> dict[str, bytes]:
        write_eval_sets(root, seed=11, sizes={"held_in": 5, "held_out": 5})
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    first, second = write(tmp_path / "a"), write(tmp_path / "b")
    assert first == second
    assert len([p for p in first if p.endswith(".png")]) == 2 * 5 * len(FAMILIES)
    write_eval_sets(tmp_path / "c", seed=12, sizes={"held_in": 5, "held_out": 5})
    other_pngs = {p.read_bytes() for p in (tmp_path / "c").rglob("*.png")}
    assert other_pngs != {data for name, data in first.items() if name.endswith(".png")}


def test_items_do_not_depend_on_n_or_other_splits():
    short = generate_family("shape", "train", 5, seed=2)
    long = generate_family("shape", "train", 20, seed=2)
    assert [(i.question, i.answer, i.image.tobytes()) for i in short] == [
        (i.question, i.answer, i.image.tobytes()) for i in long[:5]
    ]
    held_out = generate_family("shape", "held_out", 5, seed=2)
    assert [i.image.tobytes() for i in held_out] != [i.image.tobytes() for i in short]


@pytest.mark.parametrize("family", FAMILIES)
def test_held_out_phrasings_disjoint_from_training(family):
    train = {i.question for i in generate_family(family, "train", 200, seed=0)}
    held_in = {i.question for i in generate_family(family, "held_in", 200, seed=0)}
    held_out = {i.question for i in generate_family(family, "held_out", 200, seed=0)}
    assert len(train) >= 2 and len(held_out) >= 2
    assert held_in <= train
    assert not train & held_out


@pytest.mark.parametrize("family", FAMILIES)
def test_held_out_questions_use_only_words_of_training_questions(family):
    train_words = {w for questions in TRAIN_QUESTIONS.values() for q in questions for w in tokenize_words(q)}
    for question in {i.question for i in generate_family(family, "held_out", 50, seed=0)}:
        assert set(tokenize_words(question)) <= train_words, question


@pytest.mark.parametrize("shuffle", [False, True])
def test_mc_options(shuffle):
    orders = set()
    for family in FAMILIES:
        for item in generate_family(family, "held_in", 40, seed=5, shuffle_options=shuffle):
            assert item.options is not None
            assert len(item.options) == 6
            assert item.options.count(item.answer) == 1
            assert item.options[4:] == EXTRA_OPTIONS
            assert len(set(item.options)) == 6
            real = item.options[:4]
            assert {read_answer(family, item.image)} <= set(real)
            assert set(real) == set(generate_family(family, "held_in", 1, seed=0)[0].options[:4])
            orders.add((family, real))
    if shuffle:
        assert len(orders) > len(FAMILIES)
    else:
        assert len(orders) == len(FAMILIES)  # one fixed order per family


def test_training_and_open_items_have_no_options():
    assert generate_family("count", "train", 3, seed=0)[0].options is None
    assert generate_family("count", "held_out", 3, seed=0)[0].options is None
    assert mc_options("count", "two", shuffle=True, key="x") == mc_options("count", "two", shuffle=True, key="x")


def test_vocabulary_covers_all_tokens():
    vocab = set(vocabulary())
    assert vocabulary() == sorted(vocab)
    assert tokenize_words("I don't know.") == ["I", "don't", "know", "."]
    for family in FAMILIES:
        for split in SPLITS:
            for item in generate_family(family, split, 100, seed=1):
                texts = [item.question, item.answer, *(item.options or ())]
                for text in texts:
                    assert set(tokenize_words(text)) <= vocab, text
                assert len(tokenize_words(item.answer)) == 1


def test_jsonl_format(tmp_path: Path):
    mc_items = generate_family("colour", "held_in", 4, seed=0)
    mc_path = write_mc_jsonl(mc_items, tmp_path / "mc")
    records = [json.loads(line) for line in mc_path.read_text(encoding="utf-8").splitlines()]
    assert [list(r) for r in records] == [["id", "image", "question", "options", "answer"]] * 4
    for record, item in zip(records, mc_items, strict=True):
        assert record["id"] == item.id
        assert record["options"] == list(item.options)
        image = Image.open(mc_path.parent / record["image"])
        assert image.tobytes() == item.image.tobytes()
        assert read_answer("colour", image) == record["answer"]

    open_items = generate_family("count", "held_out", 4, seed=0)
    open_path = write_open_jsonl(open_items, tmp_path / "open")
    records = [json.loads(line) for line in open_path.read_text(encoding="utf-8").splitlines()]
    assert [list(r) for r in records] == [["id", "image", "question", "answer"]] * 4
    assert read_answer("count", Image.open(open_path.parent / records[0]["image"])) == records[0]["answer"]


def test_write_errors(tmp_path: Path):
    item = generate_family("size", "held_in", 1, seed=0)[0]
    with pytest.raises(DataError, match="appears twice"):
        write_mc_jsonl([item, item], tmp_path)
    no_options = TaskItem(item.id, item.family, "train", item.image, item.question, item.answer)
    with pytest.raises(DataError, match="no options"):
        write_mc_jsonl([no_options], tmp_path)


def test_invalid_arguments():
    with pytest.raises(ConfigError, match="unknown task family 'digit'"):
        generate_family("digit", "train", 1, seed=0)
    with pytest.raises(ConfigError, match="unknown split"):
        generate_family("colour", "test", 1, seed=0)
    with pytest.raises(ConfigError, match="non-negative integer"):
        generate_family("colour", "train", -1, seed=0)
    with pytest.raises(ConfigError, match="seed"):
        generate_family("colour", "train", 1, seed="0")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="not an answer"):
        mc_options("colour", "purple")


def test_default_split_sizes():
    assert set(DEFAULT_SPLIT_SIZES) == set(SPLITS)
    assert all(isinstance(n, int) and n > 0 for n in DEFAULT_SPLIT_SIZES.values())
