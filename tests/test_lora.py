"""LoRA adapters as experts (task vector (α/r)·B·A) and merges written as one LoRA adapter, against peft itself."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from uqmerge.checkpoint.layouts import detect_layout
from uqmerge.checkpoint.lora import LoraCheckpoint
from uqmerge.checkpoint.reader import CheckpointReader
from uqmerge.core.errors import CheckpointError, ConfigError, LayoutError
from uqmerge.engine.lora_output import truncate_lora
from uqmerge.engine.merge import merge_to_dir
from uqmerge.engine.plan import build_plan
from uqmerge.engine.recipe import MergeRecipe, parse_merge_config

VISION_MERGED = {"vision_tower": {"merge_method": "task_arithmetic"}}


def _state(path: Path) -> dict[str, torch.Tensor]:
    r = CheckpointReader(path)
    return {n: r.read(n).float() for n in r.names}


def _randomize_trainables(model: torch.nn.Module, seed: int) -> None:
    """Seeded non-zero values for every trainable tensor (LoRA factors, modules_to_save copies, biases)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)


def _make_adapter(model_cls, base: Path, root: Path, name: str, seed: int, **lora) -> tuple[Path, Path]:
    """Save a random peft LoRA adapter on ``base`` and, next to it, the merge_and_unload()ed dense model."""
    from peft import LoraConfig, get_peft_model

    model = model_cls.from_pretrained(base, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(**lora))
    _randomize_trainables(peft_model, seed)
    with warnings.catch_warnings():
        # peft notes that it saves the embedding layer, and takes 1-D lora_B biases for unsharded ZeRO-3 shards.
        warnings.filterwarnings("ignore", message="Setting `save_embedding_layers`")
        warnings.filterwarnings("ignore", message=r".*LoRA tensor\(s\) have invalid shape")
        peft_model.save_pretrained(root / name)
    peft_model.merge_and_unload().save_pretrained(root / f"{name}_dense")
    return root / name, root / f"{name}_dense"


def _build_gpt2(out: Path) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64, n_positions=32, bos_token_id=0, eos_token_id=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        GPT2LMHeadModel(config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def zoo(llava_family, qwen2vl_family, tmp_path_factory) -> dict[str, Path]:
    """Bases, LoRA adapters and their merge_and_unload()ed dense versions (``<name>_dense``)."""
    from transformers import GPT2LMHeadModel, LlavaForConditionalGeneration, Qwen2VLForConditionalGeneration

    root = tmp_path_factory.mktemp("lora")
    llava, qwen, gpt2 = llava_family["base"], qwen2vl_family["base"], _build_gpt2(root / "gpt2")
    out = {"llava": llava, "qwen": qwen, "gpt2": gpt2, "expert0": llava_family["expert0"]}
    specs = {
        # q_proj/v_proj also hit the CLIP vision tower; linear_2 of the projector is trained whole.
        "la": (
            llava,
            dict(
                r=4,
                lora_alpha=8,
                target_modules=["q_proj", "v_proj", "up_proj", "linear_1"],
                modules_to_save=["linear_2"],
            ),
        ),
        # rsLoRA and an embedding LoRA (peft also saves a copy of the embedding under base_layer).
        "lb": (
            llava,
            dict(r=2, lora_alpha=3, use_rslora=True, target_modules=["q_proj", "k_proj", "down_proj", "embed_tokens"]),
        ),
        # A regex target and per-module rank/alpha.
        "lc": (
            llava,
            dict(
                r=3,
                lora_alpha=6,
                target_modules=r".*language_model.*\.(v_proj|o_proj|gate_proj)",
                rank_pattern={"o_proj": 5},
                alpha_pattern={"o_proj": 2.0},
            ),
        ),
        # LoRA biases on Qwen2-VL's biased projections and on the merger (projector).
        "qa": (qwen, dict(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj", "merger.mlp.0"], lora_bias=True)),
        # Trained base biases (bias="lora_only" saves <module>.base_layer.bias).
        "qb": (qwen, dict(r=3, lora_alpha=3, target_modules=["k_proj", "merger.mlp.2"], bias="lora_only")),
        # GPT-2 Conv1D weights are stored (in, out): fan_in_fan_out.
        "ga": (gpt2, dict(r=2, lora_alpha=4, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True)),
    }
    classes = {llava: LlavaForConditionalGeneration, qwen: Qwen2VLForConditionalGeneration, gpt2: GPT2LMHeadModel}
    for seed, (name, (base, lora)) in enumerate(specs.items(), start=1):
        out[name], out[f"{name}_dense"] = _make_adapter(classes[base], base, root, name, seed, **lora)
    return out


def _base_of(name: str) -> str:
    return {"l": "llava", "q": "qwen", "g": "gpt2"}[name[0]]


def _config(zoo, models: list[str], method: str = "task_arithmetic", base: str = "llava", **extra) -> dict:
    return {
        "merge_method": method,
        "base_model": str(zoo[base]),
        "models": [{"model": str(zoo[m])} for m in models],
        **extra,
    }


def _merge(cfg: dict, out: Path) -> dict[str, torch.Tensor]:
    """Merge ``cfg`` into ``out``; the merged tensors of a dense output (a LoRA output returns nothing)."""
    merge_to_dir(parse_merge_config(cfg), out, quiet=True)
    return {} if "lora_output" in cfg else _state(out)


def _assert_states_close(got, want, atol=1e-6):
    assert set(got) == set(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=atol, rtol=1e-5, msg=name)


def _assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def _peft_merged_state(zoo, base: str, adapter_dir: Path, tmp: Path) -> dict[str, torch.Tensor]:
    """Load ``adapter_dir`` with PeftModel.from_pretrained on the base, merge_and_unload, read back by on-disk key."""
    from peft import PeftModel
    from transformers import GPT2LMHeadModel, LlavaForConditionalGeneration, Qwen2VLForConditionalGeneration

    cls = {"llava": LlavaForConditionalGeneration, "qwen": Qwen2VLForConditionalGeneration, "gpt2": GPT2LMHeadModel}
    model = PeftModel.from_pretrained(cls[base].from_pretrained(zoo[base], dtype=torch.float32), adapter_dir)
    model.merge_and_unload().save_pretrained(tmp)
    return _state(tmp)


@pytest.mark.parametrize("adapter", ["la", "lb", "lc", "qa", "qb", "ga"])
def test_lora_expert_merged_as_a_task_vector_equals_peft_merge_and_unload(zoo, tmp_path, adapter):
    base = _base_of(adapter)
    got = _merge(_config(zoo, [adapter], base=base, components=VISION_MERGED), tmp_path / "out")
    want = _state(zoo[f"{adapter}_dense"])
    _assert_states_close(got, want)
    base_state = _state(zoo[base])
    changed = {n for n in base_state if not torch.equal(want[n], base_state[n])}
    assert changed, "the adapter must change some tensors"
    reader = LoraCheckpoint(
        zoo[adapter], CheckpointReader(zoo[base]), detect_layout(CheckpointReader(zoo[base]).config)
    )
    assert changed <= set(reader.updates)


def test_default_plan_keeps_the_vision_tower_a_lora_expert_targets(zoo, tmp_path):
    got = _merge(_config(zoo, ["la"]), tmp_path / "out")
    base, dense = _state(zoo["llava"]), _state(zoo["la_dense"])
    vision = [n for n in base if n.startswith("vision_tower.") and "q_proj.weight" in n]
    assert vision and all(not torch.equal(dense[n], base[n]) for n in vision)
    assert all(torch.equal(got[n], base[n]) for n in vision)
    lm = "language_model.model.layers.0.self_attn.q_proj.weight"
    torch.testing.assert_close(got[lm], dense[lm], atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("method", "extra"),
    [
        ("ties", {"parameters": {"density": 0.5, "lambda": 0.9}}),
        ("linear", {}),
        ("dare_ties", {"parameters": {"density": 0.6}, "seed": 3}),
    ],
)
def test_any_method_over_lora_and_dense_experts_equals_merging_the_unloaded_models(zoo, tmp_path, method, extra):
    models = ["la", "lb", "expert0"]
    cfg = _config(zoo, models, method, components=VISION_MERGED, **extra)
    cfg["models"][0]["parameters"] = {"weight": 2.0}
    dense_cfg = {**cfg, "models": [dict(m) for m in cfg["models"]]}
    for entry, name in zip(dense_cfg["models"], models, strict=True):
        entry["model"] = str(zoo.get(f"{name}_dense", zoo[name]))
    _assert_states_close(_merge(cfg, tmp_path / "lora"), _merge(dense_cfg, tmp_path / "dense"))


def _adapter_tensors(out: Path) -> dict[str, torch.Tensor]:
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "uqmerge_config.yml",
    ]
    return load_file(out / "adapter_model.safetensors")


@pytest.mark.parametrize(
    ("method", "parameters"), [("task_arithmetic", {"lambda": 0.8}), ("linear", {})], ids=["task_arithmetic", "linear"]
)
def test_lora_output_with_concatenated_ranks_reproduces_the_dense_merge(zoo, tmp_path, method, parameters):
    cfg = _config(zoo, ["la", "lb", "lc"], method, parameters=parameters)
    cfg["models"][1]["parameters"] = {"weight": 0.5}
    cfg["models"][2]["parameters"] = {"weight": -0.7 if method == "task_arithmetic" else 1.5}
    dense = _merge(cfg, tmp_path / "dense")
    _merge({**cfg, "lora_output": {}}, tmp_path / "adapter")
    tensors = _adapter_tensors(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    # q_proj of the LM: ranks 4 (la) + 2 (lb); o_proj: rank_pattern 5 (lc); every module at scale 1.
    q = "base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight"
    o = "base_model.model.model.language_model.layers.0.self_attn.o_proj.lora_A.weight"
    assert tensors[q].shape[0] == 6 and tensors[o].shape[0] == 5
    assert config["lora_alpha"] == config["r"] and config["alpha_pattern"] == config["rank_pattern"]
    assert config["modules_to_save"] == ["model.multi_modal_projector.linear_2"]
    assert not any("vision_tower" in k for k in tensors), "the plan keeps the vision tower: no update there"
    _assert_states_close(_peft_merged_state(zoo, "llava", tmp_path / "adapter", tmp_path / "peft"), dense, atol=1e-5)


@pytest.mark.parametrize(("base", "adapters"), [("qwen", ["qa", "qb"]), ("gpt2", ["ga"])])
def test_lora_output_keeps_biases_and_fan_in_fan_out_exact(zoo, tmp_path, base, adapters):
    cfg = _config(zoo, adapters, base=base, parameters={"lambda": 1.3}, components=VISION_MERGED)
    dense = _merge(cfg, tmp_path / "dense")
    _merge({**cfg, "lora_output": {}}, tmp_path / "adapter")
    _assert_states_close(_peft_merged_state(zoo, base, tmp_path / "adapter", tmp_path / "peft"), dense, atol=1e-5)


def test_lora_output_truncated_rank_is_the_best_rank_k_approximation(zoo, tmp_path):
    k = 3
    cfg = _config(zoo, ["la", "lb", "lc"], parameters={"lambda": 0.8})
    dense = _merge(cfg, tmp_path / "dense")
    _merge({**cfg, "lora_output": {"rank": k}}, tmp_path / "adapter")
    tensors = _adapter_tensors(tmp_path / "adapter")
    base_reader = CheckpointReader(zoo["llava"])
    layout = detect_layout(base_reader.config)
    on_disk = {layout.module_name(n): n for n in base_reader.names}
    base = _state(zoo["llava"])
    checked = 0
    for name, b in tensors.items():
        if not name.endswith(("lora_B.weight", "lora_embedding_B")):
            continue
        embedding = name.endswith("lora_embedding_B")
        module = name.removeprefix("base_model.model.").rsplit(".lora_", 1)[0]
        a = tensors[name.replace("lora_B.weight", "lora_A.weight").replace("lora_embedding_B", "lora_embedding_A")]
        assert b.shape[1] == a.shape[0] <= k
        key = on_disk[f"{module}.weight"]
        delta = (b @ a).T if embedding else b @ a
        want = dense[key] - base[key]
        u, s, vh = torch.linalg.svd(want.double(), full_matrices=False)
        best = (u[:, :k] * s[:k]) @ vh[:k]
        torch.testing.assert_close(delta.double(), best, atol=2e-5, rtol=0, msg=module)
        assert int(torch.linalg.matrix_rank(delta)) <= k
        checked += 1
    assert checked >= 8
    merged = _peft_merged_state(zoo, "llava", tmp_path / "adapter", tmp_path / "peft")
    key = on_disk["model.language_model.layers.0.self_attn.q_proj.weight"]
    b = tensors["base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_B.weight"]
    a = tensors["base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight"]
    torch.testing.assert_close(merged[key], base[key] + b @ a, atol=1e-6, rtol=0)


def test_truncate_lora_never_exceeds_the_factor_rank_and_is_exact_at_full_rank():
    gen = torch.Generator().manual_seed(0)
    b, a = torch.randn(40, 6, generator=gen), torch.randn(6, 30, generator=gen)
    b2, a2 = truncate_lora(b, a, 10)
    assert b2.shape == (40, 6) and a2.shape == (6, 30)
    torch.testing.assert_close(b2 @ a2, b @ a, atol=1e-4, rtol=1e-5)
    b3, a3 = truncate_lora(b, a, 2)
    s = torch.linalg.svdvals(b @ a)
    assert abs(float(torch.linalg.matrix_norm(b @ a - b3 @ a3)) - float(s[2:].norm())) < 1e-3


@pytest.mark.parametrize("adapter", ["la", "lb", "qa", "qb", "ga"])
def test_read_rows_equals_rows_of_read(zoo, adapter):
    base = CheckpointReader(zoo[_base_of(adapter)])
    reader = LoraCheckpoint(zoo[adapter], base, detect_layout(base.config))
    for name in reader.updates:
        whole = reader.read(name)
        stop = min(3, whole.shape[0])
        torch.testing.assert_close(reader.read_rows(name, 1, stop), whole[1:stop], atol=1e-6, rtol=0, msg=name)
        assert reader.info(name).shape == tuple(whole.shape) and reader.info(name).dtype == whole.dtype


def _copy_adapter(zoo, name: str, dest: Path, **config_changes) -> Path:
    shutil.copytree(zoo[name], dest)
    if config_changes:
        config = json.loads((dest / "adapter_config.json").read_text())
        config.update(config_changes)
        (dest / "adapter_config.json").write_text(json.dumps(config))
    return dest


def _expect_refused(cfg: dict, out: Path, error: type[Exception], *fragments: str) -> None:
    with pytest.raises(error) as info:
        merge_to_dir(parse_merge_config(cfg), out, quiet=True)
    for fragment in fragments:
        assert fragment in str(info.value)
    _assert_nothing_written(out)


def test_adapter_of_another_architecture_is_refused_naming_the_file(zoo, tmp_path):
    cfg = _config(zoo, ["qa"])
    _expect_refused(cfg, tmp_path / "out", LayoutError, str(zoo["qa"] / "adapter_config.json"), "Qwen2VL")
    # Without the recorded class, the adapter's modules still find no LLaVA tensors of their shapes.
    bare = _copy_adapter(zoo, "qa", tmp_path / "bare", auto_mapping=None)
    cfg = {**_config(zoo, []), "models": [{"model": str(bare)}]}
    _expect_refused(cfg, tmp_path / "out", CheckpointError, str(bare / "adapter_model.safetensors"), "match no tensor")


def test_adapter_tensor_without_a_base_tensor_or_of_the_wrong_shape_is_refused(zoo, tmp_path):
    extra = _copy_adapter(zoo, "la", tmp_path / "extra")
    tensors = load_file(extra / "adapter_model.safetensors")
    stray = "base_model.model.model.language_model.layers.0.self_attn.nope.lora_A.weight"
    save_file({**tensors, stray: torch.zeros(4, 32)}, extra / "adapter_model.safetensors")
    cfg = {**_config(zoo, []), "models": [{"model": str(extra)}]}
    _expect_refused(cfg, tmp_path / "out", CheckpointError, str(extra / "adapter_model.safetensors"), stray)

    wrong = _copy_adapter(zoo, "la", tmp_path / "wrong")
    a = "base_model.model.model.language_model.layers.0.mlp.up_proj.lora_A.weight"
    save_file({**tensors, a: torch.zeros(4, 48)}, wrong / "adapter_model.safetensors")
    cfg = {**_config(zoo, []), "models": [{"model": str(wrong)}]}
    _expect_refused(cfg, tmp_path / "out", CheckpointError, str(wrong / "adapter_model.safetensors"), "up_proj")


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"use_dora": True}, "DoRA"),
        ({"peft_type": "IA3"}, "IA3"),
        ({"init_lora_weights": "pissa"}, "pissa"),
        ({"layer_replication": [[0, 1]]}, "layer_replication"),
        ({"alora_invocation_tokens": [1, 2]}, "alora_invocation_tokens"),
    ],
)
def test_unsupported_peft_settings_are_refused_naming_the_config(zoo, tmp_path, change, fragment):
    adapter = _copy_adapter(zoo, "la", tmp_path / "adapter", **change)
    cfg = {**_config(zoo, []), "models": [{"model": str(adapter)}]}
    _expect_refused(cfg, tmp_path / "out", CheckpointError, str(adapter / "adapter_config.json"), fragment)


def test_a_real_dora_adapter_is_refused(zoo, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(zoo["llava"])
    get_peft_model(model, LoraConfig(r=2, target_modules=["linear_1"], use_dora=True)).save_pretrained(tmp_path / "d")
    cfg = {**_config(zoo, []), "models": [{"model": str(tmp_path / "d")}]}
    _expect_refused(cfg, tmp_path / "out", CheckpointError, "adapter_config.json", "DoRA")


def test_lora_output_refuses_nonlinear_methods_dense_experts_and_a_bad_rank(zoo, tmp_path):
    cfg = _config(zoo, ["la", "lb"], "ties", lora_output={})
    _expect_refused(cfg, tmp_path / "out", ConfigError, "'ties'", "not linear")
    cfg = _config(zoo, ["la", "expert0"], lora_output={"rank": 2})
    _expect_refused(cfg, tmp_path / "out", ConfigError, str(zoo["expert0"]), "not a LoRA adapter")
    with pytest.raises(ConfigError, match=r"lora_output\.rank"):
        parse_merge_config(_config(zoo, ["la"], lora_output={"rank": 0}))
    with pytest.raises(ConfigError, match=r"lora_output\.size"):
        parse_merge_config(_config(zoo, ["la"], lora_output={"size": 2}))


def test_an_adapter_needs_the_base_it_was_trained_on(zoo, tmp_path):
    cfg = {"merge_method": "linear", "models": [{"model": str(zoo["la"])}, {"model": str(zoo["lb"])}]}
    _expect_refused(cfg, tmp_path / "out", ConfigError, "base_model")
    cfg = {**_config(zoo, ["lb"]), "base_model": str(zoo["la"])}
    _expect_refused(cfg, tmp_path / "out", ConfigError, "`base_model:` is a LoRA adapter")


def test_pickled_adapter_is_read_only_with_allow_pickle(zoo, tmp_path):
    pickled = tmp_path / "pickled"
    shutil.copytree(zoo["la"], pickled)
    torch.save(load_file(pickled / "adapter_model.safetensors"), pickled / "adapter_model.bin")
    (pickled / "adapter_model.safetensors").unlink()
    cfg = parse_merge_config({**_config(zoo, []), "models": [{"model": str(pickled)}]})
    with pytest.raises(CheckpointError, match="allow-pickle"):
        build_plan(cfg)
    merge_to_dir(cfg, tmp_path / "out", allow_pickle=True, quiet=True)
    _merge(_config(zoo, ["la"]), tmp_path / "ref")
    _assert_states_close(_state(tmp_path / "out"), _state(tmp_path / "ref"), atol=0)


def _resident_llava(path: Path) -> torch.nn.Module:
    from transformers import LlavaForConditionalGeneration

    return LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32)


def test_running_mean_over_lora_candidates_equals_a_full_merge_of_their_dense_versions(zoo):
    from uqmerge.engine.incremental import IncrementalMerger

    merge = MergeRecipe(merge_method="linear")
    lora = IncrementalMerger.for_candidates(
        _resident_llava(zoo["llava"]), zoo["llava"], {"e": zoo["expert0"], "la": zoo["la"], "lb": zoo["lb"]}, merge
    )
    lora.set_prefix(["e"])
    lora.set_prefix(["e", "la"])
    lora.set_prefix(["e", "la", "lb"])  # two running-mean steps that read adapters
    dense = IncrementalMerger.for_candidates(
        _resident_llava(zoo["llava"]),
        zoo["llava"],
        {"e": zoo["expert0"], "la": zoo["la_dense"], "lb": zoo["lb_dense"]},
        merge,
    )
    dense.set_prefix(["e", "la", "lb"])  # a single re-merge through the executor
    _assert_states_close(lora.model.state_dict(), dense.model.state_dict(), atol=1e-5)


def test_reset_then_a_single_candidate_gives_that_candidate_not_a_stale_mean(zoo):
    from uqmerge.engine.incremental import IncrementalMerger

    model = _resident_llava(zoo["llava"])
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    candidates = {"e": zoo["expert0"], "la": zoo["la"]}
    merger = IncrementalMerger.for_candidates(model, zoo["llava"], candidates, MergeRecipe(merge_method="linear"))
    merger.set_prefix(["e", "la"])
    model.load_state_dict(base_state)
    merger.reset()
    merger.set_prefix(["la"])
    want = _resident_llava(zoo["la_dense"]).state_dict()
    # The default plan keeps the vision tower: only merged tensors follow the adapter.
    for name, tensor in model.state_dict().items():
        expected = base_state[name] if ".vision_tower." in f".{name}" else want[name]
        torch.testing.assert_close(tensor, expected, atol=1e-6, rtol=1e-5, msg=name)


def test_lora_output_without_peft_is_a_one_line_error_naming_the_extra(tmp_path, monkeypatch):
    import importlib.util

    from uqmerge.core.errors import ConfigError
    from uqmerge.engine.lora_output import merge_lora_adapters
    from uqmerge.engine.recipe import parse_merge_config

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    cfg = parse_merge_config({"merge_method": "linear", "models": [{"model": str(tmp_path)}], "lora_output": {}})
    with pytest.raises(ConfigError, match=r"needs peft: pip install 'uqmerge\[lora\]'"):
        merge_lora_adapters(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()
