"""Evaluate merges of zoo experts in one resident model (no checkpoints written), with a per-merge cache."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def zoo_eval_specs(manifest: Mapping[str, Any], zoo_dir: Path) -> dict[str, list[str]]:
    """The zoo's dataset files by split (``held_in`` MC, ``held_out`` open-ended)."""
    by_split: dict[str, list[str]] = {}
    for entry in manifest["datasets"]:
        by_split.setdefault(entry["split"], []).append(str(zoo_dir / entry["path"]))
    return by_split


class MergeEvaluator:
    """Sets one resident model to Merge(models) with a given method and evaluates it (MC + open-ended).

    Results are cached per (merge settings, models); ``[]`` is the base itself. Linear prefixes that extend
    the previous one are running-mean steps (:class:`~uqmerge.engine.incremental.IncrementalMerger`).
    """

    def __init__(
        self,
        base_dir: Path,
        experts: Mapping[str, Path],
        eval_specs: Sequence[str],
        *,
        batch_size: int = 64,
    ) -> None:
        import torch

        from uqmerge.evaluate.model_eval import load_eval_data
        from uqmerge.uq.api import load_model

        self.base_dir = Path(base_dir)
        self.experts = {k: Path(v) for k, v in experts.items()}
        self.mc, self.open_items = load_eval_data(eval_specs)
        self.model, self.processor = load_model(self.base_dir, device=torch.device("cpu"), dtype=torch.float32)
        self.base_state = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.batch_size = batch_size
        self._mergers: dict[str, Any] = {}
        self._active: str | None = None
        self.cache: dict[tuple[str, tuple[str, ...]], dict[str, Any]] = {}

    def _merger(self, merge: Mapping[str, Any]) -> Any:
        from uqmerge.engine.incremental import IncrementalMerger
        from uqmerge.engine.recipe import MergeRecipe

        key = json.dumps(merge, sort_keys=True)
        if key not in self._mergers:
            recipe = MergeRecipe.model_validate(merge)
            self._mergers[key] = IncrementalMerger.for_candidates(self.model, self.base_dir, self.experts, recipe)
        if self._active != key:
            # Another merger moved the weights (perhaps tensors this one keeps): restart from the base.
            self.model.load_state_dict(self.base_state)
            self._mergers[key].reset()
            self._active = key
        return self._mergers[key]

    def set_models(self, models: Sequence[str], merge: Mapping[str, Any] | None = None) -> None:
        """Make the resident model Merge(models) (``[]``: the base)."""
        merge = dict(merge or {"merge_method": "linear"})
        if not models:
            self.model.load_state_dict(self.base_state)
            for merger in self._mergers.values():
                merger.reset()
            return
        self._merger(merge).set_prefix(list(models))

    def __call__(self, models: Sequence[str], merge: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Held-out exact match (``open_mean``, ``open_accuracy``) and held-in MC accuracy (``mc_mean``, …)."""
        from uqmerge.evaluate.model_eval import evaluate_loaded_model

        merge = dict(merge or {"merge_method": "linear"})
        key = (json.dumps(merge, sort_keys=True), tuple(models))
        if key not in self.cache:
            self.set_models(models, merge)
            self.cache[key] = evaluate_loaded_model(
                self.model, self.processor, self.mc, self.open_items, batch_size=self.batch_size
            )
            log.debug("evaluated %s %s: %s", merge.get("merge_method"), list(models), self.cache[key]["open_mean"])
        return self.cache[key]
