"""The merge-method interface: typed parameter specs, the per-tensor inputs, and the method record."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass(frozen=True)
class Param:
    """One method parameter with its default and valid range.

    ``per_model`` parameters (``weight``, ``density``) may be given per entry of ``models:`` and
    default to the top-level ``parameters:`` value; global ones (``lambda``) only at top level.
    """

    name: str
    default: float | int | str | None
    help: str
    per_model: bool = False
    kind: type = float
    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    high_inclusive: bool = True
    choices: tuple[str, ...] | None = None

    def describe_range(self) -> str:
        """Human-readable valid range, e.g. ``(0, 1]``."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        lo = "-inf" if self.low is None else f"{self.low:g}"
        hi = "inf" if self.high is None else f"{self.high:g}"
        left = "[" if self.low_inclusive and self.low is not None else "("
        right = "]" if self.high_inclusive and self.high is not None else ")"
        return f"{left}{lo}, {hi}{right}"

    def check(self, value: object) -> str | None:
        """Return an error message if ``value`` is invalid for this parameter, else None."""
        if self.choices is not None:
            return None if value in self.choices else f"must be {self.describe_range()}, got {value!r}"
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"must be a number, got {value!r}"
        if self.kind is int and not float(value).is_integer():
            return f"must be an integer, got {value!r}"
        v = float(value)
        if v != v:
            return "must not be NaN"
        if self.low is not None and (v < self.low or (v == self.low and not self.low_inclusive)):
            return f"must be in {self.describe_range()}, got {value!r}"
        if self.high is not None and (v > self.high or (v == self.high and not self.high_inclusive)):
            return f"must be in {self.describe_range()}, got {value!r}"
        return None


@dataclass(frozen=True)
class MergeInputs:
    """Everything a method sees for one output tensor.

    ``models`` and ``base`` are fp32 tensors on the compute device (never modify them in place);
    ``per_model[p][i]`` is parameter ``p`` of model ``i``; ``params`` holds the global parameters;
    ``generator`` is seeded from (seed, tensor name) for randomized methods, else None.
    """

    name: str
    models: Sequence[Tensor]
    base: Tensor | None
    per_model: Mapping[str, Sequence[float]] = field(default_factory=dict)
    params: Mapping[str, float | int | str] = field(default_factory=dict)
    generator: torch.Generator | None = None


@dataclass(frozen=True)
class MergeMethod:
    """A registered merge method: a pure function from :class:`MergeInputs` to the merged fp32 tensor."""

    name: str
    merge: Callable[[MergeInputs], Tensor]
    params: tuple[Param, ...]
    summary: str
    paper: str
    url: str
    requires_base: bool = True
    min_models: int = 1
    max_models: int | None = None
    randomized: bool = False

    def param(self, name: str) -> Param | None:
        """The parameter spec called ``name``, or None."""
        return next((p for p in self.params if p.name == name), None)
