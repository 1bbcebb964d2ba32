"""The merge-method contract: a typed pure kernel, its parameter specs, one binding path, optional block logic.

A method (:class:`MergeMethod`) is

* a **kernel**: a pure function of fp32 tensors and typed parameters, ``kernel(base, models, **arguments)``, or
  ``kernel(models, **arguments)`` for a method that reads no base; a randomized kernel also takes ``generators``
  (one per model). It never modifies its inputs, keeps their device, and returns the merged fp32 tensor;
* its **parameter specs** (:class:`Param`: name, default, valid range, per-model or global, and the keyword the
  kernel takes it as), plus ``check``, the constraints that tie several parameters together;
* optionally its **block protocol** (:class:`Blockwise`), with which the executor merges a tensor a block of rows
  at a time, so memory is bounded by the block size rather than by the largest tensor. An element-wise kernel
  needs nothing more: the generic adapter (:class:`ElementwiseBlocks`) applies the kernel to each block. A method
  whose result depends on statistics of the whole tensor (TIES's and Breadcrumbs' magnitude cuts, Model Stock's
  angle) gives its own ``start``.

Binding. :meth:`MergeMethod.bind` validates raw parameter values once (names, counts, each value's range, then
``check``) into :class:`Arguments`; the engine binds every method of a config before any weight is read
(:mod:`uqmerge.engine.params`). From :class:`Arguments`, one path builds the kernel's keyword arguments for whole
tensors (:meth:`MergeMethod.run`) and for row blocks (:meth:`MergeMethod.start_blocks`); kernels keep only cheap
internal assertions. ``merge(inputs)`` binds and runs in one call, for callers holding raw :class:`MergeInputs`.

Block protocol, in the executor's call order:

1. ``method.start_blocks(context)`` returns a :class:`BlockMerger` for the tensor described by the
   :class:`TensorContext` (name, shape, bound arguments, generators);
2. if ``merger.needs_statistics``, the executor shows it every block of the tensor, in row order, through
   ``merger.observe(block)``, then calls ``merger.end_pass()``; it repeats the pass while that returns True
   (per-tensor scalars such as TIES's magnitude thresholds or Model Stock's norms and dot products);
3. ``merger.merge(block)`` returns the merged rows of each block, called exactly once per block, in row order.

Blocks are ranges of whole rows (first-dimension indices) of every input. ``row_wise=False`` methods are
element-wise given their statistics (each entry's result depends only on the inputs at that entry), so a 1-D
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
from typing import Literal, Protocol

import torch
from torch import Tensor

from uqmerge.core.errors import ConfigError, PlanError

ParamValue = bool | float | int | str
"""A parameter value as a config gives it (bool first, so YAML ``true`` stays a bool)."""

Semantics = Literal["uqmerge", "mergekit"]
"""Whose definition of the methods a merge follows: uqmerge's own, or mergekit 0.1.5's (``compat: mergekit``)."""
SEMANTICS: tuple[str, ...] = ("uqmerge", "mergekit")


@dataclass(frozen=True)
class Param:
    """One method parameter with its default and valid range.

    ``per_model`` parameters (``weight``, ``density``) may be given per entry of ``models:`` and
    default to the top-level ``parameters:`` value; global ones (``lambda``) only at top level. A default of
    None makes a global parameter optional (the kernel then gets None). ``argument`` is the kernel's keyword
    for the parameter (default: its name).
    """

    name: str
    default: ParamValue | None
    help: str
    per_model: bool = False
    kind: type = float
    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    high_inclusive: bool = True
    choices: tuple[str, ...] | None = None
    argument: str | None = None
    required: bool = False

    @property
    def keyword(self) -> str:
        """The keyword the kernel takes this parameter as."""
        return self.argument or self.name

    def describe_range(self) -> str:
        """Human-readable valid range, e.g. ``(0, 1]``."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.kind is bool:
            return "true or false"
        lo = "-inf" if self.low is None else f"{self.low:g}"
        hi = "inf" if self.high is None else f"{self.high:g}"
        left = "[" if self.low_inclusive and self.low is not None else "("
        right = "]" if self.high_inclusive and self.high is not None else ")"
        return f"{left}{lo}, {hi}{right}"

    def check(self, value: object) -> str | None:
        """Return an error message if ``value`` is invalid for this parameter, else None."""
        if self.choices is not None:
            return None if value in self.choices else f"must be {self.describe_range()}, got {value!r}"
        if self.kind is bool:
            return None if isinstance(value, bool) else f"must be true or false, got {value!r}"
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

    def typed(self, value: ParamValue) -> ParamValue:
        """A validated ``value`` as the kernel takes it: a float, int or str per ``kind``."""
        return self.kind(value)


@dataclass(frozen=True)
class Arguments:
    """A method's parameters for a merge of ``n_models`` models, validated by :meth:`MergeMethod.bind`.

    ``per_model[p]`` holds parameter ``p`` of every model (each per-model parameter is present); ``params`` the
    global values as given, defaults filled in (an optional parameter left unset is absent); ``semantics`` the
    definition they were bound under (the kernel gets it as ``semantics=`` unless it is uqmerge's).
    """

    n_models: int
    per_model: Mapping[str, tuple[ParamValue, ...]] = field(default_factory=dict)
    params: Mapping[str, ParamValue] = field(default_factory=dict)
    semantics: Semantics = "uqmerge"


@dataclass(frozen=True)
class MergeInputs:
    """One output tensor's inputs with raw parameters, for :attr:`MergeMethod.merge` (binds, then runs).

    ``models`` and ``base`` are fp32 tensors on the compute device (never modified); ``per_model[p][i]`` is
    parameter ``p`` of model ``i`` (a missing parameter takes its default); ``params`` holds the global
    parameters. Randomized methods draw from ``generators[i]`` for model ``i`` (the seeding contract in the
    module docstring); without them, from ``generator`` in model order. ``semantics`` picks the method's
    definition (``"mergekit"``: mergekit 0.1.5's parameters, defaults and rules).
    """

    name: str
    models: Sequence[Tensor]
    base: Tensor | None
    per_model: Mapping[str, Sequence[ParamValue]] = field(default_factory=dict)
    params: Mapping[str, ParamValue | None] = field(default_factory=dict)
    generator: torch.Generator | None = None
    generators: Sequence[torch.Generator] | None = None
    semantics: Semantics = "uqmerge"

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
    arguments: Arguments
    generators: Sequence[torch.Generator] | None = None

    @property
    def n_models(self) -> int:
        return self.arguments.n_models

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

    def base_rows(self) -> Tensor:
        """The base's rows; a PlanError when the block carries none."""
        if self.base is None:
            raise PlanError(f"rows {self.start}:{self.stop}: this method needs the base model's rows")
        return self.base


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


class ElementwiseBlocks:
    """The generic block merger of an element-wise kernel: the kernel applied to each block's rows.

    Every entry goes through the operations of the whole-tensor merge, and random draws continue each model's
    stream block by block (the seeding contract), so the result equals the whole-tensor one bit for bit.
    """

    needs_statistics = False

    def __init__(self, merge_rows: Callable[[Sequence[Tensor], Tensor | None], Tensor]) -> None:
        self.merge_rows = merge_rows

    def observe(self, block: RowBlock) -> None:
        raise RuntimeError("an element-wise merge has no statistics pass")

    def end_pass(self) -> bool:
        return False

    def merge(self, block: RowBlock) -> Tensor:
        return self.merge_rows(block.models, block.base)


@dataclass(frozen=True)
class Blockwise:
    """A method's block protocol: how a tensor is merged a block of rows at a time, and its memory estimate.

    ``start`` None means the kernel is element-wise and runs on each block (:class:`ElementwiseBlocks`);
    otherwise ``start(context, **arguments)`` (the kernel's keyword arguments) makes the tensor's
    :class:`BlockMerger`. The working set per tensor entry (fp32 inputs, task vectors, masks, temporaries) is
    estimated as ``4·(fp32_per_model·N + fp32_fixed) + extra_bytes`` bytes for N models; the executor sizes
    blocks with it.
    """

    start: Callable[..., BlockMerger] | None = None
    row_wise: bool = False
    fp32_per_model: int = 3
    fp32_fixed: int = 8
    extra_bytes: int = 0

    def bytes_per_element(self, n_models: int) -> int:
        """Estimated working-set bytes per tensor entry when merging ``n_models`` models."""
        return 4 * (self.fp32_per_model * n_models + self.fp32_fixed) + self.extra_bytes


@dataclass(frozen=True)
class Compat:
    """A method under another tool's semantics: the parameters a config sets there, and their joint check.

    ``params`` carry that tool's names, defaults, ranges and required-ness; the kernel gets the bound values plus
    ``semantics=<name>``, and applies that tool's rules (keep counts, sign election, divisors) for it.
    """

    params: tuple[Param, ...]
    check: Callable[[Arguments], None] | None = None
    inert: tuple[str, ...] = ()
    """Parameters accepted because that tool accepts them, which do not change this method's result there."""


@dataclass(frozen=True)
class MergeMethod:
    """A registered merge method: its kernel, parameter specs, record for the docs, and optional block protocol.

    ``merge(inputs)`` is the kernel bound to raw :class:`MergeInputs` (:meth:`bind`, then :meth:`run`); it
    carries the kernel's name and docstring. ``compat`` maps another semantics (``"mergekit"``) to the method's
    parameters under it; a method without an entry has only uqmerge's semantics.
    """

    name: str
    kernel: Callable[..., Tensor]
    params: tuple[Param, ...]
    summary: str
    paper: str
    url: str
    requires_base: bool = True
    min_models: int = 1
    max_models: int | None = None
    randomized: bool = False
    blockwise: Blockwise | None = None
    check: Callable[[Arguments], None] | None = None
    compat: Mapping[str, Compat] = field(default_factory=dict)
    merge: Callable[[MergeInputs], Tensor] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        def merge(inputs: MergeInputs) -> Tensor:
            if not inputs.models:
                raise PlanError(f"tensor {inputs.name!r}: no models to merge")
            arguments = self.bind(
                inputs.per_model,
                inputs.params,
                len(inputs.models),
                where=f"tensor {inputs.name!r}",
                semantics=inputs.semantics,
            )
            return self.run(inputs.name, inputs.models, inputs.base, arguments, inputs.model_generators())

        merge.__name__ = merge.__qualname__ = self.kernel.__name__
        merge.__doc__ = self.kernel.__doc__
        object.__setattr__(self, "merge", merge)

    def specs(self, semantics: Semantics = "uqmerge", *, where: str = "") -> tuple[Param, ...]:
        """The parameter specs under ``semantics``; a ConfigError when the method has no such definition."""
        if semantics == "uqmerge":
            return self.params
        if semantics not in self.compat:
            supported = ", ".join(n for n in SEMANTICS if n == "uqmerge" or n in self.compat)
            raise ConfigError(
                f"{where + ': ' if where else ''}method {self.name!r} has no {semantics} semantics "
                f"({semantics} has no such method); it supports: {supported}"
            )
        return self.compat[semantics].params

    def param(self, name: str, semantics: Semantics = "uqmerge") -> Param | None:
        """The parameter spec called ``name`` (under ``semantics``), or None."""
        return next((p for p in self.specs(semantics) if p.name == name), None)

    def bind(
        self,
        per_model: Mapping[str, Sequence[ParamValue | None]],
        params: Mapping[str, ParamValue | None],
        n_models: int,
        *,
        where: str,
        semantics: Semantics = "uqmerge",
    ) -> Arguments:
        """Validate raw parameters for ``n_models`` models: the one check of names, counts, ranges and ``check``.

        A missing parameter takes its default, as does a global given as None; a required one without a value is
        an error. ``semantics`` picks the specs (:meth:`specs`). ConfigErrors start with ``where``.
        """
        specs = self.specs(semantics, where=where)
        if n_models < self.min_models or (self.max_models is not None and n_models > self.max_models):
            raise ConfigError(f"{where}: method {self.name!r} needs {self._model_count()}, got {n_models}")
        self._reject_unknown(per_model, params, where, specs)
        bound_per_model: dict[str, tuple[ParamValue, ...]] = {}
        bound_params: dict[str, ParamValue] = {}
        for spec in specs:
            if spec.per_model:
                values = per_model.get(spec.name, [spec.default] * n_models)
                if len(values) != n_models:
                    raise ConfigError(
                        f"{where}: parameter {spec.name!r} has {len(values)} values for {n_models} models"
                    )
                bound_per_model[spec.name] = tuple(
                    _per_model_value(self.name, spec, value, where, i) for i, value in enumerate(values)
                )
            else:
                value = params.get(spec.name)
                value = spec.default if value is None else value
                if value is None and spec.required:
                    raise ConfigError(
                        f"{where}: method {self.name!r} needs parameter {spec.name!r} ({semantics} semantics give it "
                        "no default); set it in `parameters:`"
                    )
                if value is not None:
                    _check_value(self.name, spec, value, where)
                    bound_params[spec.name] = value
        arguments = Arguments(n_models, bound_per_model, bound_params, semantics)
        check = self.check if semantics == "uqmerge" else self.compat[semantics].check
        if check is not None:
            try:
                check(arguments)
            except ConfigError as e:
                raise ConfigError(f"{where}: method {self.name!r}: {e}") from None
        return arguments

    def run(
        self,
        name: str,
        models: Sequence[Tensor],
        base: Tensor | None,
        arguments: Arguments,
        generators: Sequence[torch.Generator] | None = None,
    ) -> Tensor:
        """The kernel on whole tensors with bound ``arguments`` (inputs checked for structure only)."""
        if not models:
            raise PlanError(f"tensor {name!r}: no models to merge")
        shapes = [m.shape for m in models] + ([base.shape] if base is not None else [])
        if any(s != shapes[0] for s in shapes):
            raise PlanError(f"tensor {name!r}: shapes differ between inputs: {[tuple(s) for s in shapes]}")
        return self._call(name, models, base, self._keywords(name, arguments, generators, len(models)))

    def start_blocks(self, context: TensorContext) -> BlockMerger:
        """The :class:`BlockMerger` of one tensor: the generic element-wise adapter, or the method's own ``start``."""
        if self.blockwise is None:
            raise PlanError(f"method {self.name!r} has no block protocol; merge {context.name!r} whole")
        keywords = self._keywords(context.name, context.arguments, context.generators, context.n_models)
        if self.blockwise.start is not None:
            return self.blockwise.start(context, **keywords)
        return ElementwiseBlocks(lambda models, base: self._call(context.name, models, base, keywords))

    def _keywords(
        self, name: str, arguments: Arguments, generators: Sequence[torch.Generator] | None, n_models: int
    ) -> dict[str, object]:
        """The kernel's keyword arguments: typed parameter values, and ``generators`` if randomized."""
        if arguments.n_models != n_models:
            raise PlanError(f"tensor {name!r}: parameters bound for {arguments.n_models} models, got {n_models}")
        keywords: dict[str, object] = {}
        for spec in self.specs(arguments.semantics):
            if spec.per_model:
                keywords[spec.keyword] = [spec.typed(v) for v in arguments.per_model[spec.name]]
            else:
                value = arguments.params.get(spec.name)
                keywords[spec.keyword] = None if value is None else spec.typed(value)
        if arguments.semantics != "uqmerge":
            keywords["semantics"] = arguments.semantics
        if self.randomized:
            if generators is None:
                raise PlanError(f"tensor {name!r}: this randomized method needs a seeded generator")
            if len(generators) != n_models:
                raise PlanError(
                    f"tensor {name!r}: {len(generators)} generators for {n_models} models; give one per model"
                )
            keywords["generators"] = list(generators)
        return keywords

    def _call(self, name: str, models: Sequence[Tensor], base: Tensor | None, keywords: Mapping[str, object]) -> Tensor:
        if not self.requires_base:
            return self.kernel(models, **keywords)
        if base is None:
            raise PlanError(f"tensor {name!r}: this method needs the base model's tensor; set `base_model:`")
        return self.kernel(base, models, **keywords)

    def _reject_unknown(
        self, per_model: Mapping[str, object], params: Mapping[str, object], where: str, specs: Sequence[Param]
    ) -> None:
        for given, kind, is_per_model in ((per_model, "per-model", True), (params, "global", False)):
            known = sorted(p.name for p in specs if p.per_model == is_per_model)
            unknown = sorted(set(given) - set(known))
            if unknown:
                raise ConfigError(
                    f"{where}: unknown {kind} parameter(s) {', '.join(map(repr, unknown))} for method "
                    f"{self.name!r}; it takes: {', '.join(known) or 'none'}"
                )

    def _model_count(self) -> str:
        """``at least two models``, ``exactly two models``, ``one to three models``."""
        low, high = self.min_models, self.max_models
        if high is None:
            return f"at least {_count(low)}"
        if high == low:
            return f"exactly {_count(low)}"
        return f"{_NUMBERS.get(low, str(low))} to {_count(high)}"


_NUMBERS = {0: "no", 1: "one", 2: "two", 3: "three", 4: "four"}


def _count(n: int) -> str:
    return f"{_NUMBERS.get(n, str(n))} model{'' if n == 1 else 's'}"


def _check_value(method: str, spec: Param, value: object, where: str) -> None:
    problem = spec.check(value)
    if problem:
        raise ConfigError(f"{where}: parameter {spec.name!r} of method {method!r} {problem}")


def _per_model_value(method: str, spec: Param, value: ParamValue | None, where: str, model: int) -> ParamValue:
    """Model ``model``'s value of ``spec``, validated and stored as a float (a str for choice parameters)."""
    if value is None:
        raise ConfigError(
            f"{where}: model {model} lacks required parameter {spec.name!r}; set it in that model's `parameters:` "
            "or in the top-level `parameters:`"
        )
    _check_value(method, spec, value, f"{where}, model {model}")
    return value if spec.kind in (str, bool) else float(value)
