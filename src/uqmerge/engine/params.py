"""Resolution and validation of method parameters from a merge config (before any weight is read).

This is where every parameter is validated, once per config: :func:`resolve_method` binds each method
(:meth:`~uqmerge.methods.base.MergeMethod.bind`) and the executor runs the bound arguments without checking them
again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from uqmerge.core.errors import ConfigError
from uqmerge.engine.recipe import ComponentMethod, MergeConfig, ParamValue
from uqmerge.methods import Arguments, MergeMethod, get_method


@dataclass(frozen=True)
class ResolvedMethod:
    """A method with its parameters bound for the config's models: per-model tuples and global values."""

    method: MergeMethod
    arguments: Arguments

    @property
    def per_model(self) -> Mapping[str, tuple[ParamValue, ...]]:
        """Each per-model parameter's value for every model."""
        return self.arguments.per_model

    @property
    def params(self) -> Mapping[str, ParamValue]:
        """The global parameters (defaults filled in; an optional parameter left unset is absent)."""
        return self.arguments.params

    def describe(self) -> dict[str, object]:
        """JSON-friendly form for the recipe and model card."""
        return {
            "merge_method": self.method.name,
            "per_model": dict(self.per_model),
            "parameters": dict(self.params),
        }


def resolve_method(
    method: MergeMethod,
    model_params: Sequence[Mapping[str, ParamValue]],
    shared: Mapping[str, ParamValue],
    *,
    where: str,
) -> ResolvedMethod:
    """Bind ``method``'s parameters: per-model value, else the shared value, else the default; all validated."""
    per_model = {
        spec.name: [mp.get(spec.name, shared.get(spec.name, spec.default)) for mp in model_params]
        for spec in method.params
        if spec.per_model
    }
    params = {spec.name: shared[spec.name] for spec in method.params if not spec.per_model and spec.name in shared}
    return ResolvedMethod(method, method.bind(per_model, params, len(model_params), where=where))


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
