"""``uqmerge zoo build``: the miniature MLLM zoo (needs the ``zoo`` extra); ``zoo export-lmms-eval``: its sets as
local lmms-eval tasks."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from uqmerge.cli.common import quiet_transformers, require_extra

logger = logging.getLogger(__name__)

# The names of uqmerge.zoo.presets.PRESETS, spelled out so that `--help` need not import the zoo (and
# torch); tests/test_cli.py checks that they agree.
PRESET_NAMES: tuple[str, ...] = ("mini", "default")


def zoo_build_command(
    out_dir: Annotated[Path, typer.Argument(help="Zoo directory (created; reused if it holds the same zoo).")],
    preset: Annotated[
        str,
        typer.Option(help=f"Zoo size: {' or '.join(PRESET_NAMES)} (mini ≈ 1-2 min, default ≈ 9-11 min on 2 cores)."),
    ] = "mini",
    seed: Annotated[int, typer.Option(min=0, help="Zoo seed: data, initialisation and training.")] = 0,
    force: Annotated[
        bool, typer.Option("--force", help="Rebuild even if the zoo exists; replace a non-zoo directory.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Processes that fine-tune experts at once (default: one per torch thread, up to the number "
            "of experts; 1: all in this process).",
        ),
    ] = None,
) -> None:
    """Build the miniature zoo: synthetic data, a tiny LLaVA base and its fine-tuned experts."""
    require_extra("zoo build", "zoo")
    from uqmerge.zoo.build import build_zoo_with_progress, read_manifest

    quiet_transformers()
    path = build_zoo_with_progress(out_dir, preset, seed, force=force, quiet=quiet, expert_workers=workers)
    manifest = read_manifest(path)
    logger.info(
        "zoo %s: base + %d experts, data in %s (%.0f s)",
        path,
        len(manifest["experts"]),
        path / "data",
        manifest["timings"]["total_seconds"],
    )


def zoo_export_lmms_command(
    zoo_dir: Annotated[Path, typer.Argument(help="A zoo directory (uqmerge zoo build).")],
    out_dir: Annotated[Path, typer.Argument(help="Where the task YAMLs and their parquet data go.")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite a non-empty OUT_DIR.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Warnings only.")] = False,
) -> None:
    """Write the zoo's held-in (multiple choice) and held-out (open-ended) sets as local lmms-eval tasks."""
    require_extra("zoo export-lmms-eval", "uq")
    from uqmerge.zoo.lmms_export import export_lmms_tasks

    names = export_lmms_tasks(zoo_dir, out_dir, force=force)
    logger.info(
        "wrote %d lmms-eval tasks and groups to %s: run them with --lmms-eval-include %s", len(names), out_dir, out_dir
    )
