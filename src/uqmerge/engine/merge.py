"""The merge entry point: config → plan → streaming execution into an atomic output dir."""

from __future__ import annotations

import logging
from pathlib import Path

from uqmerge.checkpoint.writer import check_output_dir
from uqmerge.config import MergeConfig
from uqmerge.engine.executor import MergeReport, execute_plan
from uqmerge.engine.plan import build_plan
from uqmerge.engine.sinks import DiskSink

log = logging.getLogger(__name__)
DEFAULT_MAX_SHARD_SIZE = 5 * 1000**3


def merge_to_dir(
    config: MergeConfig,
    out_dir: str | Path,
    *,
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
    device: str = "cpu",
    force: bool = False,
    allow_pickle: bool = False,
    allow_nonfinite: bool = False,
    quiet: bool = False,
) -> MergeReport:
    """Merge as ``config`` says and write an HF checkpoint to ``out_dir`` (all checks run before writing)."""
    out = Path(out_dir)
    check_output_dir(out, force=force)
    plan = build_plan(config, allow_pickle=allow_pickle)
    log.info("planned %d tensors: %s", len(plan.tasks), plan.counts())
    sink = DiskSink(plan, out, max_shard_size=max_shard_size, force=force)
    report = execute_plan(plan, sink, device=device, allow_nonfinite=allow_nonfinite, quiet=quiet)
    log.info("wrote %s (%d tensors, %.1f MB read)", out, report.tensors, report.bytes_read / 1e6)
    return report
