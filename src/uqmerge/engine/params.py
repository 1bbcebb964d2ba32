"""Resolution and validation of method parameters from a merge config (before any weight is read)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from uqmerge.core.errors import ConfigError
from uqmerge.engine.recipe import ComponentMethod, MergeConfig, ParamValue
from uqmerge.methods import MergeMethod, get_method


@dataclass(frozen=True)
class ResolvedMethod:
    """A method with every parameter resolved: per-model lists and global values."""

    method: MergeMethod
    per_model: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    params: Mapping[str, ParamValue] = field(default_factory=dict)

    def describe(self) -> dict[str, object]:
        """JSON-friendly form for the recipe and model card."""
        return {
            "merge_method": self.method.name,
            "per_model": dict(self.per_model),
            "parameters": dict(self.params),
        }


def _check_value(method: MergeMethod, key: str, value: ParamValue, where: str) -> None:
    spec = method.param(key)
    if spec is None:
        return
    problem = spec.check(value)
    if problem:
        raise ConfigError(f"{where}: parameter {key!r} of method {method.name!r} {problem}")


def resolve_method(
    method: MergeMethod,
    model_params: Sequence[Mapping[str, ParamValue]],
    shared: Mapping[str, ParamValue],
    *,
    where: str,
) -> ResolvedMethod:
    """Resolve ``method``'s parameters: per-model value, else the shared value, else the default."""
    n = len(model_params)
    if n < method.min_models or (method.max_models is not None and n > method.max_models):
        most = "any number" if method.max_models is None else str(method.max_models)
        raise ConfigError(f"{where}: method {method.name!r} needs {method.min_models} to {most} models, got {n}")
    per_model: dict[str, tuple[float, ...]] = {}
    params: dict[str, ParamValue] = {}
    for spec in method.params:
        if spec.per_model:
            values = []
            for i, mp in enumerate(model_params):
                value = mp.get(spec.name, shared.get(spec.name, spec.default))
                if value is None:
                    raise ConfigError(f"{where}: model {i} lacks required parameter {spec.name!r}")
                _check_value(method, spec.name, value, f"{where}, model {i}")
                values.append(float(value) if spec.kind is not str else value)
            per_model[spec.name] = tuple(values)
        else:
            value = shared.get(spec.name, spec.default)
            if value is not None:
                _check_value(method, spec.name, value, where)
                params[spec.name] = value
    return ResolvedMethod(method, per_model, params)


def resolve_config_methods(config: MergeConfig) -> dict[str, ResolvedMethod | None]:
    """Resolved method for the top level ("*") and each component override (None = keep base).

    Raises ConfigError for unknown methods, unknown parameter keys and out-of-range values.
    """
    model_params = [m.parameters for m in config.models]
    top = get_method(config.merge_method)
    resolved: dict[str, ResolvedMethod | None] = {
        "*": resolve_method(top, model_params, config.parameters, where="parameters")
    }
    for key, spec in config.components.items():
        if isinstance(spec, ComponentMethod):
            method = get_method(spec.merge_method)
            shared = {**config.parameters, **spec.parameters}
            resolved[key] = resolve_method(method, model_params, shared, where=f"components.{key}")
            _reject_unknown(spec.parameters, [method], f"components.{key}.parameters")
        else:
            resolved[key] = None
    used = [r.method for r in resolved.values() if r is not None]
    _reject_unknown(config.parameters, used, "parameters")
    for i, m in enumerate(config.models):
        _reject_unknown(m.parameters, used, f"models[{i}] ({m.model}).parameters", per_model_only=True)
    return resolved


def _reject_unknown(
    given: Mapping[str, ParamValue],
    methods: Sequence[MergeMethod],
    where: str,
    *,
    per_model_only: bool = False,
) -> None:
    known = {p.name for m in methods for p in m.params if p.per_model or not per_model_only}
    unknown = sorted(set(given) - known)
    if unknown:
        names = ", ".join(m.name for m in methods)
        raise ConfigError(
            f"{where}: unknown parameter(s) {unknown} for method(s) {names}; known: {sorted(known) or 'none'}"
        )
