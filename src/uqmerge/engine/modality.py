"""Modality merging: experts of different architectures on one shared LLM; the merged LLM written back into each.

``base_model`` is the shared language model (a plain causal LM) and ``models:`` are MLLMs built on it (a vision
and an audio model, say). The plan merges the LLM's task vectors over the base's names (each expert read through
its map); the output holds the merged LLM alone in ``OUT/llm/`` and, per expert, its own architecture with the
merged LLM and its own encoders and connector in ``OUT/<id>/``. All of it appears at once, or not at all.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from uqmerge.checkpoint.layouts import detect_layout
from uqmerge.checkpoint.reader import CheckpointReader
from uqmerge.checkpoint.writer import check_output_dir, move_into_place
from uqmerge.core.errors import ConfigError
from uqmerge.engine.executor import MergeReport, execute_plan
from uqmerge.engine.plan import MergePlan, TensorTask
from uqmerge.engine.recipe import LLM_OUTPUT, MergeConfig
from uqmerge.engine.sinks import DiskSink
from uqmerge.mapping import Copy, MappedReader, TensorMap

log = logging.getLogger(__name__)


def is_modality_merge(plan: MergePlan) -> bool:
    """Whether ``plan`` merges experts of other architectures into a plain language model (no ``ancestor:``)."""
    return (
        bool(plan.maps)
        and plan.config.ancestor is None
        and all(t.classification.component == "language_model" for t in plan.tasks)
    )


def expert_ids(config: MergeConfig) -> list[str]:
    """Each expert's output directory name: its ``id:``, else its directory's name; a ConfigError on a clash."""
    ids = [e.id or Path(e.model).expanduser().resolve().name for e in config.models]
    seen: set[str] = set()
    for entry, name in zip(config.models, ids, strict=True):
        if name == LLM_OUTPUT or name in seen:
            raise ConfigError(
                f"models entry {entry.model!r}: output directory {name!r} is taken (by "
                f"{'the merged LLM' if name == LLM_OUTPUT else 'another model'}); give the entry an `id:`"
            )
        seen.add(name)
    return ids


def inverse_map(forward: TensorMap, merged: set[str], llm_dir: Path, expert: Path) -> TensorMap:
    """The map of the merged LLM back onto an expert: each expert tensor copied to a merged base tensor ← it."""
    back = TensorMap(llm_dir, expert, f"merged language model from {llm_dir.name}/ (modality merge)")
    for target, op in forward.entries.items():
        if target in merged and isinstance(op, Copy):
            back.entries.setdefault(op.source, Copy(target))
    return back


def _export_plan(plan: MergePlan, expert: CheckpointReader, back: TensorMap, llm: CheckpointReader) -> MergePlan:
    """A copy-only plan writing ``expert``'s architecture: its mapped LLM tensors from ``llm``, the rest its own."""
    view = MappedReader(llm, back, expert, expert.names)
    layout = detect_layout(expert.config, source=str(expert.path))
    classes = layout.classify_all(expert.names)
    tasks = [TensorTask(n, classes[n], view.info(n).shape, view.info(n).dtype, None) for n in expert.names]
    config = plan.config.model_copy(update={"verify_keep_base": False})
    return replace(
        plan, config=config, base=view, layout=layout, tasks=tasks, target=expert, maps={str(expert.path): back}
    )


def merge_modalities(
    plan: MergePlan, out_dir: Path, *, max_shard_size: int, device: str, force: bool, **execute: object
) -> MergeReport:
    """Write ``OUT/llm/`` (the merged LLM) and ``OUT/<id>/`` per expert, atomically as one directory."""
    check_output_dir(out_dir, force=force)
    ids = expert_ids(plan.config)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        llm_dir = staging / LLM_OUTPUT
        report = execute_plan(plan, DiskSink(plan, llm_dir, max_shard_size=max_shard_size), device=device, **execute)
        llm = CheckpointReader(llm_dir)
        merged = {t.name for t in plan.tasks if t.action is not None}
        for name, reader in zip(ids, plan.models, strict=True):
            expert = reader.source if isinstance(reader, MappedReader) else reader
            if not isinstance(expert, CheckpointReader):
                raise ConfigError(
                    f"{reader.path}: a LoRA adapter has no architecture of its own to write in a modality merge"
                )
            # An expert of the base's own architecture has no map: its names are the base's.
            forward = plan.maps.get(str(expert.path)) or TensorMap(
                expert.path, plan.output.path, "same architecture", {n: Copy(n) for n in plan.output.names}
            )
            export = _export_plan(plan, expert, inverse_map(forward, merged, llm_dir, expert.path), llm)
            sink = DiskSink(export, staging / name, max_shard_size=max_shard_size)
            execute_plan(export, sink, device=device, **{**execute, "quiet": True})
            log.info("wrote %s/%s: %s with the merged language model", out_dir, name, expert.config.get("model_type"))
        move_into_place(staging, out_dir, force=force)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return report
