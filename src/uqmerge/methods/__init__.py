"""Merge methods: typed pure kernels with parameter specs (the contract in :mod:`uqmerge.methods.base`), registered
explicitly in :mod:`uqmerge.methods.registry`."""

from uqmerge.methods.base import Arguments, MergeInputs, MergeMethod, Param
from uqmerge.methods.registry import get_method, method_names

__all__ = ["Arguments", "MergeInputs", "MergeMethod", "Param", "get_method", "method_names"]
