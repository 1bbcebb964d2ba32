"""UQ scores are bit-identical on the CPU at every batch size and for any order of the data file's items."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner
from uq_fixtures import colour_items, write_items

from uqmerge.uq.api import PassPlan, forward_groups, group_requests, plan_dataset, uncertainty_of_loaded_model
from uqmerge.uq.config import UQConfig
from uqmerge.uq.data import canonical_order, load_uq_datasets
from uqmerge.uq.perturb import inference_mode, row_keep_mask
from uqmerge.uq.prompts import resolve_option_token_ids
from uqmerge.uq.results import UQResult
from uqmerge.uq.scoring import letter_probabilities

BATCH_SIZES = (1, 4, 8, 32)
N_ITEMS = 6


def _scores(result: UQResult) -> str:
    """Every number and record of the datasets (per item: probabilities and measures) as exact JSON.

    ``spec`` (the file path) is left out: the shuffled copy of the data lives in another directory.
    """
    datasets = [d.model_dump(mode="json", exclude={"spec"}) for d in result.datasets]
    return json.dumps({"score": result.score, "accuracy": result.accuracy, "datasets": datasets}, sort_keys=True)


@pytest.fixture(scope="module")
def data_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same items twice: in file order, and shuffled in a second directory (same file name)."""
    root = tmp_path_factory.mktemp("invariance")
    rows = colour_items(root / "ordered", N_ITEMS)
    shuffled = list(rows)
    random.Random(7).shuffle(shuffled)
    colour_items(root / "shuffled", N_ITEMS)  # the same images under the second directory
    assert [r["id"] for r in shuffled] != [r["id"] for r in rows]
    return write_items(root / "ordered", rows), write_items(root / "shuffled", shuffled)


def _with_batch(config: UQConfig, batch_size: int) -> UQConfig:
    return config.model_copy(update={"batch_size": batch_size})


def _lm_batch_rows(model) -> tuple[list[int], Any]:
    rows: list[int] = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda _m, _a, kwargs: rows.append(kwargs["inputs_embeds"].shape[0]), with_kwargs=True
    )
    return rows, hook


@pytest.mark.parametrize("fixture", ["uq_llava", "uq_qwen2vl"])
def test_scores_are_bit_identical_across_batch_sizes_and_item_order(
    fixture: str, data_files: tuple[Path, Path], request: pytest.FixtureRequest
) -> None:
    model, processor = request.getfixturevalue(fixture)
    ordered, shuffled = (load_uq_datasets([str(path)], seed=0) for path in data_files)
    config = UQConfig(mode="vl", perturbations=3, seed=0)
    rows, hook = _lm_batch_rows(model)
    try:
        results = {
            b: _scores(uncertainty_of_loaded_model(model, processor, ordered, _with_batch(config, b)))
            for b in BATCH_SIZES
        }
    finally:
        hook.remove()
    reordered = _scores(uncertainty_of_loaded_model(model, processor, shuffled, config))
    reference = results[1]
    assert json.loads(reference)["score"] > 0, "the perturbations must move the tiny model's predictions"
    assert max(rows) > 1, "some forward passes batch several prompts"
    for batch_size, scores in results.items():
        assert scores == reference, f"batch size {batch_size} changed the scores"
    assert reordered == reference, "the order of the file's items changed the scores"
    assert [it["id"] for it in json.loads(reference)["datasets"][0]["items"]] == [f"q{i}" for i in range(N_ITEMS)]


def test_cli_writes_the_same_scores_at_batch_sizes_1_and_32(
    uq_llava_dir: Path, data_files: tuple[Path, Path], tmp_path: Path
) -> None:
    from uqmerge.cli import app

    records = {}
    for batch_size, data in ((1, data_files[0]), (32, data_files[1])):
        out = tmp_path / f"b{batch_size}.json"
        args = ["uq", str(uq_llava_dir), "--data", str(data), "--mode", "vl", "-J", "2", "--device", "cpu"]
        args += ["--batch-size", str(batch_size), "--save-probs", "--no-cache", "--quiet", "--out", str(out)]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        records[batch_size] = _scores(UQResult.model_validate_json(out.read_text()))
    assert records[1] == records[32]


@pytest.mark.parametrize("fixture", ["uq_llava", "uq_qwen2vl"])
def test_a_padded_batch_draws_each_rows_own_dropout_masks(
    fixture: str, data_files: tuple[Path, Path], request: pytest.FixtureRequest
) -> None:
    model, processor = request.getfixturevalue(fixture)
    (dataset,) = load_uq_datasets([str(data_files[0])])
    config = UQConfig(mode="model", perturbations=2, dropout=0.3)
    items = canonical_order(dataset.items)
    plans, _ = plan_dataset(dataset, items, config, processor)
    assert len({p.length for p in plans}) > 1, "the batch below mixes token lengths, so it is padded"
    letter_ids = resolve_option_token_ids(processor, 6)
    requests = group_requests(plans, items, dataset.name, config, letter_ids)
    with inference_mode(model, attention_dropout=config.dropout):
        batched = letter_probabilities(model, processor, requests)
        alone = [letter_probabilities(model, processor, [r])[0] for r in requests]
    with inference_mode(model):
        plain = [letter_probabilities(model, processor, [replace(r, dropout_key=None)])[0] for r in requests]
    for b, a in zip(batched, alone, strict=True):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=0)  # padding changes rounding, not the masks
    assert any(not torch.allclose(a, p, atol=1e-4) for a, p in zip(alone, plain, strict=True)), "dropout is on"


def _plan(item: int, j: int, length: int) -> PassPlan:
    return PassPlan(item_index=item, j=j, system=None, prompt="", length=length)


def test_forward_groups_hold_one_token_length_and_at_most_batch_size_passes() -> None:
    plans = [_plan(i, j, 50 + (i * 7 + j) % 3) for i in range(5) for j in range(3)]
    random.Random(0).shuffle(plans)
    for batch_size in (1, 2, 4, 32):
        groups = forward_groups(plans, batch_size)
        assert sorted((p.item_index, p.j) for g in groups for p in g) == sorted((p.item_index, p.j) for p in plans)
        assert all(1 <= len(g) <= batch_size and len({p.length for p in g}) == 1 for g in groups)
        flat = [(p.length, p.item_index, p.j) for g in groups for p in g]
        assert flat == sorted(flat)
        assert groups == forward_groups(list(reversed(plans)), batch_size), "grouping ignores the input order"


def test_dropout_masks_are_keyed_by_pass_and_layer_only() -> None:
    key = (0, "dropout", "items", "q1", 2)
    shape = (2, 5, 5)
    mask = row_keep_mask(key, 0, shape, 0.5, torch.device("cpu"))
    assert torch.equal(mask, row_keep_mask(key, 0, shape, 0.5, torch.device("cpu")))
    assert not torch.equal(mask, row_keep_mask(key, 1, shape, 0.5, torch.device("cpu"))), "each layer draws anew"
    other_pass = (0, "dropout", "items", "q1", 3)
    assert not torch.equal(mask, row_keep_mask(other_pass, 0, shape, 0.5, torch.device("cpu")))
    assert 0 < mask.float().mean() < 1
