"""UQ data: JSONL items, specs, validation errors, seeded sampling/padding, benchmark adapters."""

from __future__ import annotations

import base64
import io
import json
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image
from uq_fixtures import colour_items, write_items

from uqmerge.core.errors import DataError
from uqmerge.uq.data import (
    DataSpec,
    load_adapter,
    load_jsonl,
    load_uq_datasets,
    parse_data_spec,
    prepare_dataset,
)
from uqmerge.uq.prompts import IDK_OPTION, NOTA_OPTION


def _png(colour=(10, 20, 30), size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("data/items.jsonl", DataSpec("jsonl", "data/items.jsonl")),
        ("jsonl:data/items.jsonl", DataSpec("jsonl", "data/items.jsonl")),
        ("mmbench:lmms-lab/MMBench@en:dev", DataSpec("mmbench", "lmms-lab/MMBench", "en", "dev")),
        ("MMBench:/data/mmbench_dev.tsv", DataSpec("mmbench", "/data/mmbench_dev.tsv")),
        ("scienceqa:derek-thomas/ScienceQA:test", DataSpec("scienceqa", "derek-thomas/ScienceQA", None, "test")),
        ("seedbench:/x/SEED-Bench.json", DataSpec("seedbench", "/x/SEED-Bench.json")),
        ("oodcv:lmms-lab/ai2d", DataSpec("oodcv", "lmms-lab/ai2d")),
    ],
)
def test_parse_data_spec(spec: str, expected: DataSpec) -> None:
    assert parse_data_spec(spec) == expected


def test_parse_data_spec_rejects_empty_and_split_on_jsonl() -> None:
    with pytest.raises(DataError):
        parse_data_spec("  ")
    with pytest.raises(DataError, match="takes no"):
        parse_data_spec("jsonl:a.jsonl:test")


def test_jsonl_answers_as_text_or_letter(tmp_path: Path) -> None:
    rows = colour_items(tmp_path, 6)
    ds = load_jsonl(write_items(tmp_path, rows))
    assert [it.id for it in ds.items] == [f"q{i}" for i in range(6)]
    for row, item in zip(rows, ds.items, strict=True):
        answer = row["answer"]
        expected = row["options"].index(answer) if answer in row["options"] else "ABCD".index(answer)
        assert item.answer == expected
        assert item.image.path == tmp_path / row["image"]
    assert ds.items[1].hint == "Look at the image."


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"options": ["red"]}, "at least 2 options"),
        ({"options": ["red", "blue"], "answer": "green"}, "neither one of the options"),
        ({"options": ["red", "blue"], "answer": "C"}, "neither one of the options"),
        ({"options": ["red", "red"]}, "duplicate options"),
        ({"options": ["red", "blue"], "colour": 1}, "unknown field"),
    ],
)
def test_malformed_items_raise_data_error_naming_the_item(tmp_path: Path, row: dict, message: str) -> None:
    base = {"id": "bad-item", "image": "x.png", "question": "Which?"}
    path = write_items(tmp_path, [{**base, **row}])
    with pytest.raises(DataError, match=message) as info:
        load_jsonl(path)
    assert "bad-item" in str(info.value) and str(path) in str(info.value)


def test_invalid_json_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text('{"id": 1}\n{not json\n')
    with pytest.raises(DataError, match=r"broken\.jsonl:1 \(item 1\): missing field"):
        load_jsonl(path)
    path.write_text("{not json\n")
    with pytest.raises(DataError, match=r"broken\.jsonl:1: invalid JSON"):
        load_jsonl(path)


def test_padding_is_seeded_keeps_answer_and_appends_two_options(tmp_path: Path) -> None:
    ds = load_jsonl(write_items(tmp_path, colour_items(tmp_path, 6)))
    a = prepare_dataset(ds, seed=0, sample_ratio=1.0, real_options=4)
    b = prepare_dataset(ds, seed=0, sample_ratio=1.0, real_options=4)
    c = prepare_dataset(ds, seed=1, sample_ratio=1.0, real_options=4)
    assert a == b
    assert [it.options for it in a.items] != [it.options for it in c.items]
    for raw, item in zip(ds.items, a.items, strict=True):
        assert len(item.options) == 6 and item.options[-2:] == (IDK_OPTION, NOTA_OPTION)
        assert item.n_real == len(raw.options) and item.n_distractors == 4 - len(raw.options)
        assert item.options[item.answer] == raw.options[raw.answer]
        real = [o for o in item.options[:4] if o in raw.options]
        assert real == list(raw.options), "real options keep their order"
        assert len(set(item.options)) == 6


def test_sampling_is_seeded_and_empty_sample_is_an_error(tmp_path: Path) -> None:
    path = write_items(tmp_path, colour_items(tmp_path, 6))
    half = load_uq_datasets([str(path)], seed=0, sample_ratio=0.5)[0]
    assert len(half.items) == 3
    assert half == load_uq_datasets([str(path)], seed=0, sample_ratio=0.5)[0]
    ids = {tuple(it.id for it in load_uq_datasets([str(path)], seed=s, sample_ratio=0.5)[0].items) for s in range(5)}
    assert len(ids) > 1
    with pytest.raises(DataError, match="empty after sampling"):
        load_uq_datasets([str(path)], sample_ratio=0.05)


def test_preparation_does_not_depend_on_the_order_of_the_files_items(tmp_path: Path) -> None:
    rows = colour_items(tmp_path / "a", 12)
    colour_items(tmp_path / "b", 12)
    ordered = write_items(tmp_path / "a", rows)
    reversed_file = write_items(tmp_path / "b", rows[::-1])
    for ratio in (1.0, 0.5):
        a = load_uq_datasets([str(ordered)], seed=3, sample_ratio=ratio)[0]
        b = load_uq_datasets([str(reversed_file)], seed=3, sample_ratio=ratio)[0]
        assert [it.id for it in a.items] == [it.id for it in b.items]
        assert [(it.options, it.answer) for it in a.items] == [(it.options, it.answer) for it in b.items]
        assert a.fingerprint() == b.fingerprint() and a.identity() == b.identity()
    ids = [it.id for it in load_uq_datasets([str(reversed_file)])[0].items]
    assert ids == [f"q{i}" for i in range(12)], "canonical order: natural order of the ids (q2 before q10)"


def test_sampling_ranks_items_by_id_so_a_larger_ratio_keeps_a_superset(tmp_path: Path) -> None:
    path = write_items(tmp_path, colour_items(tmp_path, 12))
    kept = [{it.id for it in load_uq_datasets([str(path)], seed=1, sample_ratio=r)[0].items} for r in (0.25, 0.5, 0.75)]
    assert [len(k) for k in kept] == [3, 6, 9]
    assert kept[0] < kept[1] < kept[2]


def test_fingerprint_ignores_item_order_and_follows_content(tmp_path: Path) -> None:
    dataset = load_uq_datasets([str(write_items(tmp_path, colour_items(tmp_path, 4)))])[0]
    shuffled = replace(dataset, items=dataset.items[::-1])
    assert shuffled.fingerprint() == dataset.fingerprint()
    edited = replace(dataset, items=(replace(dataset.items[0], question="Another question?"), *dataset.items[1:]))
    assert edited.fingerprint() != dataset.fingerprint()
    assert dataset.identity() == {"name": "items", "n_items": 4, "fingerprint": dataset.fingerprint()}


def test_dataset_names_are_unique(tmp_path: Path) -> None:
    a = write_items(tmp_path / "a", colour_items(tmp_path / "a", 2))
    b = write_items(tmp_path / "b", colour_items(tmp_path / "b", 2))
    names = [d.name for d in load_uq_datasets([str(a), str(b)])]
    assert names == ["items#1", "items#2"]


# ---------------------------------------------------------------- adapters on published layouts


def test_mmbench_tsv_with_base64_images(tmp_path: Path) -> None:
    b64 = base64.b64encode(_png()).decode()
    header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "l2-category", "split"]
    rows = [
        ["7", "What is shown?", "", "a cat", "a dog", "a bird", "a fish", "B", "animal", b64, "perception", "dev"],
        ["9", "Is it day?", "Look at the sky.", "yes", "no", "", "", "A", "time", b64, "reasoning", "dev"],
    ]
    path = tmp_path / "mmbench_dev_en.tsv"
    path.write_text("\n".join("\t".join(r) for r in [header, *rows]) + "\n")
    ds = load_adapter(parse_data_spec(f"mmbench:{path}"))
    assert [it.id for it in ds.items] == ["7", "9"]
    first, second = ds.items
    assert first.options == ("a cat", "a dog", "a bird", "a fish") and first.answer == 1 and first.hint is None
    assert second.options == ("yes", "no") and second.hint == "Look at the sky." and second.answer == 0
    assert first.image.load().size == (8, 8)


def test_mmbench_hub_parquet_layout(tmp_path: Path) -> None:
    from datasets import Dataset, Features, Image, Value

    features = Features({k: Value("string") for k in ("question", "hint", "A", "B", "C", "D", "answer")})
    features["index"] = Value("int64")
    features["image"] = Image()
    data = {
        "index": [1],
        "question": ["Which?"],
        "hint": [None],
        "A": ["x"],
        "B": ["y"],
        "C": [None],
        "D": [None],
        "answer": ["A"],
        "image": [{"bytes": _png(), "path": None}],
    }
    Dataset.from_dict(data, features=features).to_parquet(str(tmp_path / "dev.parquet"))
    ds = load_adapter(parse_data_spec(f"mmbench:{tmp_path / 'dev.parquet'}"))
    assert ds.items[0].options == ("x", "y") and ds.items[0].image.load().size == (8, 8)


def test_scienceqa_keeps_image_closed_choice_questions(tmp_path: Path) -> None:
    from datasets import Dataset, Features, Image, List, Value

    features = Features(
        {
            "image": Image(),
            "question": Value("string"),
            "choices": List(Value("string")),
            "answer": Value("int8"),
            "hint": Value("string"),
            "task": Value("string"),
            "subject": Value("string"),
        }
    )
    img = {"bytes": _png(), "path": None}
    data = {
        "image": [img, None, img],
        "question": ["Which is a mammal?", "Which is hot?", "Is it true?"],
        "choices": [["whale", "shark", "trout"], ["ice", "fire"], ["yes", "no"]],
        "answer": [0, 1, 0],
        "hint": ["", "", "Context."],
        "task": ["closed choice", "closed choice", "yes or no"],
        "subject": ["natural science"] * 3,
    }
    path = tmp_path / "test.parquet"
    Dataset.from_dict(data, features=features).to_parquet(str(path))
    ds = load_adapter(parse_data_spec(f"scienceqa:{path}"))
    assert len(ds.items) == 1 and ds.n_source == 3
    assert ds.items[0].options == ("whale", "shark", "trout") and ds.items[0].answer == 0
    assert ds.items[0].hint is None
    assert sum(ds.excluded.values()) == 2


def test_seedbench_original_json_with_image_directory(tmp_path: Path) -> None:
    (tmp_path / "SEED-Bench-image").mkdir()
    (tmp_path / "SEED-Bench-image" / "1454426_2591111986.jpg").write_bytes(_png())
    questions = [
        {
            "answer": "C",
            "choice_a": "one",
            "choice_b": "two",
            "choice_c": "three",
            "choice_d": "four",
            "data_id": "1454426_2591111986.jpg",
            "data_type": "image",
            "question": "How many cups?",
            "question_id": "101669",
            "question_type_id": 5,
        },
        {
            "answer": "A",
            "choice_a": "walk",
            "choice_b": "run",
            "choice_c": "sit",
            "choice_d": "jump",
            "data_id": "v1.mp4",
            "data_type": "video",
            "question": "What happens?",
            "question_id": "2",
            "question_type_id": 10,
        },
    ]
    path = tmp_path / "SEED-Bench.json"
    path.write_text(json.dumps({"questions": questions, "question_type": {"Instances Counting": 5}}))
    ds = load_adapter(parse_data_spec(f"seedbench:{path}"))
    assert [it.id for it in ds.items] == ["101669"]
    item = ds.items[0]
    assert item.answer == 2 and item.category == "Instances Counting"
    assert item.image.load().size == (8, 8)
    assert ds.excluded == {"video item (SEED-Bench image categories only)": 1}


def test_ai2d_hub_layout(tmp_path: Path) -> None:
    from datasets import Dataset, Features, Image, List, Value

    features = Features(
        {"question": Value("string"), "options": List(Value("string")), "answer": Value("string"), "image": Image()}
    )
    data = {
        "question": ["Which stage comes first?"],
        "options": [["egg", "larva", "pupa", "adult"]],
        "answer": ["0"],
        "image": [{"bytes": _png(), "path": None}],
    }
    path = tmp_path / "ai2d.parquet"
    Dataset.from_dict(data, features=features).to_parquet(str(path))
    ds = load_adapter(parse_data_spec(f"ai2d:{path}"))
    assert ds.items[0].options == ("egg", "larva", "pupa", "adult") and ds.items[0].answer == 0


def test_oodcv_json_counting_questions(tmp_path: Path) -> None:
    (tmp_path / "phase-1" / "images").mkdir(parents=True)
    (tmp_path / "phase-1" / "images" / "car_0013.jpg").write_bytes(_png())
    rows = [
        {
            "image": "phase-1/images/car_0013.jpg",
            "question": "How many cars are there in the image?",
            "answer_type": "number",
            "text_answer": "2",
            "options": ["2", "3"],
            "situation": "weather",
        },
        {
            "image": "phase-1/images/car_0013.jpg",
            "question": "Is there a car in the image?",
            "answer_type": "bool",
            "text_answer": "Yes",
            "situation": "iid",
        },
    ]
    path = tmp_path / "oodcv-vqa.json"
    path.write_text(json.dumps(rows))
    ds = load_adapter(parse_data_spec(f"oodcv:{path}"))
    assert len(ds.items) == 1
    item = ds.items[0]
    assert item.options == ("Two", "Three") and item.answer == 0 and item.category == "weather"
    assert item.image.load().size == (8, 8)
    assert sum(ds.excluded.values()) == 1


def test_unreachable_hub_id_is_a_clear_data_error() -> None:
    with pytest.raises(DataError, match="cannot load"):
        load_adapter(parse_data_spec("mmbench:no-such-owner/no-such-dataset-uqmerge:dev"))
