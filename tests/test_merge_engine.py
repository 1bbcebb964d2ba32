"""End-to-end merges of tiny LLaVA-hf and Qwen2-VL checkpoints, checked tensor by tensor."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from uqmerge.checkpoint.layouts import detect_layout
from uqmerge.checkpoint.reader import CheckpointReader
from uqmerge.cli import app
from uqmerge.core.errors import CheckpointError, ConfigError, LayoutError, OutputError, PlanError
from uqmerge.engine.executor import tensor_seed
from uqmerge.engine.merge import merge_to_dir
from uqmerge.engine.recipe import parse_merge_config
from uqmerge.methods import MergeInputs, get_method


def _state(path: Path) -> dict[str, torch.Tensor]:
    r = CheckpointReader(path)
    return {n: r.read(n).float() for n in r.names}


def _config(family, method: str, n: int = 3, base: bool = True, **extra) -> dict:
    cfg = {
        "merge_method": method,
        "models": [{"model": str(family[f"expert{i}"])} for i in range(n)],
        **extra,
    }
    if base:
        cfg["base_model"] = str(family["base"])
    return cfg


def _merge(cfg: dict, out: Path, **kw) -> dict[str, torch.Tensor]:
    merge_to_dir(parse_merge_config(cfg), out, quiet=True, **kw)
    return _state(out)


def _ref_linear(xs, ws):
    return sum(w * x for w, x in zip(ws, xs, strict=True)) / sum(ws)


def _ref_task_arithmetic(base, xs, lam):
    return base + lam * sum(x - base for x in xs)


def _ref_ties_no_trim(base, xs, lam):
    # Written entry by entry, unlike the vectorised kernel.
    taus = [(x - base).flatten().tolist() for x in xs]
    out = []
    for entries in zip(*taus, strict=True):
        total = sum(entries)
        sign = (total > 0) - (total < 0)
        agree = [e for e in entries if sign != 0 and ((e > 0) - (e < 0)) == sign]
        out.append(sum(agree) / len(agree) if agree else 0.0)
    return base + lam * torch.tensor(out).reshape(base.shape)


def _ref_model_stock(base, xs):
    taus = [(x - base).flatten() for x in xs]
    cosines = [float(torch.dot(a, b) / (a.norm() * b.norm())) for a, b in itertools.combinations(taus, 2)]
    cos = sum(cosines) / len(cosines)
    n = len(xs)
    t = n * cos / (1 + (n - 1) * cos)
    t = min(max(t, 0.0), 1.0)
    return t * sum(xs) / n + (1 - t) * base


@pytest.fixture(scope="module")
def llava_states(llava_family):
    return {k: _state(v) for k, v in llava_family.items()}


def _lm_and_projector(family_path: Path) -> list[str]:
    r = CheckpointReader(family_path)
    classes = detect_layout(r.config).classify_all(r.names)
    return [n for n in r.names if classes[n].component != "vision_tower"]


def _check_against(out, states, family, ref, atol=1e-6):
    base = states["base"]
    assert set(out) == set(base), "written tensor set must equal the base's"
    experts = [states[f"expert{i}"] for i in range(3)]
    merged_names = _lm_and_projector(family["base"])
    assert merged_names
    for name in base:
        if name in merged_names:
            want = ref(base[name], [e[name] for e in experts])
            torch.testing.assert_close(out[name], want, atol=atol, rtol=1e-5, msg=name)
        else:
            assert torch.equal(out[name], base[name]), f"vision tower tensor {name} must equal the base"


def test_linear_merge_equals_weighted_mean_and_keeps_the_vision_tower(llava_family, llava_states, tmp_path):
    cfg = _config(llava_family, "linear")
    cfg["models"][0]["parameters"] = {"weight": 2.0}
    out = _merge(cfg, tmp_path / "out")
    _check_against(out, llava_states, llava_family, lambda b, xs: _ref_linear(xs, [2.0, 1.0, 1.0]))


def test_task_arithmetic_equals_base_plus_scaled_task_vectors(llava_family, llava_states, tmp_path):
    out = _merge(_config(llava_family, "task_arithmetic", parameters={"lambda": 0.5}), tmp_path / "out")
    _check_against(out, llava_states, llava_family, lambda b, xs: _ref_task_arithmetic(b, xs, 0.5))


def test_ties_without_trimming_equals_entrywise_sign_elected_disjoint_mean(llava_family, llava_states, tmp_path):
    out = _merge(_config(llava_family, "ties", parameters={"density": 1.0, "lambda": 1.0}), tmp_path / "out")
    _check_against(out, llava_states, llava_family, lambda b, xs: _ref_ties_no_trim(b, xs, 1.0), atol=1e-5)


def test_model_stock_equals_the_cosine_interpolation(llava_family, llava_states, tmp_path):
    out = _merge(_config(llava_family, "model_stock"), tmp_path / "out")
    _check_against(out, llava_states, llava_family, _ref_model_stock, atol=1e-5)


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("ties", {"density": 0.3}),
        ("dare_linear", {"density": 0.5}),
        ("dare_ties", {"density": 0.5}),
        ("della", {"density": 0.5, "epsilon": 0.1}),
        ("breadcrumbs", {"density": 0.5, "gamma": 0.1}),
    ],
)
def test_engine_routes_each_tensor_through_the_method_with_per_tensor_seeds(
    llava_family, llava_states, tmp_path, method, params
):
    """The engine's output equals the method applied to that tensor alone, model i seeded by (seed, name, i)."""
    out = _merge(_config(llava_family, method, parameters=params, seed=7), tmp_path / "out")
    m = get_method(method)
    n = 3

    def ref_for(name):
        def ref(base, xs):
            gens = [torch.Generator().manual_seed(tensor_seed(7, name, i)) for i in range(n)] if m.randomized else None
            per_model = {p.name: (float(params.get(p.name, p.default)),) * n for p in m.params if p.per_model}
            glob = {p.name: params.get(p.name, p.default) for p in m.params if not p.per_model}
            return m.merge(MergeInputs(name, xs, base, per_model, glob, generators=gens))

        return ref

    base = llava_states["base"]
    experts = [llava_states[f"expert{i}"] for i in range(n)]
    for name in _lm_and_projector(llava_family["base"]):
        want = ref_for(name)(base[name], [e[name] for e in experts])
        torch.testing.assert_close(out[name], want, atol=1e-6, rtol=1e-5, msg=name)
    assert not torch.equal(out[name], base[name])


def test_randomized_merge_is_reproducible_and_seed_dependent(llava_family, tmp_path):
    a = _merge(_config(llava_family, "dare_linear", parameters={"density": 0.5}, seed=1), tmp_path / "a")
    b = _merge(_config(llava_family, "dare_linear", parameters={"density": 0.5}, seed=1), tmp_path / "b")
    c = _merge(_config(llava_family, "dare_linear", parameters={"density": 0.5}, seed=2), tmp_path / "c")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_merged_llava_loads_with_from_pretrained_and_generates(llava_family, tmp_path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    out = tmp_path / "out"
    merge_to_dir(parse_merge_config(_config(llava_family, "ties", parameters={"density": 0.5})), out, quiet=True)
    model = LlavaForConditionalGeneration.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)
    ids = processor.tokenizer("red", return_tensors="pt").input_ids
    gen = model.generate(input_ids=ids, max_new_tokens=3, do_sample=False)
    assert gen.shape[1] == ids.shape[1] + 3 or gen.shape[1] <= ids.shape[1] + 3
    assert (out / "uqmerge_config.yml").exists() and (out / "README.md").exists()
    recipe = yaml.safe_load((out / "uqmerge_config.yml").read_text())
    assert recipe["merge_method"] == "ties" and recipe["layout"] == "derived:LlavaForConditionalGeneration"


def test_bfloat16_output_dtype_is_applied_and_recorded(llava_family, llava_states, tmp_path):
    out = tmp_path / "out"
    merge_to_dir(parse_merge_config(_config(llava_family, "linear", dtype="bfloat16")), out, quiet=True)
    raw = load_file(out / "model.safetensors")
    assert all(t.dtype == torch.bfloat16 for t in raw.values() if t.is_floating_point())
    import json

    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    want = _ref_linear([llava_states[f"expert{i}"]["multi_modal_projector.linear_1.weight"] for i in range(3)], [1] * 3)
    torch.testing.assert_close(raw["multi_modal_projector.linear_1.weight"].float(), want, atol=1e-2, rtol=1e-2)


def test_qwen2vl_merge_merges_the_merger_keeps_the_vision_tower_and_generates(qwen2vl_family, tmp_path):
    from transformers import Qwen2VLForConditionalGeneration

    states = {k: _state(v) for k, v in qwen2vl_family.items()}
    out_dir = tmp_path / "out"
    out = _merge(_config(qwen2vl_family, "task_arithmetic", parameters={"lambda": 0.7}), out_dir)
    _check_against(out, states, qwen2vl_family, lambda b, xs: _ref_task_arithmetic(b, xs, 0.7))
    assert any(n.startswith("visual.merger") for n in _lm_and_projector(qwen2vl_family["base"]))
    model = Qwen2VLForConditionalGeneration.from_pretrained(out_dir)
    model.generate(input_ids=torch.tensor([[5, 6, 7]]), max_new_tokens=2, do_sample=False)


def test_component_overrides_and_exclude_patterns(llava_family, llava_states, tmp_path):
    cfg = _config(
        llava_family,
        "task_arithmetic",
        components={"projector": {"merge_method": "linear"}, "language_model.embeddings": "keep_base"},
        exclude=[r"lm_head"],
    )
    out = _merge(cfg, tmp_path / "out")
    base = llava_states["base"]
    xs = [llava_states[f"expert{i}"] for i in range(3)]
    name = "multi_modal_projector.linear_1.weight"
    torch.testing.assert_close(out[name], _ref_linear([x[name] for x in xs], [1] * 3))
    assert torch.equal(
        out["language_model.model.embed_tokens.weight"], base["language_model.model.embed_tokens.weight"]
    )
    assert torch.equal(out["language_model.lm_head.weight"], base["language_model.lm_head.weight"])
    name = "language_model.model.norm.weight"
    torch.testing.assert_close(out[name], _ref_task_arithmetic(base[name], [x[name] for x in xs], 1.0))


def test_vision_tower_difference_is_warned_with_the_max_difference(llava_family, tmp_path, caplog):
    from uqmerge.checkpoint.synthetic import make_fake_finetune

    odd = make_fake_finetune(llava_family["base"], tmp_path / "odd", seed=5, components=("vision_tower",))
    cfg = {"merge_method": "linear", "base_model": str(llava_family["base"]), "models": [{"model": str(odd)}]}
    with caplog.at_level("WARNING"):
        merge_to_dir(parse_merge_config(cfg), tmp_path / "out", quiet=True)
    assert "kept from the base differ across inputs (max |diff|" in caplog.text


# ---- bad input: a clear error and nothing written -------------------------------------------------


def _assert_nothing_written(parent: Path):
    assert not (parent / "out").exists()
    assert [p for p in parent.iterdir() if p.name.startswith(".out")] == []


def _copy_family_member(src: Path, dst: Path, edit) -> Path:
    import shutil

    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    edit(tensors)
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


@pytest.mark.parametrize(
    ("case", "error", "match"),
    [
        ("shape", PlanError, "shape mismatch"),
        ("missing", PlanError, "missing 1 tensor"),
        ("extra", PlanError, "would be dropped"),
        ("nan", CheckpointError, "NaN or Inf"),
        ("corrupt", CheckpointError, "corrupt safetensors header"),
    ],
)
def test_bad_checkpoints_are_named_and_nothing_is_written(llava_family, tmp_path, case, error, match):
    name = "language_model.model.layers.0.mlp.up_proj.weight"
    work = tmp_path / "work"
    work.mkdir()
    bad = work / "bad"
    if case == "corrupt":
        import shutil

        shutil.copytree(llava_family["expert1"], bad)
        (bad / "model.safetensors").write_bytes(b"\xff" * 64)
    else:
        edits = {
            "shape": lambda t: t.__setitem__(name, torch.zeros(3, 3)),
            "missing": lambda t: t.pop(name),
            "extra": lambda t: t.__setitem__("language_model.model.extra.weight", torch.zeros(2)),
            "nan": lambda t: t[name].view(-1).__setitem__(0, float("nan")),
        }
        _copy_family_member(llava_family["expert1"], bad, edits[case])
    cfg = _config(llava_family, "task_arithmetic")
    cfg["models"][1]["model"] = str(bad)
    with pytest.raises(error, match=match) as e:
        merge_to_dir(parse_merge_config(cfg), work / "out", quiet=True)
    assert str(bad) in str(e.value)
    assert not (work / "out").exists()
    assert [p.name for p in work.iterdir()] == ["bad"]


def test_nonfinite_input_merges_when_allowed(llava_family, tmp_path):
    name = "language_model.model.layers.0.mlp.up_proj.weight"
    bad = _copy_family_member(
        llava_family["expert1"], tmp_path / "bad", lambda t: t[name].view(-1).__setitem__(0, float("inf"))
    )
    cfg = _config(llava_family, "linear")
    cfg["models"][1]["model"] = str(bad)
    out = _merge(cfg, tmp_path / "out", allow_nonfinite=True)
    assert torch.isinf(out[name]).any()


def test_different_architecture_is_refused(llava_family, qwen2vl_family, tmp_path):
    cfg = _config(llava_family, "linear")
    cfg["models"][2]["model"] = str(qwen2vl_family["expert0"])
    with pytest.raises(LayoutError, match="architecture"):
        merge_to_dir(parse_merge_config(cfg), tmp_path / "out", quiet=True)
    _assert_nothing_written(tmp_path)


@pytest.mark.parametrize(
    ("patch", "match"),
    [
        ({"merge_method": "frobnicate"}, "unknown merge method 'frobnicate'"),
        ({"merge_method": "ties", "parameters": {"denisty": 0.5}}, r"unknown parameter\(s\) \['denisty'\]"),
        ({"merge_method": "ties", "parameters": {"density": 1.5}}, r"density.*must be in \(0, 1\]"),
        ({"merge_method": "ties", "parameters": {"density": 0}}, r"density.*must be in \(0, 1\]"),
        ({"merge_method": "task_arithmetic", "base_model": None}, "need `base_model:`"),
        ({"merge_method": "linear", "frobs": 1}, "frobs: unknown key"),
    ],
)
def test_config_errors_are_reported_before_anything_is_written(llava_family, tmp_path, patch, match):
    cfg = {**_config(llava_family, "linear"), **patch}
    if cfg.get("base_model") is None:
        cfg.pop("base_model")
    with pytest.raises(ConfigError, match=match):
        merge_to_dir(parse_merge_config(cfg), tmp_path / "out", quiet=True)
    _assert_nothing_written(tmp_path)


def test_non_empty_output_dir_is_refused_without_force(llava_family, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("x")
    with pytest.raises(OutputError, match="--force"):
        merge_to_dir(parse_merge_config(_config(llava_family, "linear")), out, quiet=True)
    assert [p.name for p in out.iterdir()] == ["precious.txt"]


def test_cli_merge_writes_a_sharded_checkpoint_and_reports_errors(llava_family, llava_states, tmp_path):
    cfg_path = tmp_path / "merge.yml"
    cfg_path.write_text(yaml.safe_dump(_config(llava_family, "linear")))
    runner = CliRunner()
    args = ["merge", str(cfg_path), str(tmp_path / "out"), "--max-shard-size", "20000", "--max-block-bytes", "2KiB"]
    result = runner.invoke(app, [*args, "-q"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "model.safetensors.index.json").exists()
    out = _state(tmp_path / "out")
    assert set(out) == set(llava_states["base"])
    whole = _merge(_config(llava_family, "linear"), tmp_path / "whole")
    for name, tensor in out.items():  # tiny blocks give the whole-tensor result
        torch.testing.assert_close(tensor, whole[name], rtol=0, atol=0, msg=name)
    again = runner.invoke(app, ["merge", str(cfg_path), str(tmp_path / "out"), "-q"])
    assert again.exit_code == 2 and "not empty" in again.output
