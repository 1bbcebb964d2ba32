"""The zoo's held-in and held-out sets as local lmms-eval tasks (YAML + parquet), so lmms-eval alone scores the zoo.

``export_lmms_tasks(zoo_dir, out_dir)`` writes, per family, ``uqmerge_zoo_held_in_<family>.yaml`` (multiple
choice: the option letters scored by log-likelihood after uqmerge's MC prompt, metric ``acc``, as ``uqmerge eval``
takes the letter of highest probability) and ``uqmerge_zoo_held_out_<family>.yaml`` (open-ended, greedy, metric
``exact_match``), two groups ``uqmerge_zoo_held_in`` and ``uqmerge_zoo_held_out`` (unweighted means over the
families, as uqmerge reports them), and the documents in ``data/<split>/<family>.parquet`` with the images
embedded. Each task's ``task_alias`` is its family, the name uqmerge gives the family's JSONL, so ``lmms:`` data
specs of these tasks key UQ's draws as the JSONL files do.

Exact match: uqmerge lower-cases, strips surrounding whitespace and final ``.``/``!``/``?`` and collapses inner
whitespace (:func:`uqmerge.evaluate.open_ended.normalise_answer`). The exported metric strips the response
(lmms-eval does), removes trailing whitespace and ``.!?`` runs (``regexes_to_ignore``) and ignores case; it does
not collapse inner whitespace runs, which lmms-eval's ``exact_match`` cannot express.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from uqmerge.core.errors import DataError, OutputError
from uqmerge.core.files import atomic_write_text
from uqmerge.core.prompts import LETTERS, format_user_text

log = logging.getLogger(__name__)

TASK_PREFIX = "uqmerge_zoo"
EXACT_MATCH_IGNORE = r"[\s.!?]+$"
"""What lmms-eval's exact match removes from both sides: trailing whitespace and final ``.``/``!``/``?``."""


def task_name(split: str, family: str | None = None) -> str:
    """``uqmerge_zoo_held_out_colour`` (a family's task) or ``uqmerge_zoo_held_out`` (the split's group)."""
    return f"{TASK_PREFIX}_{split}" + (f"_{family}" if family else "")


def _png(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _image_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read the zoo image ({e}); rebuild the zoo with --force") from e


def _held_in_rows(path: Path) -> list[dict[str, Any]]:
    from uqmerge.uq.data import load_jsonl

    rows = []
    for item in load_jsonl(path).items:
        if item.answer is None:
            raise DataError(f"{path}: item {item.id!r} has no answer; the exported task scores accuracy")
        letters = list(LETTERS[: len(item.options)])
        image = _image_bytes(item.image.path) if item.image.path is not None else (item.image.data or b"")
        rows.append(
            {
                "id": item.id,
                "question": item.question,
                "options": list(item.options),
                "prompt": format_user_text(item.question, item.options, item.hint),
                "choices": letters,
                "answer": letters[item.answer],
                "answer_index": item.answer,
                "image": {"bytes": image, "path": None},
            }
        )
    return rows


def _held_out_rows(path: Path) -> list[dict[str, Any]]:
    from uqmerge.evaluate.open_ended import load_open_items

    rows = []
    for item in load_open_items(path):
        image = _image_bytes(item.image) if isinstance(item.image, Path) else _png(item.image)
        rows.append(
            {"id": item.id, "question": item.question, "answer": item.answer, "image": {"bytes": image, "path": None}}
        )
    return rows


def _write_parquet(rows: list[dict[str, Any]], path: Path) -> None:
    import datasets

    table = datasets.Dataset.from_list(rows).cast_column("image", datasets.Image())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    table.to_parquet(str(tmp))
    tmp.replace(path)


def _data(relative: str) -> dict[str, Any]:
    return {
        "dataset_path": "parquet",
        "dataset_kwargs": {"data_files": {"test": relative}},
        "test_split": "test",
        "doc_to_visual": "image",
    }


def held_in_task(family: str, relative: str, meta: Mapping[str, Any]) -> dict[str, Any]:
    """The multiple-choice task config: uqmerge's MC prompt, the option letters as choices, accuracy."""
    return {
        "task": task_name("held_in", family),
        "task_alias": family,
        **_data(relative),
        "output_type": "multiple_choice",
        "doc_to_text": "prompt",
        "doc_to_choice": "choices",
        "doc_to_target": "answer_index",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {**meta, "version": 1},
    }


def held_out_task(family: str, relative: str, meta: Mapping[str, Any]) -> dict[str, Any]:
    """The open-ended task config: the question after the image, greedy, exact match."""
    from uqmerge.evaluate.open_ended import DEFAULT_MAX_NEW_TOKENS

    return {
        "task": task_name("held_out", family),
        "task_alias": family,
        **_data(relative),
        "output_type": "generate_until",
        "doc_to_text": "question",
        "doc_to_target": "answer",
        "generation_kwargs": {"max_new_tokens": DEFAULT_MAX_NEW_TOKENS, "do_sample": False, "until": ["\n\n"]},
        "metric_list": [
            {
                "metric": "exact_match",
                "aggregation": "mean",
                "higher_is_better": True,
                "ignore_case": True,
                "regexes_to_ignore": [EXACT_MATCH_IGNORE],
            }
        ],
        "metadata": {**meta, "version": 1},
    }


def group_config(split: str, families: list[str]) -> dict[str, Any]:
    """The split's group: the unweighted mean over its families (as uqmerge's ``mc_mean``/``open_mean``)."""
    metric = "acc" if split == "held_in" else "exact_match"
    return {
        "group": task_name(split),
        "task": [task_name(split, f) for f in families],
        "aggregate_metric_list": [{"metric": metric, "aggregation": "mean", "weight_by_size": False}],
        "metadata": {"version": 1},
    }


def export_lmms_tasks(zoo_dir: str | Path, out_dir: str | Path, *, force: bool = False) -> list[str]:
    """Write the zoo's lmms-eval tasks into ``out_dir``; returns the task and group names written."""
    from uqmerge.zoo.build import read_manifest

    zoo, out = Path(zoo_dir), Path(out_dir)
    manifest = read_manifest(zoo)
    if out.exists() and any(out.iterdir()) and not force:
        raise OutputError(f"{out}: directory is not empty; pass --force to overwrite the exported tasks")
    meta = {"zoo_preset": manifest.get("preset"), "zoo_seed": manifest.get("seed")}
    by_split: dict[str, list[str]] = {}
    names: list[str] = []
    for entry in manifest["datasets"]:
        split, family = entry["split"], entry["family"]
        if split not in ("held_in", "held_out"):
            continue
        source = zoo / entry["path"]
        relative = f"data/{split}/{family}.parquet"
        rows = _held_in_rows(source) if split == "held_in" else _held_out_rows(source)
        _write_parquet(rows, out / relative)
        config = (held_in_task if split == "held_in" else held_out_task)(family, relative, meta)
        atomic_write_text(out / f"{config['task']}.yaml", yaml.safe_dump(config, sort_keys=False))
        by_split.setdefault(split, []).append(family)
        names.append(config["task"])
        log.info("exported %s (%d documents)", config["task"], len(rows))
    for split, families in by_split.items():
        group = group_config(split, families)
        atomic_write_text(out / f"{group['group']}.yaml", yaml.safe_dump(group, sort_keys=False))
        names.append(group["group"])
    if not names:
        raise DataError(f"{zoo}: the manifest lists no held_in or held_out datasets")
    return names
