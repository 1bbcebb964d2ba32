"""Every transformers MLLM family of tests/hf_families.py classifies, merges, reloads and keeps its processor files."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from hf_families import FAMILIES, FROZEN_COMPONENTS, Family, build_base, make_expert, state

from uqmerge.engine.merge import merge_to_dir
from uqmerge.engine.plan import build_plan
from uqmerge.engine.recipe import parse_merge_config

LINEAR_WEIGHTS = (0.3, 0.7)
TIES_DENSITY = 0.5
METHODS = ("linear", "ties")


@dataclass
class Built:
    """A family's base and two experts on disk, their tensors, and merges made on demand."""

    family: Family
    base: Path
    experts: list[Path]
    root: Path
    states: dict[str, dict[str, torch.Tensor]]
    merges: dict[str, Path] = field(default_factory=dict)

    def config(self, method: str) -> dict:
        models = [{"model": str(p)} for p in self.experts]
        cfg = {"merge_method": method, "base_model": str(self.base), "models": models}
        if method == "linear":
            for entry, weight in zip(models, LINEAR_WEIGHTS, strict=True):
                entry["parameters"] = {"weight": weight}
        else:
            cfg["parameters"] = {"density": TIES_DENSITY}
        return cfg

    def merged(self, method: str) -> Path:
        if method not in self.merges:
            out = self.root / f"merged-{method}"
            merge_to_dir(parse_merge_config(self.config(method)), out, quiet=True)
            self.merges[method] = out
        return self.merges[method]


@pytest.fixture(scope="session", params=sorted(FAMILIES))
def built(request, tmp_path_factory) -> Built:
    family = FAMILIES[request.param]
    root = tmp_path_factory.mktemp(family.name)
    base = build_base(family, root / "base", seed=0)
    experts = [make_expert(family, base, root / f"expert{i}", seed=100 + i) for i in range(2)]
    states = {"base": state(base), **{f"expert{i}": state(p) for i, p in enumerate(experts)}}
    return Built(family, base, experts, root, states)


# ---- independent references ------------------------------------------------------------------------------------


def _ref_linear(xs: list[torch.Tensor], ws=LINEAR_WEIGHTS) -> torch.Tensor:
    return sum(w * x for w, x in zip(ws, xs, strict=True)) / sum(ws)


def _sign(v: float) -> int:
    return (v > 0) - (v < 0)


def _ref_ties(base: torch.Tensor, xs: list[torch.Tensor], density: float = TIES_DENSITY) -> torch.Tensor:
    """TIES written entry by entry: keep the k largest |τ| (lower flat index first among equals), elect the sign of
    the sum, average the agreeing entries. k = clamp(floor(density·n + 0.5), 1, n), uqmerge's documented count."""
    n = base.numel()
    keep = min(n, max(1, math.floor(density * n + 0.5)))
    trimmed = []
    for x in xs:
        tau = (x - base).flatten().tolist()
        kept = set(sorted(range(n), key=lambda j: (-abs(tau[j]), j))[:keep])
        trimmed.append([v if j in kept else 0.0 for j, v in enumerate(tau)])
    out = []
    for entries in zip(*trimmed, strict=True):
        sign = _sign(sum(entries))
        agree = [e for e in entries if sign != 0 and _sign(e) == sign]
        out.append(sum(agree) / len(agree) if agree else 0.0)
    return base + torch.tensor(out, dtype=torch.float64).reshape(base.shape).float()


# ---- tests -------------------------------------------------------------------------------------------------------


def test_plan_classifies_every_tensor_as_the_family_expects(built):
    family = built.family
    plan = build_plan(parse_merge_config(built.config("ties")))
    names = [t.name for t in plan.tasks]
    assert len(names) == len(set(names)) and set(names) == set(built.states["base"]), "one task per base tensor"
    wrong = []
    for task in plan.tasks:
        got = (task.classification.component, task.classification.role)
        want = family.expected(task.name)
        if got != want:
            wrong.append(f"{task.name}: got {got}, expected {want}")
    note = f" (expected: {family.notes})" if family.notes else ""
    assert not wrong, f"{family.name}: {len(wrong)} of {len(plan.tasks)} misclassified{note}:\n" + "\n".join(wrong)
    for task in plan.tasks:
        frozen = family.expected(task.name)[0] in FROZEN_COMPONENTS
        assert (task.action is None) == frozen, f"{task.name}: towers keep the base, everything else is merged"


@pytest.mark.parametrize("method", METHODS)
def test_merge_equals_the_independent_reference_and_keeps_the_towers(built, method):
    out = state(built.merged(method))
    base = built.states["base"]
    xs = [built.states["expert0"], built.states["expert1"]]
    assert set(out) == set(base), "the output holds exactly the base's tensors"
    merged = 0
    for name, b in base.items():
        if built.family.expected(name)[0] in FROZEN_COMPONENTS or not b.is_floating_point():
            assert torch.equal(out[name], b), f"{name} must keep the base's values"
            continue
        inputs = [x[name] for x in xs]
        want = _ref_linear(inputs) if method == "linear" else _ref_ties(b, inputs)
        torch.testing.assert_close(out[name], want, atol=1e-6, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
        merged += 1
    assert merged, "some tensors must be merged"


@pytest.mark.parametrize("method", METHODS)
def test_merged_output_loads_strictly_with_the_family_class(built, method, tmp_path):
    import transformers

    out = built.merged(method)
    cls = getattr(transformers, built.family.model_class)
    model, info = cls.from_pretrained(out, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v}  # missing/unexpected/mismatched keys, error messages
    assert not problems, f"{built.family.name}: loading is not strict: {problems}"
    model.save_pretrained(tmp_path / "again")
    written, reloaded = state(out), state(tmp_path / "again")
    assert set(reloaded) == set(written)
    for name, tensor in written.items():
        assert torch.equal(reloaded[name], tensor), f"{name}: the loaded model does not hold what was written"


def test_tokenizer_and_processor_files_of_the_base_are_copied(built):
    from transformers import AutoProcessor, AutoTokenizer

    out = built.merged("linear")
    aux = sorted(p.name for p in built.base.iterdir() if p.name not in {"model.safetensors", "config.json"})
    assert "tokenizer.json" in aux and "chat_template.jinja" in aux
    for name in aux:
        assert (out / name).read_bytes() == (built.base / name).read_bytes(), f"{name} must be copied unchanged"
    base_cfg, out_cfg = (json.loads((p / "config.json").read_text()) for p in (built.base, out))
    assert {k: v for k, v in out_cfg.items() if k != "dtype"} == {k: v for k, v in base_cfg.items() if k != "dtype"}
    loader = AutoProcessor if (built.base / "processor_config.json").exists() else AutoTokenizer
    front = loader.from_pretrained(out)
    tokenizer = getattr(front, "tokenizer", front)
    assert tokenizer.get_vocab() == AutoTokenizer.from_pretrained(built.base).get_vocab()
