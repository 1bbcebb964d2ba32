"""Inputs that name the same parameters differently (legacy and transformers-5 keys), missing config.json, empty
configs, and tensors kept from the base that hold non-finite values."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from uqmerge.core.errors import LayoutError, PlanError
from uqmerge.engine.merge import merge_to_dir
from uqmerge.engine.recipe import parse_merge_config

# The renames transformers 5 applies when it loads a legacy LLaVA checkpoint, written out by hand.
IN_MEMORY_NAMES = (
    ("language_model.model.", "model.language_model."),
    ("language_model.lm_head.", "lm_head."),
    ("vision_tower.", "model.vision_tower."),
    ("multi_modal_projector.", "model.multi_modal_projector."),
)


def _in_memory_name(key: str) -> str:
    for old, new in IN_MEMORY_NAMES:
        if key.startswith(old):
            return new + key[len(old) :]
    return key


def _resave(src: Path, dst: Path, rename) -> Path:
    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    save_file({rename(k): v for k, v in tensors.items()}, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def _linear(base: Path, experts: list[Path], weights: list[float]) -> dict:
    return {
        "merge_method": "linear",
        "base_model": str(base),
        "models": [{"model": str(p), "parameters": {"weight": w}} for p, w in zip(experts, weights, strict=True)],
    }


def test_legacy_and_transformers5_names_merge_together_under_the_base_names(llava_family, tmp_path):
    base = llava_family["base"]
    renamed = _resave(llava_family["expert1"], tmp_path / "expert1-new-names", _in_memory_name)
    assert all(not k.startswith("language_model.") for k in load_file(renamed / "model.safetensors"))
    out = tmp_path / "out"
    merge_to_dir(parse_merge_config(_linear(base, [llava_family["expert0"], renamed], [0.25, 0.75])), out, quiet=True)

    merged = load_file(out / "model.safetensors")
    e0, e1 = (load_file(llava_family[f"expert{i}"] / "model.safetensors") for i in range(2))
    assert set(merged) == set(e0)  # the base's (legacy) names
    name = "language_model.model.layers.0.mlp.up_proj.weight"
    torch.testing.assert_close(merged[name], 0.25 * e0[name] + 0.75 * e1[name], rtol=0, atol=1e-7)
    projector = "multi_modal_projector.linear_1.weight"
    torch.testing.assert_close(merged[projector], 0.25 * e0[projector] + 0.75 * e1[projector], rtol=0, atol=1e-7)


def test_a_base_with_transformers5_names_accepts_legacy_experts_and_keeps_its_names(llava_family, tmp_path):
    base = _resave(llava_family["base"], tmp_path / "base-new-names", _in_memory_name)
    out = tmp_path / "out"
    merge_to_dir(parse_merge_config(_linear(base, [llava_family["expert0"]], [1.0])), out, quiet=True)
    merged = load_file(out / "model.safetensors")
    assert set(merged) == set(load_file(base / "model.safetensors"))


def test_a_naming_mismatch_the_layout_cannot_map_is_explained(llava_family, tmp_path):
    odd = _resave(
        llava_family["expert1"], tmp_path / "odd", lambda k: k.replace("language_model.model.", "text.model.", 1)
    )
    cfg = _linear(llava_family["base"], [llava_family["expert0"], odd], [0.5, 0.5])
    with pytest.raises(PlanError, match=r"look stored under other names \(e\.g\. 'text\.model\..*naming convention"):
        merge_to_dir(parse_merge_config(cfg), tmp_path / "out", quiet=True)
    assert not (tmp_path / "out").exists()


def test_an_expert_without_config_json_is_named_as_such(llava_family, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(llava_family["expert1"], bare)
    (bare / "config.json").unlink()
    cfg = _linear(llava_family["base"], [llava_family["expert0"], bare], [0.5, 0.5])
    with pytest.raises(LayoutError, match=rf"{bare}: no config\.json; .*copy the base's config\.json"):
        merge_to_dir(parse_merge_config(cfg), tmp_path / "out", quiet=True)


def test_non_finite_values_kept_from_the_base_are_copied_and_compared_exactly(llava_family, tmp_path, caplog):
    # Gemma 4 stores ±inf clamp bounds; a tensor that is only copied from the base is never computed with.
    name = next(k for k in load_file(llava_family["base"] / "model.safetensors") if k.startswith("vision_tower."))

    def with_inf(key: str, value: float):
        def edit(src: Path, dst: Path) -> Path:
            shutil.copytree(src, dst)
            tensors = load_file(dst / "model.safetensors")
            tensors[key].view(-1)[0] = value
            save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
            return dst

        return edit

    base = with_inf(name, float("inf"))(llava_family["base"], tmp_path / "base")
    same = [with_inf(name, float("inf"))(llava_family[f"expert{i}"], tmp_path / f"e{i}") for i in range(2)]
    out = tmp_path / "out"
    merge_to_dir(parse_merge_config(_linear(base, same, [0.5, 0.5])), out, quiet=True)
    merged = load_file(out / "model.safetensors")
    assert torch.equal(merged[name], load_file(base / "model.safetensors")[name])

    finite = with_inf(name, 1.0)(llava_family["expert1"], tmp_path / "finite")
    caplog.set_level("WARNING")
    merge_to_dir(parse_merge_config(_linear(base, [same[0], finite], [0.5, 0.5])), tmp_path / "out2", quiet=True)
    assert f"max |diff| inf in {name}" in caplog.text


def test_the_config_json_of_an_input_is_what_names_its_architecture(llava_family, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(llava_family["expert1"], other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["model_type"] = "qwen2_vl"
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LayoutError, match="differs from the base"):
        merge_to_dir(parse_merge_config(_linear(llava_family["base"], [other], [1.0])), tmp_path / "out", quiet=True)


def test_an_empty_config_file_says_that_it_is_empty(tmp_path):
    from uqmerge.core.errors import ConfigError
    from uqmerge.engine.recipe import load_merge_config

    empty = tmp_path / "merge.yaml"
    empty.write_text("# nothing yet\n")
    with pytest.raises(ConfigError, match=rf"{empty}: the file is empty"):
        load_merge_config(empty)
