"""mergekit 0.1.5 semantics (``compat: mergekit``, ``--compat mergekit``) against hand-worked small tensors.

mergekit itself is not needed: ``benchmarks/mergekit_parity.py`` compares with it; these tests check each rule
(floored keep counts, ``normalize``, ``rescale``, the zero vote, Model Stock's extrapolation, SLERP's endpoints) by
hand, and the YAML translation's refusals.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from uqmerge.checkpoint.reader import CheckpointReader
from uqmerge.cli import app
from uqmerge.core.errors import ConfigError
from uqmerge.engine.merge import merge_to_dir
from uqmerge.engine.mergekit import from_mergekit
from uqmerge.engine.params import resolve_config_methods
from uqmerge.engine.recipe import load_merge_config, parse_merge_config
from uqmerge.methods import MergeInputs, get_method

TAU = torch.tensor([0.5, -0.4, 0.3, 0.2, -0.1, 0.05, 0.9, -0.8, 0.7, 0.6])


def merge(name, models, base=None, *, per_model=None, params=None, semantics="mergekit", seed=None):
    """Method ``name`` on one tensor under ``semantics``; a seeded generator when ``seed`` is given."""
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    inputs = MergeInputs(
        "layer.weight", models, base, per_model or {}, params or {}, generator=generator, semantics=semantics
    )
    return get_method(name).merge(inputs)


def _only(*pairs: tuple[int, float], n: int = 10) -> torch.Tensor:
    out = torch.zeros(n)
    for index, value in pairs:
        out[index] = value
    return out


# ------------------------------------------------------------------------------------------ keep counts


def test_mergekit_ties_floors_the_keep_count_where_uqmerge_rounds_half_up():
    base = torch.zeros(10)
    one = {"per_model": {"weight": [1.0], "density": [0.25]}}  # 0.25·10 = 2.5
    mergekit = merge("ties", [TAU], base, **one)
    uqmerge = merge("ties", [TAU], base, **one, semantics="uqmerge")
    assert torch.equal(mergekit, _only((6, 0.9), (7, -0.8)))  # int(2.5) = 2
    assert torch.equal(uqmerge, _only((6, 0.9), (7, -0.8), (8, 0.7)))  # floor(2.5 + 0.5) = 3


def test_mergekit_ties_keeps_one_entry_and_breadcrumbs_may_keep_none():
    base = torch.zeros(10)
    ties = merge("ties", [TAU], base, per_model={"weight": [1.0], "density": [0.05]})  # int(0.5) = 0 → 1
    assert torch.equal(ties, _only((6, 0.9)))
    crumbs = merge("breadcrumbs", [TAU], base, per_model={"weight": [1.0], "density": [0.05], "gamma": [0.0]})
    assert torch.equal(crumbs, base)


def test_mergekit_breadcrumbs_floors_both_counts_and_keeps_all_at_density_one():
    base = torch.zeros(10)
    band = {"weight": [1.0], "density": [0.3], "gamma": [0.15]}  # keep int(3) = 3, drop int(1.5) = 1
    assert torch.equal(merge("breadcrumbs", [TAU], base, per_model=band), _only((7, -0.8), (8, 0.7), (9, 0.6)))
    uqmerge = merge("breadcrumbs", [TAU], base, per_model=band, semantics="uqmerge")  # drops 2, keeps 3
    assert torch.equal(uqmerge, _only((0, 0.5), (8, 0.7), (9, 0.6)))
    everything = {"weight": [1.0], "density": [1.0], "gamma": [0.1]}  # uqmerge refuses density + gamma > 1
    assert torch.equal(merge("breadcrumbs", [TAU], base, per_model=everything), TAU)
    with pytest.raises(ConfigError, match="sum to more than 1"):
        merge("breadcrumbs", [TAU], base, per_model=everything, semantics="uqmerge")


# ------------------------------------------------------------------------------ votes, divisors, normalize


def test_mergekit_ties_normalize_divides_by_the_agreeing_weights_or_not_at_all():
    base = torch.zeros(2)
    models = [torch.tensor([1.0, 2.0]), torch.tensor([3.0, -1.0])]
    per_model = {"weight": [1.0, 0.5], "density": [1.0, 1.0]}
    # votes: [1 + 1.5, 2 − 0.5] > 0; agreeing: entry 0 both (1 + 1.5, weights 1.5), entry 1 model 1 (2, weight 1)
    summed = merge("ties", models, base, per_model=per_model, params={"normalize": False})
    divided = merge("ties", models, base, per_model=per_model, params={"normalize": True})
    torch.testing.assert_close(summed, torch.tensor([2.5, 2.0]))
    torch.testing.assert_close(divided, torch.tensor([2.5 / 1.5, 2.0]))
    torch.testing.assert_close(merge("ties", models, base, per_model=per_model), divided)  # mergekit's default


def test_mergekit_elects_plus_on_an_exact_zero_vote():
    base = torch.zeros(2)
    models = [torch.tensor([1.0, 0.0703125]), torch.tensor([-1.0, -0.087890625])]
    per_model = {"weight": [1.0, 0.8], "density": [1.0, 1.0]}
    # votes 1 − 0.8 = 0.2 > 0 and 0.0703125 − 0.8·0.087890625 = 0 exactly: "+" wins, model 1 agrees alone
    torch.testing.assert_close(merge("ties", models, base, per_model=per_model), torch.tensor([1.0, 0.0703125]))
    uqmerge = merge("ties", models, base, per_model=per_model, semantics="uqmerge")
    torch.testing.assert_close(uqmerge, torch.tensor([1.0, 0.0]))


def test_mergekit_ties_takes_negative_weights_and_reads_a_zero_divisor_as_one():
    base = torch.zeros(1)
    models = [torch.tensor([1.0]), torch.tensor([-1.0])]
    per_model = {"weight": [1.0, -1.0], "density": [1.0, 1.0]}
    # w·τ = [1, 1]: both agree with "+", divisor 1 + (−1) = 0 → 1, so the sum 2 stays
    torch.testing.assert_close(merge("ties", models, base, per_model=per_model), torch.tensor([2.0]))
    with pytest.raises(ConfigError, match=r"weight.*\[0, inf\)"):
        merge("ties", models, base, per_model=per_model, semantics="uqmerge")


def test_mergekit_task_arithmetic_and_linear_normalize_by_the_weight_sum():
    base = torch.tensor([1.0, 1.0])
    models = [torch.tensor([2.0, 3.0]), torch.tensor([0.0, 5.0])]
    weights = {"weight": [1.0, 3.0]}
    # τ = [1, 2], [−1, 4]: Σ w τ = [−2, 14]; normalised by Σ w = 4
    plain = merge("task_arithmetic", models, base, per_model=weights)
    normal = merge("task_arithmetic", models, base, per_model=weights, params={"normalize": True})
    torch.testing.assert_close(plain, torch.tensor([-1.0, 15.0]))
    torch.testing.assert_close(normal, torch.tensor([0.5, 4.5]))
    # linear: Σ w θ = [2, 18], divided by 4 unless normalize is false
    torch.testing.assert_close(merge("linear", models, per_model=weights), torch.tensor([0.5, 4.5]))
    summed = merge("linear", models, per_model=weights, params={"normalize": False})
    torch.testing.assert_close(summed, torch.tensor([2.0, 18.0]))


# ------------------------------------------------------------------------------------------------ rescale


def test_mergekit_rescale_restores_each_sparsified_task_vectors_l1_norm():
    base = torch.zeros(4)
    tau = torch.tensor([0.9, -0.8, 0.2, 0.1])  # density 0.5 keeps 0.9, −0.8; L1 2.0 before, 1.7 after
    per_model = {"weight": [1.0], "density": [0.5]}
    out = merge("ties", [tau], base, per_model=per_model, params={"rescale": True})
    torch.testing.assert_close(out, torch.tensor([0.9 * 2 / 1.7, -0.8 * 2 / 1.7, 0.0, 0.0]))


def test_mergekit_dare_keeps_survivors_unscaled_unless_rescaled_to_the_l1_norm():
    g = torch.Generator().manual_seed(3)
    base, tau = torch.zeros(400), torch.randn(400, generator=g)
    per_model = {"weight": [1.0], "density": [0.3]}
    raw = merge("dare_linear", [tau], base, per_model=per_model, params={"rescale": False}, seed=1)
    assert torch.all((raw == 0) | (raw == tau)) and 0 < int((raw != 0).sum()) < 400
    rescaled = merge("dare_linear", [tau], base, per_model=per_model, seed=1)  # mergekit's default: rescale
    torch.testing.assert_close(rescaled.abs().sum(), tau.abs().sum())
    torch.testing.assert_close(rescaled, raw * (tau.abs().sum() / raw.abs().sum()))
    uqmerge = merge("dare_linear", [tau], base, per_model=per_model, seed=1, semantics="uqmerge")
    torch.testing.assert_close(uqmerge, raw / 0.3)  # the same draws; survivors ÷ density


# ------------------------------------------------------------------------------------ Model Stock, SLERP


def test_mergekit_model_stock_extrapolates_for_a_negative_mean_cosine():
    base = torch.tensor([1.0, 2.0, 3.0])
    taus = [torch.tensor([1.0, 0.0, 0.0]), torch.tensor([-0.5, 0.5, 0.0])]
    # cos = −0.5 / (1 · √0.5) = −1/√2; t = 2c / (1 + c) = −2(√2 + 1); mean τ = (0.25, 0.25, 0)
    t = -2 * (math.sqrt(2) + 1)
    out = merge("model_stock", [base + tau for tau in taus], base)
    torch.testing.assert_close(out, base + t * torch.tensor([0.25, 0.25, 0.0]))
    assert torch.equal(merge("model_stock", [base + tau for tau in taus], base, semantics="uqmerge"), base)


def test_mergekit_model_stock_keeps_the_base_at_its_pole():
    base = torch.zeros(2)
    angles = [0.0, 2 * math.pi / 3, 4 * math.pi / 3]  # pairwise cosines −1/2: 1 + (N − 1)·c = 0
    models = [torch.tensor([math.cos(a), math.sin(a)]) for a in angles]
    torch.testing.assert_close(merge("model_stock", models, base), base)


def test_mergekit_model_stock_filter_wise_gives_each_row_its_own_ratio():
    base = torch.zeros(2, 2)
    models = [torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [1.0, 0.0]])]
    # row 0: cos 1 → t = 1, mean (1, 0); row 1: cos 0 → t = 0, the base
    rows = merge("model_stock", models, base, params={"filter_wise": True})
    torch.testing.assert_close(rows, torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    # tensor-wise: cos = 1/2 → t = 2/3, mean ((1, 0), (0.5, 0.5))
    whole = merge("model_stock", models, base)
    torch.testing.assert_close(whole, (2 / 3) * torch.tensor([[1.0, 0.0], [0.5, 0.5]]))


def test_mergekit_slerp_interpolates_a_zero_tensor_along_a_right_angle():
    a, b = torch.zeros(2), torch.tensor([1.0, 0.0])
    # mergekit: the zero norm counts as 1, cos 0, θ = π/2: sin(tπ/2)·b; uqmerge interpolates linearly
    mergekit = merge("slerp", [a, b], params={"t": 0.5})
    torch.testing.assert_close(mergekit, torch.tensor([math.sin(math.pi / 4), 0.0]))
    torch.testing.assert_close(merge("slerp", [a, b], params={"t": 0.5}, semantics="uqmerge"), torch.tensor([0.5, 0.0]))


def test_mergekit_slerp_of_orthogonal_vectors_rotates_from_the_first():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    for t in (0.0, 0.25, 1.0):
        out = merge("slerp", [a, b], params={"t": t})
        torch.testing.assert_close(out, torch.tensor([math.cos(t * math.pi / 2), math.sin(t * math.pi / 2)]))


# ----------------------------------------------------------------------------------- parameters, defaults


def test_mergekit_parameters_have_mergekits_defaults_and_required_values(llava_family):
    cfg = _mergekit_config(llava_family, "della", parameters={"weight": 1.0})
    resolved = resolve_config_methods(parse_merge_config(from_mergekit(cfg, source="t.yml")))["*"]
    assert resolved.per_model["density"] == (1.0, 1.0, 1.0)
    assert resolved.per_model["epsilon"] == (0.15, 0.15, 0.15)
    assert resolved.params["normalize"] is True and resolved.params["rescale"] is True
    ties = resolve_config_methods(parse_merge_config(from_mergekit({**cfg, "merge_method": "ties"}, source="t")))
    assert ties["*"].params == {"normalize": True, "rescale": False, "lambda": 1.0, "int8_mask": False}
    with pytest.raises(ConfigError, match="model 0 lacks required parameter 'weight'"):
        resolve_config_methods(parse_merge_config(from_mergekit({**cfg, "parameters": {}}, source="t")))
    slerp = {"merge_method": "slerp", "base_model": str(llava_family["base"]), "models": cfg["models"][:1]}
    with pytest.raises(ConfigError, match="needs parameter 't'"):
        resolve_config_methods(parse_merge_config(from_mergekit(slerp, source="t")))


def test_without_compat_mergekits_parameters_are_unknown(llava_family):
    cfg = _mergekit_config(llava_family, "ties", parameters={"normalize": False})
    with pytest.raises(ConfigError, match=r"unknown.*normalize"):
        resolve_config_methods(parse_merge_config(cfg))
    with pytest.raises(ConfigError, match=r"unknown.*int8_mask"):
        resolve_config_methods(parse_merge_config({**cfg, "parameters": {"int8_mask": True}}))


def test_a_parameter_mergekit_accepts_without_effect_is_logged(llava_family, caplog):
    cfg = _mergekit_config(llava_family, "task_arithmetic", parameters={"weight": 1.0, "density": 0.5})
    with caplog.at_level(logging.WARNING):
        resolve_config_methods(parse_merge_config(from_mergekit(cfg, source="t")))
    assert "'density' has no effect on task_arithmetic" in caplog.text


def test_methods_mergekit_lacks_are_refused_under_compat(llava_family):
    cfg = {
        "compat": "mergekit",
        "merge_method": "wudi_closed_form",
        "base_model": str(llava_family["base"]),
        "models": [{"model": str(llava_family["expert0"])}, {"model": str(llava_family["expert1"])}],
    }
    with pytest.raises(ConfigError, match="has no mergekit semantics"):
        resolve_config_methods(parse_merge_config(cfg))


# ---------------------------------------------------------------------------------- the YAML translation


def _mergekit_config(family, method: str, **extra) -> dict:
    return {
        "merge_method": method,
        "base_model": str(family["base"]),
        "models": [{"model": str(family[f"expert{i}"])} for i in range(3)],
        **extra,
    }


@pytest.mark.parametrize(
    ("patch", "fragment"),
    [
        ({"slices": [{"sources": []}]}, "slices: uqmerge merges whole models"),
        ({"modules": {"text": {}}}, "modules: uqmerge merges whole models"),
        ({"parameters": {"weight": [0.1, 0.5, 1.0]}}, "parameters.weight: gradients"),
        ({"parameters": {"weight": [{"filter": "mlp", "value": 0.5}, {"value": 1.0}]}}, "parameters.weight: filter"),
        ({"parameters": {"weight": {"filter": "mlp", "value": 0.5}}}, "parameters.weight: filter"),
        ({"tokenizer_source": "union"}, "tokenizer_source: 'union' is not supported"),
        ({"tokenizer": {"source": "base"}}, "tokenizer: uqmerge copies"),
        ({"chat_template": "chatml"}, "chat_template: uqmerge copies"),
        ({"dtype": "float64"}, "dtype: 'float64' is not supported"),
        ({"merge_method": "nuslerp"}, "mergekit method 'nuslerp' has no uqmerge counterpart"),
        ({"merge_method": "wudi"}, "'wudi' is not a mergekit 0.1.5 method"),
        ({"include": ["mlp"]}, "'include' is not a key of a mergekit 0.1.5 config"),
        ({"models": [{"model": "org/model+adapter"}]}, "`model+lora` syntax"),
    ],
)
def test_what_uqmerge_cannot_honour_is_a_one_line_error_naming_the_key(llava_family, patch, fragment):
    cfg = {**_mergekit_config(llava_family, "ties", parameters={"weight": 1.0}), **patch}
    with pytest.raises(ConfigError) as caught:
        from_mergekit(cfg, source="merge.yml")
    message = str(caught.value)
    assert fragment in message and message.startswith("merge.yml: ") and "\n" not in message


def test_per_model_gradients_are_refused_with_the_models_index(llava_family):
    cfg = _mergekit_config(llava_family, "ties")
    cfg["models"][1]["parameters"] = {"density": [0.2, 0.8]}
    with pytest.raises(ConfigError, match=r"models\[1\]\.parameters\.density: gradients"):
        from_mergekit(cfg, source="merge.yml")


def test_mergekit_inputs_drop_the_listed_base_average_it_in_linear_and_start_slerp_there(llava_family):
    base, e0, e1 = (str(llava_family[k]) for k in ("base", "expert0", "expert1"))
    listed = {"merge_method": "ties", "base_model": base, "models": [{"model": base}, {"model": e0}]}
    assert [m.model for m in parse_merge_config(from_mergekit(listed, source="t")).models] == [e0]
    linear = {"merge_method": "linear", "base_model": base, "models": [{"model": e0}, {"model": e1}]}
    assert [m.model for m in parse_merge_config(from_mergekit(linear, source="t")).models] == [e0, e1, base]
    slerp = {"merge_method": "slerp", "base_model": base, "models": [{"model": e1}], "parameters": {"t": 0.2}}
    config = parse_merge_config(from_mergekit(slerp, source="t"))
    assert [m.model for m in config.models] == [base, e1]
    again = parse_merge_config(config.model_dump())  # the recorded recipe reads back the same
    assert again.models == config.models
    with pytest.raises(ConfigError, match="ignores its parameters"):
        with_weight = {**listed, "models": [{"model": base, "parameters": {"weight": 1.0}}, {"model": e0}]}
        parse_merge_config(from_mergekit(with_weight, source="t"))
    with pytest.raises(ConfigError, match="exactly one other model"):
        parse_merge_config(from_mergekit({**slerp, "models": [{"model": e0}, {"model": e1}]}, source="t"))


def test_lora_output_is_refused_under_compat(llava_family):
    cfg = {**_mergekit_config(llava_family, "linear"), "compat": "mergekit", "lora_output": {}}
    with pytest.raises(ConfigError, match="lora_output follows uqmerge's semantics only"):
        parse_merge_config(cfg)


# ------------------------------------------------------------------------------------ end to end


def _state(path: Path) -> dict[str, torch.Tensor]:
    reader = CheckpointReader(path)
    return {name: reader.read(name).float() for name in reader.names}


@pytest.mark.parametrize(("t", "endpoint"), [(0.0, "base"), (1.0, "expert0")])
def test_mergekit_slerp_yaml_runs_from_the_base_at_t0_to_the_other_model_at_t1(llava_family, tmp_path, t, endpoint):
    path = tmp_path / "slerp.yml"
    cfg = {
        "merge_method": "slerp",
        "base_model": str(llava_family["base"]),
        "models": [{"model": str(llava_family["expert0"])}],
        "parameters": {"t": t},
    }
    path.write_text(yaml.safe_dump(cfg))
    merge_to_dir(load_merge_config(path, compat="mergekit"), tmp_path / "out", quiet=True)
    merged, want = _state(tmp_path / "out"), _state(llava_family[endpoint])
    for name, tensor in want.items():
        torch.testing.assert_close(merged[name], tensor, atol=1e-7, rtol=0, msg=name)


def test_cli_compat_mergekit_equals_a_uqmerge_config_with_the_compat_switch(llava_family, tmp_path):
    mergekit_yaml = _mergekit_config(llava_family, "ties", parameters={"density": 0.3, "weight": 0.6})
    mergekit_yaml["models"][0]["parameters"] = {"weight": 1.0, "density": 0.5}
    (tmp_path / "mk.yml").write_text(yaml.safe_dump(mergekit_yaml))
    result = CliRunner().invoke(app, ["merge", str(tmp_path / "mk.yml"), str(tmp_path / "cli"), "--compat", "mergekit"])
    assert result.exit_code == 0, result.output
    uq = {**mergekit_yaml, "compat": "mergekit"}
    merge_to_dir(parse_merge_config(uq), tmp_path / "api", quiet=True)
    cli, api = _state(tmp_path / "cli"), _state(tmp_path / "api")
    assert set(cli) == set(api) and all(torch.equal(cli[n], api[n]) for n in cli)
    recipe = yaml.safe_load((tmp_path / "cli" / "uqmerge_config.yml").read_text())
    assert recipe["compat"] == "mergekit"
    assert recipe["resolved_methods"]["*"]["per_model"]["density"] == [0.5, 0.3, 0.3]
    assert "follow mergekit's semantics" in (tmp_path / "cli" / "README.md").read_text()
    bad = CliRunner().invoke(app, ["merge", str(tmp_path / "mk.yml"), str(tmp_path / "x"), "--compat", "peft"])
    assert bad.exit_code != 0 and "--compat" in bad.output


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("ties", {"density": 0.3, "rescale": True, "weight": 0.8}),
        ("breadcrumbs", {"density": 0.4, "gamma": 0.1, "rescale": True, "weight": 1.0}),
        ("dare_ties", {"density": 0.4, "weight": 1.0}),
        ("della", {"density": 0.5, "epsilon": 0.2, "weight": 1.0}),
        ("model_stock", {}),
        ("model_stock", {"filter_wise": True}),
    ],
)
def test_mergekit_semantics_merge_block_by_block_as_whole_tensors(llava_family, tmp_path, method, params):
    cfg = {**_mergekit_config(llava_family, method, parameters=params), "compat": "mergekit", "seed": 3}
    merge_to_dir(parse_merge_config(cfg), tmp_path / "blocks", quiet=True, max_block_bytes=1, max_cache_bytes=0)
    merge_to_dir(parse_merge_config(cfg), tmp_path / "whole", quiet=True, max_block_bytes=10**9)
    blocks, whole = _state(tmp_path / "blocks"), _state(tmp_path / "whole")
    for name, tensor in whole.items():
        torch.testing.assert_close(blocks[name], tensor, atol=1e-7, rtol=1e-6, msg=name)
