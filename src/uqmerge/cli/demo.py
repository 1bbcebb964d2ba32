"""``uqmerge demo``: UQ-Merge end to end on the miniature zoo, with the comparison table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from uqmerge.cli.common import Quiet, Verbose, fail, require_extra, setup_logging
from uqmerge.core.errors import UQMergeError


def demo(
    workdir: Annotated[Path, typer.Option(help="Cache dir for the zoo, the runs and the results.")] = Path(
        ".uqmerge-cache/demo"
    ),
    preset: Annotated[str, typer.Option(help="Zoo preset: mini (about a minute) or default.")] = "default",
    seed: Annotated[int, typer.Option(help="Zoo seed.")] = 0,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """UQ-Merge on the miniature zoo: build/reuse it, run both orders, evaluate, print the comparison table."""
    require_extra("demo", "zoo", "uq", "report")
    from rich.console import Console
    from rich.table import Table

    from uqmerge.demo import run_demo
    from uqmerge.report.tables import abbreviate_ids

    setup_logging(verbose, quiet, transformers=True)
    try:
        rows = run_demo(workdir, preset=preset, seed=seed, quiet=quiet)
    except UQMergeError as e:
        raise fail(e) from None
    table = Table(
        "model",
        "models merged",
        "held-out exact match",
        "held-in MC acc.",
        "uncertainty (MI)",
        title=f"UQ-Merge on the miniature zoo (preset {preset}, seed {seed})",
    )
    for r in rows:
        held_out = f"{r.held_out:.3f}" + (f" ± {r.held_out_se:.3f}" if r.held_out_se is not None else "")
        table.add_row(
            r.name,
            abbreviate_ids(r.models) if r.models else ("—" if r.name == "base" else "see demo_results.json"),
            held_out,
            f"{r.held_in_mc:.3f}",
            "" if r.uncertainty is None else f"{r.uncertainty:.5f}",
        )
    Console().print(table)
    Console().print("S: specialist, OT: overtrained, OC: overconfident expert")
    Console().print(f"results: {workdir / 'demo_results.json'}; reports: {workdir / 'runs'}/*/report.md")
