"""UQ end to end on tiny LLaVA and Qwen2-VL: measures, modes, seeds, dropout scope, batching, skips."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from uq_fixtures import colour_items, write_items

from uqmerge.core.errors import DataError
from uqmerge.uq.api import uncertainty_of_loaded_model
from uqmerge.uq.config import UQConfig, UQMode
from uqmerge.uq.data import load_uq_datasets
from uqmerge.uq.perturb import MC_DROPOUT_ATTENTION, inference_mode, language_model_attention_modules

MODELS = ["uq_llava", "uq_qwen2vl"]


def _run(loaded, path: Path, **config) -> object:
    model, processor = loaded
    datasets = load_uq_datasets([str(path)], seed=config.get("seed", 0))
    return uncertainty_of_loaded_model(model, processor, datasets, UQConfig(**config))


def _entropy(p: list[float]) -> float:
    return -sum(x * math.log(x) for x in p if x > 0)


@pytest.mark.parametrize("fixture", MODELS)
def test_uncertainty_equals_recomputation_from_saved_probs(
    fixture: str,
    uq_jsonl: Path,
    request: pytest.FixtureRequest,
) -> None:
    result = _run(request.getfixturevalue(fixture), uq_jsonl, mode="vl")
    (dataset,) = result.datasets
    per_item = []
    for item in dataset.items:
        assert len(item.probs) == 4 and all(len(row) == len(item.options) == 6 for row in item.probs)
        assert all(abs(sum(row) - 1) < 1e-12 for row in item.probs)
        mean = [sum(col) / len(item.probs) for col in zip(*item.probs, strict=True)]
        mi = _entropy(mean) - sum(_entropy(row) for row in item.probs) / len(item.probs)
        assert item.uncertainty == pytest.approx(mi, abs=1e-12)
        assert item.uncertainty >= -1e-6
        per_item.append(mi)
    assert dataset.uncertainty == pytest.approx(sum(per_item) / len(per_item), abs=1e-12)
    assert result.score == dataset.uncertainty
    assert dataset.uncertainty > 1e-4, "perturbations must move the tiny model's predictions"
    assert dataset.accuracy is not None and dataset.n_labelled == 6


@pytest.mark.parametrize("fixture", MODELS)
def test_mode_none_is_exactly_zero(fixture: str, uq_jsonl: Path, request: pytest.FixtureRequest) -> None:
    result = _run(request.getfixturevalue(fixture), uq_jsonl, mode="none")
    assert result.score == 0.0
    assert all(item.uncertainty == 0.0 and len(item.probs) == 1 for item in result.datasets[0].items)


def test_plain_item_list_is_scored_as_one_dataset(uq_llava, uq_jsonl: Path) -> None:
    model, processor = uq_llava
    items = list(load_uq_datasets([str(uq_jsonl)])[0].items)
    result = uncertainty_of_loaded_model(model, processor, items, UQConfig(mode="none"))
    assert [d.name for d in result.datasets] == ["items"] and result.datasets[0].n_scored == len(items)


def test_same_seed_identical_different_seed_differs(uq_llava, uq_jsonl: Path) -> None:
    a = _run(uq_llava, uq_jsonl, mode="vl", seed=3)
    b = _run(uq_llava, uq_jsonl, mode="vl", seed=3)
    c = _run(uq_llava, uq_jsonl, mode="vl", seed=4)
    assert a.to_json() == b.to_json()
    assert a.score != c.score


@pytest.mark.parametrize("mode", ["image", "text", "model", "input"])
def test_each_perturbation_alone_gives_positive_uncertainty(uq_llava, uq_jsonl: Path, mode: str) -> None:
    result = _run(uq_llava, uq_jsonl, mode=mode)
    assert result.score > 0
    systems = {s for it in result.datasets[0].items for s in it.system_messages}
    assert (systems == {None}) == (not UQMode(mode).perturbs_text)


@pytest.mark.parametrize("fixture", MODELS)
def test_batched_scores_equal_batch_one_scores(fixture: str, uq_jsonl: Path, request: pytest.FixtureRequest) -> None:
    loaded = request.getfixturevalue(fixture)
    batched = _run(loaded, uq_jsonl, mode="input", batch_size=7)
    single = _run(loaded, uq_jsonl, mode="input", batch_size=1)
    for a, b in zip(batched.datasets[0].items, single.datasets[0].items, strict=True):
        assert a.probs == b.probs, "equal-length batches, per-image encoding and a one-row head: bit-identical"
    assert batched.score == single.score


def test_dropout_only_in_language_model_attention(uq_llava, uq_jsonl: Path) -> None:
    model, processor = uq_llava
    captured: dict[str, list[torch.Tensor]] = {"vision": [], "projector": [], "lm_rows": []}
    hooks = [
        model.model.vision_tower.register_forward_hook(
            lambda _m, _i, out: captured["vision"].append(out.hidden_states[-2].clone())
        ),
        model.model.multi_modal_projector.register_forward_hook(
            lambda _m, _i, out: captured["projector"].append(out.clone())
        ),
        model.model.language_model.register_forward_pre_hook(
            lambda _m, _a, kwargs: captured["lm_rows"].append(kwargs["inputs_embeds"].shape[0]), with_kwargs=True
        ),
    ]
    datasets = load_uq_datasets([str(uq_jsonl)])
    one_item = [d.__class__(**{**d.__dict__, "items": d.items[:1]}) for d in datasets]
    try:
        result = uncertainty_of_loaded_model(
            model, processor, one_item, UQConfig(mode="model", perturbations=4, batch_size=4)
        )
        reference = uncertainty_of_loaded_model(model, processor, one_item, UQConfig(mode="none"))
    finally:
        for h in hooks:
            h.remove()
    assert captured["lm_rows"] == [4, 1], "one forward pass of the item's four passes, then the reference"
    assert len(captured["vision"]) == 2, "the unperturbed image is encoded once for its four passes"
    assert torch.equal(captured["vision"][0], captured["vision"][1]), "vision output as in an unperturbed pass"
    assert torch.equal(captured["projector"][0], captured["projector"][1])
    probs = result.datasets[0].items[0].probs
    assert len({tuple(row) for row in probs}) == 4, "the language model output differs per pass"
    assert reference.datasets[0].items[0].probs[0] not in probs


@pytest.mark.parametrize("fixture", MODELS)
def test_dropout_context_scope_and_restore(fixture: str, request: pytest.FixtureRequest) -> None:
    model, _ = request.getfixturevalue(fixture)
    attn = language_model_attention_modules(model)
    names = {id(m): n for n, m in model.named_modules()}
    assert attn and all("language_model" in names[id(m)] for m in attn)
    text_config, vision_config = attn[0].config, model.config.vision_config
    before = (text_config._attn_implementation, vision_config._attn_implementation)
    model.train()
    with inference_mode(model, attention_dropout=0.1):
        trained = {n for n, m in model.named_modules() if m.training}
        assert all(m.attention_dropout == 0.1 and m.training for m in attn)
        assert trained and all(".self_attn" in n and "language_model" in n for n in trained)
        assert text_config._attn_implementation == MC_DROPOUT_ATTENTION
        assert vision_config._attn_implementation == before[1], "the vision tower keeps its attention"
    assert all(m.training for m in model.modules()), "flags restored"
    assert all(m.attention_dropout == 0.0 for m in attn)
    assert (text_config._attn_implementation, vision_config._attn_implementation) == before
    model.eval()


def test_unreadable_image_is_skipped_and_reported(uq_llava, tmp_path: Path) -> None:
    rows = colour_items(tmp_path, 3)
    (tmp_path / "img" / "broken.png").write_bytes(b"not a png")
    rows.append({**rows[0], "id": "broken", "image": "img/broken.png"})
    rows.append({**rows[0], "id": "missing", "image": "img/nowhere.png"})
    result = _run(uq_llava, write_items(tmp_path, rows), mode="input")
    (dataset,) = result.datasets
    assert (dataset.n_sampled, dataset.n_scored, dataset.n_skipped) == (5, 3, 2)
    reasons = {s.id: s.reason for s in dataset.skipped}
    assert set(reasons) == {"broken", "missing"}
    assert "broken.png" in reasons["broken"] and "nowhere.png" in reasons["missing"]


def test_all_items_skipped_is_an_error(uq_llava, tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"x")
    path = write_items(tmp_path, [{"id": "a", "image": "bad.png", "question": "Q?", "options": ["x", "y"]}])
    with pytest.raises(DataError, match="every item was skipped"):
        _run(uq_llava, path, mode="none")


def test_conformal_mode_reports_set_size_and_coverage(uq_llava, tmp_path: Path) -> None:
    path = write_items(tmp_path, colour_items(tmp_path, 10))
    result = _run(uq_llava, path, mode="cp")
    (dataset,) = result.datasets
    cp = dataset.conformal
    assert result.measure == "conformal_set_size"
    assert cp is not None and (cp.n_calibration, cp.n_test) == (5, 5)
    assert 1 <= cp.lac_mean_set_size <= 6 and 0 <= cp.lac_coverage <= 1
    assert dataset.uncertainty == pytest.approx((cp.lac_mean_set_size + cp.aps_mean_set_size) / 2)


def test_conformal_mode_needs_labels(uq_llava, tmp_path: Path) -> None:
    rows = [{k: v for k, v in r.items() if k != "answer"} for r in colour_items(tmp_path, 4)]
    with pytest.raises(DataError, match="needs labels"):
        _run(uq_llava, write_items(tmp_path, rows), mode="cp")
