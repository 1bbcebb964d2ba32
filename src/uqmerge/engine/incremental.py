"""Incremental merging into one resident model: running mean for linear, re-merge of the prefix otherwise."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from uqmerge.core.errors import CheckpointError
from uqmerge.engine.executor import execute_plan
from uqmerge.engine.model_sink import ModelSink
from uqmerge.engine.plan import MergePlan, build_plan
from uqmerge.engine.recipe import MergeConfig, MergeRecipe, ModelEntry

log = logging.getLogger(__name__)


class IncrementalMerger:
    """Keeps one model in memory and sets it to Merge(prefix) for successive candidate prefixes.

    ``merge_config(prefix)`` gives the merge config of a prefix of candidate ids (for a run,
    :meth:`uqmerge.pipeline.config.RunConfig.merge_config`); an unknown id is its KeyError. Without it, only
    :meth:`set_config` is available: the model set to Merge(config) for any merge config of the same base
    (a coefficient search moves one parameter of one merge).

    For ``linear`` a prefix that extends the previous one by a candidate updates a weighted running mean
    θ_t = θ_{t−1} + (w_t / W_t)(θ_new − θ_{t−1}), W_t = Σ_{i≤t} w_i, reading only the new candidate's
    tensors; an fp32 accumulator is kept unless ``low_memory`` (then the parameters themselves
    accumulate, in their dtype). Any other method, or a prefix that is not such an extension, re-merges
    the whole prefix into the model through the streaming executor. Nothing is written to disk.
    """

    def __init__(
        self,
        model: nn.Module,
        merge_config: Callable[[Sequence[str]], MergeConfig] | None = None,
        *,
        device: str = "cpu",
        low_memory: bool = False,
        allow_nonfinite: bool = False,
    ) -> None:
        self.model = model
        self.merge_config = merge_config
        self.device = device
        self.low_memory = low_memory
        self.allow_nonfinite = allow_nonfinite
        self.prefix: list[str] = []
        self._acc: dict[str, torch.Tensor] = {}
        self._weight_total = 0.0
        self._sink: ModelSink | None = None
        self._detached = False  # the model holds a set_config merge, not Merge(self.prefix)
        self.bytes_read = 0

    @classmethod
    def for_candidates(
        cls,
        model: nn.Module,
        base_model: str | Path,
        candidates: Mapping[str, str | Path],
        recipe: MergeRecipe,
        **options: Any,
    ) -> IncrementalMerger:
        """A merger over candidate ids → model paths, each entering ``recipe`` with its default parameters."""
        paths = {cid: str(path) for cid, path in candidates.items()}

        def merge_config(prefix: Sequence[str]) -> MergeConfig:
            unknown = [c for c in prefix if c not in paths]
            if unknown:
                raise KeyError(f"unknown candidate id(s) {unknown}")
            return recipe.for_models(str(base_model), [ModelEntry(model=paths[c]) for c in prefix])

        return cls(model, merge_config, **options)

    def _plan(self, prefix: Sequence[str]) -> MergePlan:
        if self.merge_config is None:
            raise TypeError("this IncrementalMerger has no merge_config for prefixes; use set_config")
        return build_plan(self.merge_config(prefix))

    def _sink_for(self, plan: MergePlan) -> ModelSink:
        if self._sink is None:
            self._sink = ModelSink(self.model, plan.layout, [t.name for t in plan.tasks])
        return self._sink

    def reset(self) -> None:
        """Forget the prefix and the running mean (call after restoring the model's base weights yourself)."""
        self.prefix = []
        self._acc.clear()
        self._weight_total = 0.0
        self._detached = False

    def _execute(self, plan: MergePlan) -> None:
        """Re-merge every tensor of ``plan`` into the model (the running mean is forgotten)."""
        report = execute_plan(
            plan, self._sink_for(plan), device=self.device, allow_nonfinite=self.allow_nonfinite, quiet=True
        )
        self.bytes_read += report.bytes_read
        self._acc.clear()
        self._weight_total = 0.0

    def set_config(self, config: MergeConfig) -> None:
        """Make the resident model equal Merge(config): a full re-merge of any merge config of the same base.

        Nothing is written to disk; a later :meth:`set_prefix` re-merges its prefix in full.
        """
        self._execute(build_plan(config))
        self.prefix = []
        self._detached = True

    def set_prefix(self, prefix: Sequence[str]) -> None:
        """Make the resident model equal Merge(prefix)."""
        prefix = list(prefix)
        plan = self._plan(prefix)
        # The running mean is uqmerge's linear; mergekit's may be an unnormalised sum that includes the base.
        top = plan.methods["*"]
        linear = top is not None and top.method.name == "linear" and top.arguments.semantics == "uqmerge"
        extends = not self._detached and prefix[:-1] == self.prefix
        if linear and extends and self._only_linear_or_keep(plan):
            self._running_mean_step(plan, prefix[-1])
        else:
            self._execute(plan)
            if linear and self._only_linear_or_keep(plan):
                self._seed_accumulator(plan)
        self.prefix = prefix
        self._detached = False

    @staticmethod
    def _only_linear_or_keep(plan: MergePlan) -> bool:
        return all(t.action is None or t.action.method.name == "linear" for t in plan.tasks)

    def _seed_accumulator(self, plan: MergePlan) -> None:
        """After a full re-merge, start the running mean from the model's current values."""
        sink = self._sink_for(plan)
        weights = plan.methods["*"].per_model["weight"] if plan.methods["*"] else ()
        self._weight_total = float(sum(weights))
        if not self.low_memory:
            for task in plan.tasks:
                if task.action is not None:
                    self._acc[task.name] = sink.targets[task.name].detach().float().clone()

    def _running_mean_step(self, plan: MergePlan, new_id: str) -> None:
        sink = self._sink_for(plan)
        weights = plan.methods["*"].per_model["weight"]
        w_new = float(weights[-1])
        total = self._weight_total + w_new
        if total == 0:
            raise CheckpointError("running mean: the weights of the prefix sum to zero")
        reader = plan.models[-1]  # the new candidate, opened by the plan (a checkpoint or a LoRA adapter)
        ratio = w_new / total
        for task in plan.tasks:
            if task.action is None:
                continue
            new = reader.read(task.name)
            self.bytes_read += new.numel() * new.element_size()
            new = new.float()
            if not self.allow_nonfinite and not bool(torch.isfinite(new).all()):
                raise CheckpointError(f"{reader.path}: tensor {task.name!r} contains NaN or Inf")
            target = sink.targets[task.name]
            if self.low_memory:
                acc = target.detach().float()
            else:
                acc = self._acc.get(task.name)
                if acc is None:
                    acc = self._acc[task.name] = torch.zeros_like(new)
            acc += ratio * (new - acc)
            with torch.no_grad():
                target.copy_(acc)
        self._weight_total = total
        log.debug("running mean: added %s (t=%d)", new_id, len(self.prefix) + 1)
