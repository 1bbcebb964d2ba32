"""The UQ-Merge paper's six baseline merge methods (placeholder list until implemented)."""

from uqmerge.methods.base import MergeMethod

BASELINE_METHODS: tuple[MergeMethod, ...] = ()
