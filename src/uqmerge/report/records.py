"""Typed run records: `uqmerge run`'s ``run.json``, `uqmerge search`'s ``search.json``, and what reports read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CandidateScore(_Record):
    """One UQ measurement of a candidate loaded from disk (one per UQ mode that was needed)."""

    score: float
    accuracy: float | None = None
    measure: str
    cache_hit: bool = False


class CandidateRecord(_Record):
    """A candidate's path and its measurements by UQ mode (``vl``, ``none`` for accuracy guidance, …)."""

    model: str
    scores: dict[str, CandidateScore] = Field(default_factory=dict)


class StepRecord(_Record):
    """One evaluated prefix of Algorithm 1 and, for merges (two or more models), what it cost."""

    prefix: list[str]
    value: float
    merge_s: float | None = None
    uq_s: float | None = None
    accuracy: float | None = None


class SelectionRecord(_Record):
    """The selection's decision (:meth:`uqmerge.selection.SelectionResult.to_dict`)."""

    guidance: str
    measure: str | None
    direction: str | None
    stop: str | None
    higher_is_better: bool
    seed: int | None = None
    scores: dict[str, float]
    order: list[str]
    steps: list[dict[str, Any]]
    selected: list[str]
    selected_value: float | None = None


class BaselineRecord(_Record):
    """A comparison merge (merge-all, a random subset) scored with the run's UQ."""

    models: list[str]
    uncertainty: float


class SearchPoint(_Record):
    """One grid point of a coefficient search: its value, its criterion score and what was measured there.

    ``score`` is None where the criterion gives the point none (a consistency end point, or an interior point
    whose neighbours are not measured yet); ``responses`` (one per input, in input order) are kept for
    consistency; ``merge_s`` is None until the point is measured.
    """

    value: float
    score: float | None = None
    responses: list[str] | None = None
    uncertainty: float | None = None
    accuracy: float | None = None
    merge_s: float | None = None
    eval_s: float | None = None


class SearchRecord(_Record):
    """A coefficient search (``search.json``, rewritten after every point): the grid, the scores, the choice.

    ``chosen_index``/``chosen_value`` are None until every point is scored. ``inputs`` names the sampled inputs
    (``dataset/id``) that the responses follow; ``digest`` identifies the config (resume refuses another).
    """

    parameter: str
    criterion: str
    compare: str | None = None
    grid: list[float]
    inputs: list[str]
    points: list[SearchPoint]
    chosen_index: int | None = None
    chosen_value: float | None = None
    digest: str
    config: dict[str, Any] = Field(default_factory=dict)
    model_dir: str | None = None
    accuracy_from: str | None = None  # what the points' accuracy is: "labels" (the data's) or "lmms-eval"
    lmms_score: float | None = None  # lmms-eval's score of the chosen merge (an ``lmms_eval:`` block)
    wall_s: float = 0.0

    @property
    def complete(self) -> bool:
        """Every grid point measured and the choice made."""
        return self.chosen_index is not None

    def to_json(self) -> str:
        """Indented JSON with a final newline."""
        return json.dumps(self.model_dump(mode="json"), indent=2) + "\n"

    @classmethod
    def read(cls, path: str | Path) -> SearchRecord:
        """Load ``search.json`` (a run directory or the file itself)."""
        p = Path(path)
        p = p / "search.json" if p.is_dir() else p
        return cls.model_validate_json(p.read_text())


class RunRecord(_Record):
    """A finished run (``run.json``); ``search`` holds the coefficient search of a run with a ``search:`` block."""

    config: dict[str, Any]
    candidates: dict[str, CandidateRecord]
    selection: SelectionRecord
    steps: list[StepRecord]
    selected: list[str]
    baselines: dict[str, BaselineRecord] = Field(default_factory=dict)
    model_dir: str
    merge_bytes_read: int = 0
    search: SearchRecord | None = None
    wall_s: float = 0.0

    @property
    def selected_step(self) -> StepRecord:
        """The step that evaluated the selected prefix (its value is the selected merge's measure)."""
        return self.steps[len(self.selected) - 1]

    def to_json(self) -> str:
        """Indented JSON with a final newline."""
        return json.dumps(self.model_dump(mode="json"), indent=2) + "\n"

    @classmethod
    def read(cls, path: str | Path) -> RunRecord:
        """Load ``run.json`` (a run directory or the file itself)."""
        p = Path(path)
        p = p / "run.json" if p.is_dir() else p
        return cls.model_validate_json(p.read_text())
