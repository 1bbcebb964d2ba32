"""Merging across architectures that share a language model: the derived map, AdaMMS, ancestors, mapping files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("transformers")

import cross_arch_models as tiny

from uqmerge.core.errors import ConfigError, MappingError
from uqmerge.engine.merge import merge_to_dir
from uqmerge.engine.plan import build_plan
from uqmerge.engine.recipe import parse_merge_config

# Qwen2-VL and LLaVA-OneVision store the same Qwen2 language model under different legacy names; a Qwen2
# causal LM stores it as Qwen2-VL does. Key of each LLM tensor in the other checkpoint, from the target's key.
QWEN2VL_LLM = ("model.layers.", "model.embed_tokens.", "model.norm.", "lm_head.")


def _is_llm(key: str) -> bool:
    return key.startswith(QWEN2VL_LLM)


def _ov_key(qwen2vl_key: str) -> str:
    return "language_model." + qwen2vl_key


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cross")
    return {
        "qwen2vl": tiny.qwen2_vl(root / "qwen2vl", seed=1),
        "ov": tiny.llava_onevision(root / "ov", seed=2),
        "lm": tiny.qwen2_lm(root / "lm", seed=3),
        "ancestor": tiny.qwen2_lm(root / "ancestor", seed=4),
        "audio": tiny.qwen2_audio(root / "audio", seed=5),
        "ov_big_vocab": tiny.llava_onevision(root / "ov_big", seed=6, vocab=72),
        "llava": tiny.tiny_llava(root / "llava", seed=7),
    }


def _merge(tmp_path: Path, **config) -> Path:
    out = tmp_path / "out"
    merge_to_dir(parse_merge_config(config), out, quiet=True)
    return out


def test_adamms_interpolates_every_llm_tensor_and_keeps_the_target_vision_tower(models, tmp_path):
    out = _merge(
        tmp_path,
        merge_method="adamms",
        base_model=str(models["qwen2vl"]),
        models=[{"model": str(models["ov"])}],
        parameters={"alpha": 0.3},
    )
    target, other, merged = tiny.state(models["qwen2vl"]), tiny.state(models["ov"]), tiny.state(out)
    assert set(merged) == set(target)
    llm = [k for k in target if _is_llm(k)]
    assert len(llm) == 27 and len(target) > len(llm)
    for key in target:
        if _is_llm(key):
            expected = 0.7 * target[key] + 0.3 * other[_ov_key(key)]
            torch.testing.assert_close(merged[key], expected, atol=1e-6, rtol=0)
        else:  # the vision tower and its merger (projector)
            assert torch.equal(merged[key], target[key]), key


def test_adamms_output_loads_with_from_pretrained_and_generates(models, tmp_path):
    from transformers import Qwen2VLForConditionalGeneration

    out = _merge(
        tmp_path,
        merge_method="adamms",
        base_model=str(models["qwen2vl"]),
        models=[{"model": str(models["ov"])}],
        parameters={"alpha": 0.3},
    )
    model = Qwen2VLForConditionalGeneration.from_pretrained(out).eval()
    generated = model.generate(input_ids=torch.tensor([[1, 5, 6, 7]]), max_new_tokens=3, do_sample=False)
    assert generated.shape == (1, 7)


def test_adamms_at_alpha_zero_reproduces_the_base_bit_for_bit(models, tmp_path):
    out = _merge(
        tmp_path,
        merge_method="adamms",
        base_model=str(models["qwen2vl"]),
        models=[{"model": str(models["ov"])}],
        parameters={"alpha": 0.0},
    )
    target, merged = tiny.state(models["qwen2vl"]), tiny.state(out)
    assert all(torch.equal(merged[k], target[k]) for k in target)


def test_a_text_only_causal_lm_is_a_valid_other_side(models, tmp_path):
    out = _merge(
        tmp_path,
        merge_method="adamms",
        base_model=str(models["qwen2vl"]),
        models=[{"model": str(models["lm"])}],
        parameters={"alpha": 0.4},
    )
    target, other, merged = tiny.state(models["qwen2vl"]), tiny.state(models["lm"]), tiny.state(out)
    for key in target:
        if _is_llm(key):  # Qwen2ForCausalLM stores the LLM under the same on-disk names as Qwen2-VL
            torch.testing.assert_close(merged[key], 0.6 * target[key] + 0.4 * other[key], atol=1e-6, rtol=0)
        else:
            assert torch.equal(merged[key], target[key]), key


def test_another_vocabulary_keeps_the_target_embeddings_and_lists_them(models, tmp_path):
    config = parse_merge_config(
        {
            "merge_method": "adamms",
            "base_model": str(models["qwen2vl"]),
            "models": [{"model": str(models["ov_big_vocab"])}],
            "parameters": {"alpha": 0.5},
        }
    )
    plan = build_plan(config)
    kept = plan.mapping_summary()["kept_from_target"]
    assert kept == ["lm_head.weight", "model.embed_tokens.weight"]
    out = tmp_path / "out"
    merge_to_dir(config, out, quiet=True)
    target, merged = tiny.state(models["qwen2vl"]), tiny.state(out)
    assert torch.equal(merged["lm_head.weight"], target["lm_head.weight"])
    assert not torch.equal(merged["model.norm.weight"], target["model.norm.weight"])
    recorded = yaml.safe_load((out / "uqmerge_config.yml").read_text())["mapping"]
    assert recorded["kept_from_target"] == kept
    assert "shape [72, 32]" in recorded["maps"][0]["kept"]["lm_head.weight"]


def _across_with_ancestor(models, tmp_path: Path, method: str, parameters: dict) -> tuple[dict, ...]:
    """Qwen2-VL and LLaVA-OneVision merged by ``method`` with task vectors from the ancestor; every state dict."""
    out = _merge(
        tmp_path,
        merge_method=method,
        base_model=str(models["qwen2vl"]),
        ancestor=str(models["ancestor"]),
        models=[{"model": str(models["qwen2vl"])}, {"model": str(models["ov"])}],
        parameters=parameters,
    )
    return (*(tiny.state(models[k]) for k in ("qwen2vl", "ov", "ancestor")), tiny.state(out))


def test_task_arithmetic_across_architectures_takes_task_vectors_from_the_ancestor(models, tmp_path):
    m1, m2, anc, merged = _across_with_ancestor(models, tmp_path, "task_arithmetic", {"lambda": 0.5})
    for key in m1:
        if _is_llm(key):
            expected = anc[key] + 0.5 * ((m1[key] - anc[key]) + (m2[_ov_key(key)] - anc[key]))
            torch.testing.assert_close(merged[key], expected, atol=1e-6, rtol=0)
        else:
            assert torch.equal(merged[key], m1[key]), key


def test_ties_across_architectures_runs_on_the_mapped_task_vectors(models, tmp_path):
    m1, m2, anc, merged = _across_with_ancestor(models, tmp_path, "ties", {"density": 1.0})
    key = "model.layers.0.mlp.up_proj.weight"
    taus = torch.stack([m1[key] - anc[key], m2[_ov_key(key)] - anc[key]])
    sign = torch.sign(taus.sum(0))
    agree = (torch.sign(taus) == sign) & (sign != 0)
    expected = anc[key] + (taus * agree).sum(0) / agree.sum(0).clamp(min=1)
    torch.testing.assert_close(merged[key], expected, atol=1e-6, rtol=0)
    assert torch.equal(merged["visual.patch_embed.proj.weight"], m1["visual.patch_embed.proj.weight"])


def test_adamms_refuses_models_of_one_architecture_and_an_ancestor(models):
    same = {"merge_method": "adamms", "base_model": str(models["qwen2vl"]), "models": [str(models["qwen2vl"])]}
    with pytest.raises(ConfigError, match="another architecture"):
        build_plan(parse_merge_config({**same, "models": [{"model": str(models["qwen2vl"])}]}))
    with pytest.raises(ConfigError, match="ancestor"):
        build_plan(
            parse_merge_config({**same, "models": [{"model": str(models["ov"])}], "ancestor": str(models["ancestor"])})
        )


def test_models_without_a_shared_language_model_are_refused_by_name(models, tmp_path):
    another_vocabulary = tiny.qwen2_lm(tmp_path / "vocab80", seed=9, vocab=80)
    config = {
        "merge_method": "adamms",
        "base_model": str(models["qwen2vl"]),
        "models": [{"model": str(another_vocabulary)}],
    }
    plan = build_plan(parse_merge_config(config))  # a vocabulary apart: the rest still maps
    assert "model.embed_tokens.weight" in plan.mapping_summary()["kept_from_target"]
    wider = tiny.qwen2_lm(tmp_path / "hidden48", seed=9, hidden=48)
    with pytest.raises(
        MappingError,
        match=r"hidden48: its language model differs from that of .*qwen2vl: .* do not share a language model",
    ):
        build_plan(parse_merge_config({**config, "models": [{"model": str(wider)}]}))


def _text_only_llm(llava_dir: Path, out: Path) -> Path:
    """The language model of a zoo LLaVA as a ``LlamaForCausalLM`` directory (a text-only fine-tune of the zoo LLM)."""
    import json

    from safetensors.torch import save_file

    config = json.loads((llava_dir / "config.json").read_text())
    text = {**config["text_config"], "model_type": "llama", "architectures": ["LlamaForCausalLM"]}
    tensors = {
        k.removeprefix("language_model."): v
        for k, v in tiny.state(llava_dir).items()
        if k.startswith("language_model.")
    }
    out.mkdir(parents=True)
    save_file(tensors, out / "model.safetensors")
    (out / "config.json").write_text(json.dumps(text))
    return out


def test_adamms_search_over_alpha_writes_the_merge_at_the_consistency_choice(mini_zoo: Path, tmp_path: Path):
    from uqmerge.pipeline.search import run_search
    from uqmerge.pipeline.search_config import parse_search_config

    other = _text_only_llm(mini_zoo / "models" / "specialist-position", tmp_path / "text-llm")
    grid = [0.0, 0.3, 0.6]
    config = parse_search_config(
        {
            "base_model": str(mini_zoo / "models" / "specialist-count"),
            "models": [str(other)],
            "merge": {"merge_method": "adamms"},
            "search": {
                "parameter": "alpha",
                "grid": grid,
                "data": [str(mini_zoo / "data" / "held_out" / "count.jsonl")],
                "sample": 4,
                "consistency": {"max_new_tokens": 3},
            },
            "device": "cpu",
        }
    )
    record = run_search(config, tmp_path / "run", quiet=True)
    assert record.chosen_index == 1  # three points: consistency can only choose the interior one
    merge_to_dir(config.merge_config(grid[1]), tmp_path / "ref", quiet=True)
    got, want = tiny.state(tmp_path / "run" / "model"), tiny.state(tmp_path / "ref")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    vision = [k for k in want if "vision_tower" in k]
    base = tiny.state(mini_zoo / "models" / "specialist-count")
    assert vision and all(torch.equal(got[k], base[k]) for k in vision)
