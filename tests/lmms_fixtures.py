"""Local lmms-eval tasks for the tests: four colour images as an open-ended and a multiple-choice task."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import yaml
from PIL import Image

from uqmerge.core.prompts import LETTERS, format_user_text


def png(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buf, format="PNG")
    return buf.getvalue()


COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 20)}


def local_tasks(root: Path) -> Path:
    """An open-ended and a multiple-choice lmms-eval task over four colour images (YAML + parquet)."""
    import datasets

    root.mkdir(parents=True, exist_ok=True)
    options = [*COLOURS, "I don't know", "None of the above"]
    question = "what colour is the shape"
    rows = [
        {
            "id": f"q{i}",
            "question": question,
            "answer": name,
            "prompt": format_user_text(question, options),
            "choices": list(LETTERS[: len(options)]),
            "answer_index": options.index(name),
            "image": {"bytes": png(rgb), "path": None},
        }
        for i, (name, rgb) in enumerate(COLOURS.items())
    ]
    datasets.Dataset.from_list(rows).cast_column("image", datasets.Image()).to_parquet(str(root / "docs.parquet"))
    common = {
        "dataset_path": "parquet",
        "dataset_kwargs": {"data_files": {"test": "docs.parquet"}},
        "test_split": "test",
        "doc_to_visual": "image",
    }
    open_task = {
        **common,
        "task": "colours_open",
        "output_type": "generate_until",
        "doc_to_text": "question",
        "doc_to_target": "answer",
        "generation_kwargs": {"max_new_tokens": 4, "do_sample": False},
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
    }
    mc_task = {
        **common,
        "task": "colours_mc",
        "output_type": "multiple_choice",
        "doc_to_text": "prompt",
        "doc_to_choice": "choices",
        "doc_to_target": "answer_index",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }
    for task in (open_task, mc_task):
        (root / f"{task['task']}.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    return root


def unlabelled_inputs(root: Path) -> Path:
    """One multiple-choice input without an answer (a red image): search data that carry no labels."""
    import json

    (root / "img.png").write_bytes(png(COLOURS["red"]))
    path = root / "inputs.jsonl"
    path.write_text(json.dumps({"id": "u0", "image": "img.png", "question": "colour?", "options": ["a", "b"]}))
    return path


def lmms_accuracy_search(family: dict[str, Path], root: Path, grid: list[float]) -> dict[str, Any]:
    """A search config over ``grid`` (λ of task arithmetic over two experts of ``family``) whose points' accuracy
    is lmms-eval's ``colours_mc`` (local tasks written under ``root/tasks``) and whose data carry no labels."""
    inputs = unlabelled_inputs(root)
    return {
        "base_model": str(family["base"]),
        "models": [str(family["expert0"]), str(family["expert1"])],
        "merge": {"merge_method": "task_arithmetic"},
        "search": {"parameter": "lambda", "grid": grid, "criterion": "accuracy", "data": [str(inputs)]},
        "device": "cpu",
        "lmms_eval": {"tasks": "colours_mc", "include": [str(local_tasks(root / "tasks"))], "accuracy": True},
    }
