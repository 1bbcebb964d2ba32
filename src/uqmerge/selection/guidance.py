"""UQ-Merge and its guidance ablations and baselines, each a thin configuration of :func:`select_by_score`.

| guidance          | sort candidates by               | stop measure (merged prefix)     |
|-------------------|----------------------------------|----------------------------------|
| ``uncertainty``   | UQ of each model (descending)    | UQ of the merge, lower is better |
| ``cp_set_size``   | mean conformal set size          | set size of the merge, lower     |
| ``accuracy``      | held-in accuracy (asc. or desc.) | UQ of the merge, lower (Table 3) |
| ``random``        | a seeded stable-hash permutation | UQ of the merge, lower           |
| ``all``           | nothing: merge every candidate   | none                             |
| ``random_subset`` | nothing: k ids by a seeded hash  | none                             |

Paper: Qu et al., "UQ-Merge: Uncertainty Guided Multimodal Large Language Model Merging", Algorithm 1,
Sec. 3.4 and 4.4 (RQ1, Table 3); baselines of Sec. 4.2 (random selections of the same size as
UQ-Merge's, repeated with 3 seeds) and Sec. 4.3 / Table 2 (merge all models).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from uqmerge.core.seeds import stable_unit
from uqmerge.selection.algorithm import (
    Order,
    SelectionError,
    SelectionResult,
    Step,
    StopRule,
    select_by_score,
    validate_candidates,
)

RUN_GUIDANCES: tuple[str, ...] = ("uncertainty", "cp_set_size", "accuracy", "random")
"""The guidance names ``selection.guidance`` of a run accepts (one home: the run config and runner use it)."""
GUIDANCES: tuple[str, ...] = (*RUN_GUIDANCES, "all", "random_subset")
"""Every ``SelectionResult.guidance`` value: the run guidances and the two baselines."""

KnownSteps = Iterable[Step | Mapping[str, Any] | Sequence[Any]] | None


def _seeded_unit(seed: int, *parts: str) -> float:
    """:func:`~uqmerge.core.seeds.stable_unit` of (seed, *parts), after checking that ``seed`` is an integer."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise SelectionError(f"seed must be an integer, got {seed!r}")
    return stable_unit(seed, *parts)


def select_by_uncertainty(
    candidates: Sequence[str],
    model_uncertainty: Callable[[str], float],
    merged_uncertainty: Callable[[list[str]], float],
    *,
    order: Order = "descending",
    stop: StopRule = "first_increase",
    known_scores: Mapping[str, float] | None = None,
    known_steps: KnownSteps = None,
    on_step: Callable[[Step], None] | None = None,
) -> SelectionResult:
    """UQ-Merge (Algorithm 1): sort by model uncertainty, merge prefixes while the merge's UQ falls.

    Step 1 is the most uncertain model alone, valued at its own score (``merged_uncertainty`` is
    never called for a one-model prefix). The loop stops at the first merge whose uncertainty is not
    lower than the best so far; ``stop="none"`` evaluates every prefix and returns the minimum.
    ``order="ascending"`` is the paper's ablation (most confident model first).
    """
    return select_by_score(
        candidates,
        model_uncertainty,
        merged_uncertainty,
        order=order,
        stop=stop,
        higher_is_better=False,
        first_step_is_score=True,
        guidance="uncertainty",
        measure="uncertainty",
        known_scores=known_scores,
        known_steps=known_steps,
        on_step=on_step,
    )


def select_by_cp_set_size(
    candidates: Sequence[str],
    model_set_size: Callable[[str], float],
    merged_set_size: Callable[[list[str]], float],
    *,
    order: Order = "descending",
    stop: StopRule = "first_increase",
    known_scores: Mapping[str, float] | None = None,
    known_steps: KnownSteps = None,
    on_step: Callable[[Step], None] | None = None,
) -> SelectionResult:
    """Algorithm 1 with conformal prediction (mean LAC/APS set size) as the uncertainty (Table 8).

    The set size is an uncertainty (larger = less sure), so it both sorts the candidates and decides
    the stop, lower being better, exactly like :func:`select_by_uncertainty`.
    """
    return select_by_score(
        candidates,
        model_set_size,
        merged_set_size,
        order=order,
        stop=stop,
        higher_is_better=False,
        first_step_is_score=True,
        guidance="cp_set_size",
        measure="cp_set_size",
        known_scores=known_scores,
        known_steps=known_steps,
        on_step=on_step,
    )


def select_by_accuracy(
    candidates: Sequence[str],
    accuracy: Callable[[str], float],
    merged_uncertainty: Callable[[list[str]], float],
    *,
    order: Order = "descending",
    model_uncertainty: Callable[[str], float] | None = None,
    stop: StopRule = "first_increase",
    known_scores: Mapping[str, float] | None = None,
    known_steps: KnownSteps = None,
    on_step: Callable[[Step], None] | None = None,
) -> SelectionResult:
    """Table 3's accuracy guidance: sort by held-in accuracy, keep UQ-Merge's stop rule.

    The paper (Sec. 4.4, RQ1) "replace[s] uncertainty in UQ-Merge with accuracy on held-in datasets
    and test[s] both kinds of guidance in ascending and descending order. Other components in
    UQ-Merge are kept untouched." So accuracy only decides the *order* (``order`` sorts the accuracy
    itself: ``"descending"`` = most accurate model first; the paper reports both, ascending doing
    better); the stop is still "merged model's uncertainty stops decreasing". Step 1's value is
    ``model_uncertainty(id)`` when given, else ``merged_uncertainty([id])``.

    The other reading (accuracy also as the stop measure, stopping when merged accuracy stops
    rising) is ``select_by_score(c, accuracy, merged_accuracy, higher_is_better=True,
    first_step_is_score=True, guidance="accuracy", measure="accuracy")``.
    """
    return select_by_score(
        candidates,
        accuracy,
        merged_uncertainty,
        order=order,
        stop=stop,
        higher_is_better=False,
        single_score=model_uncertainty,
        guidance="accuracy",
        measure="uncertainty",
        known_scores=known_scores,
        known_steps=known_steps,
        on_step=on_step,
    )


def select_by_random_order(
    candidates: Sequence[str],
    merged_uncertainty: Callable[[list[str]], float],
    *,
    seed: int,
    model_uncertainty: Callable[[str], float] | None = None,
    stop: StopRule = "first_increase",
    known_steps: KnownSteps = None,
    on_step: Callable[[Step], None] | None = None,
) -> SelectionResult:
    """Random guidance: a seeded permutation replaces the uncertainty sort; the stop rule is kept.

    Each id's score is ``stable_unit(seed, "order", id)`` and candidates are sorted ascending by it,
    so the order depends only on the seed and the ids (not on the candidates' listing order).
    """
    ids = validate_candidates(candidates)
    keys = {cid: _seeded_unit(seed, "order", cid) for cid in ids}
    return select_by_score(
        ids,
        keys.__getitem__,
        merged_uncertainty,
        order="ascending",
        stop=stop,
        higher_is_better=False,
        single_score=model_uncertainty,
        guidance="random",
        measure="uncertainty",
        known_steps=known_steps,
        on_step=on_step,
        seed=seed,
    )


def _baseline(guidance: str, ids: tuple[str, ...], selected: tuple[str, ...], seed: int | None) -> SelectionResult:
    return SelectionResult(
        guidance=guidance,
        measure=None,
        direction=None,
        stop=None,
        higher_is_better=False,
        scores=(),
        order=ids,
        steps=(),
        selected=selected,
        seed=seed,
    )


def select_all(candidates: Sequence[str]) -> SelectionResult:
    """Baseline of Table 2: merge every candidate, in the order given."""
    ids = validate_candidates(candidates)
    return _baseline("all", ids, ids, None)


def random_subset(candidates: Sequence[str], k: int, seed: int) -> SelectionResult:
    """Baseline of Table 1: ``k`` candidates chosen by a seeded stable hash, kept in candidate order.

    The chosen ids are the ``k`` smallest ``stable_unit(seed, "subset", id)``, so the draw does not
    depend on the listing order. Use ``k`` = the size of UQ-Merge's selection and several seeds
    (:func:`random_subsets`) to report mean and spread.
    """
    ids = validate_candidates(candidates)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(ids):
        raise SelectionError(f"k must be an integer between 1 and {len(ids)} (the candidates), got {k!r}")
    drawn = set(sorted(ids, key=lambda cid: _seeded_unit(seed, "subset", cid))[:k])
    return _baseline("random_subset", ids, tuple(cid for cid in ids if cid in drawn), seed)


def random_subsets(candidates: Sequence[str], k: int, seeds: Iterable[int]) -> list[SelectionResult]:
    """:func:`random_subset` once per seed (the paper repeats it 3 times)."""
    return [random_subset(candidates, k, seed) for seed in seeds]
