"""Multiple-choice UQ items from an lmms-eval task (``--data lmms:TASK``), read through the task's own definition.

``lmms:TASK`` names one of lmms-eval's tasks, ``lmms:DIR/TASK`` a task defined by the YAMLs under ``DIR``. The
task is built by lmms-eval (its dataset, ``process_docs``, prompts), and each document of its evaluation split
gives one item:

- **options**: the lettered lines (``A. …``, ``B. …``, or ``(A) …``, consecutive from A) of the task's
  ``doc_to_text``, as lmms-eval's multiple-choice benchmarks print them (MMBench, ScienceQA-IMG, SEED-Bench,
  AI2D); the question is the text before them, and the text after them (the answer instruction) is dropped.
  Without lettered lines, a task with ``doc_to_choice`` gives its choices as the options and ``doc_to_text``
  as the question; a document with neither is excluded.
- **image**: the task's ``doc_to_visual`` (one image; documents with none or several are excluded);
- **answer**: ``doc_to_target``: a choice index, an option letter or an option's text;
- **id**: the document's ``id``, ``index`` or ``question_id`` field, else its position in the split.

The dataset is named by the task's ``task_alias`` (else its name), the name UQ keys its draws by.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from uqmerge.core.errors import DataError
from uqmerge.core.prompts import LETTERS
from uqmerge.uq.data import DataSpec, MCDataset, MCItem, _image_ref, make_item

logger = logging.getLogger(__name__)

_OPTION_LINE = re.compile(r"^\s*\(?([A-Z])[.):]\s+(.*\S)\s*$")
_ID_FIELDS = ("id", "index", "question_id")


def split_task_source(source: str) -> tuple[str, list[Path]]:
    """``DIR/TASK`` → (``TASK``, [``DIR``]); a bare ``TASK`` → (``TASK``, [])."""
    path = Path(source).expanduser()
    if len(path.parts) > 1:
        return path.name, [path.parent]
    return source, []


def lettered_options(text: str) -> tuple[str, list[str]] | None:
    """(question, options) from a prompt whose lines list options ``A. …``, ``B. …`` in order; None without them."""
    lines = text.splitlines()
    for start, line in enumerate(lines):
        m = _OPTION_LINE.match(line)
        if not m or m.group(1) != "A":
            continue
        options = []
        for follow in lines[start:]:
            m = _OPTION_LINE.match(follow)
            if not m or m.group(1) != LETTERS[len(options)]:
                break
            options.append(m.group(2))
        if len(options) >= 2:
            return "\n".join(lines[:start]).strip(), options
    return None


def _answer(target: Any, choices: Sequence[Any] | None, options: Sequence[str]) -> Any:
    """The target as something :func:`~uqmerge.uq.data.resolve_answer` reads (an option text, letter or index)."""
    if isinstance(target, list):
        target = target[0] if target else None
    if choices is not None and isinstance(target, int) and not isinstance(target, bool) and 0 <= target < len(choices):
        choice = str(choices[target]).strip()
        # Choices that are the letters themselves (``["A", "B", …]``) point at the lettered options.
        return LETTERS.index(choice) if choice in LETTERS[: len(options)] else choice
    return target


def _images(visuals: Any) -> list[Any]:
    if visuals is None:
        return []
    return list(visuals) if isinstance(visuals, list | tuple) else [visuals]


def _doc_item(task: Any, doc: dict[str, Any], index: int, where: str) -> MCItem | str:
    text = task.doc_to_text(doc)
    if not isinstance(text, str):
        return f"doc_to_text gives {type(text).__name__}, not a prompt"
    choices = task.doc_to_choice(doc) if task.config.doc_to_choice is not None else None
    parsed = lettered_options(text)
    if parsed is not None:
        question, options = parsed
    elif choices:
        question, options = text.strip(), [str(c) for c in choices]
    else:
        return "no lettered options in doc_to_text and no doc_to_choice (not a multiple-choice document)"
    images = _images(task.doc_to_visual(doc))
    if len(images) != 1:
        return f"{len(images)} images (UQ reads one image per item)"
    item_id = next((doc[k] for k in _ID_FIELDS if k in doc and doc[k] is not None), index)
    return make_item(
        item_id=item_id,
        question=question,
        options=options,
        image=_image_ref(images[0], None, where=where),
        answer=_answer(task.doc_to_target(doc), choices, options),
        where=f"{where} (id {item_id!r})",
    )


def _build_task(task_name: str, include: list[Path], spec: DataSpec) -> Any:
    from lmms_eval.tasks import get_task_dict

    from uqmerge.uq.lmms_tasks import task_manager

    manager = task_manager([task_name], include)
    try:
        built = get_task_dict([task_name], manager)
    except Exception as e:  # lmms-eval raises what datasets and the task's own code raise
        raise DataError(f"--data {spec}: lmms-eval cannot build task {task_name!r} ({type(e).__name__}: {e})") from e
    tasks = [t for t in built.values() if not isinstance(t, dict)]
    if len(built) != 1 or len(tasks) != 1:
        raise DataError(f"--data {spec}: {task_name!r} is an lmms-eval group; give its tasks one spec each")
    return tasks[0]


def load_lmms_task(spec: DataSpec, *, name: str | None = None) -> MCDataset:
    """The multiple-choice items of the lmms-eval task of ``spec`` (module docstring); excluded documents counted."""
    from uqmerge.uq.lmms_tasks import require_lmms

    require_lmms(f"--data {spec}")
    task_name, include = split_task_source(spec.source)
    task = _build_task(task_name, include, spec)
    docs = task.eval_docs
    items: list[MCItem] = []
    excluded: Counter[str] = Counter()
    seen: set[str] = set()
    for index, doc in enumerate(docs):
        result = _doc_item(task, doc, index, f"{spec} doc {index}")
        if isinstance(result, str):
            excluded[result] += 1
            continue
        if result.id in seen:
            raise DataError(f"{spec} doc {index}: duplicate id {result.id!r}; ids must be unique within a task")
        seen.add(result.id)
        items.append(result)
    if excluded:
        logger.info("%s: excluded %s", spec, dict(excluded))
    alias = getattr(task.config, "task_alias", None)
    return MCDataset(
        name=name or str(alias or task_name),
        spec=str(spec),
        items=tuple(items),
        n_source=len(docs),
        excluded=dict(excluded),
    )
