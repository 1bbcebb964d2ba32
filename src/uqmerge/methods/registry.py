"""The explicit method registry: every method module lists its methods; this module collects them."""

from __future__ import annotations

from uqmerge.core.errors import ConfigError
from uqmerge.methods.base import MergeMethod
from uqmerge.methods.baselines import BASELINE_METHODS
from uqmerge.methods.optmerge import OPTMERGE_METHODS
from uqmerge.methods.slerp import SLERP_METHODS
from uqmerge.methods.subspace import SUBSPACE_METHODS
from uqmerge.methods.wudi import WUDI_METHODS


def _collect() -> dict[str, MergeMethod]:
    methods: dict[str, MergeMethod] = {}
    for method in (*BASELINE_METHODS, *SUBSPACE_METHODS, *WUDI_METHODS, *OPTMERGE_METHODS, *SLERP_METHODS):
        if method.name in methods:
            raise RuntimeError(f"merge method {method.name!r} registered twice")
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
