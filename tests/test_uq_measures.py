"""Measures and conformal prediction against hand computations on small tensors."""

from __future__ import annotations

import math

import pytest
import torch

from uqmerge.uq import measures
from uqmerge.uq.conformal import (
    aps_scores,
    aps_set,
    conformal_prediction,
    conformal_quantile,
    lac_scores,
    lac_set,
    split_calibration,
)


def _h(p: list[float]) -> float:
    return -sum(x * math.log(x) for x in p if x > 0)


def test_entropy_by_hand() -> None:
    p = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    assert measures.entropy(p).tolist() == pytest.approx([math.log(2), 0.0])


def test_mutual_information_by_hand() -> None:
    rows = [[0.9, 0.1], [0.1, 0.9]]
    probs = torch.tensor(rows, dtype=torch.float64)
    total, expected, mi = measures.item_measures(probs)
    assert total == pytest.approx(math.log(2))
    assert expected == pytest.approx(_h(rows[0]))
    assert mi == pytest.approx(math.log(2) - _h(rows[0]))


def test_identical_passes_give_exactly_zero() -> None:
    p = torch.softmax(torch.randn(6, dtype=torch.float64), 0)
    assert measures.mutual_information(p.expand(4, 6)) >= 0
    assert float(measures.mutual_information(p.unsqueeze(0))) == 0.0


def test_mutual_information_is_nonnegative_and_rejects_non_distributions() -> None:
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(200, 4, 6, generator=g, dtype=torch.float64), -1)
    assert bool((measures.mutual_information(probs) >= 0).all())
    with pytest.raises(ValueError, match="not distributions"):
        measures.mutual_information(torch.tensor([[1.5, -0.5], [0.5, 0.5]], dtype=torch.float64))
    with pytest.raises(ValueError, match="not distributions"):
        measures.mutual_information(torch.tensor([[float("nan"), 1.0]], dtype=torch.float64))


def test_mean_and_accuracy() -> None:
    assert measures.mean([1.0, 2.0, 4.0]) == pytest.approx(7 / 3)
    assert measures.accuracy([0, 1, 2], [0, None, 1]) == 0.5
    assert measures.accuracy([0], [None]) is None
    with pytest.raises(ValueError):
        measures.mean([])


def test_conformal_scores_and_sets_by_hand() -> None:
    p = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    assert lac_scores([p], [1]).tolist() == pytest.approx([0.7])
    assert aps_scores([p], [1]).tolist() == pytest.approx([0.8])  # 0.5 + 0.3
    assert aps_scores([p], [0]).tolist() == pytest.approx([0.5])
    assert lac_set(p, 0.75) == [0, 1]  # p >= 0.25
    assert lac_set(p, 0.1) == [0]  # empty -> top-1
    assert aps_set(p, 0.85) == [0, 1]  # cumulative 0.5, 0.8 <= 0.85
    assert aps_set(p, 0.2) == [0]


def test_conformal_quantile_is_finite_sample_corrected() -> None:
    scores = torch.arange(1, 11, dtype=torch.float64) / 10  # n = 10
    # ceil(11 * 0.9) / 10 = 1.0 -> the maximum
    assert conformal_quantile(scores, 0.1) == 1.0
    # ceil(11 * 0.5) / 10 = 0.6 -> "higher" 0.6 quantile of 0.1..1.0 is 0.7
    assert conformal_quantile(scores, 0.5) == pytest.approx(0.7)


def test_split_is_seeded_and_disjoint() -> None:
    cal, test = split_calibration(10, 0.5, seed=3, dataset="d")
    assert (cal, test) == split_calibration(10, 0.5, seed=3, dataset="d")
    assert sorted(cal + test) == list(range(10)) and len(cal) == 5
    assert split_calibration(10, 0.5, seed=4, dataset="d") != (cal, test)


def test_conformal_prediction_confident_model_has_small_sets() -> None:
    g = torch.Generator().manual_seed(1)
    answers = torch.randint(0, 6, (40,), generator=g).tolist()
    sharp = [torch.nn.functional.one_hot(torch.tensor(a), 6).double() * 0.95 + 0.05 / 6 for a in answers]
    flat = [torch.full((6,), 1 / 6, dtype=torch.float64) for _ in answers]
    lac, aps, n_cal, n_test = conformal_prediction(
        sharp, answers, alpha=0.1, calibration_ratio=0.5, seed=0, dataset="d"
    )
    assert (n_cal, n_test) == (20, 20)
    assert lac.mean_set_size == 1 and lac.coverage == 1.0
    assert aps.coverage == 1.0
    flat_lac, _, _, _ = conformal_prediction(flat, answers, alpha=0.1, calibration_ratio=0.5, seed=0, dataset="d")
    assert flat_lac.mean_set_size == 6
