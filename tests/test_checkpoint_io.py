"""Checkpoint I/O: the streaming writer's files read back with the safetensors library; reader errors."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from uqmerge.checkpoint.layouts import detect_layout, get_layout
from uqmerge.checkpoint.reader import CheckpointReader
from uqmerge.checkpoint.writer import ShardedWriter, assign_shards
from uqmerge.core.errors import CheckpointError, LayoutError, OutputError


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(4, 6, generator=g),
        "b.bias": torch.randn(6, generator=g).to(torch.bfloat16),
        "c.scalar": torch.tensor(3.5),
        "d.ids": torch.arange(5, dtype=torch.int64),
        "e.empty": torch.zeros(0, 3),
    }


def _write(out: Path, tensors: dict[str, torch.Tensor], max_shard_size: int = 10**9, force=False) -> Path:
    specs = [(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()]
    with ShardedWriter(out, specs, max_shard_size=max_shard_size, force=force) as w:
        for n, t in tensors.items():
            w.write(n, t)
        w.commit()
    return out


def test_streaming_writer_output_reads_back_identically_with_safetensors(tmp_path):
    tensors = _tensors()
    out = _write(tmp_path / "out", tensors)
    loaded = load_file(out / "model.safetensors")
    assert set(loaded) == set(tensors)
    for n, t in tensors.items():
        assert loaded[n].dtype == t.dtype and torch.equal(loaded[n], t)


def test_sharded_output_respects_max_shard_size_and_has_a_complete_index(tmp_path):
    tensors = {f"t{i}": torch.full((10, 10), float(i)) for i in range(7)}  # 400 bytes each
    out = _write(tmp_path / "out", tensors, max_shard_size=1000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(tensors)
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) == 4  # 2 tensors (800 B) per shard
    for shard in shards:
        data = load_file(shard)
        assert sum(t.numel() * t.element_size() for t in data.values()) <= 1000
    reader = CheckpointReader(out)
    for n, t in tensors.items():
        assert torch.equal(reader.read(n), t)
    assert index["metadata"]["total_size"] == 7 * 400


def test_assign_shards_gives_an_oversized_tensor_its_own_shard():
    specs = [("small", torch.float32, (2,)), ("huge", torch.float32, (100,)), ("small2", torch.float32, (2,))]
    assert [[s[0] for s in shard] for shard in assign_shards(specs, 40)] == [["small"], ["huge"], ["small2"]]


def test_writer_refuses_non_empty_dir_and_force_replaces_it(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(OutputError, match="not empty"):
        _write(out, _tensors())
    assert (out / "keep.txt").read_text() == "user data"
    _write(out, _tensors(), force=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_failed_write_leaves_nothing_behind(tmp_path):
    tensors = _tensors()
    specs = [(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()]
    with pytest.raises(RuntimeError), ShardedWriter(tmp_path / "out", specs, max_shard_size=10**9) as w:
        w.write("a.weight", tensors["a.weight"])
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_commit_refuses_when_a_planned_tensor_was_never_written(tmp_path):
    tensors = _tensors()
    specs = [(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()]
    w = ShardedWriter(tmp_path / "out", specs, max_shard_size=10**9)
    w.write("a.weight", tensors["a.weight"])
    with pytest.raises(OutputError, match="never written"):
        w.commit()
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_wrong_dtype_or_shape(tmp_path):
    w = ShardedWriter(tmp_path / "out", [("x", torch.float32, (2, 2))], max_shard_size=100)
    with pytest.raises(OutputError, match="planned"):
        w.write("x", torch.zeros(2, 2, dtype=torch.float16))
    w.abort()


def test_reader_reads_safetensors_written_by_the_library(tmp_path):
    tensors = {k: v for k, v in _tensors().items()}
    (tmp_path / "m").mkdir()
    save_file(tensors, tmp_path / "m" / "model.safetensors")
    reader = CheckpointReader(tmp_path / "m")
    assert set(reader.names) == set(tensors)
    for n, t in tensors.items():
        assert torch.equal(reader.read(n), t)


def test_corrupt_safetensors_header_is_a_clear_error(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "model.safetensors").write_bytes(struct.pack("<Q", 20) + b"{not json at all!!!}" + b"\0" * 8)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: corrupt safetensors header"):
        CheckpointReader(d)
    (d / "model.safetensors").write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(CheckpointError, match="declared length"):
        CheckpointReader(d)


def test_truncated_tensor_data_is_a_clear_error(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    save_file({"w": torch.ones(100)}, d / "model.safetensors")
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[:-16])
    with pytest.raises(CheckpointError, match="'w'"):
        CheckpointReader(d)


def test_pickles_are_refused_unless_allowed(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    torch.save({"w": torch.arange(3.0)}, d / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="--allow-pickle"):
        CheckpointReader(d)
    assert torch.equal(CheckpointReader(d, allow_pickle=True).read("w"), torch.arange(3.0))


def test_missing_tensor_is_named(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    save_file({"w": torch.ones(2)}, d / "model.safetensors")
    with pytest.raises(CheckpointError, match="'nope' is missing"):
        CheckpointReader(d).read("nope")


LLAVA_LEGACY = [
    "vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight",
    "multi_modal_projector.linear_1.weight",
    "image_newline",
    "language_model.model.embed_tokens.weight",
    "language_model.model.layers.0.self_attn.q_proj.weight",
    "language_model.model.layers.0.mlp.gate_proj.weight",
    "language_model.model.layers.0.post_attention_layernorm.weight",
    "language_model.model.norm.weight",
    "language_model.lm_head.weight",
]
LLAVA_NEW = [
    "model.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight",
    "model.multi_modal_projector.linear_1.weight",
    "model.image_newline",
    "model.language_model.embed_tokens.weight",
    "model.language_model.layers.0.self_attn.q_proj.weight",
    "model.language_model.layers.0.mlp.gate_proj.weight",
    "model.language_model.layers.0.post_attention_layernorm.weight",
    "model.language_model.norm.weight",
    "lm_head.weight",
]
EXPECTED = [
    "vision_tower",
    "projector",
    "projector",
    "language_model.embeddings",
    "language_model.attention",
    "language_model.mlp",
    "language_model.norm",
    "language_model.norm",
    "language_model.lm_head",
]


@pytest.mark.parametrize("names", [LLAVA_LEGACY, LLAVA_NEW], ids=["legacy-keys", "new-keys"])
def test_llava_layout_classifies_legacy_and_new_keys(names):
    layout = detect_layout({"model_type": "llava_next"})
    assert [layout.classify(n).key for n in names] == EXPECTED


def test_qwen2vl_layout_puts_the_merger_in_the_projector():
    layout = detect_layout({"model_type": "qwen2_5_vl"})
    got = {
        n: layout.classify(n).key
        for n in [
            "visual.merger.mlp.0.weight",
            "visual.blocks.0.attn.qkv.weight",
            "model.layers.0.self_attn.q_proj.weight",
            "model.visual.merger.ln_q.weight",
            "model.language_model.embed_tokens.weight",
            "lm_head.weight",
        ]
    }
    assert got == {
        "visual.merger.mlp.0.weight": "projector",
        "visual.blocks.0.attn.qkv.weight": "vision_tower",
        "model.layers.0.self_attn.q_proj.weight": "language_model.attention",
        "model.visual.merger.ln_q.weight": "projector",
        "model.language_model.embed_tokens.weight": "language_model.embeddings",
        "lm_head.weight": "language_model.lm_head",
    }


def test_internvl_and_causal_lm_layouts_are_derived_from_the_model_class():
    assert detect_layout({"model_type": "internvl"}).classify("model.multi_modal_projector.linear_1.weight").key == (
        "projector"
    )
    lm = detect_layout({"model_type": "mistral", "architectures": ["MistralForCausalLM"]})
    assert lm.name == "derived:MistralForCausalLM"
    assert lm.classify("model.layers.3.mlp.up_proj.weight").key == "language_model.mlp"


def test_a_model_type_transformers_does_not_know_falls_back_to_the_built_in_layouts():
    lm = detect_layout({"model_type": "my_private_lm", "architectures": ["MyPrivateForCausalLM"]})
    assert lm.name == "causal_lm"
    assert lm.classify("model.layers.3.mlp.up_proj.weight").key == "language_model.mlp"
    with pytest.raises(LayoutError, match=r"does not know model_type='my_private_vlm'.*set `layout:`"):
        detect_layout({"model_type": "my_private_vlm", "architectures": ["MyPrivateVLM"]})


def test_unclassified_tensors_are_listed_and_user_rules_fix_them():
    from uqmerge.checkpoint.layouts import Rule

    layout = get_layout("llava")
    with pytest.raises(LayoutError, match=r"adapter\.extra") as e:
        layout.classify_all(["multi_modal_projector.linear_1.weight", "adapter.extra", "language_model.weird"])
    assert "2 tensors match no rule" in str(e.value)
    fixed = layout.with_extra_rules(
        [Rule(r"^adapter\.", "projector"), Rule(r"^language_model\.weird$", "language_model", "mlp")]
    )
    assert (
        fixed.classify_all(["adapter.extra", "language_model.weird"])["language_model.weird"].key
        == "language_model.mlp"
    )


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(LayoutError, match="no layout for model_type='mystery'"):
        detect_layout({"model_type": "mystery", "architectures": ["MysteryModel"]})


def test_a_layout_marked_override_replaces_the_derivation_for_its_model_types(monkeypatch):
    from uqmerge.checkpoint import layouts

    data = json.loads(json.dumps(layouts._data()))
    data["layouts"]["llava"]["override"] = True
    monkeypatch.setattr(layouts, "_data", lambda: data)
    assert detect_layout({"model_type": "llava"}).name == "llava"
    assert detect_layout({"model_type": "qwen2_vl"}).name == "derived:Qwen2VLForConditionalGeneration"
