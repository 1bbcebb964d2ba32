"""``uqmerge eval``: MC accuracy and open-ended exact match of one model (``uq`` extra), or its scores on lmms-eval
tasks (``--lmms-eval``, the ``lmms`` extra)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from uqmerge.cli.common import quiet_transformers, require_extra
from uqmerge.core.errors import ConfigError


def eval_command(
    model_dir: Annotated[Path, typer.Argument(help="Hugging Face model directory (model + processor).")],
    data: Annotated[
        list[str] | None,
        typer.Option("--data", "-d", help="MC data (any `uqmerge uq` spec) or an open-ended JSONL (no options)."),
    ] = None,
    lmms_eval: Annotated[
        str | None,
        typer.Option(
            "--lmms-eval",
            help="Comma-separated lmms-eval task names (e.g. mmbench_en_dev,gqa,textvqa_val), run by lmms-eval itself.",
        ),
    ] = None,
    lmms_eval_include: Annotated[
        list[Path] | None,
        typer.Option("--lmms-eval-include", help="A directory of local lmms-eval task YAMLs (repeatable)."),
    ] = None,
    limit: Annotated[
        float | None, typer.Option(help="lmms-eval: documents per task (a share when below 1; for quick checks).")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "cpu",
    batch_size: Annotated[int, typer.Option(min=1, help="Prompts per forward pass.")] = 16,
    out: Annotated[
        Path | None,
        typer.Option(help="--data: the JSON file; --lmms-eval: a directory for results.json, samples, summary.md."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Warnings only.")] = False,
) -> None:
    """MC accuracy and open-ended exact match of MODEL_DIR per dataset (family), as JSON; or, with --lmms-eval,
    lmms-eval's results on its tasks (results JSON and a summary table)."""
    if (data is None) == (lmms_eval is None):
        raise ConfigError("give either --data SPEC (uqmerge's evaluator) or --lmms-eval TASKS (lmms-eval's), not both")
    if lmms_eval is None and (lmms_eval_include or limit is not None):
        raise ConfigError("--lmms-eval-include and --limit apply to --lmms-eval only")
    if lmms_eval is not None:
        _eval_lmms(model_dir, lmms_eval, lmms_eval_include or [], limit, device, batch_size, out, quiet)
        return
    require_extra("eval", "uq")
    from uqmerge.evaluate.model_eval import evaluate_model_dir

    quiet_transformers()
    result = evaluate_model_dir(model_dir, data or [], device=device, batch_size=batch_size)
    text = json.dumps(result, indent=2)
    if out is None:
        typer.echo(text)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


def _eval_lmms(
    model_dir: Path,
    tasks: str,
    include: list[Path],
    limit: float | None,
    device: str,
    batch_size: int,
    out: Path | None,
    quiet: bool,
) -> None:
    require_extra("eval", "uq", "lmms", feature="--lmms-eval")
    from rich.console import Console

    from uqmerge.evaluate.lmms import evaluate_model_dir_lmms, results_json, summary_table, write_results

    quiet_transformers()
    results = evaluate_model_dir_lmms(
        model_dir, tasks, include=include, limit=limit, batch_size=batch_size, device=device
    )
    if out is None:
        typer.echo(results_json(results))
    else:
        write_results(results, out, model=str(model_dir))
    if not quiet:
        Console(stderr=True).print(summary_table(results, str(model_dir)))
