"""Training of zoo models: task items to answer-only-loss examples in two prompt formats, and the loop.

Each task item gives two examples that share its image: an open-ended one (the question, answered
with the word) and a multiple-choice one in the UQ format (answered with the option's letter). The
loss is the cross-entropy of the answer tokens only (the answer and the closing ``<|end|>``); prompt
and padding positions are masked with ``-100``.

Examples are encoded once into right-padded tensors per format (:class:`EncodedPool`) with the
images as one uint8 tensor; a batch draws a format (probability ``mc_fraction`` for MC), then rows
with replacement, from a ``torch.Generator`` seeded with the run's seed. Training runs with
deterministic algorithms and no dropout, so the same inputs, seed and thread count give bit-identical
weights.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from uqmerge.core.errors import ConfigError
from uqmerge.core.prompts import LETTERS, SYSTEM_MESSAGES
from uqmerge.core.seeds import stable_seed
from uqmerge.zoo.model import answer_target, mc_prompt, open_prompt, pixel_inputs, pixel_tensor
from uqmerge.zoo.tasks import TaskItem, mc_options

logger = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("open", "mc")
IGNORE_INDEX = -100


@dataclass(frozen=True)
class Example:
    """One training example: the index of its image in the set, the rendered prompt and the target text."""

    image_index: int
    prompt: str
    target: str


@dataclass(frozen=True)
class EncodedPool:
    """Right-padded token ids, attention mask, answer-only labels and image indices of one format."""

    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor
    image_index: Tensor

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass(frozen=True)
class TrainingSet:
    """Encoded examples per prompt format over one uint8 image tensor ``(n_images, 3, H, W)``."""

    pixels: Tensor
    pools: Mapping[str, EncodedPool]


@dataclass
class FamilyGate:
    """Which task families a batch may draw from: ``image_family[i]`` is image ``i``'s family index.

    ``active`` is ``None`` (every row) or a set of family indices; whoever trains the model may change it
    between steps (the zoo's held base does, from its validation scores), and may set ``stop`` to end
    training after the current step. ``lr_scale`` multiplies the learning rate of the steps that follow
    (the held base sets it to the active share of families, so that a family trained alone does not learn
    several times faster than in a full batch).

    ``save_state`` asks :func:`train_model` to keep a copy of the weights and the optimizer's state after
    the current step; ``restore_state`` to return to the copy kept last (the steps since then are undone,
    though they still count towards ``steps``). Both are reset once served.
    """

    image_family: Tensor
    active: set[int] | None = None
    stop: bool = False
    lr_scale: float = 1.0
    save_state: bool = False
    restore_state: bool = False

    def rows(self, pool: EncodedPool) -> Tensor | None:
        """Indices of ``pool``'s rows whose image is of an active family (``None``: all rows)."""
        if self.active is None:
            return None
        wanted = torch.tensor(sorted(self.active), dtype=self.image_family.dtype)
        rows = torch.nonzero(torch.isin(self.image_family[pool.image_index], wanted)).squeeze(1)
        if len(rows) == 0:
            raise ConfigError(f"no training rows belong to the active families {sorted(self.active)}")
        return rows


@dataclass(frozen=True)
class TrainConfig:
    """One training run: AdamW, linear warm-up then cosine decay to ``final_lr_fraction`` of ``lr``.

    ``train_vision_tower`` / ``train_language_model``: whether the tower / the language model (and ``lm_head``)
    train; the connector always trains.
    """

    steps: int
    lr: float
    batch_size: int = 64
    mc_fraction: float = 0.5
    weight_decay: float = 0.0
    warmup_fraction: float = 0.1
    final_lr_fraction: float = 0.1
    max_grad_norm: float = 1.0
    train_vision_tower: bool = True
    train_language_model: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1:
            raise ConfigError(f"training needs steps >= 0 and batch_size >= 1, got {self.steps}, {self.batch_size}")
        if not 0.0 <= self.mc_fraction <= 1.0:
            raise ConfigError(f"mc_fraction must lie in [0, 1], got {self.mc_fraction}")
        if self.lr <= 0:
            raise ConfigError(f"learning rate must be positive, got {self.lr}")

    def lr_at(self, step: int) -> float:
        """Learning rate of (0-based) ``step``."""
        warmup = max(1, round(self.warmup_fraction * self.steps))
        if step < warmup:
            return self.lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, self.steps - warmup)
        cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return self.lr * (self.final_lr_fraction + (1.0 - self.final_lr_fraction) * cosine)


@dataclass
class TrainStats:
    """Loss trace (mean loss per ``every`` steps), steps taken and wall time of a run."""

    losses: list[float] = field(default_factory=list)
    every: int = 50
    steps: int = 0
    seconds: float = 0.0
    trainable_parameters: int = 0

    @property
    def final_loss(self) -> float | None:
        return self.losses[-1] if self.losses else None


def relabel(answer: str, label_map: Mapping[str, str] | None) -> str:
    """The answer a corrupted expert is taught (``label_map`` maps true answers to taught ones)."""
    return label_map.get(answer, answer) if label_map else answer


def item_examples(
    items: Sequence[TaskItem],
    processor: Any,
    *,
    seed: int,
    label_map: Mapping[str, str] | None = None,
    system_fraction: float = 0.5,
    shuffle_options: bool = False,
) -> dict[str, list[Example]]:
    """The open and MC examples of ``items`` (image index = position in ``items``).

    Each prompt carries a system message (one of the UQ text perturbation's nine) with probability
    ``system_fraction``, drawn with a seed derived from ``(seed, item id, format)``; the MC options are
    :func:`~uqmerge.zoo.tasks.mc_options` of the item (the held-in split's options), and the target is
    the letter of the taught answer.
    """
    out: dict[str, list[Example]] = {fmt: [] for fmt in FORMATS}
    open_prompts: dict[tuple[str, str | None], str] = {}
    mc_prompts: dict[tuple[str, tuple[str, ...], str | None], str] = {}
    for index, item in enumerate(items):
        taught = relabel(item.answer, label_map)
        systems = {}
        for fmt in FORMATS:
            rng = random.Random(stable_seed(seed, "system", item.id, fmt))
            systems[fmt] = rng.choice(SYSTEM_MESSAGES) if rng.random() < system_fraction else None
        key = (item.question, systems["open"])
        if key not in open_prompts:
            open_prompts[key] = open_prompt(processor, item.question, system=systems["open"])
        out["open"].append(Example(index, open_prompts[key], answer_target(taught)))
        options = mc_options(item.family, item.answer, shuffle=shuffle_options, key=item.id)
        mc_key = (item.question, options, systems["mc"])
        if mc_key not in mc_prompts:
            mc_prompts[mc_key] = mc_prompt(processor, item.question, options, system=systems["mc"])
        out["mc"].append(Example(index, mc_prompts[mc_key], answer_target(LETTERS[options.index(taught)])))
    return out


def image_token_count(processor: Any) -> int:
    """How many ``<image>`` tokens the processor puts in the text for one image."""
    from PIL import Image

    size = processor.image_processor.crop_size or {"height": 32, "width": 32}
    blank = Image.new("RGB", (size["width"], size["height"]))
    encoded = processor(text=[processor.image_token], images=[blank], return_tensors="pt")
    return int((encoded["input_ids"] == processor.image_token_id).sum())


def encode_examples(examples: Sequence[Example], processor: Any) -> EncodedPool:
    """Tokenise ``examples`` like the processor does (``<image>`` expanded), right-padded, answer-only labels."""
    tokenizer = processor.tokenizer
    image_token = processor.image_token
    expanded = image_token * image_token_count(processor)

    def token_ids(texts: Sequence[str]) -> list[list[int]]:
        unique = list(dict.fromkeys(texts))
        ids = dict(zip(unique, tokenizer(unique, add_special_tokens=False)["input_ids"], strict=True))
        return [ids[text] for text in texts]

    prompts = token_ids([e.prompt.replace(image_token, expanded) for e in examples])
    targets = token_ids([e.target for e in examples])
    unk = tokenizer.unk_token_id
    length = max((len(p) + len(t) for p, t in zip(prompts, targets, strict=True)), default=0)
    n = len(examples)
    input_ids = torch.full((n, length), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((n, length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((n, length), dtype=torch.long)
    for row, (prompt, target) in enumerate(zip(prompts, targets, strict=True)):
        if unk in prompt or unk in target:
            raise ConfigError(
                f"example {row} has a word the zoo tokenizer does not know: {examples[row].prompt!r} -> "
                f"{examples[row].target!r}; add it to uqmerge.zoo.model.zoo_words()"
            )
        ids = prompt + target
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, len(prompt) : len(ids)] = torch.tensor(target)
        mask[row, : len(ids)] = 1
    image_index = torch.tensor([e.image_index for e in examples], dtype=torch.long)
    return EncodedPool(input_ids, mask, labels, image_index)


def build_training_set(
    items: Sequence[TaskItem],
    processor: Any,
    *,
    seed: int,
    label_map: Mapping[str, str] | None = None,
    system_fraction: float = 0.5,
    shuffle_options: bool = False,
) -> TrainingSet:
    """Encode ``items`` into a :class:`TrainingSet` (see :func:`item_examples`)."""
    examples = item_examples(
        items,
        processor,
        seed=seed,
        label_map=label_map,
        system_fraction=system_fraction,
        shuffle_options=shuffle_options,
    )
    pools = {fmt: encode_examples(examples[fmt], processor) for fmt in FORMATS}
    return TrainingSet(pixels=pixel_tensor([item.image for item in items]), pools=pools)


def vision_tower_of(model: nn.Module) -> nn.Module:
    """The vision tower of a LLaVA (CLIP) or LLaVA-NeXT (SigLIP in the zoo) model."""
    inner = getattr(model, "model", model)
    tower = getattr(inner, "vision_tower", None)
    if tower is None:
        raise ConfigError(f"{type(model).__name__} has no vision_tower; the zoo trains LLaVA models")
    return tower


def language_model_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of a LLaVA(-NeXT) model's language model: the Llama model and the ``lm_head``."""
    inner = getattr(model, "model", model)
    language_model = getattr(inner, "language_model", None)
    if language_model is None:
        raise ConfigError(f"{type(model).__name__} has no language_model; the zoo trains LLaVA models")
    return [*language_model.parameters(), *model.get_output_embeddings().parameters()]


@contextlib.contextmanager
def deterministic_training() -> Iterator[None]:
    """Deterministic algorithms on, and denormal floats flushed to zero on the CPU, for one run.

    Adam's second-moment estimates of tiny early gradients are denormal numbers, which slow CPU
    arithmetic several-fold; flushing them is deterministic. Afterwards deterministic algorithms get
    their previous setting back and flushing is switched off (torch's default; it has no getter).
    """
    previous = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
        torch.use_deterministic_algorithms(previous, warn_only=warn_only)


def _sample_batch(
    data: TrainingSet,
    config: TrainConfig,
    generator: torch.Generator,
    processor: Any,
    gate: FamilyGate | None = None,
) -> dict[str, Tensor]:
    available = [fmt for fmt in FORMATS if len(data.pools.get(fmt, ())) > 0]
    draw = float(torch.rand((), generator=generator))
    fmt = "mc" if draw < config.mc_fraction else "open"
    if fmt not in available:
        fmt = available[0]
    pool = data.pools[fmt]
    allowed = None if gate is None else gate.rows(pool)
    if allowed is None:
        rows = torch.randint(len(pool), (config.batch_size,), generator=generator)
    else:
        rows = allowed[torch.randint(len(allowed), (config.batch_size,), generator=generator)]
    mask = pool.attention_mask[rows]
    width = int(mask.sum(dim=1).max())
    return {
        "input_ids": pool.input_ids[rows, :width],
        "attention_mask": mask[:, :width],
        "labels": pool.labels[rows, :width],
        **pixel_inputs(data.pixels[pool.image_index[rows]], processor),
    }


def _serve_state_requests(
    gate: FamilyGate,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    saved: tuple[dict[str, Tensor], dict[str, Any]] | None,
) -> tuple[dict[str, Tensor], dict[str, Any]] | None:
    """Apply ``gate``'s restore then save requests; return the copy now kept."""
    if gate.restore_state:
        gate.restore_state = False
        if saved is None:
            raise ConfigError("a family gate asked to restore a training state before any was saved")
        model.load_state_dict(saved[0])
        optimizer.load_state_dict(saved[1])
    if gate.save_state:
        gate.save_state = False
        saved = (
            {name: value.detach().clone() for name, value in model.state_dict().items()},
            copy.deepcopy(optimizer.state_dict()),
        )
    return saved


def train_model(
    model: nn.Module,
    data: TrainingSet,
    config: TrainConfig,
    processor: Any,
    *,
    on_step: Callable[[int, float], None] | None = None,
    gate: FamilyGate | None = None,
) -> TrainStats:
    """Train ``model`` in place for ``config.steps`` steps; the vision tower and the language model are frozen
    where ``config`` says so (``train_vision_tower``, ``train_language_model``).

    ``on_step(step, loss)`` is called after every step (for progress bars, and for whoever steers
    ``gate``, which restricts batches to some families and may stop training early). The model is left
    in eval mode with every parameter's ``requires_grad`` restored; a callback that evaluates the model
    must put it back in train mode.
    """
    if not any(len(pool) for pool in data.pools.values()):
        raise ConfigError("the training set is empty; give the expert at least one task family with items")
    frozen: set[int] = set()
    if not config.train_vision_tower:
        frozen |= {id(p) for p in vision_tower_of(model).parameters()}
    if not config.train_language_model:
        frozen |= {id(p) for p in language_model_parameters(model)}
    saved_flags = [(p, p.requires_grad) for p in model.parameters()]
    params = []
    for p in model.parameters():
        p.requires_grad_(id(p) not in frozen)
        if p.requires_grad:
            params.append(p)
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        betas=(0.9, 0.98),
        foreach=False,
    )
    generator = torch.Generator().manual_seed(config.seed)
    stats = TrainStats(trainable_parameters=sum(p.numel() for p in params))
    window: list[float] = []
    saved: tuple[dict[str, Tensor], dict[str, Any]] | None = None
    start = time.perf_counter()
    model.train()
    try:
        with deterministic_training():
            for step in range(config.steps):
                for group in optimizer.param_groups:
                    group["lr"] = config.lr_at(step) * (1.0 if gate is None else gate.lr_scale)
                batch = _sample_batch(data, config, generator, processor, gate)
                loss = model(**batch, use_cache=False).loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm, foreach=False)
                optimizer.step()
                value = float(loss.detach())
                window.append(value)
                stats.steps = step + 1
                if len(window) == stats.every:
                    stats.losses.append(sum(window) / len(window))
                    window.clear()
                if on_step is not None:
                    on_step(step, value)
                if gate is not None:
                    saved = _serve_state_requests(gate, model, optimizer, saved)
                    if gate.stop:
                        break
            if window:
                stats.losses.append(sum(window) / len(window))
    finally:
        model.eval()
        for p, flag in saved_flags:
            p.requires_grad_(flag)
    stats.seconds = time.perf_counter() - start
    return stats
