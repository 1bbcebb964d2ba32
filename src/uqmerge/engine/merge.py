"""The merge entry point: config → plan → streaming execution into an atomic output dir."""

from __future__ import annotations

import logging
from pathlib import Path

from uqmerge.checkpoint.writer import check_output_dir
from uqmerge.engine.executor import DEFAULT_MAX_BLOCK_BYTES, DEFAULT_MAX_CACHE_BYTES, MergeReport, execute_plan
from uqmerge.engine.lora_output import merge_lora_adapters
from uqmerge.engine.modality import is_modality_merge, merge_modalities
from uqmerge.engine.plan import MergePlan, build_plan
from uqmerge.engine.recipe import MergeConfig
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
    max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES,
    max_cache_bytes: int = DEFAULT_MAX_CACHE_BYTES,
) -> MergeReport:
    """Merge as ``config`` says and write an HF checkpoint to ``out_dir`` (all checks run before writing).

    ``max_block_bytes`` bounds the working set of one block of rows (larger tensors are merged block by block)
    and ``max_cache_bytes`` the stored inputs kept between statistics passes (see :mod:`uqmerge.engine.executor`).

    With ``lora_output:`` in the config the result is one peft LoRA adapter instead (a single file, so
    ``max_shard_size`` and ``max_block_bytes`` do not apply): see
    :func:`uqmerge.engine.lora_output.merge_lora_adapters`.
    """
    if config.lora_output is not None:
        return merge_lora_adapters(
            config,
            out_dir,
            rank=config.lora_output.rank,
            device=device,
            force=force,
            allow_pickle=allow_pickle,
            allow_nonfinite=allow_nonfinite,
            quiet=quiet,
        )
    out = Path(out_dir)
    check_output_dir(out, force=force)
    plan = build_plan(config, allow_pickle=allow_pickle)
    log.info("planned %d tensors: %s", len(plan.tasks), plan.counts())
    _log_mapping(plan)
    if is_modality_merge(plan):
        return merge_modalities(
            plan,
            out,
            max_shard_size=max_shard_size,
            device=device,
            force=force,
            allow_nonfinite=allow_nonfinite,
            quiet=quiet,
            max_block_bytes=max_block_bytes,
            max_cache_bytes=max_cache_bytes,
        )
    sink = DiskSink(plan, out, max_shard_size=max_shard_size, force=force)
    report = execute_plan(
        plan,
        sink,
        device=device,
        allow_nonfinite=allow_nonfinite,
        quiet=quiet,
        max_block_bytes=max_block_bytes,
        max_cache_bytes=max_cache_bytes,
    )
    log.info("wrote %s (%d tensors, %.1f MB read)", out, report.tensors, report.bytes_read / 1e6)
    return report


def _log_mapping(plan: MergePlan) -> None:
    """Say what each cross-architecture map covered, and list the tensors kept from the target for lack of one."""
    for summary in plan.mapping_summary()["maps"] if plan.maps else []:
        log.info(
            "mapped %d tensor(s) of %s onto %s (%s; %d concatenated)",
            summary["mapped"],
            summary["source"],
            summary["target"],
            summary["how"],
            summary["concatenated"],
        )
        for name, why in summary["kept"].items():
            log.warning("kept %s from the target: %s", name, why)
