"""The inputs of a coefficient search: data specs loaded, a seeded sample drawn, responses generated, accuracy.

Multiple-choice specs (anything `uqmerge uq` reads) are prepared as `uqmerge eval` prepares them (each item's own
options, then ``I don't know`` and ``None of the above``; no distractors); a local JSONL without ``options`` holds
open-ended items. Every input is keyed ``dataset/id``. ``sample`` keeps the inputs of lowest
``stable_unit(seed, "search-sample", key)``, in data order, so the draw does not depend on the order of the rows.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uqmerge.core.errors import DataError
from uqmerge.core.prompts import format_user_text
from uqmerge.core.seeds import stable_unit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchInput:
    """One input: its key, dataset, the user text generated from (the question, with options for MC) and image."""

    key: str
    dataset: str
    text: str
    load_image: Callable[[], Any]
    multiple_choice: bool
    answer: str | None = None
    """The reference answer of an open-ended input (multiple-choice answers are scored by the option letters)."""


@dataclass(frozen=True)
class SearchInputs:
    """The sampled inputs, the multiple-choice datasets restricted to them, and the open-ended ones among them."""

    inputs: tuple[SearchInput, ...]
    mc_datasets: tuple[Any, ...]
    mc_specs: tuple[str, ...]
    open_files: tuple[Path, ...]

    @property
    def keys(self) -> list[str]:
        return [i.key for i in self.inputs]

    @property
    def open_inputs(self) -> list[SearchInput]:
        return [i for i in self.inputs if not i.multiple_choice]

    @property
    def unlabelled(self) -> list[str]:
        """Multiple-choice datasets without a single labelled item among the sampled inputs."""
        return [d.name for d in self.mc_datasets if all(it.answer is None for it in d.items)]

    @property
    def has_labels(self) -> bool:
        """Every dataset can give an accuracy (open-ended items always carry their answer)."""
        return not self.unlabelled

    def uq_datasets(self, config: Any) -> list[Any]:
        """The multiple-choice inputs prepared with the UQ settings (padding, seed) for the uncertainty measure."""
        from uqmerge.uq.data import load_uq_datasets

        if self.open_files:
            raise DataError(f"the UQ measure scores multiple-choice items only; {self.open_files[0]} is open-ended")
        keep = set(self.keys)
        prepared = load_uq_datasets(list(self.mc_specs), seed=config.seed, real_options=config.real_options)
        restricted = [
            dataclasses.replace(d, items=tuple(it for it in d.items if f"{d.name}/{it.id}" in keep)) for d in prepared
        ]
        return [d for d in restricted if d.items]


def sample_keys(keys: Sequence[str], k: int | None, *, seed: int) -> list[str]:
    """The ``k`` keys of lowest ``stable_unit(seed, "search-sample", key)``, in their given order (None: all)."""
    if k is None or k >= len(keys):
        return list(keys)
    ranked = sorted(range(len(keys)), key=lambda i: (stable_unit(seed, "search-sample", keys[i]), i))
    return [keys[i] for i in sorted(ranked[:k])]


def _unique(key: str, seen: set[str], where: str) -> str:
    if key in seen:
        raise DataError(f"{where}: input {key!r} appears twice; inputs are keyed by dataset and id")
    seen.add(key)
    return key


def load_search_inputs(specs: Sequence[str], *, sample: int | None, seed: int) -> SearchInputs:
    """Load every spec, key the inputs ``dataset/id`` and draw ``sample`` of them (seeded)."""
    from uqmerge.evaluate.model_eval import split_eval_specs
    from uqmerge.evaluate.open_ended import load_open_items
    from uqmerge.uq.data import load_uq_datasets

    mc_specs, open_files = split_eval_specs(specs)
    # real_options=2: no distractors, each item keeps its own options (as `uqmerge eval`).
    mc = load_uq_datasets(mc_specs, seed=seed, real_options=2) if mc_specs else []
    seen: set[str] = set()
    inputs: list[SearchInput] = []
    for d in mc:
        for it in d.items:
            inputs.append(
                SearchInput(
                    key=_unique(f"{d.name}/{it.id}", seen, d.spec),
                    dataset=d.name,
                    text=format_user_text(it.question, it.options, it.hint),
                    load_image=it.image.load,
                    multiple_choice=True,
                )
            )
    names = {d.name for d in mc}
    for path in open_files:
        # A held-out file may share its stem with a multiple-choice one (the zoo's held_in/held_out families).
        name, n = path.stem, 1
        while name in names:
            n += 1
            name = f"{path.stem} (open)" if n == 2 else f"{path.stem} (open #{n - 1})"
        names.add(name)
        for item in load_open_items(path, family=name):
            inputs.append(
                SearchInput(
                    key=_unique(f"{name}/{item.id}", seen, str(path)),
                    dataset=name,
                    text=item.question,
                    load_image=item.load_image,
                    multiple_choice=False,
                    answer=item.answer,
                )
            )
    if not inputs:
        raise DataError(f"search.data {list(specs)} hold no inputs")
    if sample is not None and sample > len(inputs):
        log.warning("search.sample is %d but the data hold %d inputs: all of them are used", sample, len(inputs))
    keep = set(sample_keys([i.key for i in inputs], sample, seed=seed))
    chosen = tuple(i for i in inputs if i.key in keep)
    mc_kept = [dataclasses.replace(d, items=tuple(it for it in d.items if f"{d.name}/{it.id}" in keep)) for d in mc]
    log.info("search inputs: %d of %d (seed %d)", len(chosen), len(inputs), seed)
    return SearchInputs(chosen, tuple(d for d in mc_kept if d.items), tuple(mc_specs), tuple(open_files))


def generate_responses(
    model: Any,
    processor: Any,
    inputs: Sequence[SearchInput],
    *,
    batch_size: int,
    max_new_tokens: int,
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """Greedy responses to ``inputs`` in order, ``batch_size`` at a time (the open-ended evaluation's generation)."""
    from uqmerge.evaluate.open_ended import generate_answers

    was_training = model.training
    model.eval()
    out: list[str] = []
    try:
        for start in range(0, len(inputs), batch_size):
            chunk = inputs[start : start + batch_size]
            images = [i.load_image() for i in chunk]
            texts = [i.text for i in chunk]
            out.extend(generate_answers(model, processor, images, texts, max_new_tokens=max_new_tokens))
            if on_batch is not None:
                on_batch(len(chunk))
    finally:
        model.train(was_training)
    return out


def accuracy(
    model: Any, processor: Any, inputs: SearchInputs, open_responses: Sequence[str], *, batch_size: int
) -> float:
    """Labelled accuracy: the unweighted mean over datasets of multiple-choice accuracy (the letter of highest
    probability, `uqmerge eval`'s) and open-ended exact match of ``open_responses`` (one per open input)."""
    from uqmerge.evaluate.model_eval import evaluate_loaded_model
    from uqmerge.evaluate.open_ended import normalise_answer

    per_dataset: dict[str, float] = {}
    if inputs.mc_datasets:
        mc = evaluate_loaded_model(model, processor, list(inputs.mc_datasets), [], batch_size=batch_size)
        per_dataset.update(mc["mc_accuracy"])
    open_inputs = inputs.open_inputs
    if len(open_responses) != len(open_inputs):
        raise DataError(f"{len(open_responses)} responses for {len(open_inputs)} open-ended inputs")
    by_dataset: dict[str, list[bool]] = {}
    for item, response in zip(open_inputs, open_responses, strict=True):
        assert item.answer is not None
        by_dataset.setdefault(item.dataset, []).append(normalise_answer(response) == normalise_answer(item.answer))
    per_dataset.update({name: sum(hits) / len(hits) for name, hits in by_dataset.items()})
    return sum(per_dataset.values()) / len(per_dataset)
