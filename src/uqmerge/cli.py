"""The `uqmerge` command line (typer): merge, methods, demo and the commands later issues add."""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from uqmerge.core.errors import UQMergeError

app = typer.Typer(
    help="Merge multimodal LLMs fine-tuned from one base, with uncertainty-guided selection (UQ-Merge).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True)
log = logging.getLogger("uqmerge")

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}


def parse_size(text: str) -> int:
    """Bytes from ``5000000000``, ``5GB`` or ``512MiB``."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise typer.BadParameter(f"expected a size in bytes such as 5000000000, 5GB or 512MiB, got {text!r}")
    value = int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    if value <= 0:
        raise typer.BadParameter("size must be positive")
    return value


def setup_logging(verbose: bool, quiet: bool) -> None:
    """Rich logging to stderr; ``--quiet`` shows only warnings."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(
        level=level,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False)],
        force=True,
    )
    if not verbose:
        # transformers' per-call tqdm bars ("Loading weights", "Writing model shards") would interleave with
        # uqmerge's own progress for every model the zoo and the runs load or save.
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def fail(error: Exception) -> typer.Exit:
    """Report a user-facing error without a traceback; exit status 2."""
    err_console.print(f"[bold red]error:[/] {error}", markup=True, highlight=False)
    return typer.Exit(2)


def reporting_errors(command: Callable[..., None]) -> Callable[..., None]:
    """Wrap a command function so UQMergeError becomes a one-line message and exit status 2."""

    @functools.wraps(command)
    def wrapper(*args: object, **kwargs: object) -> None:
        if not logging.getLogger().handlers:
            setup_logging(verbose=False, quiet=bool(kwargs.get("quiet", False)))
        try:
            command(*args, **kwargs)
        except UQMergeError as e:
            raise fail(e) from None

    return wrapper


Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar; warnings and errors only.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")]
Device = Annotated[str, typer.Option(help="Compute device: cpu, cuda or auto (CUDA when available).")]


@app.command()
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
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Merge the models of CONFIG into an HF checkpoint in OUT_DIR (streaming, atomic, coverage-checked)."""
    from uqmerge.engine.recipe import load_merge_config
    from uqmerge.engine.merge import merge_to_dir

    setup_logging(verbose, quiet)
    try:
        cfg = load_merge_config(config)
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


@app.command()
def methods() -> None:
    """List the registered merge methods and their parameters."""
    from uqmerge.methods import get_method, method_names

    table = Table("method", "parameters (per-model*)", "summary")
    for name in method_names():
        m = get_method(name)
        params = ", ".join(f"{p.name}{'*' if p.per_model else ''}={p.default}" for p in m.params)
        table.add_row(name, params, m.summary)
    Console().print(table)


@app.command()
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
    from uqmerge.demo import abbreviate_ids, run_demo

    setup_logging(verbose, quiet)
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


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="Run config (YAML): base, candidates, merge, uq, selection.")],
    out_dir: Annotated[Path, typer.Argument(help="Run directory (record, report, UQ results, final model).")],
    resume: Annotated[bool, typer.Option(help="Continue a killed run from its last completed step.")] = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """UQ-Merge (Algorithm 1): score candidates, merge incrementally in memory, stop when UQ stops falling."""
    from uqmerge.pipeline.config import load_run_config
    from uqmerge.pipeline.runner import run_uq_merge

    setup_logging(verbose, quiet)
    try:
        record = run_uq_merge(load_run_config(config), out_dir, resume=resume, quiet=quiet, on_stage=log.info)
    except UQMergeError as e:
        raise fail(e) from None
    if not quiet:
        err_console.print(f"selected {record.selected}; report: {out_dir / 'report.md'}")


def _register_subcommands() -> None:
    from uqmerge.evaluate.model_eval import eval_command
    from uqmerge.uq.command import uq_command
    from uqmerge.zoo.build import zoo_build_command

    app.command("uq")(reporting_errors(uq_command))
    app.command("eval")(reporting_errors(eval_command))
    zoo_app = typer.Typer(help="The miniature MLLM zoo (synthetic tasks, tiny LLaVA experts).", no_args_is_help=True)
    zoo_app.command("build")(reporting_errors(zoo_build_command))
    app.add_typer(zoo_app, name="zoo")


_register_subcommands()


def main() -> None:
    """Entry point for ``python -m uqmerge``."""
    app()


if __name__ == "__main__":
    main()
