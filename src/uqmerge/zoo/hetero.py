"""The zoo's second architecture: a tiny LLaVA-NeXT with its own SigLIP tower and connector on the zoo's LLM.

A heterogeneous partner for a zoo's LLaVA experts, for cross-architecture merging (AdaMMS). It is a real
``LlavaNextForConditionalGeneration`` + ``LlavaNextProcessor`` (:func:`uqmerge.tiny.build_tiny_llava_next`):
a SigLIP vision tower (no CLS token, normalised with mean and std 0.5) and LLaVA-NeXT's connector (projector,
``image_newline``, one anyres tile) of its own, and the zoo's Llama language model with the zoo's tokenizer,
so its language-model tensors have the LLaVA zoo models' names and shapes.

Recipe (:class:`HeteroRecipe`), from a built zoo:

1. **init**: random tower and connector (a seed derived from the hetero seed); the language model and
   ``lm_head`` copied from the zoo's base (the shared pre-trained LLM), after checking the two tokenizers'
   vocabularies are identical;
2. **align**: the tower and connector train with the language model frozen (checked bit-identical
   afterwards), as a LLaVA-style model aligns a vision encoder to a pre-trained LLM;
3. **tune**: the language model and connector train with the tower frozen (checked bit-identical), as the
   zoo's experts fine-tune.

Both stages train on the zoo's expert items (the second run of each family's ``train`` split) of every family
except the family of one LLaVA expert (``complement_of``; default: the zoo's first specialist), so the two
architectures know different families. The model is saved with the zoo's generation config and evaluated by
the zoo's held-out evaluator (open-ended exact match per family). ``<out>/hetero.json`` records the recipe,
what it took from the zoo (:func:`zoo_inputs`: the base's weights by SHA-256, the seed, the training settings,
the held-out sets), the seeds, the training and the scores; a directory with the same recipe, seed, zoo inputs
and :data:`HETERO_CODE_VERSION` is reused (the experts do not matter, so rebuilding them keeps the partner).
Everything is a function of the seed (derived from the zoo's seed unless given), the zoo and the thread count,
as for the zoo itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

import uqmerge
from uqmerge.core.errors import CheckpointError, ConfigError, OutputError
from uqmerge.core.seeds import stable_seed
from uqmerge.tiny import build_tiny_llava_next
from uqmerge.zoo.build import (
    _Evaluator,
    _replace_dir,
    _split_items,
    _staging_dir,
    read_manifest,
)
from uqmerge.zoo.model import load_zoo_model, save_zoo_model, zoo_words
from uqmerge.zoo.train import TrainConfig, build_training_set, language_model_parameters, train_model, vision_tower_of

logger = logging.getLogger(__name__)

HETERO_CODE_VERSION = "1"
"""Bump when the hetero builder's output for a given recipe, seed and zoo changes; cached models are rebuilt."""

HETERO_MANIFEST = "hetero.json"
LANGUAGE_MODEL_PREFIXES: tuple[str, ...] = ("model.language_model.", "lm_head.")
"""State-dict prefixes of the language model in both zoo architectures (LLaVA and LLaVA-NeXT)."""

StepCallback = Callable[[str, int], None]


@dataclass(frozen=True)
class HeteroRecipe:
    """How the LLaVA-NeXT partner is built from a zoo: SigLIP sizes, the two stages, the families left out."""

    name: str
    align_steps: int
    tune_steps: int
    complement_of: str | None = None
    align_lr: float = 1e-3
    tune_lr: float = 1e-3
    batch_size: int = 32
    vision_hidden: int = 96
    vision_layers: int = 2
    vision_heads: int = 3

    def __post_init__(self) -> None:
        if self.align_steps < 0 or self.tune_steps < 0 or self.batch_size < 1:
            raise ConfigError(f"hetero recipe {self.name!r}: steps must be >= 0 and batch_size >= 1")
        if self.vision_hidden % self.vision_heads:
            raise ConfigError(f"hetero recipe {self.name!r}: vision_hidden must be a multiple of vision_heads")

    def fingerprint(self) -> str:
        """SHA-256 of the recipe's canonical JSON."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode("utf-8")).hexdigest()


HETERO_PRESETS: dict[str, HeteroRecipe] = {
    "mini": HeteroRecipe("mini", align_steps=300, tune_steps=150),
    "default": HeteroRecipe("default", align_steps=1200, tune_steps=600),
}
"""``default`` (for the ``default`` zoo): align as long as the zoo's tower pre-training (1200 steps), tune as long
as its specialists (600 steps), both at lr 1e-3, batch 32; ``mini`` (for the ``mini`` zoo) is shorter."""


def resolve_hetero_recipe(recipe: str | HeteroRecipe) -> HeteroRecipe:
    """A recipe by name (see :data:`HETERO_PRESETS`) or the given :class:`HeteroRecipe` itself."""
    if isinstance(recipe, HeteroRecipe):
        return recipe
    if recipe not in HETERO_PRESETS:
        raise ConfigError(f"unknown hetero preset {recipe!r}; choose one of: {', '.join(HETERO_PRESETS)}")
    return HETERO_PRESETS[recipe]


def default_hetero_dir(zoo_dir: str | Path, recipe: str | HeteroRecipe) -> Path:
    """Where ``uqmerge zoo hetero`` writes by default: ``<zoo>/hetero/<recipe name>``."""
    return Path(zoo_dir) / "hetero" / resolve_hetero_recipe(recipe).name


def complemented_expert(manifest: dict[str, Any], recipe: HeteroRecipe) -> dict[str, Any]:
    """The zoo expert whose family the partner leaves out (``complement_of``, or the first specialist)."""
    experts = manifest["experts"]
    if recipe.complement_of is None:
        chosen = next((e for e in experts if e["kind"] == "specialist"), None)
        if chosen is None:
            raise ConfigError("the zoo has no specialist; set complement_of to one of its experts")
        return chosen
    for expert in experts:
        if expert["id"] == recipe.complement_of:
            return expert
    raise ConfigError(
        f"complement_of {recipe.complement_of!r} is not an expert of the zoo ({[e['id'] for e in experts]})"
    )


def language_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The language-model tensors of a zoo model (:data:`LANGUAGE_MODEL_PREFIXES`), detached copies."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith(LANGUAGE_MODEL_PREFIXES)}


def zoo_inputs(zoo_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """What the partner depends on in a zoo: its base's weights (SHA-256), seed, training settings, families,
    architecture, experts' families and held-out sets; ``digest`` is the SHA-256 of the rest."""
    base = zoo_dir / manifest["base"]["path"] / "model.safetensors"
    inputs = {
        "base_sha256": hashlib.sha256(base.read_bytes()).hexdigest(),
        "seed": manifest["seed"],
        "training": manifest["training"],
        "families": manifest["families"],
        "architecture": manifest["architecture"],
        "experts": {e["id"]: [e["kind"], e["family"]] for e in manifest["experts"]},
        "held_out": {e["family"]: [e["path"], e["n"]] for e in manifest["datasets"] if e["split"] == "held_out"},
    }
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode("utf-8")).hexdigest()
    return {**inputs, "digest": digest}


def _reusable(out: Path, recipe: HeteroRecipe, seed: int, zoo_digest: str) -> bool:
    path = out / HETERO_MANIFEST
    if not path.is_file() or not (out / "config.json").is_file():
        return False
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return (
        manifest.get("code_version") == HETERO_CODE_VERSION
        and manifest.get("recipe_fingerprint") == recipe.fingerprint()
        and manifest.get("seed") == seed
        and manifest.get("zoo", {}).get("digest") == zoo_digest
    )


def _init_model(root: Path, zoo_dir: Path, zoo: dict[str, Any], recipe: HeteroRecipe, seed: int) -> tuple[Any, Any]:
    """A random LLaVA-NeXT whose language model is the zoo base's (same vocabulary, checked)."""
    arch = zoo["architecture"]
    init_dir = build_tiny_llava_next(
        root / ".init",
        words=zoo_words(),
        seed=seed,
        hidden=arch["hidden"],
        layers=arch["layers"],
        heads=arch["heads"],
        vision_hidden=recipe.vision_hidden,
        vision_layers=recipe.vision_layers,
        vision_heads=recipe.vision_heads,
        image_size=arch["image_size"],
        patch_size=arch["patch_size"],
    )
    model, processor = load_zoo_model(init_dir)
    shutil.rmtree(init_dir)
    base, base_processor = load_zoo_model(zoo_dir / zoo["base"]["path"])
    if processor.tokenizer.get_vocab() != base_processor.tokenizer.get_vocab():
        raise CheckpointError("the zoo base's tokenizer differs from the zoo vocabulary; rebuild the zoo")
    source = language_model_state(base)
    target = model.state_dict()
    if set(source) != {k for k in target if k.startswith(LANGUAGE_MODEL_PREFIXES)}:
        raise CheckpointError("the zoo base's language-model tensors do not match LLaVA-NeXT's names")
    with torch.no_grad():
        for name, tensor in source.items():
            if target[name].shape != tensor.shape:
                raise CheckpointError(
                    f"{name}: {tuple(tensor.shape)} in the zoo base, {tuple(target[name].shape)} here"
                )
            target[name].copy_(tensor)
    return model, processor


def _check_unchanged(reference: dict[str, torch.Tensor], now: dict[str, torch.Tensor], what: str, stage: str) -> None:
    for name, tensor in now.items():
        if not torch.equal(tensor, reference[name]):
            raise RuntimeError(f"hetero {stage}: {what} tensor {name!r} changed while frozen")


def _tower_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in vision_tower_of(model).state_dict().items()}


def _stage(
    model: Any, processor: Any, data: Any, config: TrainConfig, label: str, on_step: StepCallback | None
) -> dict[str, Any]:
    """One training stage; the part it freezes (the language model or the tower) is checked unchanged."""
    what, frozen_state = (
        ("vision", _tower_state) if config.train_language_model else ("language-model", language_model_state)
    )
    before = frozen_state(model)
    callback = None if on_step is None else (lambda step, _loss: on_step(label, step))
    stats = train_model(model, data, config, processor, on_step=callback)
    _check_unchanged(before, frozen_state(model), what, label)
    return {
        "config": asdict(config),
        "steps_taken": stats.steps,
        "final_loss": None if stats.final_loss is None else round(stats.final_loss, 6),
        "trainable_parameters": stats.trainable_parameters,
        "train_seconds": round(stats.seconds, 3),
    }


def _build_into(
    root: Path, zoo_dir: Path, recipe: HeteroRecipe, seed: int, on_step: StepCallback | None
) -> dict[str, Any]:
    """Initialise, align, tune, save and evaluate the partner in ``root``; return its manifest."""
    import transformers

    start = time.perf_counter()
    zoo = read_manifest(zoo_dir)
    training = zoo["training"]
    expert = complemented_expert(zoo, recipe)
    families = [f for f in zoo["families"] if f != expert["family"]]
    init_seed = stable_seed(seed, "hetero", recipe.name, "init")
    model, processor = _init_model(root, zoo_dir, zoo, recipe, init_seed)
    n = training["train_items_per_family"]
    items = [item for family in families for item in _split_items(family, n, zoo["seed"])[1]]
    stages = {}
    for label, steps, lr, flags in (
        ("align", recipe.align_steps, recipe.align_lr, {"train_vision_tower": True, "train_language_model": False}),
        ("tune", recipe.tune_steps, recipe.tune_lr, {"train_vision_tower": False, "train_language_model": True}),
    ):
        stage_seed = stable_seed(seed, "hetero", recipe.name, label)
        data = build_training_set(
            items,
            processor,
            seed=stage_seed,
            system_fraction=training["system_fraction"],
            shuffle_options=training["shuffle_options"],
        )
        config = TrainConfig(
            steps=steps,
            lr=lr,
            batch_size=recipe.batch_size,
            mc_fraction=training["mc_fraction"],
            seed=stage_seed,
            **flags,
        )
        stages[label] = {"seed": stage_seed, **_stage(model, processor, data, config, label, on_step)}
        logger.info("hetero %s: %d steps in %.1f s", label, steps, stages[label]["train_seconds"])
    save_zoo_model(model, processor, root)
    held_out = {e["family"]: zoo_dir / e["path"] for e in zoo["datasets"] if e["split"] == "held_out"}
    scores = _Evaluator(held_out)(model, processor)
    return {
        "format": "uqmerge-zoo-hetero",
        "code_version": HETERO_CODE_VERSION,
        "uqmerge_version": uqmerge.__version__,
        "recipe": asdict(recipe),
        "recipe_fingerprint": recipe.fingerprint(),
        "seed": seed,
        "init_seed": init_seed,
        "zoo": {
            "preset": zoo["preset"],
            "code_version": zoo["code_version"],
            "base": zoo["base"]["path"],
            **zoo_inputs(zoo_dir, zoo),
        },
        "architecture": {
            "class": type(model).__name__,
            "vision_tower": type(vision_tower_of(model)).__name__,
            "vision_hidden": recipe.vision_hidden,
            "vision_layers": recipe.vision_layers,
            "vision_heads": recipe.vision_heads,
            "language_model": "the zoo base's (copied at init)",
        },
        "parameters": sum(p.numel() for p in model.parameters()),
        "language_model_parameters": sum(p.numel() for p in language_model_parameters(model)),
        "complement_of": {"id": expert["id"], "family": expert["family"]},
        "families": families,
        "items_per_family": n,
        "items": "the zoo experts' items (the second run of each family's train split)",
        "stages": stages,
        "held_out_exact_match": scores,
        "seconds": round(time.perf_counter() - start, 3),
        "environment": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "torch_threads": torch.get_num_threads(),
        },
    }


def build_hetero(
    zoo_dir: str | Path,
    recipe: str | HeteroRecipe = "default",
    seed: int | None = None,
    *,
    out_dir: str | Path | None = None,
    force: bool = False,
    on_step: StepCallback | None = None,
) -> Path:
    """Build (or reuse) the LLaVA-NeXT partner of the zoo in ``zoo_dir``; return its model directory.

    ``seed`` defaults to the zoo's seed; ``out_dir`` to :func:`default_hetero_dir`. ``on_step(stage, step)``
    is called after every training step (``align`` or ``tune``).
    """
    resolved = resolve_hetero_recipe(recipe)
    zoo = Path(zoo_dir).expanduser().absolute()
    manifest = read_manifest(zoo)
    seed = manifest["seed"] if seed is None else seed
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise OutputError(f"the hetero seed must be a non-negative integer, got {seed!r}")
    complemented_expert(manifest, resolved)  # refuse a bad complement_of before any work
    out = Path(out_dir).expanduser().absolute() if out_dir is not None else default_hetero_dir(zoo, resolved)
    if not force and _reusable(out, resolved, seed, zoo_inputs(zoo, manifest)["digest"]):
        logger.info("reusing the %s hetero model in %s", resolved.name, out)
        return out
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} exists and is not a directory; choose another output directory")
    if out.is_dir() and any(out.iterdir()) and not (out / HETERO_MANIFEST).is_file() and not force:
        raise OutputError(f"{out} is not empty and holds no {HETERO_MANIFEST}; choose another directory or --force")
    out.parent.mkdir(parents=True, exist_ok=True)
    with _staging_dir(out) as staging:
        record = _build_into(staging, zoo, resolved, seed, on_step)
        (staging / HETERO_MANIFEST).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        _replace_dir(staging, out)
    logger.info("built the %s hetero model in %.1f s: %s", resolved.name, record["seconds"], out)
    return out


def read_hetero_manifest(model_dir: str | Path) -> dict[str, Any]:
    """The parsed ``hetero.json`` of a partner's model directory."""
    path = Path(model_dir) / HETERO_MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise CheckpointError(f"{path} does not exist; build it with `uqmerge zoo hetero ZOO_DIR`") from e
