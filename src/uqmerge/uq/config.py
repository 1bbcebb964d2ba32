"""The UQ options model shared by the Python API and the ``uqmerge uq`` command."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class UQMode(StrEnum):
    """Which perturbations make up the J passes (``cp`` uses labels instead; see :mod:`.conformal`)."""

    VL = "vl"
    INPUT = "input"
    IMAGE = "image"
    TEXT = "text"
    MODEL = "model"
    NONE = "none"
    CP = "cp"

    @property
    def perturbs_image(self) -> bool:
        return self in (UQMode.VL, UQMode.INPUT, UQMode.IMAGE)

    @property
    def perturbs_text(self) -> bool:
        return self in (UQMode.VL, UQMode.INPUT, UQMode.TEXT)

    @property
    def perturbs_model(self) -> bool:
        return self in (UQMode.VL, UQMode.MODEL)

    @property
    def is_perturbed(self) -> bool:
        return self.perturbs_image or self.perturbs_text or self.perturbs_model


class UQConfig(BaseModel):
    """The UQ options; all but ``batch_size`` and ``save_probs`` determine the numbers (and the cache key).

    ``batch_size`` only sets how many passes share a forward pass: every draw is keyed by item and pass and
    passes are grouped by token length, so scores are bit-identical on the CPU at any batch size.
    ``save_probs`` only controls what the returned result contains; cached results always keep the
    probabilities.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: UQMode = Field(UQMode.VL, description="perturbations: vl, input, image, text, model, none, or cp")
    perturbations: int = Field(4, ge=1, le=64, description="J, perturbed passes per item")
    seed: int = Field(0, ge=0, description="seed of sampling, padding, perturbations and the CP split")
    sample_ratio: float = Field(1.0, gt=0.0, le=1.0, description="fraction of each dataset used (seeded)")
    batch_size: int = Field(8, ge=1, description="passes per forward pass (equal token lengths; no effect on scores)")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="attention-probability dropout of the LM")
    real_options: int = Field(4, ge=2, le=24, description="pad each item to this many real options")
    alpha: float = Field(0.1, gt=0.0, lt=1.0, description="conformal error rate (mode cp)")
    calibration_ratio: float = Field(0.5, gt=0.0, lt=1.0, description="calibration share (mode cp)")
    save_probs: bool = Field(False, description="keep each item's J option-probability vectors")

    @property
    def passes(self) -> int:
        """Forward passes per item: J when something is perturbed, else one (identical passes)."""
        return self.perturbations if self.mode.is_perturbed else 1

    def numbers_key(self) -> dict[str, Any]:
        """The fields that change the numbers (everything except ``batch_size`` and ``save_probs``)."""
        return self.model_dump(mode="json", exclude={"batch_size", "save_probs"})
