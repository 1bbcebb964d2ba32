"""Which value a method parameter takes: component override > per-model value > top-level value > default."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from uqmerge.checkpoint.layouts import detect_layout
from uqmerge.checkpoint.reader import CheckpointReader
from uqmerge.core.errors import ConfigError
from uqmerge.engine.merge import merge_to_dir
from uqmerge.engine.params import resolve_config_methods
from uqmerge.engine.recipe import parse_merge_config


def _state(path: Path) -> dict[str, torch.Tensor]:
    reader = CheckpointReader(path)
    return {name: reader.read(name).float() for name in reader.names}


def _ties_reference(base: torch.Tensor, models: list[torch.Tensor], weights: list[float], density: float):
    """TIES entry by entry in Python floats: keep floor(d·n + 0.5) largest |τ| (ties: lower index), elect, mean."""
    n = base.numel()
    keep = min(n, max(1, math.floor(density * n + 0.5)))
    flat_base = base.reshape(-1).tolist()
    trimmed = []
    for model in models:
        tau = [m - b for m, b in zip(model.reshape(-1).tolist(), flat_base, strict=True)]
        kept = set(sorted(range(n), key=lambda j: (-abs(tau[j]), j))[:keep])
        trimmed.append([tau[j] if j in kept else 0.0 for j in range(n)])
    out = []
    for j in range(n):
        vote = sum(w * t[j] for w, t in zip(weights, trimmed, strict=True))
        sign = (vote > 0) - (vote < 0)
        agreeing = [(w, t[j]) for w, t in zip(weights, trimmed, strict=True) if sign and w * t[j] * sign > 0]
        delta = sum(w * x for w, x in agreeing) / sum(w for w, _ in agreeing) if agreeing else 0.0
        out.append(flat_base[j] + delta)
    return torch.tensor(out).reshape(base.shape)


def _config(family, **extra) -> dict:
    return {
        "merge_method": "ties",
        "base_model": str(family["base"]),
        "models": [{"model": str(family[f"expert{i}"]), "parameters": {"density": 0.2}} for i in range(3)],
        **extra,
    }


def test_component_density_beats_the_per_model_density_and_is_recorded(llava_family, tmp_path):
    cfg = _config(llava_family, components={"projector": {"merge_method": "ties", "parameters": {"density": 0.9}}})
    out_dir = tmp_path / "out"
    merge_to_dir(parse_merge_config(cfg), out_dir, quiet=True)
    merged = _state(out_dir)
    base = _state(llava_family["base"])
    experts = [_state(llava_family[f"expert{i}"]) for i in range(3)]
    classes = detect_layout(CheckpointReader(llava_family["base"]).config).classify_all(list(base))
    projector = [n for n, c in classes.items() if c.component == "projector"]
    assert projector
    for name in projector:
        want = _ties_reference(base[name], [e[name] for e in experts], [1.0, 1.0, 1.0], 0.9)
        torch.testing.assert_close(merged[name], want, atol=1e-6, rtol=1e-5, msg=name)
        at_model_density = _ties_reference(base[name], [e[name] for e in experts], [1.0, 1.0, 1.0], 0.2)
        assert not torch.allclose(merged[name], at_model_density), name
    name = "language_model.model.norm.weight"
    want = _ties_reference(base[name], [e[name] for e in experts], [1.0, 1.0, 1.0], 0.2)
    torch.testing.assert_close(merged[name], want, atol=1e-6, rtol=1e-5)
    recipe = yaml.safe_load((out_dir / "uqmerge_config.yml").read_text())
    assert recipe["resolved_methods"]["projector"]["per_model"]["density"] == [0.9, 0.9, 0.9]
    assert recipe["resolved_methods"]["*"]["per_model"]["density"] == [0.2, 0.2, 0.2]


def test_each_source_wins_over_the_ones_below_it(llava_family):
    cfg = _config(
        llava_family,
        parameters={"weight": 0.5, "lambda": 0.7},
        components={"projector": {"merge_method": "ties", "parameters": {"weight": 2.0, "lambda": 1.5}}},
    )
    cfg["models"][0]["parameters"]["weight"] = 3.0
    resolved = resolve_config_methods(parse_merge_config(cfg))
    top, projector = resolved["*"], resolved["projector"]
    assert top.per_model["weight"] == (3.0, 0.5, 0.5)  # per-model > top level
    assert top.params["lambda"] == 0.7
    assert projector.per_model["weight"] == (2.0, 2.0, 2.0)  # component > per-model, for every model
    assert projector.params["lambda"] == 1.5  # component > top level
    assert projector.per_model["density"] == (0.2, 0.2, 0.2)  # not set on the component: per-model value


def test_an_unset_parameter_falls_back_to_the_top_level_then_to_the_default(llava_family):
    cfg = _config(llava_family, parameters={"density": 0.6})
    del cfg["models"][1]["parameters"]["density"]
    cfg["models"][2]["parameters"] = {}
    resolved = resolve_config_methods(parse_merge_config(cfg))["*"]
    assert resolved.per_model["density"] == (0.2, 0.6, 0.6)
    assert resolved.per_model["weight"] == (1.0, 1.0, 1.0)  # the default
    assert resolved.params["lambda"] == 1.0


def test_a_bad_component_value_is_named_by_its_component(llava_family):
    cfg = _config(llava_family, components={"projector": {"merge_method": "ties", "parameters": {"density": 1.5}}})
    with pytest.raises(ConfigError, match=r"components\.projector.*density.*\(0, 1\]"):
        resolve_config_methods(parse_merge_config(cfg))
