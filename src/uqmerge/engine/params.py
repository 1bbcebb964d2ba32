"""Resolution and validation of method parameters from a merge config (before any weight is read).

This is where every parameter is validated, once per config: :func:`resolve_method` binds each method
(:meth:`~uqmerge.methods.base.MergeMethod.bind`) and the executor runs the bound arguments without checking them
again. A parameter's value comes from, in order: the component's ``parameters:`` (for every model), the model's
``parameters:``, the top-level ``parameters:``, the method's default. ``compat: mergekit`` binds every method with
mergekit's semantics.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from uqmerge.core.errors import ConfigError
from uqmerge.engine.recipe import ComponentMethod, MergeConfig, ParamValue
from uqmerge.methods import Arguments, MergeMethod, get_method
from uqmerge.methods.base import Semantics

log = logging.getLogger(__name__)


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
    overrides: Mapping[str, ParamValue] | None = None,
    semantics: Semantics = "uqmerge",
) -> ResolvedMethod:
    """Bind ``method``'s parameters, each from the first that has it: ``overrides`` (a component's ``parameters:``,
    for every model), the model's parameters, ``shared`` (the top level), the default; all validated."""
    overrides = overrides or {}
    specs = method.specs(semantics, where=where)
    per_model = {
        spec.name: [
            overrides[spec.name] if spec.name in overrides else mp.get(spec.name, shared.get(spec.name, spec.default))
            for mp in model_params
        ]
        for spec in specs
        if spec.per_model
    }
    given = {**shared, **overrides}
    params = {spec.name: given[spec.name] for spec in specs if not spec.per_model and spec.name in given}
    bound = method.bind(per_model, params, len(model_params), where=where, semantics=semantics)
    return ResolvedMethod(method, bound)


def resolve_config_methods(config: MergeConfig) -> dict[str, ResolvedMethod | None]:
    """Resolved method for the top level ("*") and each component override (None = keep base).

    Raises ConfigError for unknown methods, unknown parameter keys and out-of-range values.
    """
    model_params = [m.parameters for m in config.models]
    semantics = config.compat
    top = get_method(config.merge_method)
    resolved: dict[str, ResolvedMethod | None] = {
        "*": resolve_method(top, model_params, config.parameters, where="parameters", semantics=semantics)
    }
    for key, spec in config.components.items():
        if isinstance(spec, ComponentMethod):
            method = get_method(spec.merge_method)
            where = f"components.{key}"
            resolved[key] = resolve_method(
                method, model_params, config.parameters, where=where, overrides=spec.parameters, semantics=semantics
            )
            _reject_unknown(spec.parameters, [method], f"{where}.parameters", semantics)
        else:
            resolved[key] = None
    used = [r.method for r in resolved.values() if r is not None]
    _reject_unknown(config.parameters, used, "parameters", semantics)
    for i, m in enumerate(config.models):
        _reject_unknown(m.parameters, used, f"models[{i}] ({m.model}).parameters", semantics, per_model_only=True)
    if semantics != "uqmerge":
        _note_inert(config, used, semantics)
    return resolved


def _note_inert(config: MergeConfig, methods: Sequence[MergeMethod], semantics: Semantics) -> None:
    """Log each parameter the config sets that changes nothing for a method under ``semantics`` (mergekit's too)."""
    given = set(config.parameters).union(*(m.parameters for m in config.models))
    given = given.union(*(c.parameters for c in config.components.values() if isinstance(c, ComponentMethod)))
    for method in {m.name: m for m in methods}.values():
        for name in sorted(given & set(method.compat[semantics].inert)):
            log.warning(
                "parameter %r has no effect on %s under %s semantics (%s accepts it and changes nothing)",
                name,
                method.name,
                semantics,
                semantics,
            )


def _reject_unknown(
    given: Mapping[str, ParamValue],
    methods: Sequence[MergeMethod],
    where: str,
    semantics: Semantics = "uqmerge",
    *,
    per_model_only: bool = False,
) -> None:
    known = {p.name for m in methods for p in m.specs(semantics) if p.per_model or not per_model_only}
    unknown = sorted(set(given) - known)
    if unknown:
        names = ", ".join(m.name for m in methods)
        raise ConfigError(
            f"{where}: unknown parameter(s) {unknown} for method(s) {names}; known: {sorted(known) or 'none'}"
        )
