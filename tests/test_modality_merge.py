"""Modality merging: a vision and an audio MLLM on one Qwen2 LLM; one merged LLM written back into each."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

import cross_arch_models as tiny

from uqmerge.core.errors import ConfigError, OutputError
from uqmerge.engine.merge import merge_to_dir
from uqmerge.engine.recipe import parse_merge_config

LAMBDA = 0.5


@pytest.fixture(scope="module")
def merged(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("modality")
    paths = {
        "llm": tiny.qwen2_lm(root / "qwen2", seed=1),
        "vision": tiny.llava_onevision(root / "llava-ov", seed=2),
        "audio": tiny.qwen2_audio(root / "qwen2-audio", seed=3),
    }
    config = {
        "merge_method": "task_arithmetic",
        "base_model": str(paths["llm"]),
        "models": [{"model": str(paths["vision"]), "id": "vision"}, {"model": str(paths["audio"])}],
        "parameters": {"lambda": LAMBDA},
    }
    paths["out"] = root / "out"
    merge_to_dir(parse_merge_config(config), paths["out"], quiet=True)
    return paths


def _llm_key(expert_key: str) -> str | None:
    """The Qwen2 causal LM's key of an expert's language-model tensor (both experts store it as
    ``language_model.model.*`` / ``language_model.lm_head``)."""
    return expert_key.removeprefix("language_model.") if expert_key.startswith("language_model.") else None


def test_the_output_holds_the_merged_llm_and_one_directory_per_expert(merged):
    assert sorted(p.name for p in merged["out"].iterdir()) == ["llm", "qwen2-audio", "vision"]


def test_the_merged_llm_is_task_arithmetic_of_both_experts_llms(merged):
    base, vision, audio = (tiny.state(merged[k]) for k in ("llm", "vision", "audio"))
    llm = tiny.state(merged["out"] / "llm")
    assert set(llm) == set(base)
    for key in base:
        tau = (vision["language_model." + key] - base[key]) + (audio["language_model." + key] - base[key])
        torch.testing.assert_close(llm[key], base[key] + LAMBDA * tau, atol=1e-6, rtol=0)


def test_every_expert_output_holds_the_identical_merged_llm_and_its_own_encoder_and_connector(merged):
    llm = tiny.state(merged["out"] / "llm")
    for expert, out in (("vision", "vision"), ("audio", "qwen2-audio")):
        original, written = tiny.state(merged[expert]), tiny.state(merged["out"] / out)
        assert set(written) == set(original)
        own = 0
        for key, value in original.items():
            llm_key = _llm_key(key)
            if llm_key is not None:
                assert torch.equal(written[key], llm[llm_key]), key
            else:  # vision tower / audio tower, projector, image_newline
                assert torch.equal(written[key], value), key
                own += 1
        assert own > 0


def test_every_output_loads_with_its_own_class(merged):
    import transformers as tf

    classes = {
        "llm": tf.Qwen2ForCausalLM,
        "vision": tf.LlavaOnevisionForConditionalGeneration,
        "qwen2-audio": tf.Qwen2AudioForConditionalGeneration,
    }
    for name, cls in classes.items():
        model = cls.from_pretrained(merged["out"] / name)
        assert type(model) is cls


def test_clashing_expert_ids_are_refused_before_writing(merged, tmp_path):
    config = {
        "merge_method": "task_arithmetic",
        "base_model": str(merged["llm"]),
        "models": [{"model": str(merged["vision"]), "id": "same"}, {"model": str(merged["audio"]), "id": "same"}],
    }
    with pytest.raises(ConfigError, match="output directory 'same' is taken"):
        merge_to_dir(parse_merge_config(config), tmp_path / "out", quiet=True)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="'llm' is the merged language model"):
        parse_merge_config({**config, "models": [{"model": str(merged["vision"]), "id": "llm"}]})
    with pytest.raises(OutputError, match="not empty"):
        merge_to_dir(parse_merge_config({**config, "models": config["models"][:1]}), merged["out"], quiet=True)
