"""The merge recipe: strict pydantic models of a merge config (unknown keys are errors) and YAML loading.

:class:`MergeRecipe` is what to do (method, parameters, components, include/exclude, dtype, seed);
:class:`MergeConfig` adds which models (``base_model``, ``models``). `uqmerge merge` reads a MergeConfig and
`uqmerge run` a MergeRecipe as its ``merge:`` section, completed per candidate prefix by
:meth:`MergeRecipe.for_models`. ``compat: mergekit`` makes the methods follow mergekit 0.1.5's semantics and gives
the config mergekit's inputs (:mod:`uqmerge.engine.mergekit`); ``load_merge_config(path, compat="mergekit")``
reads a mergekit YAML itself.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from uqmerge.core.configs import read_yaml, validate_config
from uqmerge.engine.mergekit import from_mergekit, mergekit_inputs
from uqmerge.methods.base import ParamValue, Semantics

DTypeName = Literal["float32", "float16", "bfloat16"]
KEEP_BASE = "keep_base"
LLM_OUTPUT = "llm"
"""The output subdirectory of a modality merge that holds the merged language model alone."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelEntry(_Strict):
    """One input model and its per-model parameters (``weight``, ``density``, …).

    ``mapping`` (a mapping file or a shipped mapping's name) says how a model of another architecture maps onto the
    base's; ``id`` names its output directory in a modality merge (default: the model directory's name).
    """

    model: str
    parameters: dict[str, ParamValue] = Field(default_factory=dict)
    mapping: str | None = None
    id: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

    @field_validator("id")
    @classmethod
    def _not_llm(cls, v: str | None) -> str | None:
        if v == LLM_OUTPUT:
            raise ValueError(f"id {LLM_OUTPUT!r} is the merged language model's own output directory; choose another")
        return v


class ComponentMethod(_Strict):
    """A per-component override: its own method and parameters."""

    merge_method: str
    parameters: dict[str, ParamValue] = Field(default_factory=dict)


class LayoutRuleConfig(_Strict):
    """A user rule classifying tensors the built-in layout does not know."""

    pattern: str
    component: Literal["vision_tower", "audio_tower", "projector", "language_model"]
    role: Literal["embeddings", "lm_head", "attention", "cross_attention", "mlp", "norm", "other"] | None = None

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        return _check_regex(v)


class LoraOutputConfig(_Strict):
    """Write the merge as one peft LoRA adapter: all ranks concatenated (``rank`` null) or SVD-truncated to ``rank``."""

    rank: int | None = Field(default=None, ge=1)


def _check_regex(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as e:
        raise ValueError(f"invalid regular expression {pattern!r}: {e}") from e
    return pattern


class MergeRecipe(_Strict):
    """How to merge: a mergekit-like recipe without its models (`uqmerge run`'s ``merge:`` section)."""

    merge_method: str = "linear"
    parameters: dict[str, ParamValue] = Field(default_factory=dict)
    dtype: DTypeName | None = None
    components: dict[str, Literal["keep_base"] | ComponentMethod] = Field(default_factory=dict)
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    layout: str | None = None
    layout_rules: list[LayoutRuleConfig] = Field(default_factory=list)
    seed: int = 0
    verify_keep_base: bool = True
    lora_output: LoraOutputConfig | None = None
    compat: Semantics = "uqmerge"
    ancestor: str | None = None

    @model_validator(mode="after")
    def _lora_output_is_uqmerges(self) -> MergeRecipe:
        if self.compat != "uqmerge" and self.lora_output is not None:
            raise ValueError(f"lora_output follows uqmerge's semantics only; remove it or `compat: {self.compat}`")
        if self.ancestor is not None and self.lora_output is not None:
            raise ValueError("lora_output merges adapters of one architecture; remove `ancestor:` or `lora_output:`")
        return self

    @field_validator("include", "exclude")
    @classmethod
    def _regexes_compile(cls, v: list[str]) -> list[str]:
        return [_check_regex(p) for p in v]

    @field_validator("components")
    @classmethod
    def _known_components(cls, v: dict[str, Any]) -> dict[str, Any]:
        from uqmerge.checkpoint.layouts import COMPONENTS, ROLES

        allowed = {*COMPONENTS, *(f"language_model.{r}" for r in ROLES)}
        unknown = sorted(set(v) - allowed)
        if unknown:
            raise ValueError(f"unknown component(s) {unknown}; allowed: {sorted(allowed)}")
        return v

    def for_models(self, base_model: str | None, models: Sequence[ModelEntry]) -> MergeConfig:
        """The merge config of this recipe applied to ``models`` (and ``base_model``)."""
        fields = {name: getattr(self, name) for name in MergeRecipe.model_fields}
        return MergeConfig(**fields, base_model=base_model, models=list(models))


class MergeConfig(MergeRecipe):
    """A whole merge config (`uqmerge merge`): the recipe plus ``base_model`` and ``models``."""

    merge_method: str
    base_model: str | None = None
    models: list[ModelEntry] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _mergekit_inputs(cls, data: Any) -> Any:
        """With ``compat: mergekit``, the models as mergekit reads them (:func:`.mergekit.mergekit_inputs`)."""
        if isinstance(data, dict) and data.get("compat") == "mergekit":
            models = mergekit_inputs(data.get("merge_method"), data.get("base_model"), data.get("models"))
            return {**data, "models": models}
        return data


def parse_merge_config(data: dict[str, Any], *, source: str = "config") -> MergeConfig:
    """Validate a merge config mapping (structure here; methods and parameters in the plan)."""
    return validate_config(MergeConfig, data, source)


def load_merge_config(path: str | Path, *, compat: Semantics = "uqmerge") -> MergeConfig:
    """Load and validate a merge YAML file; ``compat="mergekit"`` reads a mergekit 0.1.5 YAML (its keys, unchanged)."""
    data = read_yaml(path)
    if compat == "mergekit":
        data = from_mergekit(data, source=str(path))
    return parse_merge_config(data, source=str(path))
