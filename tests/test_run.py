"""UQ-Merge end to end on tiny models: incremental merging, the written model, reports and resume."""

from __future__ import annotations

import json

import pytest
import torch

from uqmerge.checkpoint.reader import CheckpointReader
from uqmerge.engine.incremental import IncrementalMerger
from uqmerge.engine.merge import merge_to_dir
from uqmerge.engine.recipe import MergeRecipe, parse_merge_config
from uqmerge.pipeline.config import parse_run_config
from uqmerge.pipeline.runner import UQMergeRun, run_uq_merge

N_CANDIDATES = 4


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A tiny LLaVA base that knows the task words, 4 fake fine-tunes and a small labeled MC set."""
    from uqmerge.checkpoint.synthetic import make_fake_finetune
    from uqmerge.tiny import build_tiny_llava
    from uqmerge.zoo.tasks import vocabulary, write_eval_sets

    root = tmp_path_factory.mktemp("run-world")
    base = build_tiny_llava(root / "base", words=vocabulary(), seed=0, hidden=32, layers=1)
    experts = {
        f"e{i}": make_fake_finetune(base, root / f"e{i}", seed=10 + i, scale=0.3 * (i + 1)) for i in range(N_CANDIDATES)
    }
    data = write_eval_sets(root / "data", 0, families=("colour", "shape"), sizes={"held_in": 6, "held_out": 1})
    return {"base": base, "experts": experts, "data": [str(p) for p in data["held_in"].values()], "root": root}


def _run_config(world, **selection) -> dict:
    return {
        "base_model": str(world["base"]),
        "candidates": [{"id": k, "model": str(v)} for k, v in world["experts"].items()],
        "merge": {"merge_method": "linear"},
        "uq": {"data": world["data"], "perturbations": 2, "batch_size": 4},
        "selection": {"stop": "none", **selection},
        "device": "cpu",
    }


def _model_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_running_mean_equals_the_from_scratch_mean_at_every_step(world):
    from transformers import LlavaForConditionalGeneration

    from uqmerge.checkpoint.layouts import get_layout

    model = LlavaForConditionalGeneration.from_pretrained(world["base"])
    paths = world["experts"]
    merger = IncrementalMerger.for_candidates(model, world["base"], paths, MergeRecipe(merge_method="linear"))
    layout = get_layout("llava")
    readers = {k: CheckpointReader(v) for k, v in paths.items()}
    base = CheckpointReader(world["base"])
    order = list(paths)
    for t in range(1, len(order) + 1):
        before = merger.bytes_read
        merger.set_prefix(order[:t])
        state = model.state_dict()
        for name in base.names:
            got = state[layout.module_name(name)]
            if name.startswith("vision_tower."):
                assert torch.equal(got, base.read(name)), name
                continue
            want = sum(readers[c].read(name).float() for c in order[:t]) / t
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6, msg=f"step {t}: {name}")
        if t > 1:  # an extension reads only the new candidate's merged tensors
            merged_bytes = sum(
                readers[order[t - 1]].info(n).nbytes for n in base.names if not n.startswith("vision_tower.")
            )
            assert merger.bytes_read - before == merged_bytes


def test_non_linear_methods_re_merge_the_prefix_into_the_resident_model(world, tmp_path):
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(world["base"])
    merge = {"merge_method": "ties", "parameters": {"density": 0.5}}
    merger_recipe = MergeRecipe.model_validate(merge)
    merger = IncrementalMerger.for_candidates(model, world["base"], world["experts"], merger_recipe)
    merger.set_prefix(["e0", "e2"])
    cfg = {
        **merge,
        "base_model": str(world["base"]),
        "models": [{"model": str(world["experts"][c])} for c in ("e0", "e2")],
    }
    merge_to_dir(parse_merge_config(cfg), tmp_path / "ref", quiet=True)
    ref = LlavaForConditionalGeneration.from_pretrained(tmp_path / "ref").state_dict()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, ref[k], msg=k)


def test_run_writes_the_merge_of_the_selected_ids_and_only_that_under_the_model_dir(world, tmp_path):
    cfg = parse_run_config(_run_config(world, stop="first_increase"))
    run_dir = tmp_path / "run"
    record = run_uq_merge(cfg, run_dir, quiet=True)
    selected = record.selected
    assert selected and set(selected) <= set(world["experts"])
    assert json.loads((run_dir / "selected.json").read_text()) == selected
    for name in ("run.json", "report.md", "report.html", "uncertainty_steps.png", "config.resolved.yaml"):
        assert (run_dir / name).exists(), name
    assert sorted(p.name for p in (run_dir / "uq").iterdir()) == [f"{c}.json" for c in sorted(world["experts"])]
    model_files = sorted(p.name for p in (run_dir / "model").iterdir())
    assert "model.safetensors" in model_files and all(not n.startswith(".") for n in model_files)
    ref_cfg = {
        "merge_method": "linear",
        "base_model": str(world["base"]),
        "models": [{"model": str(world["experts"][c])} for c in selected],
    }
    merge_to_dir(parse_merge_config(ref_cfg), tmp_path / "ref", quiet=True)
    got, ref = CheckpointReader(run_dir / "model"), CheckpointReader(tmp_path / "ref")
    assert got.names == ref.names
    for n in ref.names:
        assert torch.equal(got.read(n), ref.read(n)), n
    # Step 1 is the most uncertain candidate with its own score; the order follows descending UQ.
    scores = {c: record.candidates[c].scores["vl"].score for c in world["experts"]}
    assert record.selection.order == sorted(scores, key=lambda c: -scores[c])
    assert record.steps[0].value == pytest.approx(scores[record.selection.order[0]])
    values = [s.value for s in record.steps]
    stop_at = next((i for i in range(1, len(values)) if values[i] >= min(values[:i])), None)
    assert len(selected) == (stop_at if stop_at is not None else len(values))


def test_killed_run_resumes_from_its_last_step_with_cached_uq_and_the_same_selection(world, tmp_path, caplog):
    cfg = parse_run_config(_run_config(world))
    full = run_uq_merge(cfg, tmp_path / "full", quiet=True)

    calls = {"n": 0}
    original = UQMergeRun.merged_uncertainty

    def dies_after_one_merge(self, prefix):
        calls["n"] += 1
        if calls["n"] > 1:
            raise KeyboardInterrupt("killed")
        return original(self, prefix)

    run_dir = tmp_path / "killed"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(UQMergeRun, "merged_uncertainty", dies_after_one_merge)
        with pytest.raises(KeyboardInterrupt):
            run_uq_merge(cfg, run_dir, quiet=True)
    state = json.loads((run_dir / "state.json").read_text())
    assert len(state["steps"]) == 2 and not (run_dir / "model").exists()

    resumed_calls = []
    with pytest.MonkeyPatch.context() as mp, caplog.at_level("INFO"):
        mp.setattr(UQMergeRun, "merged_uncertainty", lambda self, p: resumed_calls.append(list(p)) or original(self, p))
        resumed = run_uq_merge(cfg, run_dir, resume=True, quiet=True)
    assert "UQ cache hit" in caplog.text
    assert [s["prefix"] for s in state["steps"]][1] not in resumed_calls  # the finished step is not redone
    assert resumed.selected == full.selected
    # Resumed steps re-merge the prefix from scratch instead of the running mean: equal up to fp32 rounding.
    assert [s.value for s in resumed.steps] == pytest.approx([s.value for s in full.steps], rel=1e-4)


def test_run_refuses_a_non_empty_dir_without_resume_and_a_changed_config_on_resume(world, tmp_path):
    from uqmerge.core.errors import ConfigError, OutputError

    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "x").write_text("")
    with pytest.raises(OutputError, match="--resume"):
        run_uq_merge(parse_run_config(_run_config(world)), run_dir, quiet=True)
    (run_dir / "x").unlink()
    run_uq_merge(parse_run_config(_run_config(world)), run_dir, quiet=True)
    changed = parse_run_config(_run_config(world, order="ascending"))
    with pytest.raises(ConfigError, match="config changed"):
        run_uq_merge(changed, run_dir, resume=True, quiet=True)


@pytest.mark.parametrize("guidance", ["accuracy", "random"])
def test_guidance_ablations_and_baselines_run(world, tmp_path, guidance):
    cfg = _run_config(world, guidance=guidance, stop="first_increase")
    cfg["baselines"] = {"all": True, "random_subset": {"k": 2, "seeds": [0, 1]}}
    record = run_uq_merge(parse_run_config(cfg), tmp_path / "run", quiet=True)
    assert record.selection.guidance == guidance
    assert set(record.baselines) == {"all", "random_subset_k2_seed0", "random_subset_k2_seed1"}
    assert record.baselines["all"].models == list(world["experts"])
    assert "Baselines" in (tmp_path / "run" / "report.md").read_text()


def test_run_config_has_one_device_policy_with_uq_device_as_an_alias(world):
    from uqmerge.core.errors import ConfigError

    legacy = _run_config(world)
    del legacy["device"]
    legacy["uq"] = {**legacy["uq"], "device": "cpu", "dtype": "float32"}
    cfg = parse_run_config(legacy)
    assert (cfg.device, cfg.dtype) == ("cpu", "float32")
    assert "device" not in cfg.uq.model_dump()
    conflicting = _run_config(world)
    conflicting["uq"] = {**conflicting["uq"], "device": "cuda"}
    with pytest.raises(ConfigError, match=r"uq\.device"):
        parse_run_config(conflicting)
    with pytest.raises(ConfigError, match="lora_output"):
        parse_run_config({**_run_config(world), "merge": {"merge_method": "linear", "lora_output": {}}})


def test_run_merge_section_is_the_merge_recipe_of_each_prefix(world):
    cfg = _run_config(world)
    cfg["merge"] = {"merge_method": "ties", "parameters": {"density": 0.5}, "exclude": ["lm_head"]}
    cfg["candidates"][1]["parameters"] = {"weight": 2.0}
    run = parse_run_config(cfg)
    merge = run.merge_config(["e1", "e0"])
    assert merge.base_model == str(world["base"]) and merge.exclude == ["lm_head"]
    assert [(m.model, m.parameters) for m in merge.models] == [
        (str(world["experts"]["e1"]), {"weight": 2.0}),
        (str(world["experts"]["e0"]), {}),
    ]
    assert merge.merge_method == "ties" and merge.parameters == {"density": 0.5}


def test_run_config_rejects_unknown_keys_and_duplicate_ids(world):
    from uqmerge.core.errors import ConfigError

    bad = _run_config(world)
    bad["selection"]["guidnce"] = "x"
    with pytest.raises(ConfigError, match="guidnce"):
        parse_run_config(bad)
    dup = _run_config(world)
    dup["candidates"].append(dict(dup["candidates"][0]))
    with pytest.raises(ConfigError, match="unique"):
        parse_run_config(dup)
