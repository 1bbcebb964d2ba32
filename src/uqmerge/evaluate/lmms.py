"""Evaluate a model on lmms-eval tasks (its own benchmarks by name, or local task YAMLs) through lmms-eval itself.

The model is uqmerge's lmms-eval model, found in lmms-eval's model registry by its plugin name ``uqmerge``
(:mod:`.lmms_plugin`), built from a model directory or wrapped around a model in memory (a resident merge). The
tasks are lmms-eval's own: ``simple_evaluate`` loads, prompts and scores them; uqmerge only chooses the model,
indexes the tasks (with ``include`` directories of local YAMLs) and writes the results JSON and a summary.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from uqmerge.core.errors import DataError
from uqmerge.core.files import atomic_write_text
from uqmerge.uq.lmms_tasks import LMMS_INSTALL, MODEL_NAME, require_lmms, route_lmms_logging, task_manager  # noqa: F401

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
SUMMARY_FILE = "summary.md"


def parse_tasks(tasks: str | Sequence[str]) -> list[str]:
    """Task names from ``a,b,c`` (or a list of such strings), in order, without repeats."""
    parts = [tasks] if isinstance(tasks, str) else list(tasks)
    names = [name.strip() for part in parts for name in str(part).split(",") if name.strip()]
    if not names:
        raise DataError("no lmms-eval task given; pass task names such as --lmms-eval mmbench_en_dev,gqa")
    return list(dict.fromkeys(names))


def model_class() -> type:
    """uqmerge's model class as lmms-eval's model registry resolves the name ``uqmerge`` (its plugin entry point)."""
    require_lmms("lmms-eval evaluation")
    from lmms_eval.models import get_model_manifest

    route_lmms_logging()
    try:
        get_model_manifest(MODEL_NAME)
    except ValueError:
        raise DataError(
            "lmms-eval does not know the model 'uqmerge': its plugin is the `lmms_eval.models` entry point, "
            "registered when uqmerge is installed; reinstall it (pip install -e '.[lmms]' in a checkout)"
        ) from None
    from lmms_eval.models import get_model

    return get_model(MODEL_NAME)


def lmms_model(
    model_dir: str | Path | None = None,
    *,
    model: Any = None,
    processor: Any = None,
    device: str = "auto",
    dtype: str = "auto",
    batch_size: int = 16,
) -> Any:
    """uqmerge's lmms-eval model over ``model_dir``, or over ``model`` and ``processor`` already in memory."""
    cls = model_class()
    if model is not None:
        return cls(model=model, processor=processor, batch_size=batch_size)
    if model_dir is None or not Path(model_dir).is_dir():
        raise DataError(f"{model_dir}: not a model directory (config.json and a processor)")
    return cls(pretrained=str(model_dir), device=device, dtype=dtype, batch_size=batch_size)


def _limit(limit: float | None) -> int | float | None:
    if limit is None:
        return None
    if limit <= 0:
        raise DataError(f"--limit must be positive (a count, or a share below 1), got {limit:g}")
    return int(limit) if limit >= 1 and float(limit).is_integer() else float(limit)


def evaluate_tasks(
    lm: Any,
    tasks: str | Sequence[str],
    *,
    include: Sequence[str | Path] = (),
    limit: float | None = None,
    log_samples: bool = True,
) -> dict[str, Any]:
    """lmms-eval's ``simple_evaluate`` of ``lm`` on ``tasks``: its results dict (``results``, ``configs``,
    ``n-samples``, …, and ``samples`` when ``log_samples``)."""
    from lmms_eval.evaluator import simple_evaluate

    names = parse_tasks(tasks)
    manager = task_manager(names, include)
    log.info("lmms-eval: %s%s", ", ".join(names), "" if limit is None else f" (limit {limit:g})")
    results = simple_evaluate(
        model=lm,
        tasks=names,
        limit=_limit(limit),
        task_manager=manager,
        log_samples=log_samples,
        verbosity="WARNING",
        batch_size=getattr(lm, "batch_size", None),
    )
    if results is None:
        raise DataError(f"lmms-eval returned no results for {names}")
    return results


def metric_rows(results: dict[str, Any]) -> list[tuple[str, str, float, int | None]]:
    """``(task or group, metric, value, samples)`` for every numeric metric of the results (stderr left out)."""
    rows: list[tuple[str, str, float, int | None]] = []
    n_samples = results.get("n-samples", {})
    for section in ("results", "groups"):
        for name, metrics in results.get(section, {}).items():
            if section == "groups" and name in results.get("results", {}):
                continue
            n = n_samples.get(name, {}).get("effective") if isinstance(n_samples.get(name), dict) else None
            for key, value in metrics.items():
                metric, _, flt = key.partition(",")
                if metric == "alias" or "_stderr" in metric or not isinstance(value, int | float):
                    continue
                label = metric if flt in ("", "none") else f"{metric} ({flt})"
                rows.append((str(metrics.get("alias", name)).strip(" -"), label, float(value), n))
    return rows


def summary_markdown(results: dict[str, Any], model: str) -> str:
    """The one-table summary: a row per task (and group) and metric."""
    lines = [f"# lmms-eval results of {model}", "", "| task | metric | value | samples |", "|---|---|---|---|"]
    for task, metric, value, n in metric_rows(results):
        lines.append(f"| {task} | {metric} | {value:.4f} | {'' if n is None else n} |")
    return "\n".join(lines) + "\n"


def summary_table(results: dict[str, Any], model: str) -> Any:
    """The summary as a rich table (stderr)."""
    from rich.table import Table

    table = Table("task", "metric", "value", "samples", title=f"lmms-eval results of {model}")
    for task, metric, value, n in metric_rows(results):
        table.add_row(task, metric, f"{value:.4f}", "" if n is None else str(n))
    return table


def results_json(results: dict[str, Any]) -> str:
    """lmms-eval's results JSON (without the per-sample logs), serialised as lmms-eval serialises it."""
    from lmms_eval.utils import handle_non_serializable

    aggregated = {k: v for k, v in results.items() if k != "samples"}
    return json.dumps(aggregated, indent=2, default=handle_non_serializable, ensure_ascii=False)


def write_results(results: dict[str, Any], out_dir: str | Path, *, model: str) -> Path:
    """``results.json`` (lmms-eval's), ``samples_<task>.jsonl`` (its per-sample logs) and ``summary.md``;
    ``results.json`` last, so that its presence marks a complete evaluation (:func:`read_task_score`)."""
    from lmms_eval.utils import handle_non_serializable

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for task, samples in results.get("samples", {}).items():
        lines = [json.dumps(s, default=handle_non_serializable, ensure_ascii=False) for s in samples]
        atomic_write_text(out / f"samples_{task}.jsonl", "\n".join(lines) + "\n")
    atomic_write_text(out / SUMMARY_FILE, summary_markdown(results, model))
    atomic_write_text(out / RESULTS_FILE, results_json(results) + "\n")
    return out


def read_task_score(out_dir: str | Path, tasks: Sequence[str]) -> float | None:
    """The :func:`task_score` of an evaluation already written to ``out_dir`` (None when there is none), so that a
    resumed run does not evaluate the same model again."""
    path = Path(out_dir) / RESULTS_FILE
    if not path.is_file():
        return None
    try:
        return task_score(json.loads(path.read_text()), tasks)
    except (json.JSONDecodeError, DataError):
        log.warning("%s: unreadable lmms-eval results; evaluating again", path)
        return None


def evaluate_model_dir_lmms(
    model_dir: str | Path,
    tasks: str | Sequence[str],
    *,
    include: Sequence[str | Path] = (),
    limit: float | None = None,
    batch_size: int = 16,
    device: str = "auto",
) -> dict[str, Any]:
    """``uqmerge eval MODEL_DIR --lmms-eval TASKS``: the model directory evaluated by lmms-eval on ``tasks``."""
    lm = lmms_model(model_dir, device=device, batch_size=batch_size)
    results = evaluate_tasks(lm, tasks, include=include, limit=limit)
    # lmms-eval names a model object by its class; record what was evaluated, as its CLI would.
    results.setdefault("config", {}).update({"model": "uqmerge", "model_args": f"pretrained={model_dir}"})
    return results


def task_score(results: dict[str, Any], tasks: Sequence[str]) -> float:
    """The mean over ``tasks`` (tasks or groups) of each one's first metric: one number for a model."""
    values: list[float] = []
    for task in parse_tasks(list(tasks)):
        metrics = results.get("groups", {}).get(task) or results.get("results", {}).get(task)
        if not metrics:
            raise DataError(f"lmms-eval results have no task or group {task!r}")
        numbers = [
            float(v)
            for k, v in metrics.items()
            if k != "alias" and "_stderr" not in k and isinstance(v, int | float) and not isinstance(v, bool)
        ]
        if not numbers:
            raise DataError(f"lmms-eval task {task!r} has no numeric metric to score a model by")
        values.append(numbers[0])
    return sum(values) / len(values)


def evaluate_resident(model: Any, processor: Any, settings: Any, out_dir: str | Path | None, *, name: str) -> float:
    """Evaluate a model in memory on ``settings`` (a :class:`~.lmms_config.LmmsEvalSettings`), write lmms-eval's
    results under ``out_dir`` (unless None), and return the model's :func:`task_score`."""
    lm = lmms_model(model=model, processor=processor, batch_size=settings.batch_size)
    results = evaluate_tasks(lm, settings.tasks, include=settings.include, limit=settings.limit)
    results.setdefault("config", {}).update({"model": "uqmerge", "model_args": f"resident={name}"})
    if out_dir is not None:
        write_results(results, out_dir, model=name)
    score = task_score(results, settings.tasks)
    log.info("lmms-eval %s: %s = %.4f", name, "+".join(settings.tasks), score)
    return score


def evaluate_merge_in_resident(
    merger: Any, config: Any, processor: Any, settings: Any, out_dir: str | Path, *, name: str
) -> float:
    """Set the resident model of ``merger`` to Merge(``config``) in memory (no checkpoint) and evaluate it."""
    merger.set_config(config)
    return evaluate_resident(merger.model, processor, settings, out_dir, name=name)


def single_model_config(base_model: str, model: str) -> Any:
    """The merge config whose result is ``model`` itself (the linear mean of one model), to set a candidate in the
    resident model with the merge engine."""
    from uqmerge.engine.recipe import MergeRecipe, ModelEntry

    return MergeRecipe(merge_method="linear").for_models(base_model, [ModelEntry(model=model)])
