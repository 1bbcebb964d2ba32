"""The streaming executor: tensor by tensor, read inputs once, merge in fp32, cast, hand to a sink."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field

import torch
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from uqmerge.engine.plan import MergePlan, TensorTask
from uqmerge.engine.sinks import TensorSink
from uqmerge.errors import CheckpointError, PlanError, UQMergeError
from uqmerge.methods import MergeInputs

log = logging.getLogger(__name__)


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UQMergeError(
            "--device cuda requested but no CUDA device is available; use --device cpu or auto"
        )
    if device != "cpu" and not device.startswith("cuda"):
        raise UQMergeError(f"unknown device {device!r}; use cpu, cuda or auto")
    return torch.device(device)


def tensor_seed(seed: int, name: str) -> int:
    """A stable 63-bit seed per (seed, tensor name), independent of execution order and Python's hash salt."""
    digest = hashlib.sha256(f"{seed}\x00{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass
class MergeReport:
    """What the executor did: counts, bytes read, and keep-base tensors that differed across inputs."""

    tensors: int = 0
    bytes_read: int = 0
    keep_base_differences: dict[str, float] = field(default_factory=dict)


class _Inputs:
    """Reads and validates input tensors, counting bytes."""

    def __init__(self, plan: MergePlan, device: torch.device, allow_nonfinite: bool) -> None:
        self.plan = plan
        self.device = device
        self.allow_nonfinite = allow_nonfinite
        self.bytes_read = 0

    def read(self, reader_index: int | None, name: str) -> torch.Tensor:
        reader = self.plan.base if reader_index is None else self.plan.models[reader_index]
        tensor = reader.read(name)
        self.bytes_read += tensor.numel() * tensor.element_size()
        if tensor.is_floating_point():
            tensor = tensor.to(device=self.device, dtype=torch.float32)
            if not self.allow_nonfinite and not bool(torch.isfinite(tensor).all()):
                raise CheckpointError(
                    f"{reader.path}: tensor {name!r} contains NaN or Inf; fix the checkpoint or pass "
                    "--allow-nonfinite to merge it anyway"
                )
        return tensor


def _merge_one(task: TensorTask, inputs: _Inputs, plan: MergePlan, report: MergeReport) -> torch.Tensor:
    if task.action is None:
        base = inputs.read(None, task.name)
        if plan.config.verify_keep_base and base.is_floating_point():
            for i in range(len(plan.models)):
                diff = float((inputs.read(i, task.name) - base).abs().max()) if base.numel() else 0.0
                if diff > 0:
                    report.keep_base_differences[task.name] = max(
                        diff, report.keep_base_differences.get(task.name, 0)
                    )
        return base
    method = task.action.method
    models = [inputs.read(i, task.name) for i in range(len(plan.models))]
    # Without `base_model:` the first model stands in as the base; never read it twice.
    base = inputs.read(None, task.name) if method.requires_base else None
    generator = None
    if method.randomized:
        generator = torch.Generator(device=inputs.device)
        generator.manual_seed(tensor_seed(plan.config.seed, task.name))
    merged = method.merge(
        MergeInputs(
            name=task.name,
            models=models,
            base=base,
            per_model=task.action.per_model,
            params=task.action.params,
            generator=generator,
        )
    )
    if tuple(merged.shape) != task.shape:
        raise PlanError(
            f"method {method.name!r} returned shape {list(merged.shape)} for {task.name!r}, expected {list(task.shape)}"
        )
    return merged


def execute_plan(
    plan: MergePlan,
    sink: TensorSink,
    *,
    device: str = "cpu",
    allow_nonfinite: bool = False,
    quiet: bool = False,
) -> MergeReport:
    """Run every task in plan order, writing through ``sink``; on any error the sink is aborted."""
    dev = resolve_device(device)
    inputs = _Inputs(plan, dev, allow_nonfinite)
    report = MergeReport()
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
                before = inputs.bytes_read
                with torch.no_grad():
                    merged = _merge_one(task, inputs, plan, report)
                sink.write(task.name, merged.to(dtype=task.out_dtype, device="cpu"))
                report.tensors += 1
                progress.advance(bar, inputs.bytes_read - before)
        sink.close()
    except BaseException:
        sink.abort()
        raise
    report.bytes_read = inputs.bytes_read
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
