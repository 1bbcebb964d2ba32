"""The zoo's second architecture (LLaVA-NeXT + SigLIP on the zoo's LLM): loads, generates, shares the LM layout."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from zoo_fixtures import MICRO_PRESET

from uqmerge.core.errors import ConfigError
from uqmerge.evaluate.open_ended import evaluate_open_ended, load_open_items
from uqmerge.zoo.build import build_zoo, read_manifest
from uqmerge.zoo.hetero import HETERO_MANIFEST, HeteroRecipe, build_hetero, read_hetero_manifest
from uqmerge.zoo.model import MAX_NEW_TOKENS, load_zoo_model, open_prompt, pixel_inputs, pixel_tensor
from uqmerge.zoo.tasks import generate_family

RECIPE = HeteroRecipe("micro", align_steps=6, tune_steps=4, batch_size=8)
# Spelled out, as an independent statement of the premise: the language model's tensors in memory (transformers'
# state dict) and on disk (the hub layout that save_pretrained writes for LLaVA and LLaVA-NeXT alike).
LM_PREFIXES = ("model.language_model.", "lm_head.")
DISK_LM_PREFIX = "language_model."


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


def _language_model(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The language-model tensors of a checkpoint read from disk."""
    return {k: v for k, v in tensors.items() if k.startswith(DISK_LM_PREFIX)}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A micro zoo, its partner, and a second partner of the same seed in another directory."""
    root = tmp_path_factory.mktemp("hetero")
    zoo = build_zoo(root / "zoo", MICRO_PRESET, seed=3)
    return zoo, build_hetero(zoo, RECIPE), build_hetero(zoo, RECIPE, out_dir=root / "again")


def test_loads_with_its_own_class_and_processor(built: tuple[Path, Path, Path]) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    zoo, hetero, _ = built
    assert hetero == zoo / "hetero" / "micro"
    model = AutoModelForImageTextToText.from_pretrained(hetero)
    processor = AutoProcessor.from_pretrained(hetero)
    assert type(model).__name__ == "LlavaNextForConditionalGeneration"
    assert type(model.model.vision_tower).__name__ == "SiglipVisionModel"
    assert type(processor).__name__ == "LlavaNextProcessor"
    llava, _ = load_zoo_model(zoo / "models" / "base")
    assert type(llava).__name__ == "LlavaForConditionalGeneration"
    assert type(llava.model.vision_tower).__name__ == "CLIPVisionModel"


def test_generates_and_the_zoo_evaluator_reads_it(built: tuple[Path, Path, Path]) -> None:
    zoo, hetero, _ = built
    model, processor = load_zoo_model(hetero)
    item = generate_family("colour", "held_out", 1, seed=3)[0]
    batch = processor(text=[open_prompt(processor, item.question)], images=[item.image], return_tensors="pt")
    out = model.generate(**batch)
    new = out[0, batch["input_ids"].shape[1] :]
    assert 1 <= len(new) <= MAX_NEW_TOKENS
    assert processor.tokenizer.unk_token_id not in new.tolist()
    manifest = read_hetero_manifest(hetero)
    zoo_manifest = read_manifest(zoo)
    paths = {e["family"]: zoo / e["path"] for e in zoo_manifest["datasets"] if e["split"] == "held_out"}
    items = [i for family, path in paths.items() for i in load_open_items(path, family=family)]
    result = evaluate_open_ended(model, processor, items, batch_size=16)
    assert set(result["accuracy"]) == set(zoo_manifest["families"])
    assert {f: round(a, 4) for f, a in result["accuracy"].items()} == manifest["held_out_exact_match"]


def test_language_model_tensors_match_the_llava_zoo_models(built: tuple[Path, Path, Path]) -> None:
    zoo, hetero, _ = built
    llava = _tensors(zoo / "models" / "specialist-count")
    other = _tensors(hetero)
    lm_llava, lm_other = _language_model(llava), _language_model(other)
    assert lm_llava and set(lm_llava) == set(lm_other)
    assert {k: v.shape for k, v in lm_llava.items()} == {k: v.shape for k, v in lm_other.items()}
    assert any(k.endswith("lm_head.weight") for k in lm_llava) and any("layers.1." in k for k in lm_llava)
    # The same in memory, where transformers names them model.language_model.* and lm_head.*.
    loaded = {d: load_zoo_model(d)[0].state_dict() for d in (zoo / "models" / "specialist-count", hetero)}
    memory = [{k: v.shape for k, v in state.items() if k.startswith(LM_PREFIXES)} for state in loaded.values()]
    assert memory[0] == memory[1] and len(memory[0]) == len(lm_llava)
    # The vision side is its own: SigLIP at 96 wide against CLIP at 64, and LLaVA-NeXT's image_newline.
    vision_other = {k: v.shape for k, v in other.items() if k not in lm_other}
    vision_llava = {k: v.shape for k, v in llava.items() if k not in lm_llava}
    assert "image_newline" in vision_other and "image_newline" not in vision_llava
    assert vision_other["multi_modal_projector.linear_1.weight"] == (128, 96)
    assert vision_llava["multi_modal_projector.linear_1.weight"] == (128, 64)
    assert "vision_tower.embeddings.class_embedding" in vision_llava  # CLIP's CLS token; SigLIP has none
    assert not any(k.endswith("class_embedding") for k in vision_other)
    # Tuning moved the language model away from the zoo base's, from which it started.
    base = _language_model(_tensors(zoo / "models" / "base"))
    assert any(not torch.equal(base[k], lm_other[k]) for k in base)


def test_language_model_starts_as_the_zoo_base_and_align_leaves_it(
    built: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    zoo, _, _ = built
    aligned = build_hetero(zoo, dataclasses.replace(RECIPE, tune_steps=0), out_dir=tmp_path / "aligned")
    base = _language_model(_tensors(zoo / "models" / "base"))
    lm = _language_model(_tensors(aligned))
    assert all(torch.equal(base[k], lm[k]) for k in base)
    manifest = read_hetero_manifest(aligned)
    assert manifest["stages"]["align"]["config"]["train_language_model"] is False
    assert manifest["stages"]["align"]["trainable_parameters"] > 0


def test_trains_on_the_other_families_only(built: tuple[Path, Path, Path]) -> None:
    zoo, hetero, _ = built
    manifest = read_hetero_manifest(hetero)
    assert manifest["complement_of"] == {"id": "specialist-count", "family": "count"}
    assert manifest["families"] == ["colour", "shape", "position", "size"]
    base = zoo / "models" / "base" / "model.safetensors"
    assert manifest["zoo"]["base_sha256"] == hashlib.sha256(base.read_bytes()).hexdigest()
    with pytest.raises(ConfigError, match="complement_of"):
        build_hetero(zoo, dataclasses.replace(RECIPE, complement_of="nobody"), out_dir=zoo.parent / "never")


def test_same_seed_same_weights_and_reuse(built: tuple[Path, Path, Path]) -> None:
    zoo, hetero, again = built
    digest = hashlib.sha256((hetero / "model.safetensors").read_bytes()).hexdigest()
    assert digest == hashlib.sha256((again / "model.safetensors").read_bytes()).hexdigest()
    stamp = (hetero / HETERO_MANIFEST).stat().st_mtime_ns
    assert build_hetero(zoo, RECIPE) == hetero and (hetero / HETERO_MANIFEST).stat().st_mtime_ns == stamp
    other = build_hetero(zoo, RECIPE, seed=4, out_dir=zoo.parent / "seed4")
    assert json.loads((other / HETERO_MANIFEST).read_text())["seed"] == 4
    assert hashlib.sha256((other / "model.safetensors").read_bytes()).hexdigest() != digest


def test_pixel_inputs_are_what_the_processors_make(built: tuple[Path, Path, Path]) -> None:
    zoo, hetero, _ = built
    images = [item.image for item in generate_family("shape", "train", 3, seed=1)]
    for directory in (hetero, zoo / "models" / "base"):
        _, processor = load_zoo_model(directory)
        expected = processor.image_processor(images=images, return_tensors="pt")
        ours = pixel_inputs(pixel_tensor(images), processor)
        assert torch.allclose(ours["pixel_values"], expected["pixel_values"], atol=1e-6)
        if "image_sizes" in expected:
            assert torch.equal(ours["image_sizes"], expected["image_sizes"])
        else:
            assert set(ours) == {"pixel_values"}


def test_cli_builds_it_and_names_the_recipes(built: tuple[Path, Path, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from uqmerge.cli import app
    from uqmerge.cli.zoo_hetero import HETERO_PRESET_NAMES
    from uqmerge.zoo.hetero import HETERO_PRESETS

    assert tuple(HETERO_PRESETS) == HETERO_PRESET_NAMES
    zoo, _, _ = built
    out = tmp_path / "cli"
    done = CliRunner().invoke(app, ["zoo", "hetero", str(zoo), "--out", str(out), "--complement-of", "nobody"])
    assert done.exit_code == 2 and not out.exists()
