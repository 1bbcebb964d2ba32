"""Mapping files: one source to several targets, concatenation, renumbered layers, keep rules and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

import cross_arch_models as tiny

from uqmerge.core.errors import ConfigError, MappingError
from uqmerge.engine.merge import merge_to_dir
from uqmerge.engine.plan import build_plan
from uqmerge.engine.recipe import parse_merge_config
from uqmerge.mapping.files import shipped_mappings

# Remote-code models have no transformers class to derive a layout from: the config's rules classify them.
REMOTE_RULES = [
    {"pattern": r"^model\.(vision|vision_model|visual_abstractor)\.", "component": "vision_tower"},
    {"pattern": r"\.self_attn\.", "component": "language_model", "role": "attention"},
    {"pattern": r"\.mlp\.", "component": "language_model", "role": "mlp"},
    {"pattern": r"norm", "component": "language_model", "role": "norm"},
    {"pattern": r"embed_tokens", "component": "language_model", "role": "embeddings"},
    {"pattern": r"^lm_head", "component": "language_model", "role": "lm_head"},
]
ALPHA = 0.3
LLAVA_LM = "language_model.model.layers."


@pytest.fixture(scope="module")
def llava(tmp_path_factory) -> Path:
    return tiny.tiny_llava(tmp_path_factory.mktemp("llava") / "llava", seed=7)


def _adamms(target: Path, other: Path, mapping: str, out: Path) -> dict[str, torch.Tensor]:
    config = {
        "merge_method": "adamms",
        "base_model": str(target),
        "models": [{"model": str(other), "mapping": mapping}],
        "parameters": {"alpha": ALPHA},
        "layout_rules": REMOTE_RULES,
    }
    merge_to_dir(parse_merge_config(config), out, quiet=True)
    return tiny.state(out)


def _mix(target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    return (1 - ALPHA) * target + ALPHA * source


def test_cogvlm_experts_both_take_the_llama_block_and_fused_qkv_is_q_k_v_concatenated(llava, tmp_path):
    other = tiny.state(llava)
    target_dir = tiny.write_synthetic(tmp_path / "cogvlm", tiny.cogvlm_state(other, seed=1), "cogvlm")
    target = tiny.state(target_dir)
    merged = _adamms(target_dir, llava, "llava-to-cogvlm", tmp_path / "out")
    assert set(merged) == set(target)
    checked = 0
    for i in (0, 1):
        src = f"{LLAVA_LM}{i}."
        qkv = torch.cat([other[f"{src}self_attn.{p}_proj.weight"] for p in "qkv"])
        for expert in ("language", "vision"):
            layer = f"model.layers.{i}."
            pairs = {
                f"{layer}self_attn.{expert}_expert_query_key_value.weight": qkv,
                f"{layer}self_attn.{expert}_expert_dense.weight": other[f"{src}self_attn.o_proj.weight"],
                **{
                    f"{layer}mlp.{expert}_mlp.{p}.weight": other[f"{src}mlp.{p}.weight"]
                    for p in ("gate_proj", "up_proj", "down_proj")
                },
            }
            for key, source in pairs.items():
                torch.testing.assert_close(merged[key], _mix(target[key], source), atol=1e-6, rtol=0)
                checked += 1
        for norm in ("input_layernorm", "post_attention_layernorm"):
            key = f"model.layers.{i}.{norm}.weight"
            torch.testing.assert_close(merged[key], _mix(target[key], other[f"{src}{norm}.weight"]), atol=1e-6, rtol=0)
            checked += 1
    torch.testing.assert_close(
        merged["lm_head.weight"],
        _mix(target["lm_head.weight"], other["language_model.lm_head.weight"]),
        atol=1e-6,
        rtol=0,
    )
    for key in target:
        if key.startswith("model.vision."):
            assert torch.equal(merged[key], target[key])
    assert checked == 2 * (2 * 5 + 2)


def test_mplug_owl2_multiway_copies_both_take_the_tensor_they_were_made_from(llava, tmp_path):
    other = tiny.state(llava)
    target_dir = tiny.write_synthetic(tmp_path / "owl", tiny.mplug_owl2_state(other, seed=2), "mplug_owl2")
    target = tiny.state(target_dir)
    merged = _adamms(target_dir, llava, "llava-to-mplug_owl2", tmp_path / "out")
    for key, value in target.items():
        if key.startswith(("model.vision_model.", "model.visual_abstractor.")):
            assert torch.equal(merged[key], value), key
            continue
        source_key = "language_model." + key.replace(".multiway.0", "").replace(".multiway.1", "")
        if key == "lm_head.weight":
            source_key = "language_model.lm_head.weight"
        torch.testing.assert_close(merged[key], _mix(value, other[source_key]), atol=1e-6, rtol=0)
    assert sum(".multiway.1." in k for k in target) == 2 * 4  # k, v and two norms per layer, two layers


def test_llama_into_mllama_renumbers_layers_past_the_cross_attention_layers(tmp_path):
    import transformers as tf

    text = {**tiny.qwen2_text(), "num_key_value_heads": 2, "num_hidden_layers": 3, "cross_attention_layers": [1]}
    vision = {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_global_layers": 1,
        "attention_heads": 1,
        "image_size": 16,
        "patch_size": 8,
        "max_num_tiles": 1,
        "vision_output_dim": 32,
        "intermediate_layers_indices": [0],
        "supported_aspect_ratios": [[1, 1]],
    }
    mllama = tiny._save(
        tf.MllamaForConditionalGeneration(tf.MllamaConfig(text_config=text, vision_config=vision)),
        tmp_path / "mllama",
        1,
    )
    llama_config = tf.LlamaConfig(**{**tiny.qwen2_text(), "num_key_value_heads": 2, "num_hidden_layers": 2})
    llama = tiny._save(tf.LlamaForCausalLM(llama_config), tmp_path / "llama", 2)
    config = {
        "merge_method": "adamms",
        "base_model": str(mllama),
        "models": [{"model": str(llama), "mapping": "llama-to-mllama"}],
        "parameters": {"alpha": ALPHA},
    }
    plan = build_plan(parse_merge_config(config))
    out = tmp_path / "out"
    merge_to_dir(plan.config, out, quiet=True)
    target, other, merged = tiny.state(mllama), tiny.state(llama), tiny.state(out)
    prefix = next(
        p
        for p in ("language_model.model.layers.", "model.language_model.layers.")
        if any(k.startswith(p) for k in target)
    )
    for mllama_layer, llama_layer in ((0, 0), (2, 1)):
        key = f"{prefix}{mllama_layer}.mlp.up_proj.weight"
        expected = _mix(target[key], other[f"model.layers.{llama_layer}.mlp.up_proj.weight"])
        torch.testing.assert_close(merged[key], expected, atol=1e-6, rtol=0)
    cross = [k for k in target if k.startswith(f"{prefix}1.")]
    assert cross and all(torch.equal(merged[k], target[k]) for k in cross)
    kept = plan.mapping_summary()["kept_from_target"]
    assert [k for k in kept if "embed_tokens" in k], kept  # 8 more rows for Mllama's image tokens


def test_a_rule_naming_a_missing_source_is_an_error_naming_rule_and_tensor(llava, tmp_path):
    mapping = tmp_path / "bad.yaml"
    mapping.write_text("rules:\n  - {target: 'lm_head\\.weight', source: 'no.such.tensor'}\n")
    target_dir = tiny.write_synthetic(tmp_path / "cogvlm", tiny.cogvlm_state(tiny.state(llava), seed=1), "cogvlm")
    config = {
        "merge_method": "adamms",
        "base_model": str(target_dir),
        "models": [{"model": str(llava), "mapping": str(mapping)}],
        "layout_rules": REMOTE_RULES,
    }
    with pytest.raises(
        MappingError, match=r"bad.yaml: rule 'lm_head\\\\.weight' maps 'lm_head.weight' from 'no.such.tensor'"
    ):
        build_plan(parse_merge_config(config))
    mapping.write_text("rules:\n  - {target: 'x', source: 'a', keep: true}\n")
    with pytest.raises(ConfigError, match="exactly one of source, concat, keep"):
        build_plan(parse_merge_config(config))
    with pytest.raises(ConfigError, match=r"neither a file nor a shipped mapping; shipped: .*llava-to-cogvlm"):
        build_plan(parse_merge_config({**config, "models": [{"model": str(llava), "mapping": "nope"}]}))


def test_every_shipped_mapping_file_validates():
    from uqmerge.mapping.files import load_mapping_file

    names = shipped_mappings()
    assert {"llava_onevision-to-qwen2_vl", "llava-to-cogvlm", "llava-to-mplug_owl2", "llama-to-mllama"} <= set(names)
    for name in names:
        assert load_mapping_file(name).description


def test_shipped_llava_to_llava_next_mapping_interpolates_the_llm_and_keeps_next_s_own_parts(llava, tmp_path):
    import transformers as tf

    text, vision = tiny.llama_text(), tiny.clip_vision()
    config = tf.LlavaNextConfig(
        text_config=text, vision_config=vision, image_token_index=60, image_grid_pinpoints=[[32, 32]]
    )
    next_dir = tiny._save(tf.LlavaNextForConditionalGeneration(config), tmp_path / "next", 3)
    merged = _adamms(next_dir, llava, "llava-to-llava_next", tmp_path / "out")
    target, other = tiny.state(next_dir), tiny.state(llava)
    llm = [k for k in target if k.startswith("language_model.")]
    assert len(llm) == len([k for k in other if k.startswith("language_model.")])
    for key, value in target.items():
        if key in llm:  # both store the Llama under the same legacy names
            torch.testing.assert_close(merged[key], _mix(value, other[key]), atol=1e-6, rtol=0)
        else:
            assert torch.equal(merged[key], value), key
    assert "image_newline" in target
