"""``uqmerge merge`` and ``uqmerge methods``: they need only the base install (torch, no extras)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from uqmerge.cli.common import Device, Quiet, Verbose, err_console, fail, parse_size, require_extra, setup_logging
from uqmerge.core.errors import ConfigError, UQMergeError


def merge(
    config: Annotated[Path, typer.Argument(help="Merge recipe (YAML, mergekit-like).", exists=True, dir_okay=False)],
    out_dir: Annotated[Path, typer.Argument(help="Output directory (must be empty or absent unless --force).")],
    max_shard_size: Annotated[
        str, typer.Option(help="Largest output shard, in bytes (suffixes KB/MB/GB/KiB/MiB/GiB accepted).")
    ] = "5000000000",
    max_block_bytes: Annotated[
        str, typer.Option(help="fp32 working set of one block of rows of a large tensor (e.g. 16MiB).")
    ] = "16MiB",
    device: Device = "cpu",
    force: Annotated[bool, typer.Option(help="Replace a non-empty output directory.")] = False,
    allow_pickle: Annotated[
        bool, typer.Option(help="Allow .bin pickles (loaded with torch.load(weights_only=True)).")
    ] = False,
    allow_nonfinite: Annotated[bool, typer.Option(help="Merge input tensors that contain NaN or Inf.")] = False,
    compat: Annotated[
        str,
        typer.Option(
            help="'mergekit': CONFIG is a mergekit 0.1.5 YAML, merged with mergekit's semantics (docs/mergekit.md).",
        ),
    ] = "uqmerge",
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Merge the models of CONFIG into an HF checkpoint in OUT_DIR (streaming, atomic, coverage-checked)."""
    from uqmerge.engine.recipe import load_merge_config

    setup_logging(verbose, quiet)
    try:
        if compat not in ("uqmerge", "mergekit"):
            raise ConfigError(f"--compat: {compat!r} is not known; use 'uqmerge' (the default) or 'mergekit'")
        cfg = load_merge_config(config, compat="mergekit" if compat == "mergekit" else "uqmerge")
        if cfg.lora_output is not None:
            # The adapter_config.json of a LoRA output is written with peft's LoraConfig.
            require_extra("merge", "lora", feature="lora_output")
        from uqmerge.engine.merge import merge_to_dir

        report = merge_to_dir(
            cfg,
            out_dir,
            max_shard_size=parse_size(max_shard_size),
            max_block_bytes=parse_size(max_block_bytes),
            device=device,
            force=force,
            allow_pickle=allow_pickle,
            allow_nonfinite=allow_nonfinite,
            quiet=quiet,
        )
    except UQMergeError as e:
        raise fail(e) from None
    if not quiet:
        err_console.print(f"merged {report.tensors} tensors into {out_dir}")


def methods() -> None:
    """List the registered merge methods and their parameters."""
    from rich.console import Console
    from rich.table import Table

    from uqmerge.methods import get_method, method_names

    table = Table("method", "parameters (per-model*)", "summary")
    for name in method_names():
        m = get_method(name)
        params = ", ".join(f"{p.name}{'*' if p.per_model else ''}={p.default}" for p in m.params)
        table.add_row(name, params, m.summary)
    Console().print(table)
