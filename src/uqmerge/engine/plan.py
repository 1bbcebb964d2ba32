"""The merge plan: for every base tensor, its component, the method (or keep-base) and output dtype.

Everything here works from ``config.json`` files and safetensors headers, so configuration, architecture,
coverage and shape problems are reported before a single weight is read or written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from uqmerge.checkpoint.layouts import (
    ENCODER_COMPONENTS,
    Classification,
    Layout,
    Rule,
    detect_layout,
    get_layout,
    language_model_role_rules,
)
from uqmerge.checkpoint.lora import ModelReader, is_lora_adapter, open_base, open_model
from uqmerge.checkpoint.reader import CheckpointReader
from uqmerge.checkpoint.writer import TensorSpec
from uqmerge.core.devices import DTYPE_NAMES, torch_dtype
from uqmerge.core.errors import ConfigError, LayoutError, MappingError, PlanError
from uqmerge.engine.params import ResolvedMethod, resolve_config_methods
from uqmerge.engine.recipe import MergeConfig, ModelEntry
from uqmerge.mapping import MappedReader, TensorMap, derive_map, map_from_file


@dataclass(frozen=True)
class TensorTask:
    """One output tensor: where it belongs, how it is produced (``action`` None = copy from base)."""

    name: str
    classification: Classification
    shape: tuple[int, ...]
    out_dtype: torch.dtype
    action: ResolvedMethod | None


@dataclass
class MergePlan:
    """All tensor tasks in base on-disk order, with the readers they need.

    ``base`` is what task vectors are taken from (and kept tensors copied from); ``target`` the architecture
    written (its config and auxiliary files): the base itself, or ``base_model`` when ``ancestor:`` is the base
    of the task vectors. ``maps`` are the cross-architecture maps of models of another architecture (and of the
    ancestor), by model path.
    """

    config: MergeConfig
    base: CheckpointReader | MappedReader
    models: list[ModelReader | MappedReader]
    layout: Layout
    tasks: list[TensorTask]
    methods: dict[str, ResolvedMethod | None]
    out_dtype: torch.dtype
    target: CheckpointReader | None = None
    maps: dict[str, TensorMap] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.target is None:
            assert isinstance(self.base, CheckpointReader), "a mapped base needs the target architecture's reader"
            self.target = self.base

    @property
    def output(self) -> CheckpointReader:
        """The checkpoint whose architecture, config and auxiliary files the output takes."""
        assert self.target is not None
        return self.target

    def mapping_summary(self) -> dict[str, Any]:
        """Every map's account (:meth:`TensorMap.summary`) and the tensors kept from the target because some map
        does not cover them."""
        merged = {t.name for t in self.tasks if t.action is not None}
        uncovered = sorted({n for m in self.maps.values() for n in m.kept} - merged)
        return {"maps": [m.summary() for m in self.maps.values()], "kept_from_target": uncovered}

    def output_specs(self) -> list[TensorSpec]:
        """(name, dtype, shape) of every output tensor, for the writer's layout."""
        return [(t.name, t.out_dtype, t.shape) for t in self.tasks]

    def input_bytes(self) -> int:
        """Bytes of tensor data the executor reads (base + every model tensor it touches)."""
        total = 0
        for t in self.tasks:
            if t.action is None or t.action.method.requires_base:
                total += self.base.info(t.name).nbytes
            if t.action is not None:
                total += sum(m.info(t.name).nbytes for m in self.models)
            elif self.config.verify_keep_base and t.out_dtype.is_floating_point:
                total += sum(m.info(t.name).nbytes for m in self.models_to_verify(t.name))
        return total

    def models_to_verify(self, name: str) -> list[ModelReader | MappedReader]:
        """The models whose copy of kept tensor ``name`` is compared with the base's: all but those that read the
        very same stored bytes (a model of another architecture reads the base's own tensor where it has none)."""
        base = self.base.info(name)
        return [m for m in self.models if m.info(name) != base]

    def counts(self) -> dict[str, int]:
        """Number of tensors per method name (``keep_base`` for copies)."""
        out: dict[str, int] = {}
        for t in self.tasks:
            key = t.action.method.name if t.action else "keep_base"
            out[key] = out.get(key, 0) + 1
        return out


def _architecture(reader: CheckpointReader) -> tuple[str | None, tuple[str, ...]]:
    cfg = reader.config
    return cfg.get("model_type"), tuple(cfg.get("architectures") or ())


def check_same_architecture(base: CheckpointReader, models: list[CheckpointReader]) -> None:
    """Every input must have a ``config.json`` with the base's ``model_type`` and ``architectures``."""
    for reader in (base, *models):
        if isinstance(reader, CheckpointReader) and not (reader.path / "config.json").exists():
            raise LayoutError(
                f"{reader.path}: no config.json; every input must be a transformers model directory (for a "
                "fine-tune of the base saved without one, copy the base's config.json next to its weights)"
            )
    want = _architecture(base)
    for m in models:
        got = _architecture(m)
        if got != want:
            raise LayoutError(
                f"{m.path}: architecture {got[0]!r} {list(got[1])} differs from the base {base.path} "
                f"({want[0]!r} {list(want[1])}); all models must be fine-tunes of the same base architecture"
            )


def reconcile_names(model: ModelReader, base: CheckpointReader, layout: Layout) -> ModelReader:
    """``model`` seen under the base's tensor names when both name the same parameters differently.

    Legacy and transformers-5 key names (``language_model.model.*`` and ``model.language_model.*``) map to the
    same in-memory parameter through the layout's key conversion; the merge then reads each input by its own
    names and writes the base's.
    """
    if not isinstance(model, CheckpointReader) or set(model.names) == set(base.names):
        return model
    by_module = {layout.module_name(n): n for n in base.names}
    rename = {n: by_module[m] for n in model.names if (m := layout.module_name(n)) in by_module and n != by_module[m]}
    if not rename or len(set(rename.values())) != len(rename):
        return model
    renamed = model.with_names(rename)
    return renamed if set(renamed.names) == set(base.names) else model


def _naming_hint(missing: list[str], extra: list[str], layout: Layout) -> str:
    """Why names differ, when the model holds tensors that look like the missing ones under another prefix."""
    if not extra:
        return ""
    by_tail = {".".join(n.split(".")[-3:]): n for n in extra}
    pairs = [(by_tail[t], n) for n in missing if (t := ".".join(n.split(".")[-3:])) in by_tail]
    if not pairs:
        return ""
    mine, theirs = pairs[0]
    return (
        f"; {len(pairs)} of them look stored under other names (e.g. {mine!r} for the base's {theirs!r}), a naming "
        f"convention that layout {layout.name!r} does not map to the same parameter. Re-save one of them with "
        "transformers' save_pretrained, or set `layout:` to one that maps both"
    )


def check_coverage(base: CheckpointReader, models: list[ModelReader], layout: Layout) -> None:
    """Each model holds exactly the base's tensor set, with equal shapes; else a PlanError naming them."""
    base_names = set(base.names)
    for m in models:
        names = set(m.names)
        missing = sorted(base_names - names)
        extra = sorted(names - base_names)
        if missing:
            raise PlanError(
                f"{m.path}: missing {len(missing)} tensor(s) that the base has, e.g. {missing[:5]}"
                + _naming_hint(missing, extra, layout)
            )
        if extra:
            raise PlanError(
                f"{m.path}: has {len(extra)} tensor(s) the base {base.path} lacks, e.g. {extra[:5]}; they would be "
                "dropped from the output. Use a base with the same tensors."
            )
        bad = [n for n in base.names if m.info(n).shape != base.info(n).shape]
        if bad:
            n = bad[0]
            raise PlanError(
                f"{m.path}: shape mismatch for {len(bad)} tensor(s), e.g. {n!r}: {list(m.info(n).shape)} vs "
                f"base {list(base.info(n).shape)}"
            )


def base_dtype(base: CheckpointReader) -> torch.dtype:
    """The base's storage dtype: from config.json when given, else the most common floating tensor dtype."""
    name = base.config.get("dtype") or base.config.get("torch_dtype")
    if isinstance(name, str) and name in DTYPE_NAMES:
        return torch_dtype(name)
    counts: dict[torch.dtype, int] = {}
    for info in base.tensors.values():
        if info.dtype.is_floating_point:
            counts[info.dtype] = counts.get(info.dtype, 0) + info.numel
    return max(counts, key=lambda d: counts[d]) if counts else torch.float32


def _layout_for(config: MergeConfig, base: CheckpointReader) -> Layout:
    """The config's ``layout:``, else the base's detected one, with ``layout_rules`` first; the rules alone where no
    layout can be detected (a remote-code model transformers does not know)."""
    extra = [Rule(r.pattern, r.component, r.role) for r in config.layout_rules]
    try:
        layout = get_layout(config.layout) if config.layout else detect_layout(base.config, source=str(base.path))
    except LayoutError:
        if config.layout or not extra:
            raise
        return Layout("layout_rules", "the config's layout_rules only", tuple(extra), language_model_role_rules())
    return layout.with_extra_rules(extra) if extra else layout


def _action_for(
    name: str, cls: Classification, config: MergeConfig, methods: dict[str, ResolvedMethod | None]
) -> ResolvedMethod | None:
    if config.include and not any(re.search(p, name) for p in config.include):
        return None
    if any(re.search(p, name) for p in config.exclude):
        return None
    for key in (cls.key, cls.component):
        if key in methods:
            return methods[key]
    if cls.component in ENCODER_COMPONENTS:
        return None
    return methods["*"]


def _open_models(config: MergeConfig, base: CheckpointReader | None, *, allow_pickle: bool) -> list[ModelReader]:
    """Readers of the ``models:`` entries; a peft LoRA adapter dir is read as base + (α/r)·B·A over ``base``."""
    paths = [_path(m.model) for m in config.models]
    layout = _layout_for(config, base) if base is not None and any(map(is_lora_adapter, paths)) else None
    return [open_model(p, base, layout, allow_pickle=allow_pickle) for p in paths]


def build_plan(config: MergeConfig, *, allow_pickle: bool = False) -> MergePlan:
    """Validate the config against the checkpoints' headers and plan every output tensor.

    Models of another architecture than ``base_model`` (and an ``ancestor:``) are read through a map onto the
    base's tensor names (:func:`plan_cross_architecture`); only tensors every map covers are merged.
    """
    methods = resolve_config_methods(config)
    needs_base = any(r is not None and r.method.requires_base for r in methods.values())
    if needs_base and config.base_model is None:
        used = sorted({r.method.name for r in methods.values() if r is not None and r.method.requires_base})
        raise ConfigError(f"method(s) {used} need `base_model:` (task vectors are differences from the base)")
    given_base = open_base(_path(config.base_model), allow_pickle=allow_pickle) if config.base_model else None
    models = _open_models(config, given_base, allow_pickle=allow_pickle)
    base = given_base if given_base is not None else models[0]
    if given_base is not None and is_cross_architecture(config, given_base, models):
        return plan_cross_architecture(config, given_base, models, methods, allow_pickle=allow_pickle)
    if config.merge_method == "adamms":
        raise ConfigError(
            "method 'adamms' merges a model of another architecture into `base_model:`; both here are "
            f"{_architecture(base)[0]!r}: use linear or task_arithmetic for models of one architecture"
        )
    check_same_architecture(base, models)
    layout = _layout_for(config, base)
    models = [reconcile_names(m, base, layout) for m in models]
    classes = layout.classify_all(base.names)
    check_coverage(base, models, layout)
    out_dtype = torch_dtype(config.dtype) if config.dtype else base_dtype(base)
    tasks = _tasks(base, classes, config, methods, out_dtype, merged=None)
    return MergePlan(config, base, list(models), layout, tasks, methods, out_dtype)


def _tasks(
    base: CheckpointReader,
    classes: dict[str, Classification],
    config: MergeConfig,
    methods: dict[str, ResolvedMethod | None],
    out_dtype: torch.dtype,
    *,
    merged: set[str] | None,
) -> list[TensorTask]:
    """One task per base tensor; with ``merged``, tensors outside it are copied from the base."""
    tasks = []
    for name in base.names:
        info = base.info(name)
        floating = info.dtype.is_floating_point and (merged is None or name in merged)
        action = _action_for(name, classes[name], config, methods) if floating else None
        dtype = out_dtype if info.dtype.is_floating_point else info.dtype
        tasks.append(TensorTask(name, classes[name], info.shape, dtype, action))
    return tasks


def _has_config(reader: ModelReader) -> bool:
    return not isinstance(reader, CheckpointReader) or (reader.path / "config.json").exists()


def is_cross_architecture(config: MergeConfig, base: CheckpointReader, models: list[ModelReader]) -> bool:
    """Whether the merge maps models across architectures: an ``ancestor:``, or a model of another architecture
    (or with a ``mapping:``) than the base."""
    if config.ancestor is not None or any(e.mapping for e in config.models):
        return True
    if not all(_has_config(r) for r in (base, *models)):
        return False  # check_same_architecture reports the missing config.json
    return any(isinstance(m, CheckpointReader) and _architecture(m) != _architecture(base) for m in models)


def map_onto(target: CheckpointReader, source: CheckpointReader, mapping: str | None) -> TensorMap:
    """The map of ``source`` onto ``target``'s names: from the mapping file, else derived (shared LLM)."""
    return map_from_file(target, source, mapping) if mapping else derive_map(target, source)


def _needs_map(entry: ModelEntry, reader: ModelReader, target: CheckpointReader) -> bool:
    return bool(entry.mapping) or (
        isinstance(reader, CheckpointReader) and _architecture(reader) != _architecture(target)
    )


def plan_cross_architecture(
    config: MergeConfig,
    target: CheckpointReader,
    models: list[ModelReader],
    methods: dict[str, ResolvedMethod | None],
    *,
    allow_pickle: bool,
) -> MergePlan:
    """The plan of a merge into ``target``'s architecture of models that share its language model.

    Each model of another architecture is read through its map (its ``mapping:`` file, else derived). With
    ``ancestor:`` the task vectors' base is the ancestor mapped onto the target (the target's own values where it
    has none). A tensor is merged only where every map covers it; all others (the target's vision tower and
    projector, tensors of another shape) are the target's, and the maps list why (:meth:`MergePlan.mapping_summary`).
    """
    for reader in (target, *models):
        if not _has_config(reader):
            check_same_architecture(target, [reader])  # raises the missing config.json error
    layout = _layout_for(config, target)
    classes = layout.classify_all(target.names)
    maps: dict[str, TensorMap] = {}
    base: CheckpointReader | MappedReader = target
    if config.ancestor is not None:
        if config.merge_method == "adamms":
            raise ConfigError(
                "`ancestor:` is the base of task vectors; method 'adamms' interpolates `base_model` and the other "
                "model directly. Remove `ancestor:`, or use a task-vector method (task_arithmetic, ties, dare_ties, …)"
            )
        ancestor = open_base(_path(config.ancestor), allow_pickle=allow_pickle)
        maps[str(ancestor.path)] = ancestor_map = map_onto(target, ancestor, None)
        base = MappedReader(ancestor, ancestor_map, target, target.names)
    readers: list[ModelReader | MappedReader] = []
    for entry, reader in zip(config.models, models, strict=True):
        if _needs_map(entry, reader, target):
            if not isinstance(reader, CheckpointReader):
                raise MappingError(f"{reader.path}: a LoRA adapter cannot be mapped across architectures")
            try:
                maps[str(reader.path)] = tmap = map_onto(target, reader, entry.mapping)
            except MappingError as e:
                got, want = _architecture(reader), _architecture(target)
                raise MappingError(
                    f"{reader.path}: architecture {got[0]!r} {list(got[1])} differs from the base {target.path} "
                    f"({want[0]!r} {list(want[1])}) and cannot be mapped onto it: {e}"
                ) from None
            readers.append(MappedReader(reader, tmap, base, target.names))
        else:
            readers.append(reconcile_names(reader, target, layout))
    if config.merge_method == "adamms" and not any(isinstance(r, MappedReader) for r in readers):
        raise ConfigError("method 'adamms' needs its `models:` entry to be of another architecture than `base_model:`")
    check_coverage(target, [r for r in readers if not isinstance(r, MappedReader)], layout)
    merged = set(target.names)
    for tmap in maps.values():
        merged &= set(tmap.entries)
    out_dtype = torch_dtype(config.dtype) if config.dtype else base_dtype(target)
    tasks = _tasks(target, classes, config, methods, out_dtype, merged=merged)
    return MergePlan(config, base, readers, layout, tasks, methods, out_dtype, target=target, maps=maps)


def _path(p: str | None) -> Path:
    if p is None:
        raise ConfigError("missing model path")
    return Path(p).expanduser()
