"""The `uqmerge search` YAML (a merge, the grid of one of its parameters, the criterion, the data) and its checks."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from uqmerge.core.errors import ConfigError
from uqmerge.engine.recipe import MergeConfig, MergeRecipe, ModelEntry, read_yaml
from uqmerge.evaluate.lmms_config import LmmsEvalSettings
from uqmerge.evaluate.open_ended import DEFAULT_MAX_NEW_TOKENS
from uqmerge.pipeline.execution.settings import ExecutionSettings
from uqmerge.selection.coefficients import CRITERIA, MIN_CONSISTENCY_POINTS
from uqmerge.uq.config import UQConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConsistencySettings(_Strict):
    """How responses are compared: ``exact`` (normalised strings) or ``embedding`` (1 − cosine of ``model``'s)."""

    compare: Literal["exact", "embedding"] = "exact"
    model: str | None = None
    max_new_tokens: int = Field(DEFAULT_MAX_NEW_TOKENS, ge=1)

    @model_validator(mode="after")
    def _model_needs_embedding(self) -> ConsistencySettings:
        if self.model is not None and self.compare != "embedding":
            raise ValueError("consistency.model is the sentence-embedding model of `compare: embedding`; remove it")
        return self


class SearchSettings(_Strict):
    """The ``search:`` block: which parameter, its grid (ascending), the criterion and the unlabelled inputs.

    ``data`` may be omitted inside a run config (the run's ``uq.data`` is used); ``sample`` inputs are drawn
    (seeded by ``seed``) over all of the data, null = all.
    """

    parameter: str
    grid: list[float] = Field(min_length=1)
    criterion: Literal[CRITERIA] = "consistency"  # type: ignore[valid-type]
    data: list[str] | None = Field(None, min_length=1)
    sample: int | None = Field(None, ge=1)
    consistency: ConsistencySettings = Field(default_factory=ConsistencySettings)
    seed: int = Field(0, ge=0)
    batch_size: int = Field(16, ge=1)

    @field_validator("grid", mode="before")
    @classmethod
    def _numbers(cls, v: Any) -> Any:
        if isinstance(v, list) and any(isinstance(x, bool) for x in v):
            raise ValueError("grid values must be numbers, not true/false")
        return v

    @field_validator("grid")
    @classmethod
    def _ascending(cls, v: list[float]) -> list[float]:
        if not all(math.isfinite(x) for x in v):
            raise ValueError(f"grid values must be finite, got {v}")
        if any(b <= a for a, b in itertools.pairwise(v)):
            raise ValueError(f"grid must be strictly increasing (ties go to the smaller coefficient), got {v}")
        return v

    @model_validator(mode="after")
    def _criterion_fits(self) -> SearchSettings:
        if self.criterion == "consistency" and len(self.grid) < MIN_CONSISTENCY_POINTS:
            raise ValueError(
                f"search.grid: criterion consistency needs at least {MIN_CONSISTENCY_POINTS} grid points (the end "
                f"points are never chosen), got {len(self.grid)}"
            )
        if self.criterion != "consistency" and "consistency" in self.model_fields_set:
            raise ValueError(f"search.consistency applies to criterion consistency only, not {self.criterion}")
        return self


def with_parameter(
    recipe: MergeRecipe, base_model: str | None, models: Sequence[ModelEntry], parameter: str, value: float
) -> MergeConfig:
    """Merge(models) with ``parameter`` set to ``value``: top-level for a global parameter, every model's otherwise."""
    from uqmerge.methods import get_method

    spec = get_method(recipe.merge_method).param(parameter, recipe.compat)
    # As a config would write it: an int for an integer parameter, else a float.
    typed = int(value) if spec is not None and spec.kind is int and float(value).is_integer() else float(value)
    if spec is not None and spec.per_model:
        entries = [m.model_copy(update={"parameters": {**m.parameters, parameter: typed}}) for m in models]
        return recipe.for_models(base_model, entries)
    shared = recipe.model_copy(update={"parameters": {**recipe.parameters, parameter: typed}})
    return shared.for_models(base_model, list(models))


def check_search(
    recipe: MergeRecipe,
    base_model: str | None,
    models: Sequence[ModelEntry],
    search: SearchSettings,
    *,
    models_key: str = "models",
    bind_models: int | None = None,
) -> None:
    """``search.parameter`` is a numeric parameter of the merge method that nothing else sets, and every grid value
    binds (so an out-of-range value fails before any work); a one-line ConfigError naming the key otherwise.

    ``bind_models`` binds a merge of only the first that many models (a run merges a prefix of its candidates).
    """
    from uqmerge.engine.params import resolve_config_methods
    from uqmerge.methods import get_method

    try:
        method = get_method(recipe.merge_method)
        spec = method.param(search.parameter, recipe.compat)
    except ConfigError as e:
        raise ConfigError(f"merge.merge_method: {e}") from None
    if spec is None:
        known = [p.name for p in method.specs(recipe.compat)]
        raise ConfigError(
            f"search.parameter: {search.parameter!r} is not a parameter of merge method {method.name!r}; "
            f"its parameters: {known or 'none'}"
        )
    if spec.choices is not None or spec.kind not in (int, float):
        raise ConfigError(f"search.parameter: {search.parameter!r} of {method.name!r} is not numeric; search a number")
    where = [f"merge.parameters.{search.parameter}"] if search.parameter in recipe.parameters else []
    where += [
        f"{models_key}[{i}].parameters.{search.parameter}"
        for i, m in enumerate(models)
        if search.parameter in m.parameters
    ]
    where += [
        f"merge.components.{k}.parameters.{search.parameter}"
        for k, c in recipe.components.items()
        if not isinstance(c, str) and search.parameter in c.parameters
    ]
    if where:
        raise ConfigError(f"{where[0]}: {search.parameter!r} is set by search.parameter (the grid); remove it here")
    for i, value in enumerate(search.grid):
        try:
            bound = list(models)[:bind_models] if bind_models is not None else list(models)
            resolve_config_methods(with_parameter(recipe, base_model, bound, search.parameter, value))
        except ConfigError as e:
            raise ConfigError(f"search.grid[{i}] = {value:g}: {e}") from None


class SearchConfig(_Strict):
    """A whole `uqmerge search`: the merge of ``models`` over ``base_model``, the ``search:`` block, UQ and device."""

    base_model: str | None = None
    models: list[ModelEntry] = Field(min_length=1)
    merge: MergeRecipe = Field(default_factory=MergeRecipe)
    search: SearchSettings
    uq: UQConfig = Field(default_factory=UQConfig)
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_shard_size: int = Field(5 * 1000**3, gt=0)
    lmms_eval: LmmsEvalSettings | None = None  # lmms-eval tasks on the chosen model (docs/eval.md)
    # How the points are computed, not what: left out of the dump, so of the digest and the record.
    execution: ExecutionSettings = Field(default_factory=ExecutionSettings, exclude=True)

    @field_validator("models", mode="before")
    @classmethod
    def _expand_paths(cls, v: Any) -> Any:
        return [{"model": m} if isinstance(m, str) else m for m in v] if isinstance(v, list) else v

    @model_validator(mode="after")
    def _consistent(self) -> SearchConfig:
        if self.search.data is None:
            raise ValueError("search.data: give the unlabelled inputs (a list of `uqmerge uq` data specs)")
        if self.merge.lora_output is not None:
            raise ValueError("merge.lora_output is not available in a search (it merges into one resident model)")
        if self.uq.sample_ratio != 1.0:
            raise ValueError("uq.sample_ratio: a search draws its inputs with search.sample; remove uq.sample_ratio")
        try:
            check_search(self.merge, self.base_model, self.models, self.search)
        except ConfigError as e:
            raise ValueError(str(e)) from None
        return self

    @property
    def data(self) -> list[str]:
        """The data specs of the inputs."""
        assert self.search.data is not None  # checked by the validator
        return self.search.data

    def merge_config(self, value: float) -> MergeConfig:
        """The merge at grid value ``value``."""
        return with_parameter(self.merge, self.base_model, self.models, self.search.parameter, value)


def one_line_error(err: ValidationError, source: str) -> str:
    """Every problem of ``err`` on one line: ``source: key.path: what is wrong; …``."""
    problems = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = "unknown key (not allowed here)" if e["type"] == "extra_forbidden" else e["msg"]
        msg = msg.removeprefix("Value error, ")
        problems.append(f"{loc}: {msg}" if loc and not msg.startswith(f"{loc}") else msg)
    return f"{source}: " + "; ".join(problems)


def parse_search_config(data: dict[str, Any], *, source: str = "search config") -> SearchConfig:
    """Validate a search config mapping; a one-line ConfigError names the key path of every problem."""
    try:
        return SearchConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(one_line_error(e, source)) from None


def load_search_config(path: str | Path) -> SearchConfig:
    """Load and validate a search YAML file; relative paths stay relative to the current directory."""
    return parse_search_config(read_yaml(path), source=str(path))
