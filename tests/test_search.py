"""`uqmerge search`: the coefficient rules on hand-worked examples, the config checks, and searches end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from uqmerge.cli import app
from uqmerge.engine.recipe import MergeRecipe, ModelEntry
from uqmerge.pipeline.search_config import SearchSettings, with_parameter
from uqmerge.selection.algorithm import SelectionError
from uqmerge.selection.coefficients import (
    adjacent_differences,
    choose,
    choose_by_consistency,
    choose_by_responses,
    choose_max_accuracy,
    choose_min_uncertainty,
    consistency_scores,
    embedding_diff_count,
    exact_diff_count,
)

# ---- the rules, by hand ------------------------------------------------------------------------------------


def test_exact_diff_count_ignores_case_and_whitespace_only() -> None:
    a = ["Red  car", " two", "A", "yes"]
    b = ["red car\n", "Two ", "B", "yes."]
    # "Red  car"/"red car\n" and " two"/"Two " are equal once normalised; "A"/"B" and "yes"/"yes." differ.
    assert exact_diff_count(a, b) == 2


def test_consistency_sums_both_neighbours_and_chooses_the_interior_minimum() -> None:
    responses = [
        ["A", "b", "c"],
        ["a", "B", "c"],  # DiffCnt(0, 1) = 0
        ["a", "x", "c"],  # DiffCnt(1, 2) = 1
        ["z", "y", "c"],  # DiffCnt(2, 3) = 2
        ["z", "y", " C "],  # DiffCnt(3, 4) = 0
    ]
    assert adjacent_differences(responses, exact_diff_count) == [0, 1, 2, 0]
    choice = choose_by_responses(responses)
    # D_1 = 0 + 1, D_2 = 1 + 2, D_3 = 2 + 0; the end points have no score.
    assert choice.scores == (None, 1.0, 3.0, 2.0, None)
    assert choice.index == 1


def test_consistency_never_chooses_an_end_point_and_breaks_ties_towards_the_smaller_coefficient() -> None:
    # The end points each differ from their one neighbour by 0, less than any interior D_j, yet are not chosen;
    # D_1 = D_3 = 5 tie and the smaller coefficient (index 1) wins.
    choice = choose_by_consistency([0, 5, 5, 0])
    assert choice.scores == (None, 5, 10, 5, None)
    assert choice.index == 1
    assert choose_by_consistency([3, 3]).index == 1  # three points: the middle one, always


def test_consistency_needs_three_points() -> None:
    with pytest.raises(SelectionError, match="at least 3"):
        consistency_scores([1.0])
    with pytest.raises(SelectionError, match="end points"):
        choose("consistency", [1.0, 2.0, None])


def test_embedding_diff_count_sums_one_minus_cosine_per_input() -> None:
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0]])
    b = torch.tensor([[2.0, 0.0], [1.0, 0.0], [-3.0, -4.0]])
    # cos = 1, 0, -1 → 1 − cos = 0 + 1 + 2.
    assert embedding_diff_count(a, b) == pytest.approx(3.0)
    with pytest.raises(SelectionError):
        embedding_diff_count(a, b[:2])


def test_uncertainty_takes_the_minimum_and_accuracy_the_maximum_with_ties_to_the_smaller_coefficient() -> None:
    assert choose_min_uncertainty([0.3, 0.1, 0.1, 0.2]).index == 1
    assert choose_max_accuracy([0.5, 0.9, 0.2, 0.9]).index == 1
    assert choose("uncertainty", [0.4, 0.2, 0.3]).index == 1
    assert choose("accuracy", [0.4, 0.2, 0.4]).index == 0
    with pytest.raises(SelectionError, match="non-finite"):
        choose_min_uncertainty([0.1, float("nan")])


# ---- the config --------------------------------------------------------------------------------------------


def test_a_per_model_parameter_is_set_for_every_model_and_a_global_one_at_the_top() -> None:
    models = [ModelEntry(model="a", parameters={"weight": 2.0}), ModelEntry(model="b")]
    ties = MergeRecipe(merge_method="ties", parameters={"lambda": 0.5})
    per_model = with_parameter(ties, "base", models, "density", 0.3)
    assert [m.parameters for m in per_model.models] == [{"weight": 2.0, "density": 0.3}, {"density": 0.3}]
    assert per_model.parameters == {"lambda": 0.5}
    shared = with_parameter(MergeRecipe(merge_method="ties"), "base", models, "lambda", 1.5)
    assert shared.parameters == {"lambda": 1.5} and shared.models == models


def _config(tmp_path: Path, **search: object) -> dict:
    return {
        "base_model": str(tmp_path / "base"),
        "models": [str(tmp_path / "a"), str(tmp_path / "b")],
        "merge": {"merge_method": "ties", "parameters": {"density": 0.5}},
        "search": {"parameter": "lambda", "grid": [0.5, 1.0, 1.5], "data": ["items.jsonl"], **search},
        "device": "cpu",
    }


@pytest.mark.parametrize(
    ("change", "names"),
    [
        (lambda c: c["search"].update(grdi=[1]), "search.grdi: unknown key"),
        (lambda c: c["search"].update(parameter="alpha"), "search.parameter: 'alpha' is not a parameter of"),
        (
            lambda c: (
                c.update(merge={"merge_method": "ties"}) or c["search"].update(parameter="density", grid=[0.5, 1.5, 2])
            ),
            "search.grid[1] = 1.5:",
        ),
        (lambda c: c["search"].update(grid=[0.5, 1.0]), "search.grid: criterion consistency needs at least 3"),
        (lambda c: c["search"].update(grid=[1.0, 0.5, 1.5]), "search.grid: grid must be strictly increasing"),
        (lambda c: c["search"].update(parameter="density"), "merge.parameters.density: 'density' is set by search"),
        (
            lambda c: c["search"].update(criterion="accuracy", consistency={"compare": "embedding"}),
            "search.consistency",
        ),
    ],
)
def test_config_errors_are_one_line_naming_the_key(tmp_path: Path, change, names: str) -> None:
    cfg = _config(tmp_path)
    change(cfg)
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(app, ["search", str(path), str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert "\n" not in line and line.startswith(f"error: {path}: "), line
    assert names in line
    assert not (tmp_path / "run").exists()


def test_a_run_config_search_block_is_checked_against_the_candidates(tmp_path: Path) -> None:
    from uqmerge.core.errors import ConfigError
    from uqmerge.pipeline.config import parse_run_config

    run = {
        "base_model": "base",
        "candidates": [{"id": "a", "model": "a"}, {"id": "b", "model": "b", "parameters": {"density": 0.4}}],
        "merge": {"merge_method": "ties"},
        "uq": {"data": ["items.jsonl"]},
        "search": {"parameter": "lambda", "grid": [0.5, 1.0, 1.5]},
    }
    cfg = parse_run_config(run)
    merge = cfg.merge_config(["b"], 1.5)
    assert merge.parameters == {"lambda": 1.5} and merge.models[0].parameters == {"density": 0.4}
    assert cfg.merge_config(["b"]).parameters == {}
    with pytest.raises(ConfigError, match=r"candidates\[1\]\.parameters\.density: 'density' is set by search"):
        parse_run_config({**run, "search": {"parameter": "density", "grid": [0.2, 0.5, 0.8]}})
    with pytest.raises(ConfigError, match=r"search\.grid\[2\] = 1\.5"):
        parse_run_config(
            {**run, "candidates": run["candidates"][:1], "search": {"parameter": "density", "grid": [0.2, 0.5, 1.5]}}
        )


def test_a_search_settings_grid_rejects_booleans() -> None:
    with pytest.raises(ValueError, match="numbers"):
        SearchSettings(parameter="lambda", grid=[True, 0.5, 1.0])


# ---- end to end on the mini zoo ----------------------------------------------------------------------------

GRID = [0.0, 1.0, 3.0]
GRID4 = [0.0, 1.0, 3.0, 4.0]


def _zoo_config(zoo: Path, **search: object) -> dict:
    return {
        "base_model": str(zoo / "models" / "base"),
        "models": [str(zoo / "models" / "specialist-count"), str(zoo / "models" / "specialist-position")],
        "merge": {"merge_method": "task_arithmetic"},
        "search": {
            "parameter": "lambda",
            "grid": GRID,
            "data": [str(zoo / "data" / "held_in" / "count.jsonl"), str(zoo / "data" / "held_out" / "count.jsonl")],
            "sample": 6,
            "consistency": {"max_new_tokens": 3},
            **search,
        },
        "uq": {"perturbations": 2},
        "device": "cpu",
    }


def _write(tmp_path: Path, cfg: dict, name: str = "search.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def _independent_d(responses: list[list[str]]) -> list[float | None]:
    norm = [[" ".join(r.lower().split()) for r in rs] for rs in responses]
    diff = [sum(x != y for x, y in zip(norm[j], norm[j + 1], strict=True)) for j in range(len(norm) - 1)]
    return [None, *(diff[j - 1] + diff[j] for j in range(1, len(norm) - 1)), None]


def _tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def test_search_cli_chooses_the_consistency_argmin_and_writes_only_the_chosen_merge(
    mini_zoo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uqmerge.pipeline.search as search_module
    from uqmerge.engine.merge import merge_to_dir
    from uqmerge.pipeline.search_config import load_search_config

    written: list[Path] = []

    def counting_merge_to_dir(config, out, **kw):
        written.append(Path(out))
        return merge_to_dir(config, out, **kw)

    monkeypatch.setattr(search_module, "merge_to_dir", counting_merge_to_dir)
    path = _write(tmp_path, _zoo_config(mini_zoo, grid=GRID4))
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(app, ["search", str(path), str(run_dir), "-q"])
    assert result.exit_code == 0, result.output

    record = json.loads((run_dir / "search.json").read_text())
    responses = [p["responses"] for p in record["points"]]
    assert len(record["inputs"]) == 6 and all(len(r) == 6 for r in responses)
    scores = _independent_d(responses)
    assert [p["score"] for p in record["points"]] == scores
    best = min(range(1, len(GRID4) - 1), key=lambda j: (scores[j], j))  # interior points; ties → smaller value
    assert record["chosen_index"] == best and record["chosen_value"] == GRID4[best]
    # The data have labels, so the oracle's accuracy is recorded at every point whatever the criterion.
    assert all(0.0 <= p["accuracy"] <= 1.0 for p in record["points"])
    # One checkpoint, at the end: the merge at the chosen value, equal to the streaming engine's.
    assert written == [run_dir / "model"]
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "config.yml",
        "model",
        "report.html",
        "report.md",
        "search.json",
        "search_scores.png",
    ]
    assert [p.parent for p in run_dir.rglob("*.safetensors")] == [run_dir / "model"]
    merge_to_dir(load_search_config(path).merge_config(GRID4[best]), tmp_path / "ref", quiet=True)
    got, want = _tensors(run_dir / "model"), _tensors(tmp_path / "ref")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert f"lambda = {GRID4[best]:g}" in (run_dir / "report.md").read_text()


def test_resume_skips_scored_points_and_refuses_a_changed_config(mini_zoo: Path, tmp_path: Path) -> None:
    from uqmerge.core.errors import ConfigError, OutputError
    from uqmerge.pipeline.search import CoefficientSearch, run_search
    from uqmerge.pipeline.search_config import parse_search_config

    cfg = parse_search_config(_zoo_config(mini_zoo))
    run_dir = tmp_path / "run"
    original = CoefficientSearch.measure
    calls: list[int] = []

    def dies_on_the_second_point(self, index, progress):
        calls.append(index)
        if len(calls) > 1:
            raise KeyboardInterrupt("killed")
        return original(self, index, progress)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(CoefficientSearch, "measure", dies_on_the_second_point)
        with pytest.raises(KeyboardInterrupt):
            run_search(cfg, run_dir, quiet=True)
    saved = json.loads((run_dir / "search.json").read_text())
    assert [p["merge_s"] is not None for p in saved["points"]] == [True, False, False]
    assert not (run_dir / "model").exists()
    with pytest.raises(OutputError, match="--resume"):
        run_search(cfg, run_dir, quiet=True)

    calls.clear()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(CoefficientSearch, "measure", lambda self, i, p: calls.append(i) or original(self, i, p))
        record = run_search(cfg, run_dir, resume=True, quiet=True)
    assert calls == [1, 2]
    assert record.points[0].responses == saved["points"][0]["responses"]
    assert record.chosen_index == 1 and (run_dir / "model").is_dir()

    changed = parse_search_config(_zoo_config(mini_zoo, sample=5))
    with pytest.raises(ConfigError, match="config changed"):
        run_search(changed, run_dir, resume=True, quiet=True)


def test_uncertainty_criterion_chooses_the_least_uncertain_merge(mini_zoo: Path, tmp_path: Path) -> None:
    from uqmerge.pipeline.search import run_search
    from uqmerge.pipeline.search_config import parse_search_config

    cfg = _zoo_config(mini_zoo, criterion="uncertainty", grid=[0.0, 3.0], sample=4)
    cfg["search"]["data"] = cfg["search"]["data"][:1]
    del cfg["search"]["consistency"]
    record = run_search(parse_search_config(cfg), tmp_path / "run", quiet=True)
    values = [p.uncertainty for p in record.points]
    assert [p.score for p in record.points] == values and all(v is not None for v in values)
    assert record.chosen_index == min(range(len(values)), key=lambda i: (values[i], i))
    assert all(p.responses is None and p.accuracy is not None for p in record.points)


def test_accuracy_criterion_without_labels_is_a_clear_error(mini_zoo: Path, tmp_path: Path) -> None:
    from uqmerge.core.errors import DataError
    from uqmerge.pipeline.search import run_search
    from uqmerge.pipeline.search_config import parse_search_config

    source = mini_zoo / "data" / "held_in" / "count.jsonl"
    rows = [json.loads(line) for line in source.read_text().splitlines()[:4]]
    unlabelled = tmp_path / "unlabelled.jsonl"
    unlabelled.write_text(
        "".join(json.dumps({**r, "image": str(source.parent / r["image"]), "answer": None}) + "\n" for r in rows)
    )
    cfg = _zoo_config(mini_zoo, criterion="accuracy", data=[str(unlabelled)])
    del cfg["search"]["consistency"]
    with pytest.raises(DataError, match="needs labels"):
        run_search(parse_search_config(cfg), tmp_path / "run", quiet=True)


def test_uncertainty_on_open_ended_data_is_a_clear_error(mini_zoo: Path, tmp_path: Path) -> None:
    from uqmerge.core.errors import DataError
    from uqmerge.pipeline.search import run_search
    from uqmerge.pipeline.search_config import parse_search_config

    cfg = _zoo_config(mini_zoo, criterion="uncertainty")
    del cfg["search"]["consistency"]
    with pytest.raises(DataError, match=r"multiple-choice items only.*held_out"):
        run_search(parse_search_config(cfg), tmp_path / "run", quiet=True)


def test_embedding_consistency_uses_the_embedder_on_the_recorded_responses(tmp_path: Path) -> None:
    from uqmerge.pipeline.search import CoefficientSearch
    from uqmerge.pipeline.search_inputs import SearchInput, SearchInputs
    from uqmerge.report.records import SearchPoint, SearchRecord

    vectors = {"red": [1.0, 0.0], "crimson": [0.8, 0.6], "blue": [0.0, 1.0]}
    embedded: list[list[str]] = []

    def fake_embed(texts: list[str]) -> torch.Tensor:
        embedded.append(texts)
        return torch.nn.functional.normalize(torch.tensor([vectors[t] for t in texts]), dim=1)

    settings = SearchSettings(
        parameter="lambda", grid=[0.1, 0.2, 0.3, 0.4], data=["x"], consistency={"compare": "embedding"}
    )
    inputs = SearchInputs(tuple(SearchInput(f"d/{i}", "d", "q", lambda: None, True) for i in range(2)), (), ("x",), ())
    answers = [["red", "blue"], ["crimson", "blue"], ["red", "red"], ["red", "red"]]
    points = [
        SearchPoint(value=v, responses=a, merge_s=0.0, eval_s=0.0) for v, a in zip(settings.grid, answers, strict=True)
    ]
    previous = SearchRecord(
        parameter="lambda",
        criterion="consistency",
        compare="embedding",
        grid=settings.grid,
        inputs=inputs.keys,
        points=points,
        digest="d",
    )
    search = CoefficientSearch(
        settings,
        None,
        None,
        None,
        inputs,
        None,
        tmp_path / "s.json",  # type: ignore[arg-type]
        digest="d",
        config={},
        previous=previous,
        embed=fake_embed,
    )
    # 1 − cos: (red, crimson) 0.2, (crimson, red) 0.2, (blue, red) 1; DiffCnt(0,1) = 0.2, (1,2) = 0.2 + 1, (2,3) = 0.
    scores = search.scores()
    assert scores[0] is None and scores[-1] is None
    assert scores[1] == pytest.approx(0.2 + 1.2) and scores[2] == pytest.approx(1.2 + 0.0)
    record = search.run()
    assert record.chosen_index == 2 and record.chosen_value == 0.3
    assert len(embedded) == 4  # each point's responses embedded once


def test_set_config_makes_the_resident_model_the_merge_and_a_later_prefix_re_merges(
    llava_family: dict[str, Path], tmp_path: Path
) -> None:
    from transformers import LlavaForConditionalGeneration

    from uqmerge.engine.incremental import IncrementalMerger
    from uqmerge.engine.merge import merge_to_dir

    base, experts = llava_family["base"], [llava_family["expert0"], llava_family["expert1"]]
    model = LlavaForConditionalGeneration.from_pretrained(base)
    merger = IncrementalMerger.for_candidates(
        model, base, {"e0": experts[0], "e1": experts[1]}, MergeRecipe(merge_method="linear")
    )
    entries = [ModelEntry(model=str(p)) for p in experts]
    config = with_parameter(MergeRecipe(merge_method="task_arithmetic"), str(base), entries, "lambda", 2.0)
    merger.set_config(config)
    merge_to_dir(config, tmp_path / "ref", quiet=True)
    ref = LlavaForConditionalGeneration.from_pretrained(tmp_path / "ref").state_dict()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, ref[k], msg=k)
    merger.set_prefix(["e0"])  # not an extension of the prefix before set_config: a full re-merge
    one = LlavaForConditionalGeneration.from_pretrained(experts[0]).state_dict()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, one[k], msg=k)


def test_run_with_a_search_block_writes_the_merge_of_the_selection_at_the_chosen_value(
    mini_zoo: Path, tmp_path: Path
) -> None:
    from uqmerge.engine.merge import merge_to_dir
    from uqmerge.pipeline.config import load_run_config
    from uqmerge.report.records import RunRecord

    data = [str(mini_zoo / "data" / "held_in" / "count.jsonl")]
    cfg = {
        "base_model": str(mini_zoo / "models" / "base"),
        "candidates": [str(mini_zoo / "models" / "specialist-count"), str(mini_zoo / "models" / "overtrained-size")],
        "merge": {"merge_method": "task_arithmetic"},
        "uq": {"data": data, "perturbations": 2, "sample_ratio": 0.08},
        "selection": {"stop": "none"},
        "search": {"parameter": "lambda", "grid": GRID, "sample": 4, "consistency": {"max_new_tokens": 3}},
        "device": "cpu",
    }
    path = _write(tmp_path, cfg, "run.yaml")
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(path), str(run_dir)])
    assert result.exit_code == 0, result.output
    assert "selected" in result.output
    record = RunRecord.read(run_dir)
    search = record.search
    assert search is not None and search.inputs and all(k.startswith("count/") for k in search.inputs)
    scores = _independent_d([p.responses for p in search.points])
    assert [p.score for p in search.points] == scores
    assert search.chosen_index == 1  # three points: consistency chooses the only interior one
    assert json.loads((run_dir / "search.json").read_text())["chosen_value"] == search.chosen_value
    merge_to_dir(load_run_config(path).merge_config(record.selected, search.chosen_value), tmp_path / "ref", quiet=True)
    got, want = _tensors(run_dir / "model"), _tensors(tmp_path / "ref")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert "Coefficient search" in (run_dir / "report.md").read_text()
    assert (run_dir / "search_scores.png").is_file()


def test_embedding_consistency_with_the_packaged_minilm_prefers_the_point_whose_neighbours_paraphrase_it(monkeypatch):
    from uqmerge.evaluate.embeddings import SentenceEmbedder, default_embedding_model
    from uqmerge.selection.coefficients import adjacent_differences, consistency_scores

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    embedder = SentenceEmbedder(default_embedding_model())
    # Four grid points, two inputs. Exact match calls every pair of points different; the embeddings see that
    # points 1 and 2 say the same thing in other words, and point 3 drifts to something unrelated.
    responses = [
        ["a red square", "three circles"],
        ["the square is red", "there are three circles"],
        ["red square", "3 circles"],
        ["a violin concerto", "the stock market fell"],
    ]
    exact = consistency_scores(adjacent_differences(responses, exact_diff_count))
    assert exact == (None, 4.0, 4.0, None)  # a tie, which exact matching breaks towards point 1
    embedded = [embedder.embed(r) for r in responses]
    soft = consistency_scores(adjacent_differences(embedded, embedding_diff_count))
    by_hand = [float((1 - (embedded[j] * embedded[j + 1]).sum(dim=1)).sum()) for j in range(3)]
    assert soft[1] == pytest.approx(by_hand[0] + by_hand[1], abs=1e-5)
    assert soft[2] == pytest.approx(by_hand[1] + by_hand[2], abs=1e-5)
    assert soft[1] < soft[2]  # point 2's neighbour 3 is unrelated
