"""What every command shares: size parsing, logging, one-line errors, option types and the extras check.

Nothing here imports torch, transformers or a domain module at import time, so ``uqmerge --help`` stays
quick; the commands import what they need inside their bodies.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from importlib.util import find_spec
from typing import Annotated

import typer
from rich.console import Console

from uqmerge.core.errors import UQMergeError

err_console = Console(stderr=True)
log = logging.getLogger("uqmerge")

# The optional extras of the package (pyproject's [project.optional-dependencies]) and the top-level
# modules each one provides; `require_extra` checks these.
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "uq": ("transformers", "torchvision", "PIL", "datasets"),
    "zoo": ("transformers", "tokenizers", "PIL"),
    "report": ("matplotlib",),
    "lora": ("peft",),
    "ray": ("ray",),
    "lmms": ("transformers", "torchvision", "PIL", "datasets", "lmms_eval", "filelock"),
}

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


def quiet_transformers() -> None:
    """Turn off transformers' per-call tqdm bars ("Loading weights", "Writing model shards"): they would
    interleave with uqmerge's own progress for every model the zoo and the runs load or save."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def setup_logging(verbose: bool, quiet: bool, *, transformers: bool = False) -> None:
    """Rich logging to stderr; ``--quiet`` shows only warnings. With ``transformers`` (commands that load
    Hugging Face models) its progress bars are also turned off unless ``verbose``."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(
        level=level,
        format="%(message)s",
        handlers=[_rich_handler()],
        force=True,
    )
    if transformers and not verbose:
        quiet_transformers()


def _rich_handler() -> logging.Handler:
    from rich.logging import RichHandler

    return RichHandler(console=err_console, show_path=False)


def fail(error: Exception | str) -> typer.Exit:
    """Report a user-facing error without a traceback; exit status 2."""
    # soft_wrap: the terminal wraps a long message; piped or captured, it stays one line per line of text.
    from rich.markup import escape

    err_console.print(f"[bold red]error:[/] {escape(str(error))}", markup=True, highlight=False, soft_wrap=True)
    return typer.Exit(2)


def missing_extras(*extras: str) -> list[str]:
    """The extras among ``extras`` with at least one module that cannot be imported."""
    return [extra for extra in extras if not all(_installed(mod) for mod in EXTRA_MODULES[extra])]


def _installed(module: str) -> bool:
    try:
        return find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require_extra(command: str, *extras: str, feature: str | None = None) -> None:
    """Exit with status 2 and one line naming the extras to install when ``uqmerge COMMAND`` (or one of its
    features, e.g. ``lora_output``) needs modules of ``extras`` that are not installed."""
    missing = missing_extras(*extras)
    if not missing:
        return
    quoted = [f"'{e}'" for e in missing]
    names = quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} and {quoted[-1]}"
    what = f"uqmerge {command}" + (f" with {feature}" if feature else "")
    noun = "extra" if len(missing) == 1 else "extras"
    raise fail(f"{what} needs the {names} {noun}: pip install 'uqmerge[{','.join(missing)}]'")


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
Ray = Annotated[
    str | None,
    typer.Option(
        "--ray",
        metavar="ADDRESS",
        help="Run the candidates' UQ and the search points on Ray actors: local (start a Ray cluster on this "
        "machine), auto (join the running cluster), ray://HOST:PORT or HOST:PORT.",
    ),
]
