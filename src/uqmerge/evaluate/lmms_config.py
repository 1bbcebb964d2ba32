"""The ``lmms_eval:`` block of run and search configs: lmms-eval tasks that evaluate the selected or chosen model."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class LmmsEvalSettings(BaseModel):
    """lmms-eval tasks (names, or local YAMLs under ``include``) run on the model a run selects or a search chooses.

    With ``accuracy: true`` a run's ``selection.guidance: accuracy`` sorts the candidates by their lmms-eval score
    (the mean over ``tasks`` of each task's first metric) instead of uqmerge's labelled held-in accuracy.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    tasks: list[str] = Field(min_length=1)
    include: list[str] = Field(default_factory=list)
    limit: float | None = Field(None, gt=0)
    batch_size: int = Field(16, ge=1)
    accuracy: bool = False

    @field_validator("tasks", mode="before")
    @classmethod
    def _comma_separated(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [v]
        if isinstance(v, list):
            return [t.strip() for item in v for t in str(item).split(",") if t.strip()]
        return v


def accuracy_signal(settings: LmmsEvalSettings | None) -> LmmsEvalSettings | None:
    """The ``lmms_eval:`` block when it gives the labelled signal (``accuracy: true``), else None."""
    return settings if settings is not None and settings.accuracy else None
