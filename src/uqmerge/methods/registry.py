"""The explicit method registry: one line per method module; each module lists its methods as ``METHODS``."""

from __future__ import annotations

from importlib import import_module

from uqmerge.core.errors import ConfigError
from uqmerge.methods.base import MergeMethod

METHOD_MODULES: tuple[str, ...] = (
    "uqmerge.methods.baselines",
    "uqmerge.methods.subspace",
    "uqmerge.methods.wudi",
    "uqmerge.methods.optmerge",
    "uqmerge.methods.slerp",
    "uqmerge.methods.adamms",
)
"""Every module that defines merge methods, in the order their methods are registered."""


def _collect() -> dict[str, MergeMethod]:
    methods: dict[str, MergeMethod] = {}
    for module in METHOD_MODULES:
        for method in import_module(module).METHODS:
            if method.name in methods:
                raise RuntimeError(f"merge method {method.name!r} registered twice ({module})")
            methods[method.name] = method
    return methods


_REGISTRY = _collect()


def method_names() -> list[str]:
    """Names of all registered merge methods, sorted."""
    return sorted(_REGISTRY)


def get_method(name: str) -> MergeMethod:
    """The method called ``name``; a ConfigError listing the known names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown merge method {name!r}; known methods: {', '.join(method_names())}") from None
