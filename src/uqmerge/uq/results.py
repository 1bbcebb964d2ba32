"""JSON-serialisable UQ results: per item, per dataset, per model (pydantic, ``extra="forbid"``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, PrivateAttr

from uqmerge.uq.config import UQConfig

RESULT_SCHEMA = "uqmerge.uq/1"


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SkippedItem(_Record):
    """An item left out of the scores, and why (e.g. an unreadable image)."""

    id: str
    reason: str


class ItemResult(_Record):
    """One item: its options as prompted and the J option-probability vectors (``save_probs``)."""

    id: str
    options: list[str]
    answer: str | None
    """Letter of the correct option, if labelled."""
    prediction: str
    """Letter with the highest mean probability over the passes."""
    system_messages: list[str | None]
    """The system message of each pass (None: the template's default)."""
    probs: list[list[float]]
    """J rows (passes) × K columns (letters A…), each row a softmax over the option letters."""
    total: float
    expected: float
    uncertainty: float
    """Mutual information ``total − expected`` (nats)."""


class ConformalReport(_Record):
    """Mode ``cp``: split conformal prediction with LAC and APS at level α."""

    alpha: float
    calibration_ratio: float
    n_calibration: int
    n_test: int
    lac_qhat: float
    lac_coverage: float
    lac_mean_set_size: float
    aps_qhat: float
    aps_coverage: float
    aps_mean_set_size: float


class DatasetResult(_Record):
    """Scores of one ``--data`` spec; ``uncertainty`` is the mean over scored items, listed in canonical order."""

    name: str
    spec: str
    fingerprint: str
    """SHA-256 of the prepared items scored (ids, texts, options after sampling and padding, answers, image
    bytes; canonical order): with ``n_sampled``, what identifies the data, not just its path."""
    n_source: int
    """Rows in the source."""
    excluded: dict[str, int]
    """Rows the benchmark protocol leaves out (video items, no image, …), by reason."""
    n_loaded: int
    n_sampled: int
    n_scored: int
    n_skipped: int
    skipped: list[SkippedItem]
    n_underpadded: int
    """Items that got fewer than ``real_options`` real options (distractor pool too small)."""
    uncertainty: float
    """Mean mutual information (modes vl…none) or mean conformal set size (mode cp)."""
    total: float | None
    expected: float | None
    accuracy: float | None
    n_labelled: int
    conformal: ConformalReport | None = None
    items: list[ItemResult] | None = None


class UQResult(_Record):
    """A model's UQ: per-dataset figures and the model score (unweighted mean over datasets)."""

    format: Literal["uqmerge.uq/1"] = RESULT_SCHEMA
    model: str
    model_fingerprint: str | None
    measure: Literal["mutual_information", "conformal_set_size"]
    score: float
    accuracy: float | None
    """Unweighted mean accuracy over the datasets that have labels."""
    config: UQConfig
    device: str
    dtype: str
    datasets: list[DatasetResult]

    _cache_hit: bool = PrivateAttr(default=False)

    @property
    def cache_hit(self) -> bool:
        """True when this result was read from the UQ cache (not part of the JSON)."""
        return self._cache_hit

    def without_probs(self) -> UQResult:
        """A copy without per-item records (what ``save_probs=False`` returns)."""
        stripped = self.model_copy(update={"datasets": [d.model_copy(update={"items": None}) for d in self.datasets]})
        stripped._cache_hit = self._cache_hit
        return stripped

    def to_json(self) -> str:
        """Canonical JSON (stable key order, two-space indent)."""
        return self.model_dump_json(indent=2)
