"""The `uqmerge run` YAML: base, candidates, merge settings, UQ settings and data, selection, baselines."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from uqmerge.config import ComponentMethod, DTypeName, ParamValue, format_validation_error, read_yaml
from uqmerge.core.errors import ConfigError
from uqmerge.uq.config import UQConfig, UQMode


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Candidate(_Strict):
    """A candidate model; ``id`` defaults to the directory name."""

    id: str
    model: str
    parameters: dict[str, ParamValue] = Field(default_factory=dict)


class MergeSettings(_Strict):
    """Merge(·) of Algorithm 1: any registered method (default the paper's uniform linear average)."""

    merge_method: str = "linear"
    parameters: dict[str, ParamValue] = Field(default_factory=dict)
    dtype: DTypeName | None = None
    components: dict[str, Literal["keep_base"] | ComponentMethod] = Field(default_factory=dict)
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    seed: int = 0


class UQSettings(UQConfig):
    """UQ options (as `uqmerge uq`) plus the ``data`` specs."""

    data: list[str] = Field(min_length=1)
    device: str = "auto"
    dtype: str = "auto"

    def uq_config(self, **overrides: Any) -> UQConfig:
        """The plain UQConfig (without data/device), optionally with fields replaced."""
        fields = self.model_dump(exclude={"data", "device", "dtype"})
        fields.update(overrides)
        return UQConfig(**fields)


class SelectionSettings(_Strict):
    """Guidance, order and stop rule (paper Table 3 and Sec. 4.2/4.3 ablations)."""

    guidance: Literal["uncertainty", "accuracy", "cp_set_size", "random"] = "uncertainty"
    order: Literal["descending", "ascending"] = "descending"
    stop: Literal["first_increase", "none"] = "first_increase"
    seed: int = 0


class RandomSubsetSettings(_Strict):
    """Random subsets of ``k`` candidates, one per seed (``k`` null: the size UQ-Merge selected)."""

    k: int | None = Field(None, ge=1)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)


class BaselineSettings(_Strict):
    """Comparison merges scored with the same UQ: merge-all and same-size random subsets."""

    all: bool = False
    random_subset: RandomSubsetSettings | None = None


class RunConfig(_Strict):
    """A whole UQ-Merge run."""

    base_model: str
    candidates: list[Candidate] = Field(min_length=1)
    merge: MergeSettings = Field(default_factory=MergeSettings)
    uq: UQSettings
    selection: SelectionSettings = Field(default_factory=SelectionSettings)
    baselines: BaselineSettings = Field(default_factory=BaselineSettings)
    device: str = "cpu"
    low_memory: bool = False
    max_shard_size: int = Field(5 * 1000**3, gt=0)

    @field_validator("candidates", mode="before")
    @classmethod
    def _expand_paths(cls, v: Any) -> Any:
        if not isinstance(v, list):
            return v
        return [{"id": Path(c).name, "model": c} if isinstance(c, str) else c for c in v]

    @model_validator(mode="after")
    def _unique_ids(self) -> RunConfig:
        ids = [c.id for c in self.candidates]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"candidate ids must be unique; repeated: {dupes}")
        if self.selection.guidance == "cp_set_size" and self.uq.mode is not UQMode.CP:
            raise ValueError("selection.guidance cp_set_size needs uq.mode: cp")
        return self

    def merge_mapping(self) -> dict[str, Any]:
        """Merge settings as a merge-config mapping (models and base are filled in per prefix)."""
        data = self.merge.model_dump(mode="json", exclude_defaults=True)
        data["merge_method"] = self.merge.merge_method
        data["model_parameters"] = {c.model: c.parameters for c in self.candidates if c.parameters}
        return data


def parse_run_config(data: dict[str, Any], *, source: str = "run config") -> RunConfig:
    """Validate a run config mapping."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None


def load_run_config(path: str | Path) -> RunConfig:
    """Load and validate a run YAML file; relative paths stay relative to the current directory."""
    return parse_run_config(read_yaml(path), source=str(path))
