"""UQ, UQ-Merge runs, eval and the demo end to end on the real `mini` zoo (built once per test run)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from uqmerge.cli import app
from uqmerge.demo import demo_run_config
from uqmerge.evaluate.merge_eval import MergeEvaluator, zoo_eval_specs
from uqmerge.zoo.build import read_manifest


def _held_in(zoo: Path) -> list[str]:
    return zoo_eval_specs(read_manifest(zoo), zoo)["held_in"]


def test_uq_command_on_zoo_experts_gives_finite_nonnegative_mi_per_family(mini_zoo: Path, tmp_path: Path) -> None:
    manifest = read_manifest(mini_zoo)
    expert = mini_zoo / manifest["experts"][0]["path"]
    out = tmp_path / "uq.json"
    args = ["uq", str(expert), *[a for spec in _held_in(mini_zoo) for a in ("--data", spec)]]
    result = CliRunner().invoke(app, [*args, "--perturbations", "3", "--sample-ratio", "0.4", "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    per_dataset = [d["uncertainty"] for d in record["datasets"]]
    assert len(per_dataset) == len(_held_in(mini_zoo))
    assert all(math.isfinite(u) and u >= -1e-6 for u in per_dataset)
    assert record["score"] == pytest.approx(sum(per_dataset) / len(per_dataset), abs=1e-6)


def test_eval_command_matches_the_in_memory_evaluator_of_the_base(mini_zoo: Path, tmp_path: Path) -> None:
    manifest = read_manifest(mini_zoo)
    specs = zoo_eval_specs(manifest, mini_zoo)
    data = [*specs["held_in"], *specs["held_out"]]
    out = tmp_path / "eval.json"
    base = mini_zoo / manifest["base"]["path"]
    result = CliRunner().invoke(app, ["eval", str(base), *[a for s in data for a in ("--data", s)], "--out", str(out)])
    assert result.exit_code == 0, result.output
    cli = json.loads(out.read_text())
    experts = {e["id"]: mini_zoo / e["path"] for e in manifest["experts"]}
    evaluator = MergeEvaluator(base, experts, data)
    mine = evaluator([])
    assert cli["mc_accuracy"] == pytest.approx(mine["mc_accuracy"])
    assert cli["open_accuracy"] == pytest.approx(mine["open_accuracy"])


def test_merge_evaluator_single_expert_after_other_merges_is_that_expert(mini_zoo: Path) -> None:
    manifest = read_manifest(mini_zoo)
    specs = zoo_eval_specs(manifest, mini_zoo)
    experts = {e["id"]: mini_zoo / e["path"] for e in manifest["experts"]}
    ids = list(experts)
    evaluator = MergeEvaluator(mini_zoo / manifest["base"]["path"], experts, specs["held_in"][:1])
    evaluator.set_models(ids, {"merge_method": "linear"})
    evaluator.set_models(ids[:2], {"merge_method": "ties", "parameters": {"density": 0.5}})
    evaluator.set_models([])
    evaluator.set_models([ids[1]], {"merge_method": "linear"})
    from safetensors.torch import load_file

    from uqmerge.checkpoint.layouts import detect_layout

    layout = detect_layout(json.loads((experts[ids[1]] / "config.json").read_text()))
    on_disk = load_file(str(experts[ids[1]] / "model.safetensors"))
    state = evaluator.model.state_dict()
    for name, tensor in on_disk.items():
        torch.testing.assert_close(state[layout.module_name(name)], tensor.float(), rtol=0, atol=0, msg=name)


def test_uq_merge_run_on_the_zoo_writes_the_selected_merge(mini_zoo: Path, tmp_path: Path) -> None:
    from uqmerge.pipeline.config import parse_run_config
    from uqmerge.pipeline.runner import run_uq_merge

    manifest = read_manifest(mini_zoo)
    cfg = demo_run_config(manifest, mini_zoo, order="descending")
    cfg["uq"]["sample_ratio"] = 0.4
    record = run_uq_merge(parse_run_config(cfg, source="test"), tmp_path / "run", quiet=True)
    ids = [e["id"] for e in manifest["experts"]]
    scores = record.selection.scores
    assert set(scores) == set(ids)
    assert record.selection.order == sorted(ids, key=lambda c: -scores[c])
    selected = record.selected
    assert selected == record.selection.order[: len(selected)]
    values = [s.value for s in record.steps]
    # Stop rule: every kept step improved on the best before it; the step after the last kept one did not.
    assert all(values[i] < min(values[:i]) for i in range(1, len(selected)))
    if len(values) > len(selected):
        assert values[len(selected)] >= min(values[: len(selected)])
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    assert (tmp_path / "run" / "report.md").is_file()


def test_demo_on_the_mini_zoo_prints_every_row_and_writes_results(mini_zoo: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    workdir.mkdir()
    (workdir / "zoo-mini-seed0").symlink_to(mini_zoo, target_is_directory=True)
    result = CliRunner().invoke(app, ["demo", "--preset", "mini", "--workdir", str(workdir), "--quiet"])
    assert result.exit_code == 0, result.output
    for word in ("base", "merge-all", "random", "UQ-Merge"):  # the table (rich wraps long names)
        assert word in result.output, word
    record = json.loads((workdir / "demo_results.json").read_text())
    names = [r["name"] for r in record["rows"]]
    for label in ("base", "best single expert", "merge-all", "random subsets", "UQ-Merge (descending", "(ascending)"):
        assert sum(label in n for n in names) == 1, (label, names)
    rows = {r["name"].split(" (")[0]: r for r in record["rows"]}
    assert all(0.0 <= r["held_out"] <= 1.0 for r in record["rows"])
    random_row = next(r for r in record["rows"] if r["name"].startswith("random"))
    assert random_row["held_out_se"] is not None and len(random_row["extra"]["subsets"]) == 3
    assert rows["base"]["models"] == []
