"""The streaming executor: tensor by tensor (large ones in blocks of rows), merge in fp32, cast, hand to a sink.

Memory. A merged tensor whose method has a block protocol (:class:`~uqmerge.methods.base.Blockwise`) is cut
into blocks of whole rows, as many rows as keep the method's estimated fp32 working set (``bytes_per_element(N)``
× entries) within ``max_block_bytes``; a tensor that fits is a single block. Besides one block's working set, a
task holds its output tensor in the output dtype (until the sink takes it) and, for methods with statistics
passes, at most ``max_cache_bytes`` of stored inputs (see Reads). Methods without a block protocol get whole fp32
tensors. Kept-base tensors are copied in their stored dtype and compared with the models' copies block by block.

Reads. Every input tensor is read once, with one exception: a method with statistics passes (TIES,
Breadcrumbs, Model Stock) over a tensor of several blocks sees every block once per pass (a single-block tensor
is read once and kept for all passes). If the tensor's inputs in their stored dtype fit in ``max_cache_bytes``
they are read once and kept for the passes; otherwise each later pass re-reads its rows (positional reads of
contiguous row ranges, usually from the page cache). ``MergeReport.bytes_read`` counts every byte read and
``bytes_reread`` the re-reads.

Parameters. The plan's methods come bound (:class:`~uqmerge.engine.params.ResolvedMethod`: validated once, at
config time); the executor runs their kernels on whole tensors (``method.run``) or row blocks
(``method.start_blocks``) with those arguments.

Seeding contract. Randomized methods get CPU generators, so masks are the same on any compute device:
``generators[i]`` (the kernel's, ``MergeInputs.generators[i]``, ``TensorContext.generators[i]``) seeded with
``tensor_seed(seed, name, i)`` for model i. The baseline methods draw model i's random numbers from
``generators[i]`` in flat (row-major) order of the tensor's entries, one ``torch.rand`` per block continuing the
stream; so results depend neither on the order tensors are merged in nor on block boundaries (``torch.rand`` on
consecutive blocks from one CPU generator equals one draw over the whole tensor; ``tests/test_blockwise.py``
checks it).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from uqmerge.checkpoint.lora import ModelReader
from uqmerge.core.devices import resolve_device
from uqmerge.core.errors import CheckpointError, PlanError, UQMergeError
from uqmerge.core.seeds import seeded_generator, stable_seed
from uqmerge.engine.params import ResolvedMethod
from uqmerge.engine.plan import MergePlan, TensorTask
from uqmerge.engine.sinks import TensorSink
from uqmerge.methods.base import BlockMerger, Blockwise, RowBlock, TensorContext

log = logging.getLogger(__name__)

DEFAULT_MAX_BLOCK_BYTES = 16 * 2**20
"""Default working-set bound of one block. Blocks of this size (~200K entries for TIES of 4 models) stay in the
CPU caches and are faster than whole tensors, and they keep a 4-expert merge of ~540M parameters far under 1 GB."""
DEFAULT_MAX_CACHE_BYTES = 64 * 2**20
"""Default bound on a tensor's stored inputs kept between statistics passes instead of re-read."""
_MAX_STATISTICS_PASSES = 8
_KEEP_BASE_BYTES_PER_ELEMENT = 12  # base rows and model rows in fp32, their difference


def tensor_seed(seed: int, name: str, model: int | None = None) -> int:
    """The seed of a tensor's random stream: :func:`~uqmerge.core.seeds.stable_seed` of (seed, name[, model]).

    With ``model``: model ``model``'s own stream (the kernel's ``generators[model]``), which blockwise merges
    consume block by block; without it: a single stream for the whole tensor.
    """
    return stable_seed(seed, name) if model is None else stable_seed(seed, name, model)


@dataclass
class MergeReport:
    """What the executor did: counts, bytes read, and keep-base tensors that differed across inputs.

    ``bytes_read`` counts every read, ``bytes_reread`` the part read again by statistics passes over tensors
    too large to keep (see the module docstring); ``blocked_tensors`` counts tensors merged in several blocks.
    """

    tensors: int = 0
    blocked_tensors: int = 0
    bytes_read: int = 0
    bytes_reread: int = 0
    keep_base_differences: dict[str, float] = field(default_factory=dict)


class InputReads:
    """Reads input tensors whole or by rows, converts floating ones to fp32 on the compute device, refuses
    non-finite ones (unless allowed), and counts the bytes read. The dense merge and the LoRA-adapter output share
    it."""

    def __init__(self, device: torch.device, allow_nonfinite: bool) -> None:
        self.device = device
        self.allow_nonfinite = allow_nonfinite
        self.bytes_read = 0
        self.bytes_reread = 0

    def raw(
        self, reader: ModelReader, name: str, rows: tuple[int, int] | None = None, *, again: bool = False
    ) -> torch.Tensor:
        """Tensor ``name`` (or its ``rows``) as stored, on the CPU; ``again`` marks a re-read."""
        return self.count(reader.read(name) if rows is None else reader.read_rows(name, *rows), again=again)

    def count(self, tensor: torch.Tensor, *, again: bool = False) -> torch.Tensor:
        """``tensor``, just read as stored, with its bytes counted (as re-read too when ``again``)."""
        nbytes = tensor.numel() * tensor.element_size()
        self.bytes_read += nbytes
        if again:
            self.bytes_reread += nbytes
        return tensor

    def compute(self, raw: torch.Tensor, source: Path, name: str, *, check: bool = True) -> torch.Tensor:
        """A floating ``raw`` as fp32 on the compute device, refused if it holds NaN/Inf (unless allowed or not
        ``check``: a tensor copied from the base, such as Gemma 4's ±inf clamp bounds, is never computed with)."""
        if not raw.is_floating_point():
            return raw
        tensor = raw.to(device=self.device, dtype=torch.float32)
        if check:
            self.check_finite(tensor, source, name)
        return tensor

    def check_finite(self, tensor: torch.Tensor, source: Path, name: str) -> None:
        """CheckpointError naming ``source`` and ``name`` unless every entry is finite (or non-finite is allowed).

        A finite sum proves every entry finite (NaN and ±Inf propagate) and costs one fast reduction; only a
        non-finite sum (which finite entries can also reach by overflow) is checked entry by entry.
        """
        if self.allow_nonfinite or bool(torch.isfinite(tensor.sum())):
            return
        if not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(
                f"{source}: tensor {name!r} contains NaN or Inf; fix the checkpoint or pass "
                "--allow-nonfinite to merge it anyway"
            )

    def read(self, reader: ModelReader, name: str) -> torch.Tensor:
        """Whole tensor ``name``: fp32 on the compute device if floating."""
        return self.compute(self.raw(reader, name), reader.path, name)


def max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest ``|a − b|`` over entries that differ; equal infinities and NaN against NaN count as equal, and a
    difference at a non-finite entry is ``inf``."""
    same = (a == b) | (torch.isnan(a) & torch.isnan(b))
    if bool(same.all()):
        return 0.0
    return float((a - b).abs()[~same].nan_to_num(nan=math.inf, posinf=math.inf).max())


def row_bounds(n_rows: int, rows_per_block: int) -> list[tuple[int, int]]:
    """Consecutive ``[start, stop)`` row ranges of at most ``rows_per_block`` rows covering ``n_rows``."""
    step = max(1, rows_per_block)
    return [(start, min(start + step, n_rows)) for start in range(0, n_rows, step)] or [(0, 0)]


def rows_per_block(shape: tuple[int, ...], bytes_per_element: int, max_block_bytes: int) -> int:
    """Rows of a tensor of ``shape`` (≥ 1-D) per block so ``bytes_per_element`` × entries ≤ ``max_block_bytes``."""
    per_row = max(1, math.prod(shape[1:]) * bytes_per_element)
    return max(1, min(shape[0], max_block_bytes // per_row))


class _RowSource:
    """The row blocks of one tensor's inputs (models, then the base if needed), pass after pass.

    Inputs come from disk, or from ``cache`` (the stored inputs, read once on the first pass). A pass made of a
    single block keeps it, so a later single-block pass over the same rows reuses it instead of reading again.
    Rows read from disk a second time are counted as re-reads.
    """

    def __init__(
        self, inputs: InputReads, name: str, models: Sequence[ModelReader], base: ModelReader | None, *, cache: bool
    ) -> None:
        self.inputs = inputs
        self.name = name
        self.sources: list[ModelReader] = [*models, *([base] if base is not None else [])]
        self.n_models = len(models)
        self.cache = cache
        self._disk_passes = 0
        self._kept: tuple[tuple[int, int], RowBlock] | None = None
        self._raw: list[torch.Tensor] | None = None

    def blocks(self, bounds: list[tuple[int, int]]) -> Iterator[RowBlock]:
        """The blocks with the given row ``bounds``, in row order (one pass)."""
        if self._kept is not None and [self._kept[0]] == bounds:
            yield self._kept[1]
            return
        self._kept = None
        if self.cache and self._raw is None:
            self._raw = [self.inputs.raw(reader, self.name) for reader in self.sources]
        again = self._raw is None and self._disk_passes > 0
        if self._raw is None:
            self._disk_passes += 1
        for rows in bounds:
            block = self._block(rows, again=again)
            if len(bounds) == 1:
                self._kept = (rows, block)
            yield block

    def _block(self, rows: tuple[int, int], *, again: bool) -> RowBlock:
        start, stop = rows
        tensors = []
        for k, reader in enumerate(self.sources):
            if self._raw is not None:
                raw = self._raw[k][start:stop]
            else:
                raw = self.inputs.raw(reader, self.name, rows, again=again)
            tensors.append(self.inputs.compute(raw, reader.path, self.name))
        row_numel = math.prod(tensors[0].shape[1:]) if tensors and tensors[0].dim() else 1
        base = tensors[self.n_models] if len(self.sources) > self.n_models else None
        return RowBlock(start, stop, start * row_numel, tensors[: self.n_models], base)


class _Executor:
    """Merges the plan's tasks one at a time (see the module docstring for memory, reads and seeding)."""

    def __init__(
        self, plan: MergePlan, inputs: InputReads, report: MergeReport, max_block_bytes: int, max_cache_bytes: int
    ) -> None:
        if max_block_bytes <= 0:
            raise UQMergeError(f"max block size must be positive bytes, got {max_block_bytes}")
        if max_cache_bytes < 0:
            raise UQMergeError(f"max cache size must be zero or positive bytes, got {max_cache_bytes}")
        self.plan = plan
        self.inputs = inputs
        self.report = report
        self.max_block_bytes = max_block_bytes
        self.max_cache_bytes = max_cache_bytes

    def merge(self, task: TensorTask) -> torch.Tensor:
        """The output tensor of ``task`` in its output dtype, on the CPU."""
        action = task.action
        if action is None:
            return self._keep_base(task).to(dtype=task.out_dtype)
        blockwise = action.method.blockwise
        if blockwise is None or not task.shape or math.prod(task.shape) == 0:
            return self._merge_whole(task, action).to(dtype=task.out_dtype, device="cpu")
        return self._merge_blocks(task, action, blockwise)

    def _generators(self, task: TensorTask, action: ResolvedMethod) -> list[torch.Generator] | None:
        if not action.method.randomized:
            return None
        seed = self.plan.config.seed
        return [seeded_generator(tensor_seed(seed, task.name, i)) for i in range(len(self.plan.models))]

    def _merge_whole(self, task: TensorTask, action: ResolvedMethod) -> torch.Tensor:
        method = action.method
        models = [self.inputs.read(reader, task.name) for reader in self.plan.models]
        # Without `base_model:` the first model stands in as the base; never read it twice.
        base = self.inputs.read(self.plan.base, task.name) if method.requires_base else None
        merged = method.run(task.name, models, base, action.arguments, self._generators(task, action))
        _check_shape(method.name, task.name, merged, task.shape)
        return merged

    def _merge_blocks(self, task: TensorTask, action: ResolvedMethod, blockwise: Blockwise) -> torch.Tensor:
        method = action.method
        n = len(self.plan.models)
        merger = method.start_blocks(
            TensorContext(task.name, task.shape, action.arguments, self._generators(task, action))
        )
        bounds = self._bounds(task.shape, blockwise, blockwise.bytes_per_element(n))
        single = len(bounds) == 1
        # Stored inputs are kept between passes when they fit and would otherwise be read more than once.
        reads = 1 + (merger.needs_statistics and not single)
        readers = [*self.plan.models, *([self.plan.base] if method.requires_base else [])]
        stored = sum(r.info(task.name).nbytes for r in readers)
        cache = reads > 1 and stored <= self.max_cache_bytes
        base = self.plan.base if method.requires_base else None
        source = _RowSource(self.inputs, task.name, self.plan.models, base, cache=cache)
        if merger.needs_statistics:
            _run_statistics(merger, source, bounds, method.name, task.name)
        if single:
            (block,) = source.blocks(bounds)
            merged = merger.merge(block)
            _check_shape(method.name, task.name, merged, task.shape)
            return merged.to(dtype=task.out_dtype, device="cpu")
        self.report.blocked_tensors += 1
        out = torch.empty(task.shape, dtype=task.out_dtype)
        for block in source.blocks(bounds):
            merged = merger.merge(block)
            _check_shape(method.name, task.name, merged, (block.stop - block.start, *task.shape[1:]))
            out[block.start : block.stop].copy_(merged)
            del block, merged  # free this block before the next one is read
        return out

    def _bounds(self, shape: tuple[int, ...], blockwise: Blockwise, bytes_per_element: int) -> list[tuple[int, int]]:
        """Row blocks of a tensor of ``shape`` whose working set stays within ``max_block_bytes``."""
        if blockwise.row_wise and len(shape) < 2:
            return [(0, shape[0])]
        return row_bounds(shape[0], rows_per_block(shape, bytes_per_element, self.max_block_bytes))

    def _keep_base(self, task: TensorTask) -> torch.Tensor:
        """The base's tensor as stored; with ``verify_keep_base``, the models' copies compared block by block."""
        base_reader = self.plan.base
        base = self.inputs.raw(base_reader, task.name)
        if not base.is_floating_point():
            return base
        verified = self.plan.models_to_verify(task.name) if self.plan.config.verify_keep_base else []
        if not verified:
            return base
        bounds = (
            row_bounds(base.shape[0], rows_per_block(base.shape, _KEEP_BASE_BYTES_PER_ELEMENT, self.max_block_bytes))
            if base.dim()
            else [None]
        )
        for rows in bounds:
            base_rows = self.inputs.compute(
                base if rows is None else base[rows[0] : rows[1]], base_reader.path, task.name, check=False
            )
            for reader in verified:
                raw = self.inputs.raw(reader, task.name, rows)
                diff = max_difference(self.inputs.compute(raw, reader.path, task.name, check=False), base_rows)
                if diff > 0:
                    differences = self.report.keep_base_differences
                    differences[task.name] = max(diff, differences.get(task.name, 0.0))
        return base


def _run_statistics(
    merger: BlockMerger, source: _RowSource, bounds: list[tuple[int, int]], method: str, name: str
) -> None:
    for _ in range(_MAX_STATISTICS_PASSES):
        for block in source.blocks(bounds):
            merger.observe(block)
            del block  # free this block before the next one is read
        if not merger.end_pass():
            return
    raise PlanError(f"method {method!r} asked for more than {_MAX_STATISTICS_PASSES} statistics passes over {name!r}")


def _check_shape(method: str, name: str, merged: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(merged.shape) != tuple(shape):
        raise PlanError(f"method {method!r} returned shape {list(merged.shape)} for {name!r}, expected {list(shape)}")


def execute_plan(
    plan: MergePlan,
    sink: TensorSink,
    *,
    device: str = "cpu",
    allow_nonfinite: bool = False,
    quiet: bool = False,
    max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES,
    max_cache_bytes: int = DEFAULT_MAX_CACHE_BYTES,
) -> MergeReport:
    """Run every task in plan order, writing through ``sink``; on any error the sink is aborted.

    ``max_block_bytes`` bounds the working set of a block and ``max_cache_bytes`` the stored inputs of a tensor
    kept between statistics passes (see the module docstring).
    """
    dev = resolve_device(device)
    inputs = InputReads(dev, allow_nonfinite)
    report = MergeReport()
    executor = _Executor(plan, inputs, report, max_block_bytes, max_cache_bytes)
    progress = Progress(
        TextColumn("[bold]merging"),
        BarColumn(),
        DownloadColumn(),
        TextColumn("{task.fields[tensor]}", style="dim"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=quiet,
        transient=False,
    )
    try:
        with progress:
            bar = progress.add_task("merge", total=plan.input_bytes(), tensor="")
            for task in plan.tasks:
                progress.update(bar, tensor=task.name[-48:])
                before = inputs.bytes_read - inputs.bytes_reread
                with torch.no_grad():
                    merged = executor.merge(task)
                sink.write(task.name, merged)
                del merged
                report.tensors += 1
                progress.advance(bar, inputs.bytes_read - inputs.bytes_reread - before)
        sink.close()
    except BaseException:
        sink.abort()
        raise
    report.bytes_read = inputs.bytes_read
    report.bytes_reread = inputs.bytes_reread
    _warn_keep_base(report)
    return report


def _warn_keep_base(report: MergeReport) -> None:
    if report.keep_base_differences:
        worst = max(report.keep_base_differences, key=lambda k: report.keep_base_differences[k])
        log.warning(
            "%d tensor(s) kept from the base differ across inputs (max |diff| %.3g in %s); the inputs' copies "
            "were ignored. Merge that component instead if they were meant to be fine-tuned.",
            len(report.keep_base_differences),
            report.keep_base_differences[worst],
            worst,
        )
