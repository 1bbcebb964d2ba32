"""The merge-method interface: typed parameter specs, the per-tensor inputs, the block protocol, the method record.

A method always has ``merge``: a pure function of one whole tensor's :class:`MergeInputs`. It may also have a
:class:`Blockwise` protocol, which lets the executor merge a tensor a block of rows at a time, so memory is bounded
by the block size rather than by the largest tensor:

1. ``blockwise.start(context)`` validates the parameters against the tensor's :class:`TensorContext` (name,
   shape, per-model and global parameters, generators) and returns a :class:`BlockMerger` for that tensor;
2. if ``merger.needs_statistics``, the executor shows it every block of the tensor, in row order, through
   ``merger.observe(block)``, then calls ``merger.end_pass()``; it repeats the pass while that returns True
   (per-tensor scalars such as TIES's magnitude thresholds or Model Stock's norms and dot products);
3. ``merger.merge(block)`` returns the merged rows of each block, called exactly once per block, in row order.

Blocks are ranges of whole rows (first-dimension indices) of every input. ``row_wise=False`` methods are
elementwise given their statistics (each entry's result depends only on the inputs at that entry), so a 1-D
tensor may be split too; ``row_wise=True`` methods (DELLA ranks entries within a row) need whole rows, and a
0-D or 1-D tensor is then one block. Results must not depend on the block boundaries: the executor may use one
block or many.

Seeding contract for randomized methods: the engine gives model ``i`` of a tensor its own CPU generator,
seeded from (seed, tensor name, i) (``MergeInputs.generators``, ``TensorContext.generators``), and the method
draws that model's random numbers from it in flat (row-major) order of the tensor's entries. Drawing a
block's numbers as one ``torch.rand`` of the block's shape continues the same stream, so a blockwise merge
draws exactly what the whole-tensor merge draws (the executor's tests check this property of ``torch.rand``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

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
    ``per_model[p][i]`` is parameter ``p`` of model ``i``; ``params`` holds the global parameters.
    Randomized methods draw from ``generators[i]`` for model ``i`` when given (the engine's seeding
    contract, see the module docstring); without it, from ``generator`` in model order. The engine seeds
    ``generator`` from (seed, tensor name) and ``generators[i]`` from (seed, tensor name, i).
    """

    name: str
    models: Sequence[Tensor]
    base: Tensor | None
    per_model: Mapping[str, Sequence[float]] = field(default_factory=dict)
    params: Mapping[str, float | int | str] = field(default_factory=dict)
    generator: torch.Generator | None = None
    generators: Sequence[torch.Generator] | None = None

    def model_generators(self) -> list[torch.Generator] | None:
        """One generator per model: ``generators``, else ``generator`` repeated (drawn in model order)."""
        if self.generators is not None:
            return list(self.generators)
        return None if self.generator is None else [self.generator] * len(self.models)


@dataclass(frozen=True)
class TensorContext:
    """What a blockwise merge knows about its tensor before reading any of it."""

    name: str
    shape: tuple[int, ...]
    n_models: int
    per_model: Mapping[str, Sequence[float]] = field(default_factory=dict)
    params: Mapping[str, float | int | str] = field(default_factory=dict)
    generators: Sequence[torch.Generator] | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class RowBlock:
    """Rows ``start:stop`` of every input of one tensor: fp32 on the compute device (never modify them).

    ``offset`` is the flat (row-major) index of the block's first entry in the whole tensor.
    """

    start: int
    stop: int
    offset: int
    models: Sequence[Tensor]
    base: Tensor | None


class BlockMerger(Protocol):
    """One tensor's blockwise merge (see the module docstring for the call order)."""

    needs_statistics: bool

    def observe(self, block: RowBlock) -> None:
        """Statistics pass: see one block; every block is observed once per pass, in row order."""
        ...

    def end_pass(self) -> bool:
        """Close a statistics pass; True when another pass over all blocks is needed."""
        ...

    def merge(self, block: RowBlock) -> Tensor:
        """The merged fp32 rows of ``block`` (called once per block, in row order, after the statistics)."""
        ...


@dataclass(frozen=True)
class Blockwise:
    """A method's block protocol: ``start`` makes a tensor's :class:`BlockMerger`; sizing for the executor.

    The working set per tensor entry (fp32 inputs, task vectors, masks, temporaries) is estimated as
    ``4·(fp32_per_model·N + fp32_fixed) + extra_bytes`` bytes for N models; the executor sizes blocks with it.
    """

    start: Callable[[TensorContext], BlockMerger]
    row_wise: bool = False
    fp32_per_model: int = 3
    fp32_fixed: int = 8
    extra_bytes: int = 0

    def bytes_per_element(self, n_models: int) -> int:
        """Estimated working-set bytes per tensor entry when merging ``n_models`` models."""
        return 4 * (self.fp32_per_model * n_models + self.fp32_fixed) + self.extra_bytes


@dataclass(frozen=True)
class MergeMethod:
    """A registered merge method: a pure function from :class:`MergeInputs` to the merged fp32 tensor.

    ``blockwise`` (optional) lets the executor merge tensors a block of rows at a time; methods without it
    always get whole tensors.
    """

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
    blockwise: Blockwise | None = None

    def param(self, name: str) -> Param | None:
        """The parameter spec called ``name``, or None."""
        return next((p for p in self.params if p.name == name), None)
