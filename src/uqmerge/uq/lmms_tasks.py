"""lmms-eval's task index and the check that lmms-eval is installed (shared by `lmms:` data and `uqmerge eval`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from uqmerge.core.errors import DataError

LMMS_INSTALL = "pip install 'uqmerge[lmms]'"
MODEL_NAME = "uqmerge"
"""The name lmms-eval knows uqmerge's model adapter by."""


def require_lmms(what: str) -> None:
    """A one-line DataError naming the extra when lmms-eval is not installed."""
    try:
        found = find_spec("lmms_eval") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise DataError(f"{what} needs the 'lmms' extra (lmms-eval): {LMMS_INSTALL}")


def route_lmms_logging() -> None:
    # lmms-eval logs with loguru to stdout, where `uqmerge eval` writes its JSON: send its warnings to stderr.
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING", format="lmms-eval {level}: {message}")


def task_manager(tasks: Sequence[str], include: Sequence[str | Path] = ()) -> Any:
    """lmms-eval's TaskManager that knows every name in ``tasks``; a one-line DataError names the unknown ones.

    When the ``include`` directories define every task, only they are indexed (lmms-eval's ~2000 built-in task
    YAMLs take seconds to index); otherwise the built-in tasks are indexed too.
    """
    require_lmms("lmms-eval tasks")
    from lmms_eval.tasks import TaskManager

    route_lmms_logging()
    dirs = [Path(d).expanduser() for d in include]
    for d in dirs:
        if not d.is_dir():
            raise DataError(f"--lmms-eval-include {d}: not a directory of lmms-eval task YAMLs")
    paths = [str(d.resolve()) for d in dirs]
    if paths:
        local = TaskManager("WARNING", include_path=paths, include_defaults=False, model_name=MODEL_NAME)
        if all(t in local.all_tasks for t in tasks):
            return local
    manager = TaskManager("WARNING", include_path=paths or None, model_name=MODEL_NAME)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        where = f" or in {', '.join(paths)}" if paths else "; local YAMLs need --lmms-eval-include DIR"
        raise DataError(f"lmms-eval task(s) {unknown} not found among lmms-eval's tasks{where} (check the names)")
    return manager
