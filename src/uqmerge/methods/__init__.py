"""Merge methods: pure typed tensor functions and an explicit registry."""

from uqmerge.methods.base import MergeInputs, MergeMethod, Param
from uqmerge.methods.registry import get_method, method_names

__all__ = ["MergeInputs", "MergeMethod", "Param", "get_method", "method_names"]
