"""Algorithm 1 of UQ-Merge, generalised: sort candidates by a score, merge growing prefixes, stop.

Everything here is pure: candidates are string ids, scores come from callables, and no model is
loaded. The callables may be expensive (a UQ pass over a dataset, a merge), so each one is called at
most once per id or prefix, completed steps can be handed back in to resume a run, and an ``on_step``
callback sees every newly evaluated step (to write a progress record).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from uqmerge.core.errors import UQMergeError

Order = Literal["descending", "ascending"]
StopRule = Literal["first_increase", "none"]

ORDERS: tuple[str, ...] = ("descending", "ascending")
STOP_RULES: tuple[str, ...] = ("first_increase", "none")


class SelectionError(UQMergeError, ValueError):
    """Invalid selection input: no candidates, a duplicate id, a non-finite score, a stale resume record."""


@dataclass(frozen=True)
class Step:
    """One evaluated prefix: the ids merged (in order) and the merged model's measure.

    For UQ-Merge the measure is the merged model's uncertainty; step 1 (a single model) carries that
    model's own score.
    """

    prefix: tuple[str, ...]
    value: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``{"prefix": [...], "value": float}``."""
        return {"prefix": list(self.prefix), "value": self.value}

    @classmethod
    def coerce(cls, record: Step | Mapping[str, Any] | Sequence[Any]) -> Step:
        """Build a step from a :class:`Step`, a ``to_dict()`` mapping, or a ``(prefix, value)`` pair."""
        if isinstance(record, Step):
            return record
        if isinstance(record, Mapping):
            if set(record) != {"prefix", "value"}:
                raise SelectionError(
                    f"a known step must have exactly the keys 'prefix' and 'value', got {sorted(record)}"
                )
            prefix, value = record["prefix"], record["value"]
        elif isinstance(record, Sequence) and not isinstance(record, str) and len(record) == 2:
            prefix, value = record
        else:
            raise SelectionError(
                f"a known step must be a Step, a {{'prefix', 'value'}} mapping or a (prefix, value) pair, "
                f"got {record!r}"
            )
        if isinstance(prefix, str) or not isinstance(prefix, Sequence) or not prefix:
            raise SelectionError(f"a known step's prefix must be a non-empty list of ids, got {prefix!r}")
        ids = tuple(prefix)
        return cls(ids, _finite(value, f"the known step for prefix {list(ids)}"))


@dataclass(frozen=True)
class SelectionResult:
    """What a selection decided and why; :meth:`to_dict` is the run record's ``selection`` entry.

    ``scores`` are the per-candidate guidance scores in candidate order, ``order`` the ids sorted by
    them, ``steps`` every evaluated prefix (including the one that triggered the stop), ``selected``
    the prefix to merge. ``measure`` names what ``Step.value`` holds and ``higher_is_better`` its
    direction. Baselines (merge all, random subsets) have no steps, direction or stop rule.
    """

    guidance: str
    measure: str | None
    direction: str | None
    stop: str | None
    higher_is_better: bool
    scores: tuple[tuple[str, float], ...]
    order: tuple[str, ...]
    steps: tuple[Step, ...]
    selected: tuple[str, ...]
    seed: int | None = None

    @property
    def score_by_id(self) -> dict[str, float]:
        """The guidance score of each candidate."""
        return dict(self.scores)

    @property
    def selected_value(self) -> float | None:
        """The measure of the selected prefix (None for baselines that evaluate nothing)."""
        for step in self.steps:
            if step.prefix == self.selected:
                return step.value
        return None

    @property
    def stopped_early(self) -> bool:
        """True when the stop rule ended the loop before every prefix was evaluated."""
        return bool(self.steps) and len(self.steps) < len(self.order)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable record (lists, floats, strings; keys in a fixed order)."""
        return {
            "guidance": self.guidance,
            "measure": self.measure,
            "direction": self.direction,
            "stop": self.stop,
            "higher_is_better": self.higher_is_better,
            "seed": self.seed,
            "scores": {cid: value for cid, value in self.scores},
            "order": list(self.order),
            "steps": [step.to_dict() for step in self.steps],
            "selected": list(self.selected),
            "selected_value": self.selected_value,
        }

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> SelectionResult:
        """Inverse of :meth:`to_dict` (``selected_value`` is derived and ignored)."""
        try:
            return cls(
                guidance=record["guidance"],
                measure=record["measure"],
                direction=record["direction"],
                stop=record["stop"],
                higher_is_better=bool(record["higher_is_better"]),
                scores=tuple((str(k), float(v)) for k, v in record["scores"].items()),
                order=tuple(record["order"]),
                steps=tuple(Step.coerce(s) for s in record["steps"]),
                selected=tuple(record["selected"]),
                seed=record.get("seed"),
            )
        except KeyError as exc:
            raise SelectionError(f"selection record is missing the key {exc.args[0]!r}") from None


def _finite(value: object, what: str) -> float:
    """``float(value)``, or a :class:`SelectionError` naming ``what`` if it is not a finite number."""
    if isinstance(value, bool):
        raise SelectionError(f"{what} must be a number, got {value!r}")
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise SelectionError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise SelectionError(f"{what} is {number}, not a finite number; check the score of that model")
    return number


def validate_candidates(candidates: Sequence[str]) -> tuple[str, ...]:
    """Candidate ids as a tuple: non-empty, all strings, no duplicates."""
    if isinstance(candidates, str | bytes) or not isinstance(candidates, Iterable):
        raise SelectionError(f"candidates must be a sequence of model ids, got {candidates!r}")
    ids = tuple(candidates)
    if not ids:
        raise SelectionError("candidates is empty: give at least one model id to select from")
    seen: set[str] = set()
    for cid in ids:
        if not isinstance(cid, str) or not cid:
            raise SelectionError(f"candidate ids must be non-empty strings, got {cid!r}")
        if cid in seen:
            raise SelectionError(f"candidate {cid!r} is listed twice; each model may appear only once")
        seen.add(cid)
    return ids


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise SelectionError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def collect_scores(
    ids: Sequence[str],
    score: Callable[[str], float],
    what: str,
    known_scores: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Score every id once (reusing ``known_scores``); every score must be finite."""
    known = dict(known_scores or {})
    stale = sorted(set(known) - set(ids))
    if stale:
        raise SelectionError(
            f"known scores name models that are not candidates: {stale}; the record belongs to another candidate list"
        )
    scores: dict[str, float] = {}
    for cid in ids:
        raw = known[cid] if cid in known else score(cid)
        scores[cid] = _finite(raw, f"the {what} of candidate {cid!r}")
    return scores


def sort_by_score(ids: Sequence[str], scores: Mapping[str, float], order: Order) -> tuple[str, ...]:
    """Stable sort: ids with equal scores keep their candidate order in both directions."""
    _check_choice("order", order, ORDERS)
    return tuple(sorted(ids, key=lambda cid: scores[cid], reverse=order == "descending"))


def _index_known_steps(
    known_steps: Iterable[Step | Mapping[str, Any] | Sequence[Any]] | None, order: tuple[str, ...]
) -> dict[tuple[str, ...], float]:
    """Map prefix -> value of previously completed steps, after checking each is a prefix of ``order``."""
    known: dict[tuple[str, ...], float] = {}
    for record in known_steps or ():
        step = Step.coerce(record)
        if step.prefix != order[: len(step.prefix)]:
            raise SelectionError(
                f"known step {list(step.prefix)} is not a prefix of the current order {list(order)}; "
                "the candidates or their scores changed since it was recorded, so start a fresh selection"
            )
        if step.prefix in known and known[step.prefix] != step.value:
            raise SelectionError(f"known steps give two different values for prefix {list(step.prefix)}")
        known[step.prefix] = step.value
    return known


def select_by_score(
    candidates: Sequence[str],
    score: Callable[[str], float],
    merged_score: Callable[[list[str]], float],
    *,
    order: Order = "descending",
    stop: StopRule = "first_increase",
    higher_is_better: bool = False,
    first_step_is_score: bool = False,
    single_score: Callable[[str], float] | None = None,
    guidance: str = "custom",
    measure: str = "score",
    known_scores: Mapping[str, float] | None = None,
    known_steps: Iterable[Step | Mapping[str, Any] | Sequence[Any]] | None = None,
    on_step: Callable[[Step], None] | None = None,
    seed: int | None = None,
) -> SelectionResult:
    """Sort candidates by ``score``, evaluate growing prefixes with ``merged_score``, keep the best.

    - ``order``: sort direction of ``score`` (stable: equal scores keep candidate order).
    - The stop measure is ``merged_score(prefix)``; it improves when strictly lower
      (``higher_is_better=False``) or strictly higher. Step 1 is a single model, so no merge is
      needed: its value is the model's own ``score`` when ``first_step_is_score`` (the score and the
      stop measure are the same quantity, as in UQ-Merge), else ``single_score(id)`` when given,
      else ``merged_score([id])``.
    - ``stop="first_increase"``: stop at the first step that does not improve on the best so far
      (ties stop) and return the best prefix. ``stop="none"``: evaluate every prefix and return the
      best one (the first on ties).
    - ``known_scores`` / ``known_steps`` resume an interrupted run: those ids and prefixes are not
      scored again. ``on_step`` is called with each newly evaluated :class:`Step`.

    Each callable is called at most once per id or prefix. Raises :class:`SelectionError` (a
    ``ValueError``) for empty or duplicate candidates, non-finite scores, or stale resume records.
    """
    ids = validate_candidates(candidates)
    _check_choice("stop", stop, STOP_RULES)
    if first_step_is_score and single_score is not None:
        raise SelectionError("give either first_step_is_score=True or single_score, not both")
    scores = collect_scores(ids, score, guidance, known_scores)
    ranked = sort_by_score(ids, scores, order)
    known = _index_known_steps(known_steps, ranked)

    steps: list[Step] = []
    best_value: float | None = None
    best_len = 0
    for t in range(1, len(ranked) + 1):
        prefix = ranked[:t]
        if prefix in known:
            value = known[prefix]
        else:
            if t == 1 and first_step_is_score:
                raw = scores[prefix[0]]
            elif t == 1 and single_score is not None:
                raw = single_score(prefix[0])
            else:
                raw = merged_score(list(prefix))
            value = _finite(raw, f"the {measure} of the merge of {list(prefix)}")
        step = Step(prefix, value)
        steps.append(step)
        if prefix not in known and on_step is not None:
            on_step(step)
        improved = best_value is None or (value > best_value if higher_is_better else value < best_value)
        if improved:
            best_value, best_len = value, t
        elif stop == "first_increase":
            break

    return SelectionResult(
        guidance=guidance,
        measure=measure,
        direction=order,
        stop=stop,
        higher_is_better=higher_is_better,
        scores=tuple((cid, scores[cid]) for cid in ids),
        order=ranked,
        steps=tuple(steps),
        selected=ranked[:best_len],
        seed=seed,
    )
