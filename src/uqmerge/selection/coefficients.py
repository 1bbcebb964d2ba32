"""Label-free choice of a merge coefficient over a grid: AdaMMS consistency, minimum uncertainty, oracle accuracy.

Everything here is pure: a grid point is an index into the (ascending) grid, responses are strings and
embeddings are tensors. Every rule returns a :class:`CoefficientChoice` (the per-point scores and the chosen
index); ties go to the smaller coefficient, i.e. the lower index.

Consistency (AdaMMS): ``DiffCnt(a, b)`` counts the inputs whose responses at points ``a`` and ``b`` differ
(:func:`exact_diff_count`, after :func:`normalise_response`), or sums ``1 − cos`` of their sentence embeddings
(:func:`embedding_diff_count`). For an interior point ``j``, ``D_j = DiffCnt(j, j−1) + DiffCnt(j, j+1)``; the
choice is ``argmin D_j``; the end points have no score and are never chosen.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

import torch

from uqmerge.selection.algorithm import SelectionError

Criterion = Literal["consistency", "uncertainty", "accuracy"]
CRITERIA: tuple[str, ...] = ("consistency", "uncertainty", "accuracy")
MIN_CONSISTENCY_POINTS = 3
"""Consistency scores interior points only, so it needs at least three grid points."""

_SPACES = re.compile(r"\s+")
T = TypeVar("T")


@dataclass(frozen=True)
class CoefficientChoice:
    """Per-point scores (None: a point the rule does not score, e.g. a consistency end point) and the choice."""

    scores: tuple[float | None, ...]
    index: int
    rule: str


def normalise_response(text: str) -> str:
    """Lower-case, surrounding whitespace stripped, inner whitespace runs collapsed to one space."""
    return _SPACES.sub(" ", text.strip().lower())


def exact_diff_count(a: Sequence[str], b: Sequence[str]) -> float:
    """The number of inputs whose normalised responses differ between two grid points."""
    _same_length(len(a), len(b))
    return float(sum(normalise_response(x) != normalise_response(y) for x, y in zip(a, b, strict=True)))


def embedding_diff_count(a: torch.Tensor, b: torch.Tensor) -> float:
    """Σ over inputs of ``1 − cos(a_i, b_i)``: rows are the inputs' response embeddings at two grid points."""
    if a.ndim != 2 or a.shape != b.shape:
        raise SelectionError(f"embeddings must be two (inputs, dim) matrices of one shape, got {a.shape}, {b.shape}")
    cosine = torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=1)
    return float((1.0 - cosine).sum())


def _same_length(n: int, m: int) -> None:
    if n != m:
        raise SelectionError(f"responses at two grid points cover different inputs ({n} vs {m})")


def adjacent_differences(points: Sequence[T], diff: Callable[[T, T], float]) -> list[float]:
    """``[DiffCnt(0, 1), DiffCnt(1, 2), …]``: the difference of each pair of neighbouring grid points."""
    return [float(diff(points[j], points[j + 1])) for j in range(len(points) - 1)]


def consistency_scores(adjacent: Sequence[float]) -> tuple[float | None, ...]:
    """``D_j = adjacent[j−1] + adjacent[j]`` for every interior point; None at the two end points."""
    n = len(adjacent) + 1
    if n < MIN_CONSISTENCY_POINTS:
        raise SelectionError(f"consistency needs at least {MIN_CONSISTENCY_POINTS} grid points, got {n}")
    return (None, *(adjacent[j - 1] + adjacent[j] for j in range(1, n - 1)), None)


def _best(scores: Sequence[float | None], *, maximise: bool, rule: str) -> CoefficientChoice:
    candidates = [(i, s) for i, s in enumerate(scores) if s is not None]
    if not candidates:
        raise SelectionError(f"{rule}: no grid point has a score")
    bad = [i for i, s in candidates if not math.isfinite(s)]
    if bad:
        raise SelectionError(f"{rule}: grid point(s) {bad} have a non-finite score")
    # Ties go to the smaller coefficient: the lowest index among the best.
    sign = -1.0 if maximise else 1.0
    index = min(candidates, key=lambda c: (sign * c[1], c[0]))[0]
    return CoefficientChoice(tuple(scores), index, rule)


def choose_by_consistency(adjacent: Sequence[float]) -> CoefficientChoice:
    """AdaMMS: the interior point of minimum ``D_j`` (ties → the smaller coefficient); end points never."""
    return _best(consistency_scores(adjacent), maximise=False, rule="consistency")


def choose_by_responses(
    responses: Sequence[Sequence[str]],
    *,
    diff: Callable[[Sequence[str], Sequence[str]], float] = exact_diff_count,
) -> CoefficientChoice:
    """:func:`choose_by_consistency` of the responses per grid point (exact comparison by default)."""
    return choose_by_consistency(adjacent_differences(list(responses), diff))


def choose_min_uncertainty(scores: Sequence[float]) -> CoefficientChoice:
    """The point of minimum uncertainty (ties → the smaller coefficient)."""
    return _best(list(scores), maximise=False, rule="uncertainty")


def choose_max_accuracy(scores: Sequence[float]) -> CoefficientChoice:
    """The point of maximum labelled accuracy, the oracle (ties → the smaller coefficient)."""
    return _best(list(scores), maximise=True, rule="accuracy")


def choose(criterion: Criterion, scores: Sequence[float | None]) -> CoefficientChoice:
    """The choice of ``criterion`` from per-point scores already computed (consistency: its ``D_j``)."""
    if criterion == "consistency":
        if len(scores) < MIN_CONSISTENCY_POINTS or scores[0] is not None or scores[-1] is not None:
            raise SelectionError("consistency scores must be None at both end points of a grid of 3 or more")
        return _best(scores, maximise=False, rule="consistency")
    if any(s is None for s in scores):
        raise SelectionError(f"{criterion}: every grid point needs a score")
    if criterion == "uncertainty":
        return choose_min_uncertainty([float(s) for s in scores if s is not None])
    if criterion == "accuracy":
        return choose_max_accuracy([float(s) for s in scores if s is not None])
    raise SelectionError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
