"""Build the miniature zoo: data sets, a base, experts of three kinds, and a manifest, atomically.

Layout of a zoo directory::

    manifest.json
    data/held_in/<family>.jsonl    multiple choice (uqmerge's MC JSONL; images in data/held_in/images/)
    data/held_out/<family>.jsonl   open-ended, exact match (images in data/held_out/images/)
    models/base/                   Hugging Face LlavaForConditionalGeneration + LlavaProcessor
    models/<expert-id>/            one directory per expert, same format

Recipe: task items of the zoo seed (:func:`uqmerge.zoo.tasks.generate_family`); a random tiny LLaVA
trained on every family for a short, fixed number of steps (it partly knows each family), or held:
trained on the families below a target accuracy until every family reaches it
(``BaseRecipe.hold_below``; optionally rejecting a check interval that made a family jump past
``hold_reject_above`` and retrying it at half the learning rate; its validation trace goes into the
manifest), optionally on a vision tower
pre-trained with a throwaway language model (``BaseRecipe.vision_pretrain_steps``); then each expert fine-tuned
from the base on one family with the vision tower frozen (checked bit-identical to the base's after
training). The base trains on the first
``train_items_per_family`` items of each family's ``train`` split, the experts on the next
``train_items_per_family`` ones (a held base validates on the items after those).

Determinism: every seed is derived from the zoo seed with SHA-256 (:func:`uqmerge.core.seeds.stable_seed`),
training uses deterministic algorithms and no dropout, so the same seed, preset, library versions,
thread count and expert workers write identical safetensors. The experts may train in parallel worker
processes (one thread each by default on a multi-core machine); an expert trained in a one-thread worker is
bit-identical to one trained in a one-thread build, so the experts depend only on the base.
The build goes into a temporary sibling directory that is renamed into place at the end; an existing zoo
with the same preset, seed and code version is reused.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

import uqmerge
from uqmerge.core.errors import CheckpointError, OutputError
from uqmerge.core.seeds import stable_seed
from uqmerge.zoo.model import init_base_model, load_zoo_model, save_zoo_model
from uqmerge.zoo.presets import BaseRecipe, ExpertRecipe, ZooPreset, resolve_preset
from uqmerge.zoo.tasks import FAMILIES, TaskItem, generate_family, write_eval_sets
from uqmerge.zoo.train import (
    FamilyGate,
    TrainConfig,
    TrainingSet,
    build_training_set,
    train_model,
    vision_tower_of,
)

logger = logging.getLogger(__name__)

ZOO_CODE_VERSION = "6"
"""Bump when the builder's output for a given preset and seed changes; cached zoos are then rebuilt."""

MANIFEST = "manifest.json"
ManifestDict = dict[str, Any]
StepCallback = Callable[[str, int], None]


def read_manifest(zoo_dir: str | Path) -> ManifestDict:
    """The parsed ``manifest.json`` of a zoo directory."""
    path = Path(zoo_dir) / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise CheckpointError(f"{path} does not exist; build the zoo with `uqmerge zoo build {zoo_dir}`") from e
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read zoo manifest {path}: {e}; rebuild with --force") from e


def _reusable(out: Path, preset: ZooPreset, seed: int) -> bool:
    if not (out / MANIFEST).is_file():
        return False
    try:
        manifest = read_manifest(out)
    except CheckpointError:
        return False
    same = (
        manifest.get("code_version") == ZOO_CODE_VERSION
        and manifest.get("preset") == preset.name
        and manifest.get("preset_fingerprint") == preset.fingerprint()
        and manifest.get("seed") == seed
    )
    paths = [manifest.get("base", {}).get("path")]
    paths += [e.get("path") for e in manifest.get("experts", [])]
    paths += [d.get("path") for d in manifest.get("datasets", [])]
    return same and all(p and (out / p).exists() for p in paths)


def _split_items(
    family: str, n: int, seed: int, validation: int = 0
) -> tuple[list[TaskItem], list[TaskItem], list[TaskItem]]:
    """The base's, the experts' and the held base's validation items of ``family``: disjoint runs of the
    train split (growing ``validation`` leaves the first two unchanged)."""
    items = generate_family(family, "train", 2 * n + validation, seed)
    return items[:n], items[n : 2 * n], items[2 * n :]


def families_to_train(accuracy: Mapping[str, float], target: float) -> list[str]:
    """The families a held base keeps training on: those scoring below ``target`` (none: the base is done)."""
    return [family for family, score in accuracy.items() if score < target]


def jumped_families(
    accepted: Mapping[str, float] | None, accuracy: Mapping[str, float], ceiling: float | None
) -> list[str]:
    """The families now above ``ceiling`` that were at or below it at the last accepted check (none without
    a ceiling or before the first accepted check)."""
    if ceiling is None or accepted is None:
        return []
    return [family for family, score in accuracy.items() if score > ceiling and accepted[family] <= ceiling]


class _HoldBelow:
    """Steers a held base's :class:`FamilyGate` from its validation scores every ``check_every`` steps."""

    def __init__(self, model: Any, processor: Any, items: Sequence[TaskItem], recipe: BaseRecipe, gate: FamilyGate):
        from uqmerge.evaluate.open_ended import OpenItem, encode_open_items

        self.model, self.processor, self.recipe, self.gate = model, processor, recipe, gate
        # Encoded once: re-encoding the same items at every check cost 40 % of a check .
        self.items = encode_open_items(
            processor,
            [OpenItem(item.id, item.family, item.question, item.answer, item.image) for item in items],
            batch_size=100,
        )
        self.trace: list[dict[str, Any]] = []
        self.accepted: Mapping[str, float] | None = None  # the scores of the last accepted check
        self.halvings = 0

    def __call__(self, step: int) -> None:
        if (step + 1) % self.recipe.hold_check_every:
            return
        from uqmerge.evaluate.open_ended import evaluate_open_ended

        accuracy = evaluate_open_ended(self.model, self.processor, self.items, batch_size=100)["accuracy"]
        record: dict[str, Any] = {"step": step + 1, "accuracy": {f: round(a, 4) for f, a in accuracy.items()}}
        jumped = jumped_families(self.accepted, accuracy, self.recipe.hold_reject_above)
        if jumped and self.halvings < self.recipe.hold_max_halvings:
            # A family that jumped past the target in one interval stayed there (zoo v5, seed 1): undo the
            # interval and retry it with smaller steps.
            self.gate.restore_state = True
            self.halvings += 1
            self._set_lr_scale()
            self.trace.append(record | {"rejected": jumped, "lr_factor": 0.5**self.halvings})
            return
        self.halvings = max(0, self.halvings - 1)
        self.accepted = accuracy
        self.gate.save_state = self.recipe.hold_reject_above is not None
        training = families_to_train(accuracy, self.recipe.hold_below)
        # Every family at target: stop here. Training on the lowest one instead lets the others drift
        # up through the shared weights (zoo v3 ended with families at 83-90 % against a 50 % target).
        self.gate.stop = not training
        self.gate.active = {FAMILIES.index(family) for family in training} or self.gate.active
        self._set_lr_scale()
        record["training"] = training
        if self.recipe.hold_reject_above is not None:
            record["lr_factor"] = 0.5**self.halvings
        self.trace.append(record)

    def _set_lr_scale(self) -> None:
        # A family trained alone would otherwise take a full batch's step: it jumped from 45 to 96 % within
        # ten steps, and the families left out collapsed within 10-20 steps.
        share = 1.0 if self.gate.active is None else len(self.gate.active) / len(self.recipe.families)
        self.gate.lr_scale = share * 0.5**self.halvings


@contextmanager
def _staging_dir(out: Path) -> Iterator[Path]:
    """A fresh temporary sibling of ``out`` that is removed unless it was renamed away."""
    staging = out.parent / f".{out.name}.building-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        yield staging
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _replace_dir(staging: Path, out: Path) -> None:
    """Rename ``staging`` to ``out``; an existing ``out`` is moved aside first and deleted afterwards."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        if old.exists():
            shutil.rmtree(old)
        out.rename(old)
    staging.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _check_output(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} exists and is not a directory; choose another zoo directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file() and not force:
        raise OutputError(
            f"{out} is not empty and holds no zoo manifest; refusing to replace it. Choose an empty or new "
            "directory, or pass --force to replace it"
        )


def _vision_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in vision_tower_of(model).state_dict().items()}


def _check_vision_tower(model: torch.nn.Module, reference: dict[str, torch.Tensor], expert_id: str) -> None:
    for name, tensor in vision_tower_of(model).state_dict().items():
        if not torch.equal(tensor, reference[name]):
            raise RuntimeError(f"expert {expert_id!r}: vision tower tensor {name!r} changed during fine-tuning")


class _Evaluator:
    """Held-out open-ended exact match of in-memory models on the zoo's data."""

    def __init__(self, paths: dict[str, Path]) -> None:
        from uqmerge.evaluate.open_ended import load_open_items

        self.items = [item for family, path in paths.items() for item in load_open_items(path, family=family)]
        self.encoded: Any = None  # the items' processor batches, made at the first call (every model shares them)

    def __call__(self, model: Any, processor: Any) -> dict[str, float]:
        from uqmerge.evaluate.open_ended import encode_open_items, evaluate_open_ended

        if self.encoded is None:
            self.encoded = encode_open_items(processor, self.items, batch_size=100)
        result = evaluate_open_ended(model, processor, self.encoded, batch_size=100)
        return {family: round(acc, 4) for family, acc in result["accuracy"].items()}


def _train(
    model: Any,
    processor: Any,
    data: TrainingSet,
    config: TrainConfig,
    label: str,
    on_step: StepCallback | None,
    hold: _HoldBelow | None = None,
) -> dict[str, Any]:
    def after_step(step: int, _loss: float) -> None:
        if hold is not None:
            hold(step)
        if on_step is not None:
            on_step(label, step)

    gate = None if hold is None else hold.gate
    stats = train_model(model, data, config, processor, on_step=after_step, gate=gate)
    return {
        "train_seconds": round(stats.seconds, 3),
        "steps_taken": stats.steps,
        "final_loss": None if stats.final_loss is None else round(stats.final_loss, 6),
        "trainable_parameters": stats.trainable_parameters,
    }


def _expert_items(
    expert: ExpertRecipe, own: Sequence[TaskItem], base_items: dict[str, list[TaskItem]]
) -> list[TaskItem]:
    """The expert's family items, plus a ``replay`` share of the base's items of the other families."""
    others = [family for family in base_items if family != expert.family]
    if not expert.replay or not others:
        return list(own)
    per_family = round(len(own) * expert.replay / (1.0 - expert.replay) / len(others))
    return [*own, *(item for family in others for item in base_items[family][:per_family])]


def _expert_entry(expert: ExpertRecipe, seed: int) -> dict[str, Any]:
    return {
        "id": expert.id,
        "kind": expert.kind,
        "family": expert.family,
        "steps": expert.steps,
        "lr": expert.lr,
        "batch_size": expert.batch_size,
        "corruption": expert.corruption,
        "label_map": expert.label_map(),
        "replay": expert.replay,
        "seed": seed,
        "path": f"models/{expert.id}",
    }


class _ZooBuilder:
    """Trains the base and the experts of one zoo into a staging directory, one model in memory."""

    def __init__(self, root: Path, preset: ZooPreset, seed: int, on_step: StepCallback | None) -> None:
        self.root, self.preset, self.seed, self.on_step = root, preset, seed, on_step
        self.scores: dict[str, dict[str, float]] = {}
        self.evaluator: _Evaluator | None = None
        self.model: Any = None
        self.processor: Any = None

    def write_data(self) -> list[dict[str, Any]]:
        """Write the held-in and held-out sets; generate the base's and the experts' training items."""
        preset = self.preset
        sizes = {"held_in": preset.eval_items_per_family, "held_out": preset.held_out_items}
        paths = write_eval_sets(
            self.root / "data",
            self.seed,
            families=FAMILIES,
            sizes=sizes,
            shuffle_options=preset.shuffle_options,
        )
        self.held_out_paths = paths["held_out"]
        self.generate_training_items()
        return [
            {
                "family": family,
                "split": split,
                "format": "mc" if split == "held_in" else "open",
                "path": path.relative_to(self.root).as_posix(),
                "n": sizes[split],
            }
            for split, by_family in paths.items()
            for family, path in by_family.items()
        ]

    def generate_training_items(self) -> None:
        """Generate the base's, the experts' and the held base's validation items; set up the evaluator."""
        preset = self.preset
        if preset.evaluate:
            self.evaluator = _Evaluator(self.held_out_paths)
        families = dict.fromkeys((*preset.base.families, *(e.family for e in preset.experts)))
        held = preset.base.hold_validation_items if preset.base.hold_below is not None else 0
        self.train_items = {f: _split_items(f, preset.train_items_per_family, self.seed, held) for f in families}
        self.taught = {
            family: [item for item in self.train_items[family][0] if preset.base.teaches(family, item.answer)]
            for family in preset.base.families
        }

    def _training_set(
        self, items: Sequence[TaskItem], data_seed: int, label_map: dict[str, str] | None = None
    ) -> TrainingSet:
        return build_training_set(
            items,
            self.processor,
            seed=data_seed,
            label_map=label_map,
            system_fraction=self.preset.system_fraction,
            shuffle_options=self.preset.shuffle_options,
        )

    def _config(self, steps: int, lr: float, batch_size: int, seed: int, *, vision_tower: bool) -> TrainConfig:
        """One training run's settings (the preset's MC share; ``vision_tower``: whether the tower trains)."""
        return TrainConfig(
            steps=steps,
            lr=lr,
            batch_size=batch_size,
            mc_fraction=self.preset.mc_fraction,
            train_vision_tower=vision_tower,
            seed=seed,
        )

    def _finish(self, model_id: str, path: str) -> None:
        save_zoo_model(self.model, self.processor, self.root / path)
        if self.evaluator is not None:
            self.scores[model_id] = self.evaluator(self.model, self.processor)

    def build_base(self) -> dict[str, Any]:
        """Initialise the model from a derived seed and train every part of it on the base's items."""
        recipe = self.preset.base
        init_seed = stable_seed(self.seed, "zoo", "init")
        init_dir = init_base_model(self.root / "models" / ".init", self.preset.architecture, seed=init_seed)
        self.model, self.processor = load_zoo_model(init_dir)
        items = [item for family in recipe.families for item in self.taught[family]]
        vision_entry = None
        if recipe.vision_pretrain_steps:
            vision_entry = self._pretrain_vision_tower(items)
            tower = _vision_state(self.model)
            self.model, self.processor = load_zoo_model(init_dir)  # the language model starts afresh
            vision_tower_of(self.model).load_state_dict(tower)
        shutil.rmtree(init_dir)
        base_seed = stable_seed(self.seed, "zoo", "base")
        config = self._config(
            recipe.steps, recipe.lr, recipe.batch_size, base_seed, vision_tower=not recipe.vision_pretrain_steps
        )
        hold = None
        if recipe.hold_below is not None:
            gate = FamilyGate(torch.tensor([FAMILIES.index(item.family) for item in items]))
            validation = [item for family in recipe.families for item in self.train_items[family][2]]
            hold = _HoldBelow(self.model, self.processor, validation, recipe, gate)
        data = self._training_set(items, base_seed)
        stats = _train(self.model, self.processor, data, config, "base", self.on_step, hold)
        entry = {"id": "base", "path": "models/base", "recipe": asdict(recipe), "init_seed": init_seed}
        entry |= {"seed": base_seed, **stats}
        if vision_entry is not None:
            entry["vision_pretraining"] = vision_entry
        if hold is not None:
            entry["hold_trace"] = hold.trace
        self._finish("base", entry["path"])
        logger.info("trained the base in %.1f s", entry["train_seconds"])
        return entry

    def _pretrain_vision_tower(self, items: Sequence[TaskItem]) -> dict[str, Any]:
        """Train the whole model on the base's items for ``vision_pretrain_steps`` (only its tower is kept)."""
        recipe = self.preset.base
        vision_seed = stable_seed(self.seed, "zoo", "vision")
        lr = recipe.lr if recipe.vision_pretrain_lr is None else recipe.vision_pretrain_lr
        batch_size = recipe.vision_pretrain_batch_size or recipe.batch_size
        config = self._config(recipe.vision_pretrain_steps, lr, batch_size, vision_seed, vision_tower=True)
        data = self._training_set(items, vision_seed)
        stats = _train(self.model, self.processor, data, config, "vision", self.on_step)
        logger.info("pre-trained the vision tower in %.1f s", stats["train_seconds"])
        return {"seed": vision_seed, **stats}

    def build_experts(self, workers: int = 1, threads_per_worker: int = 1) -> list[dict[str, Any]]:
        """Fine-tune each expert from the base's weights, vision tower frozen and checked unchanged.

        With ``workers`` > 1 the experts train in that many spawned processes of ``threads_per_worker``
        threads each, from the base saved in ``models/base``; otherwise one after another in this process.
        """
        if workers > 1:
            done = _train_experts_in_workers(self, workers, threads_per_worker)
        else:
            base_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            done = {e.id: self.train_expert(e, base_state) for e in self.preset.experts}
        entries = []
        for expert in self.preset.experts:
            entry, scores = done[expert.id]
            if scores is not None:
                self.scores[expert.id] = scores
            entries.append(entry)
        return entries

    def train_expert(
        self, expert: ExpertRecipe, base_state: dict[str, torch.Tensor]
    ) -> tuple[dict[str, Any], dict[str, float] | None]:
        """Train, check, save and evaluate one expert from ``base_state``: its manifest entry and scores."""
        expert_seed = stable_seed(self.seed, "zoo", "expert", expert.id)
        self.model.load_state_dict(base_state)
        vision = _vision_state(self.model)
        items = _expert_items(expert, self.train_items[expert.family][1], self.taught)
        config = self._config(expert.steps, expert.lr, expert.batch_size, expert_seed, vision_tower=False)
        data = self._training_set(items, expert_seed, expert.label_map())
        entry = _expert_entry(expert, expert_seed)
        entry |= _train(self.model, self.processor, data, config, expert.id, self.on_step)
        _check_vision_tower(self.model, vision, expert.id)
        self._finish(expert.id, entry["path"])
        logger.info("trained expert %s in %.1f s", expert.id, entry["train_seconds"])
        return entry, self.scores.get(expert.id)


# State of one expert worker process: its progress queue and the builder it reuses across its experts.
_worker: dict[str, Any] = {}


def _init_expert_worker(threads: int, progress: Any) -> None:
    torch.set_num_threads(threads)
    _worker["progress"] = progress


def _expert_job(
    root: Path, preset: ZooPreset, seed: int, held_out_paths: dict[str, Path], expert_id: str
) -> tuple[dict[str, Any], dict[str, float] | None]:
    """Train one expert of the zoo staged in ``root`` in a worker process (from ``models/base``)."""
    key = (str(root), preset.fingerprint(), seed)
    if _worker.get("key") != key:
        progress = _worker["progress"]
        builder = _ZooBuilder(root, preset, seed, lambda label, step: progress.put((label, step)))
        builder.held_out_paths = held_out_paths
        builder.generate_training_items()
        builder.model, builder.processor = load_zoo_model(root / "models" / "base")
        base_state = {k: v.detach().clone() for k, v in builder.model.state_dict().items()}
        _worker.update(key=key, builder=builder, base_state=base_state)
    builder = _worker["builder"]
    expert = next(e for e in preset.experts if e.id == expert_id)
    return builder.train_expert(expert, _worker["base_state"])


def _train_experts_in_workers(
    builder: _ZooBuilder, workers: int, threads_per_worker: int
) -> dict[str, tuple[dict[str, Any], dict[str, float] | None]]:
    """Train ``builder``'s experts in ``workers`` spawned processes, the longest first; relay their progress."""
    import contextlib
    import multiprocessing
    import queue

    context = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools (deadlocks)
    progress = context.Queue()
    preset = builder.preset
    longest_first = sorted(preset.experts, key=lambda e: -e.steps)

    def relay(timeout: float) -> None:
        with contextlib.suppress(queue.Empty):  # the queue is drained
            message = progress.get(timeout=timeout)
            while True:
                if builder.on_step is not None:
                    builder.on_step(*message)
                message = progress.get_nowait()

    pool = context.Pool(workers, initializer=_init_expert_worker, initargs=(threads_per_worker, progress))
    try:
        pending = {
            e.id: pool.apply_async(_expert_job, (builder.root, preset, builder.seed, builder.held_out_paths, e.id))
            for e in longest_first
        }
        done = {}
        while pending:
            relay(timeout=0.2)
            for expert_id in [i for i, result in pending.items() if result.ready()]:
                done[expert_id] = pending.pop(expert_id).get()  # a worker's error is raised here
                logger.info("trained expert %s in %.1f s", expert_id, done[expert_id][0]["train_seconds"])
        pool.close()  # workers exit on their own: terminating them would leak the queue's semaphores
        pool.join()
        relay(timeout=0.0)
    finally:
        pool.terminate()  # on an error (or Ctrl-C): stop the other experts' training now
        progress.close()
        progress.join_thread()
    return done


def expert_parallelism(n_experts: int, threads: int, workers: int | None = None) -> tuple[int, int]:
    """``(processes, threads each)`` that train the experts: by default one process per thread (up to the
    number of experts); one process is this one, at every thread."""
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise OutputError(f"expert workers must be a positive integer, got {workers!r}")
    processes = min(threads if workers is None else workers, max(1, n_experts))
    return (processes, max(1, threads // processes)) if processes > 1 else (1, threads)


def _build_into(
    root: Path, preset: ZooPreset, seed: int, on_step: StepCallback | None, expert_workers: int | None = None
) -> ManifestDict:
    """Write data, models and return the manifest of one zoo built in ``root`` (a staging directory)."""
    import transformers

    builder = _ZooBuilder(root, preset, seed, on_step)
    start = time.perf_counter()
    datasets = builder.write_data()
    timings = {"data_seconds": time.perf_counter() - start}
    tick = time.perf_counter()
    base = builder.build_base()
    timings["base_seconds"] = time.perf_counter() - tick
    tick = time.perf_counter()
    workers, worker_threads = expert_parallelism(len(preset.experts), torch.get_num_threads(), expert_workers)
    experts = builder.build_experts(workers, worker_threads)
    timings["experts_seconds"] = time.perf_counter() - tick
    timings["total_seconds"] = time.perf_counter() - start
    return {
        "format": "uqmerge-zoo",
        "code_version": ZOO_CODE_VERSION,
        "uqmerge_version": uqmerge.__version__,
        "preset": preset.name,
        "preset_fingerprint": preset.fingerprint(),
        "seed": seed,
        "families": list(FAMILIES),
        "architecture": preset.architecture.as_dict(),
        "parameters": sum(p.numel() for p in builder.model.parameters()),
        "training": {
            "train_items_per_family": preset.train_items_per_family,
            "mc_fraction": preset.mc_fraction,
            "system_fraction": preset.system_fraction,
            "shuffle_options": preset.shuffle_options,
            "vision_tower": (
                "pre-trained with a throwaway language model, frozen in the base and experts (checked bit-identical)"
                if preset.base.vision_pretrain_steps
                else "trained in the base, frozen in experts (checked bit-identical)"
            ),
        },
        "base": base,
        "experts": experts,
        "datasets": datasets,
        "held_out_exact_match": builder.scores,
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "environment": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "torch_threads": torch.get_num_threads(),
            "expert_workers": workers,
            "expert_threads": worker_threads,
        },
    }


def build_zoo(
    out_dir: str | Path,
    preset: str | ZooPreset = "mini",
    seed: int = 0,
    *,
    force: bool = False,
    on_step: StepCallback | None = None,
    expert_workers: int | None = None,
) -> Path:
    """Build (or reuse) the zoo of ``preset`` and ``seed`` in ``out_dir``; return ``out_dir``.

    An existing zoo with the same preset (name and fingerprint), seed and :data:`ZOO_CODE_VERSION` is
    returned as it is unless ``force``. A zoo of other settings is replaced; a non-empty directory
    without a manifest is refused unless ``force``. ``on_step(model_id, step)`` is called after every
    training step (progress bars).

    The experts train in ``expert_workers`` spawned processes at once (default: one per torch thread, up to
    the number of experts), each at ``threads // expert_workers`` threads; two one-thread processes train
    about 1.3 times as many steps per second as one two-thread process on two cores. A script that builds
    with more than one worker needs the ``if __name__ == "__main__":`` guard, as any spawning code does.
    """
    recipe = resolve_preset(preset)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise OutputError(f"the zoo seed must be a non-negative integer, got {seed!r}")
    expert_parallelism(len(recipe.experts), 1, expert_workers)  # refuse a bad worker count before any work
    out = Path(out_dir).expanduser().absolute()
    if not force and _reusable(out, recipe, seed):
        logger.info("reusing the %s zoo (seed %d) in %s", recipe.name, seed, out)
        return out
    _check_output(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    logger.info("building the %s zoo (seed %d, %d experts) in %s", recipe.name, seed, len(recipe.experts), out)
    with _staging_dir(out) as staging:
        manifest = _build_into(staging, recipe, seed, on_step, expert_workers)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _replace_dir(staging, out)
    logger.info("built the %s zoo in %.1f s", recipe.name, manifest["timings"]["total_seconds"])
    return out


def _step_counter(preset: ZooPreset, report: Callable[[int, str], None]) -> StepCallback:
    """An ``on_step`` that reports the build's steps done: a model's steps so far, every earlier stage in
    full once a later one starts (a held base that stops early skips its unused steps), the experts summed
    (they may train at once)."""
    ceilings = dict(preset.training_runs)
    stages = [label for label, _ in preset.training_runs if label in ("vision", "base")]
    done: dict[str, int] = {}

    def on_step(model_id: str, step: int) -> None:
        earlier = stages[: stages.index(model_id)] if model_id in stages else stages
        done.update({label: ceilings[label] for label in earlier})
        done[model_id] = step + 1
        report(sum(done.values()), model_id)

    return on_step


def build_zoo_with_progress(
    out_dir: str | Path,
    preset: str | ZooPreset = "mini",
    seed: int = 0,
    *,
    force: bool = False,
    quiet: bool = False,
    expert_workers: int | None = None,
) -> Path:
    """:func:`build_zoo` with a progress bar over the build's training steps (none if ``quiet`` or reused)."""
    recipe = resolve_preset(preset)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("steps"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=quiet,
        transient=True,
    ) as progress:
        task = progress.add_task("zoo", total=recipe.total_steps, visible=False)

        def report(done: int, model_id: str) -> None:
            progress.update(task, completed=done, description=f"training {model_id}", visible=True)

        return build_zoo(
            out_dir, recipe, seed, force=force, on_step=_step_counter(recipe, report), expert_workers=expert_workers
        )
