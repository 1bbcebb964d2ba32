"""``uqmerge zoo hetero``: the zoo's second architecture, a LLaVA-NeXT partner on the zoo's LLM (``zoo`` extra)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from uqmerge.cli.common import quiet_transformers, require_extra

logger = logging.getLogger(__name__)

# The names of uqmerge.zoo.hetero.HETERO_PRESETS, spelled out so that `--help` need not import torch;
# tests/test_zoo_hetero.py checks that they agree.
HETERO_PRESET_NAMES: tuple[str, ...] = ("mini", "default")


def zoo_hetero_command(
    zoo_dir: Annotated[Path, typer.Argument(help="A built zoo directory (uqmerge zoo build).")],
    out: Annotated[
        Path | None, typer.Option(help="Model directory (default: ZOO_DIR/hetero/PRESET; reused if it is the same).")
    ] = None,
    preset: Annotated[
        str,
        typer.Option(help=f"Recipe: {' or '.join(HETERO_PRESET_NAMES)} (for the zoo preset of the same name)."),
    ] = "default",
    seed: Annotated[int | None, typer.Option(min=0, help="Seed of the partner (default: the zoo's seed).")] = None,
    complement_of: Annotated[
        str | None,
        typer.Option(help="The LLaVA expert whose family the partner does not train on (default: first specialist)."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if it exists; replace a non-model dir.")] = False,
) -> None:
    """Build a LLaVA-NeXT (own SigLIP tower and connector, the zoo base's LLM) on the other experts' families."""
    require_extra("zoo hetero", "zoo")
    import dataclasses

    from uqmerge.zoo.hetero import build_hetero, read_hetero_manifest, resolve_hetero_recipe

    quiet_transformers()
    recipe = resolve_hetero_recipe(preset)
    if complement_of is not None:
        recipe = dataclasses.replace(recipe, complement_of=complement_of)
    path = build_hetero(zoo_dir, recipe, seed, out_dir=out, force=force)
    manifest = read_hetero_manifest(path)
    logger.info(
        "hetero model %s (%s, trained on %s): held-out exact match %s",
        path,
        manifest["architecture"]["class"],
        ", ".join(manifest["families"]),
        manifest["held_out_exact_match"],
    )
