"""``uqmerge eval``: multiple-choice accuracy and open-ended exact match of one model (``uq`` extra)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from uqmerge.cli.common import quiet_transformers, require_extra


def eval_command(
    model_dir: Annotated[Path, typer.Argument(help="Hugging Face model directory (model + processor).")],
    data: Annotated[
        list[str],
        typer.Option("--data", "-d", help="MC data (any `uqmerge uq` spec) or an open-ended JSONL (no options)."),
    ],
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "cpu",
    batch_size: Annotated[int, typer.Option(min=1, help="Prompts per forward pass.")] = 16,
    out: Annotated[Path | None, typer.Option(help="Write the JSON here (default: stdout).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Warnings only.")] = False,
) -> None:
    """MC accuracy and open-ended exact match of MODEL_DIR per dataset (family), as JSON."""
    require_extra("eval", "uq")
    from uqmerge.evaluate.model_eval import evaluate_model_dir

    quiet_transformers()
    result = evaluate_model_dir(model_dir, data, device=device, batch_size=batch_size)
    text = json.dumps(result, indent=2)
    if out is None:
        typer.echo(text)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
