"""The `uqmerge run` YAML: base, candidates, merge settings, UQ settings and data, selection, baselines, search."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from uqmerge.core.errors import ConfigError
from uqmerge.engine.recipe import (
    MergeConfig,
    MergeRecipe,
    ModelEntry,
    ParamValue,
    read_yaml,
    validate_config,
)
from uqmerge.evaluate.lmms_config import LmmsEvalSettings
from uqmerge.pipeline.execution.settings import ExecutionSettings
from uqmerge.pipeline.search_config import SearchSettings, check_search, with_parameter
from uqmerge.selection import RUN_GUIDANCES
from uqmerge.uq.config import UQConfig, UQMode


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Candidate(_Strict):
    """A candidate model; ``id`` defaults to the directory name."""

    id: str
    model: str
    parameters: dict[str, ParamValue] = Field(default_factory=dict)


class UQSettings(UQConfig):
    """UQ options (as `uqmerge uq`) plus the ``data`` specs; the device and dtype are the run's."""

    data: list[str] = Field(min_length=1)

    def uq_config(self, **overrides: Any) -> UQConfig:
        """The plain UQConfig (without data), optionally with fields replaced."""
        fields = self.model_dump(exclude={"data"})
        fields.update(overrides)
        return UQConfig(**fields)


class SelectionSettings(_Strict):
    """Guidance, order and stop rule (paper Table 3 and Sec. 4.2/4.3 ablations)."""

    guidance: Literal[RUN_GUIDANCES] = "uncertainty"  # type: ignore[valid-type]
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
    merge: MergeRecipe = Field(default_factory=MergeRecipe)
    uq: UQSettings
    selection: SelectionSettings = Field(default_factory=SelectionSettings)
    baselines: BaselineSettings = Field(default_factory=BaselineSettings)
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    low_memory: bool = False
    max_shard_size: int = Field(5 * 1000**3, gt=0)
    search: SearchSettings | None = None
    lmms_eval: LmmsEvalSettings | None = None  # lmms-eval tasks on the selected model (docs/eval.md)
    # How the scores are computed, not what: left out of the dump, so of the digest and the record.
    execution: ExecutionSettings = Field(default_factory=ExecutionSettings, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _one_device_policy(cls, data: Any) -> Any:
        """``uq.device``/``uq.dtype`` are accepted as aliases of the run's ``device``/``dtype``, never beside them."""
        if not isinstance(data, dict) or not isinstance(data.get("uq"), dict):
            return data
        uq = dict(data["uq"])
        data = dict(data)
        for key in ("device", "dtype"):
            if key not in uq:
                continue
            value = uq.pop(key)
            if key in data and data[key] != value:
                raise ValueError(
                    f"uq.{key} ({value!r}) differs from {key} ({data[key]!r}); a run scores candidates and merges on "
                    f"one {key}: set only the top-level {key}"
                )
            data[key] = value
        data["uq"] = uq
        return data

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
        if self.merge.lora_output is not None:
            raise ValueError("merge.lora_output is not available in a run (it merges into one resident model)")
        if self.search is not None:
            self._check_search(self.search)
        return self

    def _check_search(self, search: SearchSettings) -> None:
        """The search's parameter and grid bind for a merge of the candidates (as many as the method takes)."""
        from uqmerge.methods import get_method

        try:
            method = get_method(self.merge.merge_method)
        except ConfigError as e:
            raise ValueError(f"merge.merge_method: {e}") from None
        n = min(len(self.candidates), method.max_models or len(self.candidates))
        entries = [ModelEntry(model=c.model, parameters=c.parameters) for c in self.candidates]
        try:
            check_search(self.merge, self.base_model, entries, search, models_key="candidates", bind_models=n)
        except ConfigError as e:
            raise ValueError(str(e)) from None

    def merge_config(self, candidate_ids: Sequence[str], search_value: float | None = None) -> MergeConfig:
        """The merge config of Merge(these candidates): the run's recipe, its base and their entries; with
        ``search_value``, the ``search.parameter`` set to it."""
        by_id = {c.id: c for c in self.candidates}
        entries = [ModelEntry(model=by_id[c].model, parameters=by_id[c].parameters) for c in candidate_ids]
        if search_value is None:
            return self.merge.for_models(self.base_model, entries)
        if self.search is None:
            raise ConfigError("a search value was given to a run config without a `search:` block")
        return with_parameter(self.merge, self.base_model, entries, self.search.parameter, search_value)


def parse_run_config(data: dict[str, Any], *, source: str = "run config") -> RunConfig:
    """Validate a run config mapping."""
    return validate_config(RunConfig, data, source)


def load_run_config(path: str | Path) -> RunConfig:
    """Load and validate a run YAML file; relative paths stay relative to the current directory."""
    return parse_run_config(read_yaml(path), source=str(path))
