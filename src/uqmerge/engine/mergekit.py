"""mergekit 0.1.5 compatibility: a mergekit YAML → a uqmerge merge config, and mergekit's lists of inputs.

:func:`from_mergekit` translates a mergekit YAML mapping (``uqmerge merge --compat mergekit``) into the mapping of
a uqmerge config with ``compat: mergekit``, and refuses, one key at a time, what uqmerge cannot honour. The
methods then follow mergekit's semantics (:mod:`uqmerge.methods.mergekit`); :func:`mergekit_inputs` gives a
``compat: mergekit`` config mergekit's inputs: ``base_model`` listed under ``models:`` is the base, not an expert;
``linear`` averages the base too when it is given; SLERP runs from the base (t = 0) to the other model.
Everything here works on plain mappings, before the config is validated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from uqmerge.core.errors import ConfigError

MERGEKIT_KEYS = (
    "merge_method",
    "base_model",
    "models",
    "parameters",
    "dtype",
    "out_dtype",
    "tokenizer_source",
    "tokenizer",
    "chat_template",
    "slices",
    "modules",
)
"""The top-level keys of mergekit 0.1.5's ``MergeConfiguration``."""

MERGEKIT_METHODS = (
    "linear",
    "task_arithmetic",
    "ties",
    "dare_linear",
    "dare_ties",
    "della",
    "breadcrumbs",
    "model_stock",
    "slerp",
)
"""mergekit's methods that uqmerge runs with mergekit's semantics."""

BASE_ONLY = ("task_arithmetic", "ties", "dare_linear", "dare_ties", "della", "breadcrumbs", "model_stock")
"""Methods whose ``base_model`` is only the base: an entry of ``models:`` naming it is dropped."""

_UNSUPPORTED_METHODS = (
    "breadcrumbs_ties",
    "della_linear",
    "sce",
    "ram",
    "ramplus_tl",
    "nearswap",
    "nuslerp",
    "multislerp",
    "karcher",
    "arcee_fusion",
    "passthrough",
)
_DTYPES = ("float32", "float16", "bfloat16")


def from_mergekit(data: Mapping[str, Any], *, source: str) -> dict[str, Any]:
    """The uqmerge config mapping (``compat: mergekit``) of mergekit YAML ``data``; a ConfigError names what cannot
    be honoured (``slices``, ``modules``, gradients, ``filter:`` values, other tokenizers, chat templates, …)."""
    for key in data:
        if key not in MERGEKIT_KEYS:
            raise ConfigError(
                f"{source}: {key!r} is not a key of a mergekit 0.1.5 config (mergekit would ignore it); remove it, "
                "or drop --compat mergekit and write a uqmerge config with `compat: mergekit`"
            )
    for key, what in (("slices", "layer ranges (`slices:`)"), ("modules", "per-module inputs (`modules:`)")):
        if data.get(key):
            raise ConfigError(
                f"{source}: {key}: uqmerge merges whole models and cannot honour {what}; list the models under "
                "`models:` instead"
            )
    method = data.get("merge_method")
    if not isinstance(method, str):
        raise ConfigError(f"{source}: merge_method: missing or not a name; set e.g. `merge_method: ties`")
    if method not in MERGEKIT_METHODS:
        known = (
            f"mergekit method {method!r} has no uqmerge counterpart"
            if method in _UNSUPPORTED_METHODS
            else (f"{method!r} is not a mergekit 0.1.5 method")
        )
        raise ConfigError(
            f"{source}: merge_method: {known}; with --compat mergekit use one of {', '.join(MERGEKIT_METHODS)}"
        )
    models = data.get("models")
    if not isinstance(models, list) or not models:
        raise ConfigError(f"{source}: models: missing or empty; list the models to merge as `- model: PATH`")
    out: dict[str, Any] = {"compat": "mergekit", "merge_method": method}
    base = data.get("base_model")
    if base is not None:
        out["base_model"] = _model_path(base, f"{source}: base_model")
    out["models"] = [_model_entry(entry, f"{source}: models[{i}]") for i, entry in enumerate(models)]
    parameters = data.get("parameters") or {}
    if not isinstance(parameters, Mapping):
        raise ConfigError(f"{source}: parameters: expected a mapping of parameter names to values")
    out["parameters"] = _scalar_parameters(parameters, f"{source}: parameters")
    dtype = _dtype(data, source)
    if dtype is not None:
        out["dtype"] = dtype
    _check_tokenizer(data, out.get("base_model"), source)
    # mergekit merges every tensor with merge_method, the vision tower of a multimodal model too.
    out["components"] = {"vision_tower": {"merge_method": method}}
    return out


def mergekit_inputs(method: object, base_model: object, models: object, *, where: str = "models") -> object:
    """``models`` (raw entries) as mergekit reads them for ``method`` with ``base_model``; other values unchanged.

    Entries naming the base (same resolved path) are dropped for the task-vector methods and Model Stock (a base
    entry with parameters is an error: mergekit ignores them); ``linear`` appends an unlisted base, which then
    needs a ``weight`` from the top-level parameters; SLERP's list becomes [base, other].
    """
    if not isinstance(method, str) or not isinstance(models, list):
        return models
    entries = [_as_mapping(entry) for entry in models]
    if base_model is None:
        if method == "slerp":
            raise ConfigError(
                f"{where}: mergekit's slerp runs from base_model (t = 0) to the other model (t = 1); set `base_model:`"
            )
        return entries
    base = _same_path(str(base_model))
    is_base = [isinstance(e.get("model"), str) and _same_path(e["model"]) == base for e in entries]
    if method in BASE_ONLY or method == "slerp":
        for i, (entry, flag) in enumerate(zip(entries, is_base, strict=True)):
            if flag and entry.get("parameters"):
                raise ConfigError(
                    f"{where}[{i}] is the base_model; mergekit ignores its parameters "
                    f"{sorted(entry['parameters'])}: remove them"
                )
        others = [e for e, flag in zip(entries, is_base, strict=True) if not flag]
        if method != "slerp":
            return others
        if len(others) != 1:
            raise ConfigError(
                f"{where}: mergekit's slerp takes base_model and exactly one other model, got {len(others)} other(s)"
            )
        return [{"model": str(base_model)}, others[0]]
    if method == "linear" and not any(is_base):
        return [*entries, {"model": str(base_model)}]
    return entries


def _as_mapping(entry: object) -> Any:
    """A raw ``models:`` entry as a mapping (a validated entry is dumped)."""
    dump = getattr(entry, "model_dump", None)
    return dump() if callable(dump) else entry


def _same_path(path: str) -> Path:
    return Path(path).expanduser().resolve()


def _model_path(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a model path; uqmerge reads local checkpoint directories")
    if "+" in value and not Path(value).expanduser().exists():
        raise ConfigError(
            f"{where}: {value!r} uses mergekit's `model+lora` syntax, which uqmerge does not read; give the LoRA "
            "adapter directory as its own `models:` entry (it is applied to base_model)"
        )
    return value


def _model_entry(entry: object, where: str) -> dict[str, Any]:
    if not isinstance(entry, Mapping) or "model" not in entry:
        raise ConfigError(f"{where}: expected a mapping `{{model: PATH, parameters: {{...}}}}`")
    unknown = sorted(set(entry) - {"model", "parameters"})
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; a mergekit model entry has `model` and `parameters`")
    out: dict[str, Any] = {"model": _model_path(entry["model"], f"{where}.model")}
    parameters = entry.get("parameters") or {}
    if not isinstance(parameters, Mapping):
        raise ConfigError(f"{where}.parameters: expected a mapping of parameter names to values")
    if parameters:
        out["parameters"] = _scalar_parameters(parameters, f"{where}.parameters")
    return out


def _scalar_parameters(parameters: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The parameters as scalars; gradients (lists) and ``filter:``-conditioned values are refused by name."""
    out: dict[str, Any] = {}
    for name, value in parameters.items():
        if isinstance(value, Mapping) or (
            isinstance(value, Sequence) and not isinstance(value, str) and any(isinstance(v, Mapping) for v in value)
        ):
            raise ConfigError(
                f"{where}.{name}: filter-conditioned values (`filter:`/`value:`) are not supported by uqmerge; give "
                "one value, or merge the tensors that need another with a uqmerge config's `components:`"
            )
        if isinstance(value, Sequence) and not isinstance(value, str):
            raise ConfigError(
                f"{where}.{name}: gradients (a list of values interpolated over the layers) are not supported by "
                "uqmerge; give one value"
            )
        out[name] = value
    return out


def _dtype(data: Mapping[str, Any], source: str) -> str | None:
    """The output dtype: ``out_dtype``, else ``dtype`` (mergekit's compute dtype, and its output dtype by default)."""
    for key in ("dtype", "out_dtype"):
        value = data.get(key)
        if value is not None and str(value).removeprefix("torch.") not in _DTYPES:
            raise ConfigError(f"{source}: {key}: {value!r} is not supported; use one of {', '.join(_DTYPES)}")
    chosen = data.get("out_dtype") or data.get("dtype")
    return None if chosen is None else str(chosen).removeprefix("torch.")


def _check_tokenizer(data: Mapping[str, Any], base: str | None, source: str) -> None:
    """uqmerge copies the base's tokenizer and chat template; anything else is refused."""
    if data.get("tokenizer") is not None:
        raise ConfigError(
            f"{source}: tokenizer: uqmerge copies the base model's tokenizer and cannot build another; remove it"
        )
    choice = data.get("tokenizer_source")
    same_as_base = isinstance(choice, str) and base is not None and _same_path(choice) == _same_path(base)
    if choice not in (None, "base") and not same_as_base:
        raise ConfigError(
            f"{source}: tokenizer_source: {choice!r} is not supported; uqmerge copies the base model's tokenizer "
            "(`tokenizer_source: base`)"
        )
    if data.get("chat_template") is not None:
        raise ConfigError(
            f"{source}: chat_template: uqmerge copies the base model's chat template and cannot set another; remove it"
        )
