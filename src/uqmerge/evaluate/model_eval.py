"""Multiple-choice accuracy and open-ended exact match of a model per dataset (family); `uqmerge eval` runs it."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from uqmerge.core.errors import DataError

log = logging.getLogger(__name__)


def is_open_ended_file(path: Path) -> bool:
    """A local JSONL whose first record has no ``options`` holds open-ended items."""
    if path.suffix != ".jsonl" or not path.is_file():
        return False
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                return "options" not in json.loads(line)
    raise DataError(f"{path}: empty JSONL file")


def evaluate_loaded_model(
    model: Any,
    processor: Any,
    mc_datasets: Sequence[Any],
    open_items: Sequence[Any],
    *,
    batch_size: int = 16,
) -> dict[str, Any]:
    """MC accuracy (argmax over option letters, one unperturbed pass) and open-ended exact match."""
    from uqmerge.evaluate.open_ended import evaluate_open_ended
    from uqmerge.uq.api import uncertainty_of_loaded_model
    from uqmerge.uq.config import UQConfig, UQMode

    out: dict[str, Any] = {}
    if mc_datasets:
        uq = uncertainty_of_loaded_model(
            model, processor, mc_datasets, UQConfig(mode=UQMode.NONE, batch_size=batch_size)
        )
        mc = {d.name: d.accuracy for d in uq.datasets}
        missing = [k for k, v in mc.items() if v is None]
        if missing:
            raise DataError(f"multiple-choice dataset(s) {missing} have no answers; accuracy needs labels")
        out["mc_accuracy"] = mc
        out["mc_mean"] = sum(mc.values()) / len(mc)
    if open_items:
        res = evaluate_open_ended(model, processor, open_items, batch_size=batch_size)
        out["open_accuracy"] = res["accuracy"]
        out["open_mean"] = res["mean_accuracy"]
        out["open_n"] = res["n"]
    return out


def split_eval_specs(specs: Sequence[str]) -> tuple[list[str], list[Path]]:
    """MC data specs (anything `uqmerge uq` reads) and open-ended JSONL files."""
    mc: list[str] = []
    open_files: list[Path] = []
    for spec in specs:
        if is_open_ended_file(Path(spec)):
            open_files.append(Path(spec))
        else:
            mc.append(spec)
    return mc, open_files


def load_eval_data(specs: Sequence[str]) -> tuple[list[Any], list[Any]]:
    """Prepared MC datasets (no distractor padding: items keep their own options) and open-ended items."""
    from uqmerge.evaluate.open_ended import load_open_items
    from uqmerge.uq.data import load_uq_datasets

    mc_specs, open_files = split_eval_specs(specs)
    # real_options=2: never pad with distractors, so accuracy is measured on the items' own options.
    mc = load_uq_datasets(mc_specs, seed=0, real_options=2) if mc_specs else []
    items = [it for f in open_files for it in load_open_items(f)]
    return mc, items


def evaluate_model_dir(
    model_dir: str | Path, specs: Sequence[str], *, device: str = "cpu", batch_size: int = 16
) -> dict:
    """Load ``model_dir`` and evaluate it on ``specs``."""
    from uqmerge.core.devices import resolve_device, resolve_dtype
    from uqmerge.uq.api import load_model, saved_dtype

    dev = resolve_device(device)
    model, processor = load_model(model_dir, device=dev, dtype=resolve_dtype("auto", dev, saved_dtype(Path(model_dir))))
    mc, items = load_eval_data(specs)
    return {"model": str(model_dir), **evaluate_loaded_model(model, processor, mc, items, batch_size=batch_size)}
