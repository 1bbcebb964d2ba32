"""Zoo presets: the architecture, the base's recipe and every expert's recipe, as frozen data.

Expert kinds (recorded in the manifest):

- ``specialist``: fine-tuned on one family with moderate training;
- ``overtrained``: one family, many more steps: narrow and forgetful;
- ``overconfident``: one family with a corrupted label map, so it answers confidently and wrongly:
  ``permuted`` teaches each answer's cyclic successor (red → orange → yellow → green → red),
  ``constant`` teaches the family's first answer for every item (a collapsed expert).

Experts train the language model and the projector; the vision tower stays the base's, bit for bit.
A preset's :meth:`ZooPreset.fingerprint` changes with any field, so a cached zoo built from an older
recipe is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Literal

from uqmerge.core.errors import ConfigError
from uqmerge.zoo.model import ZooArchitecture
from uqmerge.zoo.tasks import ANSWERS, FAMILIES

ExpertKind = Literal["specialist", "overtrained", "overconfident"]
Corruption = Literal["none", "permuted", "constant"]
EXPERT_KINDS: tuple[str, ...] = ("specialist", "overtrained", "overconfident")
CORRUPTIONS: tuple[str, ...] = ("none", "permuted", "constant")


@dataclass(frozen=True)
class BaseRecipe:
    """How the base is trained from random weights: all ``families``, every tower trained.

    ``answers_per_family`` (optional) keeps only the items whose answer is among the first that many
    answers of their family, so the base cannot know the others.

    ``vision_pretrain_steps`` (optional) first trains the whole model on the base's items for that many
    steps (at ``vision_pretrain_lr`` and ``vision_pretrain_batch_size``; the base's ``lr`` and ``batch_size``
    if unset) and keeps only its vision tower: the language model and projector restart from the same random
    initialisation and the base trains them with that tower frozen, as an MLLM starts from a pretrained
    vision encoder. Experts, which keep the tower frozen, then read the same converged features whatever the
    base's own stopping point (a held base that stops early otherwise leaves a half-trained tower).

    ``hold_below`` (optional) brings every family to a target instead of stopping the base wherever
    training happens to be: every ``hold_check_every`` steps the base answers ``hold_validation_items``
    training-phrased questions per family about images no split uses; a family whose exact match is at
    least ``hold_below`` is left out of the batches until it falls below again (the learning rate is scaled
    by the share of families still trained), and the base stops at the first check that finds every family
    at or above it (``steps`` is then a ceiling).

    ``hold_reject_above`` (optional) makes the hold reject a jump: a check that finds a family above that
    level which was at or below it at the last accepted check returns the weights and optimizer state to
    that check and retries the interval with half the learning rate, at most ``hold_max_halvings`` times in
    a row (then the jump is accepted); each accepted check doubles the rate back, up to the gate's. Families
    learn in sudden jumps, and a family that jumped past the target in one interval stayed there.
    """

    steps: int
    lr: float
    batch_size: int = 64
    families: tuple[str, ...] = FAMILIES
    answers_per_family: int | None = None
    vision_pretrain_steps: int = 0
    vision_pretrain_lr: float | None = None
    vision_pretrain_batch_size: int | None = None
    hold_below: float | None = None
    hold_check_every: int = 50
    hold_validation_items: int = 60
    hold_reject_above: float | None = None
    hold_max_halvings: int = 3

    def __post_init__(self) -> None:
        if self.hold_below is not None and not 0.0 < self.hold_below <= 1.0:
            raise ConfigError(f"base recipe: hold_below must lie in (0, 1], got {self.hold_below}")
        if self.hold_reject_above is not None and (
            self.hold_below is None or not self.hold_below <= self.hold_reject_above < 1.0
        ):
            raise ConfigError(
                "base recipe: hold_reject_above needs hold_below and must lie in [hold_below, 1), got "
                f"{self.hold_reject_above} with hold_below {self.hold_below}"
            )
        if self.hold_max_halvings < 0:
            raise ConfigError(f"base recipe: hold_max_halvings must be 0 or more, got {self.hold_max_halvings}")
        if self.vision_pretrain_steps < 0:
            raise ConfigError(f"base recipe: vision_pretrain_steps must be 0 or more, got {self.vision_pretrain_steps}")
        if self.vision_pretrain_batch_size is not None and self.vision_pretrain_batch_size < 1:
            raise ConfigError(
                f"base recipe: vision_pretrain_batch_size must be at least 1, got {self.vision_pretrain_batch_size}"
            )
        if self.hold_check_every < 1 or self.hold_validation_items < 1:
            raise ConfigError(
                "base recipe: hold_check_every and hold_validation_items must be at least 1, got "
                f"{self.hold_check_every} and {self.hold_validation_items}"
            )

    def teaches(self, family: str, answer: str) -> bool:
        """Whether the base's training data contains items of ``family`` answered ``answer``."""
        return self.answers_per_family is None or answer in ANSWERS[family][: self.answers_per_family]


BASE_FIELDS_SINCE_V4: dict[str, object] = {
    "vision_pretrain_steps": 0,
    "vision_pretrain_lr": None,
    "vision_pretrain_batch_size": None,
    "hold_reject_above": None,
    "hold_max_halvings": 3,
}
"""Base-recipe fields added after zoo v4, with their defaults: left out of a preset's fingerprint while at
them, so adding them left the fingerprint of every preset that does not use them (``mini``) unchanged."""


@dataclass(frozen=True)
class ExpertRecipe:
    """One expert fine-tuned from the base on ``family`` (vision tower frozen).

    ``replay`` is the share of its training items drawn from the base's training data of the other
    families (as in instruction tuning that mixes general data into a task's data); 0 trains on the
    family alone.
    """

    id: str
    kind: ExpertKind
    family: str
    steps: int
    lr: float
    batch_size: int = 64
    corruption: Corruption = "none"
    replay: float = 0.0

    def label_map(self) -> dict[str, str]:
        """True answer → taught answer (empty for uncorrupted experts)."""
        answers = ANSWERS[self.family]
        if self.corruption == "permuted":
            return {a: answers[(i + 1) % len(answers)] for i, a in enumerate(answers)}
        if self.corruption == "constant":
            return {a: answers[0] for a in answers}
        return {}


@dataclass(frozen=True)
class ZooPreset:
    """Everything a zoo build depends on besides the seed."""

    name: str
    base: BaseRecipe
    experts: tuple[ExpertRecipe, ...]
    architecture: ZooArchitecture = field(default_factory=ZooArchitecture)
    train_items_per_family: int = 4096
    eval_items_per_family: int = 100
    held_out_items_per_family: int | None = None
    mc_fraction: float = 0.5
    system_fraction: float = 0.5
    shuffle_options: bool = False
    evaluate: bool = True

    def __post_init__(self) -> None:
        ids = [e.id for e in self.experts]
        if len(set(ids)) != len(ids) or "base" in ids:
            raise ConfigError(f"preset {self.name!r}: expert ids must be unique and not 'base', got {ids}")
        for expert in self.experts:
            if expert.kind not in EXPERT_KINDS:
                raise ConfigError(f"expert {expert.id!r}: kind {expert.kind!r} is not one of {EXPERT_KINDS}")
            if expert.corruption not in CORRUPTIONS:
                raise ConfigError(f"expert {expert.id!r}: corruption {expert.corruption!r} not in {CORRUPTIONS}")
            if (expert.kind == "overconfident") != (expert.corruption != "none"):
                raise ConfigError(f"expert {expert.id!r}: only 'overconfident' experts have a label corruption")
            if not 0.0 <= expert.replay < 1.0:
                raise ConfigError(f"expert {expert.id!r}: replay must lie in [0, 1), got {expert.replay}")
            if expert.family not in FAMILIES:
                raise ConfigError(f"expert {expert.id!r}: unknown family {expert.family!r} ({', '.join(FAMILIES)})")
        if self.eval_items_per_family < 1 or self.held_out_items < 1:
            raise ConfigError(f"preset {self.name!r}: every evaluation split needs at least one item per family")
        for family in self.base.families:
            if family not in FAMILIES:
                raise ConfigError(f"preset {self.name!r}: unknown base family {family!r} ({', '.join(FAMILIES)})")

    @property
    def held_out_items(self) -> int:
        """Items per family in the held-out open-ended split (``eval_items_per_family`` unless set)."""
        return self.eval_items_per_family if self.held_out_items_per_family is None else self.held_out_items_per_family

    def as_dict(self) -> dict:
        return asdict(self)

    def fingerprint(self) -> str:
        """SHA-256 of the preset's canonical JSON (base fields added since zoo v4 count only when set)."""
        data = self.as_dict()
        for name, default in BASE_FIELDS_SINCE_V4.items():
            if data["base"][name] == default:
                del data["base"][name]
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode("utf-8")).hexdigest()

    @property
    def training_runs(self) -> tuple[tuple[str, int], ...]:
        """``(label, step ceiling)`` of every training run of a build, in order (the progress bar's parts)."""
        vision = (("vision", self.base.vision_pretrain_steps),) if self.base.vision_pretrain_steps else ()
        return (*vision, ("base", self.base.steps), *((e.id, e.steps) for e in self.experts))

    @property
    def total_steps(self) -> int:
        return sum(steps for _, steps in self.training_runs)


EXPERT_LR = 1e-3
"""Fine-tuning learning rate (a prototype found 2e-4–1e-3 merges smoothly and 5e-3 collapses averages)."""

REPLAY = 0.25
"""Share of base data in specialists' and overconfident experts' training items (overtrained: none)."""

SPECIALIST_REPLAY = 0.5
"""``default``'s specialists' share of base data (zoo v6): at 0.25 the merge of the five specialists fell below
the base (seed 2: 50.4 vs 55.6 held-out; at 0.5: 62.3)."""


def _specialists(
    families: tuple[str, ...], steps: int, lr: float, batch_size: int, replay: float = REPLAY
) -> tuple[ExpertRecipe, ...]:
    return tuple(
        ExpertRecipe(f"specialist-{f}", "specialist", f, steps, lr, batch_size, replay=replay) for f in families
    )


PRESETS: dict[str, ZooPreset] = {
    "mini": ZooPreset(
        name="mini",
        base=BaseRecipe(steps=400, lr=1e-3, batch_size=32),
        experts=(
            *_specialists(("count", "position"), 150, EXPERT_LR, 32),
            ExpertRecipe("overtrained-size", "overtrained", "size", 200, EXPERT_LR, 32),
            ExpertRecipe(
                "overconfident-shape-permuted", "overconfident", "shape", 80, EXPERT_LR, 32, "permuted", REPLAY
            ),
        ),
        train_items_per_family=1024,
        eval_items_per_family=50,
    ),
    "default": ZooPreset(
        name="default",
        base=BaseRecipe(
            steps=900,
            lr=3e-4,
            batch_size=64,
            vision_pretrain_steps=1200,
            vision_pretrain_lr=1e-3,
            vision_pretrain_batch_size=32,
            hold_below=0.5,
            hold_check_every=10,
            hold_validation_items=100,
            hold_reject_above=0.65,
            hold_max_halvings=3,
        ),
        experts=(
            *_specialists(FAMILIES, 600, EXPERT_LR, 32, SPECIALIST_REPLAY),
            ExpertRecipe("overtrained-count", "overtrained", "count", 800, EXPERT_LR, 32),
            ExpertRecipe("overtrained-size", "overtrained", "size", 800, EXPERT_LR, 32),
            ExpertRecipe(
                "overconfident-position-permuted", "overconfident", "position", 200, EXPERT_LR, 32, "permuted", REPLAY
            ),
            ExpertRecipe(
                "overconfident-shape-constant", "overconfident", "shape", 200, EXPERT_LR, 32, "constant", REPLAY
            ),
        ),
        held_out_items_per_family=200,
    ),
}
"""Built-in presets: ``mini`` (tests, about a minute) and ``default`` (the demo, several minutes).

``default`` is zoo v6: a pre-trained vision tower (1200 steps at batch 32), the base held at 50 % per family
(lr 3e-4, a check every 10 steps on 100 items per family, at most 900 steps) that rejects a jump past 65 %
(up to three halvings of the learning rate), and nine experts at batch 32: specialists 600 steps with half
their items from the base's data, overtrained experts 800 steps on their family alone."""


def resolve_preset(preset: str | ZooPreset) -> ZooPreset:
    """A preset by name (see :data:`PRESETS`) or the given :class:`ZooPreset` itself."""
    if isinstance(preset, ZooPreset):
        return preset
    if preset not in PRESETS:
        raise ConfigError(f"unknown zoo preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[preset]
