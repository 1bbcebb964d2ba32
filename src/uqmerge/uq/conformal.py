"""Conformal prediction with labels (mode ``cp``): LAC and APS sets, coverage and mean set size.

Split conformal prediction as in Ye et al. 2024 / Kostumov et al. 2024: a seeded split into a
calibration and a test part; the threshold ``q̂`` is the ``⌈(n+1)(1−α)⌉/n`` quantile (method
"higher", capped at 1) of the calibration scores. LAC scores ``1 − p_true`` and its set is
``{y : p_y ≥ 1 − q̂}``; APS scores the cumulative probability of the labels sorted by probability,
down to and including the true one, and its set is the top labels while that cumulative sum ≤ q̂.
An empty set becomes the top-1 label. The uncertainty of a dataset is the mean set size (averaged
over LAC and APS); coverage is the share of test items whose set contains the answer.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from uqmerge.core.seeds import stable_seed


@dataclass(frozen=True)
class ConformalScore:
    """One score function's outcome on the test part."""

    qhat: float
    coverage: float
    mean_set_size: float


def split_calibration(n: int, ratio: float, *, seed: int, dataset: str) -> tuple[list[int], list[int]]:
    """Seeded split of ``range(n)`` into sorted calibration and test indices (both non-empty)."""
    if n < 2:
        raise ValueError(f"conformal prediction needs at least 2 labelled items, got {n}")
    n_cal = min(n - 1, max(1, round(ratio * n)))
    order = list(range(n))
    random.Random(stable_seed(seed, "cp-split", dataset)).shuffle(order)
    return sorted(order[:n_cal]), sorted(order[n_cal:])


def conformal_quantile(scores: Tensor, alpha: float) -> float:
    """The ``⌈(n+1)(1−α)⌉/n`` quantile of ``scores`` (method "higher"), level capped at 1."""
    n = scores.numel()
    level = min(1.0, math.ceil((n + 1) * (1 - alpha)) / n)
    return float(torch.quantile(scores.to(torch.float64), level, interpolation="higher"))


def lac_scores(probs: Sequence[Tensor], answers: Sequence[int]) -> Tensor:
    """LAC non-conformity ``1 − p_true`` per item."""
    return torch.tensor([1.0 - float(p[a]) for p, a in zip(probs, answers, strict=True)], dtype=torch.float64)


def aps_scores(probs: Sequence[Tensor], answers: Sequence[int]) -> Tensor:
    """APS non-conformity: cumulative probability of the sorted labels through the true one."""
    out = []
    for p, a in zip(probs, answers, strict=True):
        order = torch.argsort(p, descending=True, stable=True)
        cumulative = p[order].cumsum(0)
        out.append(float(cumulative[(order == a).nonzero()[0, 0]]))
    return torch.tensor(out, dtype=torch.float64)


def lac_set(p: Tensor, qhat: float) -> list[int]:
    """Labels with ``p_y ≥ 1 − q̂`` (top-1 when empty)."""
    labels = [i for i in range(p.numel()) if float(p[i]) >= 1.0 - qhat]
    return labels or [int(torch.argmax(p))]


def aps_set(p: Tensor, qhat: float) -> list[int]:
    """Top labels while their cumulative probability ≤ q̂ (top-1 when empty)."""
    order = torch.argsort(p, descending=True, stable=True)
    cumulative = p[order].cumsum(0)
    labels = [int(order[i]) for i in range(p.numel()) if float(cumulative[i]) <= qhat]
    return labels or [int(order[0])]


def _evaluate(
    cal_scores: Tensor, test_probs: Sequence[Tensor], test_answers: Sequence[int], alpha: float, make_set
) -> ConformalScore:
    qhat = conformal_quantile(cal_scores, alpha)
    sets = [make_set(p, qhat) for p in test_probs]
    coverage = sum(a in s for s, a in zip(sets, test_answers, strict=True)) / len(sets)
    return ConformalScore(qhat=qhat, coverage=coverage, mean_set_size=sum(len(s) for s in sets) / len(sets))


def conformal_prediction(
    probs: Sequence[Tensor], answers: Sequence[int], *, alpha: float, calibration_ratio: float, seed: int, dataset: str
) -> tuple[ConformalScore, ConformalScore, int, int]:
    """(LAC, APS, n_calibration, n_test) for one dataset's single-pass option probabilities."""
    cal, test = split_calibration(len(probs), calibration_ratio, seed=seed, dataset=dataset)
    cal_p, cal_a = [probs[i] for i in cal], [answers[i] for i in cal]
    test_p, test_a = [probs[i] for i in test], [answers[i] for i in test]
    lac = _evaluate(lac_scores(cal_p, cal_a), test_p, test_a, alpha, lac_set)
    aps = _evaluate(aps_scores(cal_p, cal_a), test_p, test_a, alpha, aps_set)
    return lac, aps, len(cal), len(test)
