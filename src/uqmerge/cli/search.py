"""``uqmerge search``: choose one merge coefficient over a grid without labels (consistency, uncertainty, oracle)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from uqmerge.cli.common import Quiet, Ray, Verbose, err_console, fail, require_extra, setup_logging
from uqmerge.core.errors import UQMergeError


def search(
    config: Annotated[
        Path, typer.Argument(help="Search config (YAML): base, models, merge, search (grid, criterion).")
    ],
    out_dir: Annotated[Path, typer.Argument(help="Run directory (config, search.json, report, chosen merge).")],
    resume: Annotated[
        bool, typer.Option(help="Continue a killed search; grid points already scored are kept.")
    ] = False,
    ray: Ray = None,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Merge every grid value of one parameter in memory, score it by the criterion, write the chosen merge."""
    require_extra("search", "uq", "report")
    from uqmerge.pipeline.search import run_search
    from uqmerge.pipeline.search_config import load_search_config

    setup_logging(verbose, quiet, transformers=True)
    try:
        search_config = load_search_config(config)
        if ray is not None:
            search_config = search_config.model_copy(update={"execution": search_config.execution.with_ray(ray)})
        if search_config.execution.backend == "ray":
            require_extra("search", "ray", feature="the Ray backend")
        record = run_search(search_config, out_dir, resume=resume, quiet=quiet)
    except UQMergeError as e:
        raise fail(e) from None
    if not quiet:
        err_console.print(
            f"chosen {record.parameter} = {record.chosen_value:g} ({record.criterion}); report: {out_dir / 'report.md'}"
        )
