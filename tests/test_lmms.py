"""lmms-eval: `uqmerge eval --lmms-eval`, `lmms:` data specs and the zoo as lmms-eval tasks, each checked against
uqmerge's own evaluator or UQ on the same items."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from lmms_fixtures import COLOURS, lmms_accuracy_search, local_tasks, unlabelled_inputs
from PIL import Image
from typer.testing import CliRunner

from uqmerge.cli import app
from uqmerge.core.errors import DataError
from uqmerge.zoo.build import read_manifest

pytest.importorskip("lmms_eval", reason="lmms-eval is not installed: pip install 'uqmerge[lmms]'")


def _invoke(*argv: str) -> Any:
    result = CliRunner().invoke(app, list(argv))
    assert result.exit_code == 0, result.output
    return result


def _samples(out: Path, task: str) -> dict[str, dict[str, Any]]:
    rows = [json.loads(line) for line in (out / f"samples_{task}.jsonl").read_text().splitlines() if line]
    return {str(r["doc"]["id"]): r for r in rows}


@pytest.fixture(scope="module")
def zoo_tasks(mini_zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("zoo-lmms")
    _invoke("zoo", "export-lmms-eval", str(mini_zoo), str(out), "--force", "-q")
    return out


@pytest.fixture(scope="module")
def base_through_lmms(mini_zoo: Path, zoo_tasks: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The zoo's base scored by lmms-eval on every exported held-out task and two held-in ones."""
    out = tmp_path_factory.mktemp("base-lmms")
    base = mini_zoo / read_manifest(mini_zoo)["base"]["path"]
    tasks = "uqmerge_zoo_held_out,uqmerge_zoo_held_in_colour,uqmerge_zoo_held_in_count"
    _invoke("eval", str(base), "--lmms-eval", tasks, "--lmms-eval-include", str(zoo_tasks), "--out", str(out), "-q")
    return out


def _zoo_files(zoo: Path, split: str) -> dict[str, Path]:
    return {d["family"]: zoo / d["path"] for d in read_manifest(zoo)["datasets"] if d["split"] == split}


def test_held_out_exact_match_through_lmms_eval_equals_uqmerge_eval(mini_zoo: Path, base_through_lmms: Path) -> None:
    import torch

    from uqmerge.evaluate.model_eval import evaluate_model_dir
    from uqmerge.evaluate.open_ended import evaluate_open_ended, load_open_items
    from uqmerge.uq.api import load_model

    files = _zoo_files(mini_zoo, "held_out")
    base = mini_zoo / read_manifest(mini_zoo)["base"]["path"]
    own = evaluate_model_dir(base, [str(f) for f in files.values()], device="cpu")
    results = json.loads((base_through_lmms / "results.json").read_text())
    lmms = {f: results["results"][f"uqmerge_zoo_held_out_{f}"]["exact_match,none"] for f in files}
    assert lmms == pytest.approx(own["open_accuracy"], abs=1e-12)
    assert 0.0 < own["open_mean"] < 1.0  # the base partly knows every family: agreement is not trivial
    group = results["groups"]["uqmerge_zoo_held_out"]["exact_match,none"]
    assert group == pytest.approx(own["open_mean"], abs=1e-12)
    # Item by item: the same responses, judged the same way.
    model, processor = load_model(base, device=torch.device("cpu"), dtype=torch.float32)
    for family, path in files.items():
        mine = evaluate_open_ended(model, processor, load_open_items(path), batch_size=16)["predictions"]
        theirs = _samples(base_through_lmms, f"uqmerge_zoo_held_out_{family}")
        assert {p["id"] for p in mine} == set(theirs)
        for p in mine:
            assert theirs[p["id"]]["filtered_resps"][0] == p["prediction"].strip(), p
            assert bool(theirs[p["id"]]["exact_match"]) == p["correct"], p
    assert "uqmerge_zoo_held_out" in (base_through_lmms / "summary.md").read_text()


def test_held_in_accuracy_through_lmms_eval_equals_uqmerge_mc_accuracy(mini_zoo: Path, base_through_lmms: Path) -> None:
    from uqmerge.evaluate.model_eval import evaluate_model_dir

    files = _zoo_files(mini_zoo, "held_in")
    base = mini_zoo / read_manifest(mini_zoo)["base"]["path"]
    own = evaluate_model_dir(base, [str(files["colour"]), str(files["count"])], device="cpu")
    results = json.loads((base_through_lmms / "results.json").read_text())["results"]
    for family in ("colour", "count"):
        assert results[f"uqmerge_zoo_held_in_{family}"]["acc,none"] == pytest.approx(own["mc_accuracy"][family])
        assert results[f"uqmerge_zoo_held_in_{family}"]["alias"].strip() == family


def test_lmms_spec_of_the_exported_task_gives_the_uq_of_the_zoo_jsonl(mini_zoo: Path, zoo_tasks: Path) -> None:
    import torch

    from uqmerge.uq.api import load_model, uncertainty_of_loaded_model
    from uqmerge.uq.config import UQConfig
    from uqmerge.uq.data import load_uq_datasets

    config = UQConfig(perturbations=2, sample_ratio=0.2, seed=3)
    jsonl = _zoo_files(mini_zoo, "held_in")["colour"]
    lmms = f"lmms:{zoo_tasks / 'uqmerge_zoo_held_in_colour'}"
    load = {"seed": config.seed, "sample_ratio": config.sample_ratio, "real_options": config.real_options}
    (from_jsonl,) = load_uq_datasets([str(jsonl)], **load)
    (from_lmms,) = load_uq_datasets([lmms], **load)
    assert from_lmms.name == from_jsonl.name == "colour"
    strip = [(it.id, it.question, it.options, it.answer) for it in from_jsonl.items]
    assert [(it.id, it.question, it.options, it.answer) for it in from_lmms.items] == strip
    expert = mini_zoo / read_manifest(mini_zoo)["experts"][0]["path"]
    model, processor = load_model(expert, device=torch.device("cpu"), dtype=torch.float32)
    a = uncertainty_of_loaded_model(model, processor, [from_jsonl], config)
    b = uncertainty_of_loaded_model(model, processor, [from_lmms], config)
    assert a.score > 0
    assert b.score == a.score
    assert [it.probs for it in b.datasets[0].items] == [it.probs for it in a.datasets[0].items]


@pytest.mark.parametrize("family", ["llava_family", "qwen2vl_family"])
def test_eval_lmms_runs_a_local_task_on_a_model_written_by_uqmerge_merge(
    family: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    import torch

    from uqmerge.evaluate.open_ended import generate_answers
    from uqmerge.uq.api import load_model

    models = request.getfixturevalue(family)
    recipe = {
        "merge_method": "linear",
        "base_model": str(models["base"]),
        "models": [{"model": str(models["expert0"])}, {"model": str(models["expert1"])}],
    }
    (tmp_path / "merge.yaml").write_text(yaml.safe_dump(recipe))
    merged = tmp_path / "merged"
    _invoke("merge", str(tmp_path / "merge.yaml"), str(merged), "--quiet")
    tasks = local_tasks(tmp_path / "tasks")
    out = tmp_path / "out"
    args = ["--lmms-eval", "colours_open,colours_mc", "--lmms-eval-include", str(tasks), "--out", str(out)]
    _invoke("eval", str(merged), *args, "--quiet")
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["model"] == "uqmerge"
    assert {k: v["effective"] for k, v in results["n-samples"].items()} == {"colours_open": 4, "colours_mc": 4}
    assert 0.0 <= results["results"]["colours_mc"]["acc,none"] <= 1.0
    # The responses are the model's own greedy answers to the same prompts (uqmerge's open-ended generation).
    model, processor = load_model(merged, device=torch.device("cpu"), dtype=torch.float32)
    images = [Image.new("RGB", (32, 32), rgb) for rgb in COLOURS.values()]
    mine = generate_answers(model, processor, images, ["what colour is the shape"] * 4, max_new_tokens=4)
    theirs = _samples(out, "colours_open")
    assert [theirs[f"q{i}"]["filtered_resps"][0] for i in range(4)] == [m.strip() for m in mine]
    mc = _samples(out, "colours_mc")
    assert all(len(mc[f"q{i}"]["resps"]) == 6 for i in range(4))  # one log-likelihood per option letter


def test_eval_takes_either_data_or_lmms_eval(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["eval", str(tmp_path), "--data", "x.jsonl", "--lmms-eval", "gqa"])
    assert result.exit_code == 2
    assert "either --data SPEC" in result.output and len(result.output.strip().splitlines()) == 1


def test_eval_lmms_without_the_extra_names_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from uqmerge.cli import common

    real = common.find_spec
    monkeypatch.setattr(common, "find_spec", lambda name, *a: None if name == "lmms_eval" else real(name, *a))
    result = CliRunner().invoke(app, ["eval", str(tmp_path), "--lmms-eval", "gqa"])
    assert result.exit_code == 2
    assert result.output.strip() == (
        "error: uqmerge eval with --lmms-eval needs the 'lmms' extra: pip install 'uqmerge[lmms]'"
    )


def test_an_unknown_local_task_is_a_one_line_error_naming_it(tmp_path: Path) -> None:
    from uqmerge.core.errors import DataError
    from uqmerge.evaluate.lmms import task_manager

    tasks = local_tasks(tmp_path / "tasks")
    assert "colours_open" in task_manager(["colours_open"], [tasks]).all_tasks
    with pytest.raises(DataError, match=r"\['no_such_task_uqmerge'\] not found"):
        task_manager(["no_such_task_uqmerge"], [tasks])


def test_lettered_options_are_read_from_benchmark_prompts() -> None:
    from uqmerge.uq.lmms_data import lettered_options, split_task_source

    mmbench = "Hint text What is shown? There are several options:\nA. a cat\nB. a dog\nC. a bird\nAnswer with it."
    assert lettered_options(mmbench) == (
        "Hint text What is shown? There are several options:",
        ["a cat", "a dog", "a bird"],
    )
    assert lettered_options("Q?\n(A) yes\n(B) no") == ("Q?", ["yes", "no"])
    assert lettered_options("Q?\nA. only one") is None
    assert lettered_options("Q?\nB. no A first\nC. x") is None
    assert split_task_source("gqa") == ("gqa", [])
    assert split_task_source("tasks/dir/my_task") == ("my_task", [Path("tasks/dir")])


def test_lmms_spec_takes_no_split_or_config() -> None:
    from uqmerge.core.errors import DataError
    from uqmerge.uq.data import DataSpec, parse_data_spec

    assert parse_data_spec("lmms:ai2d") == DataSpec("lmms", "ai2d")
    assert parse_data_spec("lmms:./tasks/t1") == DataSpec("lmms", "./tasks/t1")
    with pytest.raises(DataError, match="takes no @CONFIG or :SPLIT"):
        parse_data_spec("lmms:ai2d:test")


def test_a_run_scores_candidates_and_its_selection_with_lmms_eval_in_the_resident_model(
    llava_family: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from uqmerge.evaluate.lmms import evaluate_model_dir_lmms, task_score
    from uqmerge.pipeline.config import parse_run_config
    from uqmerge.pipeline.runner import run_uq_merge

    tasks = local_tasks(tmp_path / "tasks")
    jsonl = tmp_path / "mc.jsonl"
    rows = [{"id": f"q{i}", "image": f"img{i}.png", "question": "what colour is the shape", "options": list(COLOURS),
             "answer": name} for i, name in enumerate(COLOURS)]  # fmt: skip
    for i, rgb in enumerate(COLOURS.values()):
        Image.new("RGB", (32, 32), rgb).save(tmp_path / f"img{i}.png")
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    lmms = {"tasks": "colours_mc", "include": [str(tasks)], "accuracy": True}
    config = parse_run_config(
        {
            "base_model": str(llava_family["base"]),
            "candidates": [str(llava_family[f"expert{i}"]) for i in range(2)],
            "uq": {"data": [str(jsonl)], "perturbations": 2},
            "selection": {"guidance": "accuracy"},
            "device": "cpu",
            "lmms_eval": lmms,
        }
    )
    run_dir = tmp_path / "run"
    record = run_uq_merge(config, run_dir, quiet=True)
    for cid in ("expert0", "expert1"):  # each candidate's labelled signal came from lmms-eval
        assert (run_dir / "lmms_eval" / "candidates" / cid / "results.json").is_file()
    resident = json.loads((run_dir / "lmms_eval" / "results.json").read_text())
    assert resident["config"]["model_args"] == f"resident={'+'.join(record.selected)}"
    # The resident evaluation equals lmms-eval's evaluation of the written checkpoint.
    written = evaluate_model_dir_lmms(run_dir / "model", "colours_mc", include=[tasks], device="cpu")
    assert task_score(resident, ["colours_mc"]) == pytest.approx(task_score(written, ["colours_mc"]))
    own = [s["resps"] for s in json.loads(json.dumps(written["samples"]["colours_mc"]))]
    theirs = [json.loads(line)["resps"] for line in (run_dir / "lmms_eval" / "samples_colours_mc.jsonl").open()]
    losses = [r[0][0] for sample in theirs for r in sample]
    assert losses == pytest.approx([r[0][0] for sample in own for r in sample], abs=1e-4)

    # --resume reads every evaluation back from its results.json instead of evaluating again.
    import uqmerge.evaluate.lmms as lmms_module

    def must_not_evaluate(*_args: object, **_kwargs: object) -> float:
        raise AssertionError("a resumed run evaluated a model again")

    monkeypatch.setattr(lmms_module, "evaluate_merge_in_resident", must_not_evaluate)
    again = run_uq_merge(config, run_dir, resume=True, quiet=True)
    assert again.selected == record.selected


def test_a_search_scores_every_point_with_lmms_eval_in_the_resident_model(
    llava_family: dict[str, Path], tmp_path: Path
) -> None:
    from uqmerge.engine.merge import merge_to_dir
    from uqmerge.evaluate.lmms import evaluate_model_dir_lmms, task_score
    from uqmerge.pipeline.search import run_search
    from uqmerge.pipeline.search_config import parse_search_config

    # The search's own inputs carry no answers: the labelled signal is lmms-eval's.
    config = parse_search_config(lmms_accuracy_search(llava_family, tmp_path, [0.0, 1.0, 2.5]))
    tasks = tmp_path / "tasks"
    run_dir = tmp_path / "run"
    record = run_search(config, run_dir, quiet=True)
    assert record.accuracy_from == "lmms-eval"
    losses = []
    for point in record.points:
        written_dir = tmp_path / f"merged-{point.value:g}"
        merge_to_dir(config.merge_config(point.value), written_dir, quiet=True, device="cpu")
        written = evaluate_model_dir_lmms(written_dir, "colours_mc", include=[tasks], device="cpu")
        assert point.accuracy == pytest.approx(task_score(written, ["colours_mc"]))
        resident = run_dir / "lmms_eval" / "points" / f"lambda={point.value:g}" / "samples_colours_mc.jsonl"
        mine = [r[0][0] for line in resident.open() for r in json.loads(line)["resps"]]
        assert mine == pytest.approx([r[0][0] for s in written["samples"]["colours_mc"] for r in s["resps"]], abs=1e-4)
        losses.append(mine)
    assert losses[0] != pytest.approx(losses[-1], abs=1e-3)  # the points are different merges
    best = max(range(3), key=lambda i: (record.points[i].accuracy, -i))
    assert record.chosen_index == best
    final = json.loads((run_dir / "lmms_eval" / "results.json").read_text())
    assert final["config"]["model_args"] == f"resident=lambda={record.chosen_value:g}"
    assert record.lmms_score == pytest.approx(record.points[best].accuracy)
    assert "lmms-eval's score of each point's merge on colours_mc" in (run_dir / "report.md").read_text()


def test_criterion_accuracy_without_labels_or_lmms_eval_names_the_fix(
    llava_family: dict[str, Path], tmp_path: Path
) -> None:
    from uqmerge.pipeline.search import run_search
    from uqmerge.pipeline.search_config import parse_search_config

    inputs = unlabelled_inputs(tmp_path)
    cfg = {
        "base_model": str(llava_family["base"]),
        "models": [str(llava_family["expert0"])],
        "merge": {"merge_method": "task_arithmetic"},
        "search": {
            "parameter": "lambda",
            "grid": [0.0, 1.0],
            "criterion": "accuracy",
            "data": [str(inputs)],
        },
        "device": "cpu",
    }
    with pytest.raises(DataError, match=r"lmms_eval\.accuracy: true"):
        run_search(parse_search_config(cfg), tmp_path / "run", quiet=True)
    assert not (tmp_path / "run" / "model").exists()
