"""``uqmerge run``: one UQ-Merge run (Algorithm 1) from a run config."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from uqmerge.cli.common import Quiet, Ray, Verbose, err_console, fail, log, require_extra, setup_logging
from uqmerge.core.errors import UQMergeError


def run(
    config: Annotated[Path, typer.Argument(help="Run config (YAML): base, candidates, merge, uq, selection.")],
    out_dir: Annotated[Path, typer.Argument(help="Run directory (record, report, UQ results, final model).")],
    resume: Annotated[bool, typer.Option(help="Continue a killed run from its last completed step.")] = False,
    ray: Ray = None,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """UQ-Merge (Algorithm 1): score candidates, merge incrementally in memory, stop when UQ stops falling."""
    require_extra("run", "uq", "report")
    from uqmerge.pipeline.config import load_run_config
    from uqmerge.pipeline.runner import run_uq_merge

    setup_logging(verbose, quiet, transformers=True)
    try:
        run_config = load_run_config(config)
        if ray is not None:
            run_config = run_config.model_copy(update={"execution": run_config.execution.with_ray(ray)})
        if run_config.execution.backend == "ray":
            require_extra("run", "ray", feature="the Ray backend")
        record = run_uq_merge(run_config, out_dir, resume=resume, quiet=quiet, on_stage=log.info)
    except UQMergeError as e:
        raise fail(e) from None
    if not quiet:
        err_console.print(f"selected {record.selected}; report: {out_dir / 'report.md'}")
