"""`uqmerge search`: choose one merge coefficient without labels, every grid point merged into one resident model.

Each grid value is set in the merge (:func:`~uqmerge.pipeline.search_config.with_parameter`), merged into the
resident model in memory (:meth:`~uqmerge.engine.incremental.IncrementalMerger.set_config`; no checkpoint per
point) and measured: the responses to the inputs (consistency), the UQ measure (uncertainty), and the labelled
accuracy whenever the data have labels, or lmms-eval's score of the point when ``lmms_eval.accuracy`` is set. The
rules of :mod:`uqmerge.selection.coefficients` choose the value; only the merge at that value is written, to
``RUN_DIR/model``; an ``lmms_eval:`` block evaluates it in the resident model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import yaml

from uqmerge.core.errors import ConfigError, DataError, OutputError
from uqmerge.core.files import atomic_write_text
from uqmerge.engine.incremental import IncrementalMerger
from uqmerge.engine.merge import merge_to_dir
from uqmerge.engine.recipe import MergeConfig
from uqmerge.evaluate.lmms_config import LmmsEvalSettings, accuracy_signal
from uqmerge.pipeline.digest import config_digest
from uqmerge.pipeline.execution.backend import ExecutionBackend, LocalBackend, ResidentSpec, open_backend
from uqmerge.pipeline.search_config import SearchConfig, SearchSettings
from uqmerge.pipeline.search_inputs import SearchInputs, accuracy, generate_responses, load_search_inputs
from uqmerge.report.records import SearchPoint, SearchRecord
from uqmerge.selection.coefficients import (
    choose,
    consistency_scores,
    embedding_diff_count,
    exact_diff_count,
)
from uqmerge.uq.config import UQConfig

log = logging.getLogger(__name__)

SEARCH_FILE = "search.json"
CONFIG_FILE = "config.yml"
MODEL_DIR = "model"
LMMS_DIR = "lmms_eval"

Embed = Callable[[list[str]], Any]
"""Texts → a (n, d) tensor of their sentence embeddings."""


def default_embed(model: str | None) -> Embed:
    """The sentence embedder of ``consistency.model`` (or the default local model); errors before any merge."""
    from uqmerge.evaluate.embeddings import SentenceEmbedder, default_embedding_model

    embedder = SentenceEmbedder(Path(model) if model is not None else default_embedding_model())
    return embedder.embed


def _progress(enabled: bool) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=True,
    )


class CoefficientSearch:
    """Measures the grid points of one merge in a resident model and applies the criterion (resumable).

    ``config_at(value)`` is the merge at a grid value; ``merger`` holds the resident model; the record is saved to
    ``record_path`` after every point, and ``previous`` (a saved record of the same digest) is continued.
    ``backend`` measures the points (default: in this process, :meth:`measure`); a distributed one loads its own
    resident models as ``resident`` says, and then ``merger`` may be None. With ``lmms`` (lmms-eval tasks) a
    point's accuracy is lmms-eval's score of the point's merge, its results written under ``lmms_dir/NAME=VALUE``.
    """

    def __init__(
        self,
        settings: SearchSettings,
        config_at: Callable[[float], MergeConfig],
        merger: IncrementalMerger | None,
        processor: Any,
        inputs: SearchInputs,
        uq_config: UQConfig,
        record_path: Path,
        *,
        digest: str,
        config: dict[str, Any],
        previous: SearchRecord | None = None,
        quiet: bool = False,
        embed: Embed | None = None,
        backend: ExecutionBackend | None = None,
        resident: ResidentSpec | None = None,
        lmms: LmmsEvalSettings | None = None,
        lmms_dir: Path | None = None,
    ) -> None:
        self.settings = settings
        self.lmms = lmms
        self.lmms_dir = lmms_dir
        self.config_at = config_at
        self.merger = merger
        self.backend = backend or LocalBackend()
        self.resident = resident
        self.processor = processor
        self.inputs = inputs
        self.uq_config = uq_config
        self.record_path = record_path
        self.quiet = quiet
        self._embed = embed
        self._embeddings: dict[int, Any] = {}
        self._uq_datasets: list[Any] | None = None
        compare = settings.consistency.compare if settings.criterion == "consistency" else None
        fresh = SearchRecord(
            parameter=settings.parameter,
            criterion=settings.criterion,
            compare=compare,
            grid=list(settings.grid),
            inputs=inputs.keys,
            points=[SearchPoint(value=v) for v in settings.grid],
            accuracy_from="lmms-eval" if lmms is not None else "labels" if inputs.has_labels else None,
            digest=digest,
            config=config,
        )
        if previous is not None:
            if previous.digest != digest or previous.grid != fresh.grid:
                raise ConfigError(f"{record_path}: the config changed since this search started; use a new directory")
            if previous.inputs != fresh.inputs:
                raise DataError(f"{record_path}: the inputs changed since this search started; use a new directory")
        self.record = previous or fresh

    # ---- measuring ------------------------------------------------------------------------------------
    @property
    def embed(self) -> Embed:
        if self._embed is None:
            self._embed = default_embed(self.settings.consistency.model)
        return self._embed

    def _measured(self, point: SearchPoint) -> bool:
        return point.merge_s is not None

    def measure(self, index: int, progress: Any) -> SearchPoint:
        """Set the resident model to the merge at grid point ``index`` and measure what the criterion needs."""
        from uqmerge.uq.api import uncertainty_of_loaded_model

        s = self.settings
        value = s.grid[index]
        if self.merger is None:
            raise TypeError("this CoefficientSearch has no resident model; measure its points on its backend")
        start = time.perf_counter()
        self.merger.set_config(self.config_at(value))
        merged_at = time.perf_counter()
        model = self.merger.model
        consistency = s.criterion == "consistency"
        labelled = self.inputs.has_labels and self.lmms is None  # lmms-eval's score replaces the data's labels
        to_generate = list(self.inputs.inputs) if consistency else self.inputs.open_inputs if labelled else []
        responses: list[str] = []
        if to_generate:
            task = progress.add_task(f"{s.parameter}={value:g}: responses", total=len(to_generate))
            responses = generate_responses(
                model,
                self.processor,
                to_generate,
                batch_size=s.batch_size,
                max_new_tokens=s.consistency.max_new_tokens,
                on_batch=lambda n: progress.advance(task, n),
            )
            progress.remove_task(task)
        uncertainty = None
        if s.criterion == "uncertainty":
            if self._uq_datasets is None:
                self._uq_datasets = self.inputs.uq_datasets(self.uq_config)
            name = f"{s.parameter}={value:g}"
            result = uncertainty_of_loaded_model(
                model, self.processor, self._uq_datasets, self.uq_config, model_name=name
            )
            uncertainty = float(result.score)
        acc = None
        if labelled:
            open_responses = (
                [r for i, r in zip(self.inputs.inputs, responses, strict=True) if not i.multiple_choice]
                if consistency
                else responses
            )
            acc = accuracy(model, self.processor, self.inputs, open_responses, batch_size=s.batch_size)
        if self.lmms is not None:
            acc = self._lmms_accuracy(value)
        point = SearchPoint(
            value=value,
            responses=responses if consistency else None,
            uncertainty=uncertainty,
            accuracy=acc,
            merge_s=merged_at - start,
            eval_s=time.perf_counter() - merged_at,
        )
        log.info(
            "%s=%g: merged in %.2fs, measured in %.2fs%s%s",
            s.parameter,
            value,
            point.merge_s,
            point.eval_s,
            "" if uncertainty is None else f", uncertainty {uncertainty:.6f}",
            "" if acc is None else f", accuracy {acc:.4f}",
        )
        return point

    def _lmms_accuracy(self, value: float) -> float:
        """lmms-eval's score of the resident model (the point's merge), its results under ``lmms_dir/NAME=VALUE``."""
        from uqmerge.evaluate.lmms import evaluate_resident

        assert self.lmms is not None and self.merger is not None
        name = f"{self.settings.parameter}={value:g}"
        out = None if self.lmms_dir is None else self.lmms_dir / name
        return evaluate_resident(self.merger.model, self.processor, self.lmms, out, name=name)

    # ---- scoring --------------------------------------------------------------------------------------
    def _diff(self, j: int) -> float:
        """DiffCnt(j, j+1) of two measured points."""
        a, b = self.record.points[j], self.record.points[j + 1]
        assert a.responses is not None and b.responses is not None
        if self.settings.consistency.compare == "exact":
            return exact_diff_count(a.responses, b.responses)
        for k in (j, j + 1):
            if k not in self._embeddings:
                responses = self.record.points[k].responses
                assert responses is not None
                self._embeddings[k] = self.embed(list(responses))
        return embedding_diff_count(self._embeddings[j], self._embeddings[j + 1])

    def scores(self) -> list[float | None]:
        """Each point's criterion score from what is measured so far (None where it cannot be computed yet)."""
        points = self.record.points
        criterion = self.settings.criterion
        if criterion == "uncertainty":
            return [p.uncertainty for p in points]
        if criterion == "accuracy":
            return [p.accuracy for p in points]
        done = [self._measured(p) for p in points]
        adjacent = [self._diff(j) if done[j] and done[j + 1] else None for j in range(len(points) - 1)]
        if all(d is not None for d in adjacent):
            return list(consistency_scores([d for d in adjacent if d is not None]))
        partial: list[float | None] = [None] * len(points)
        for j in range(1, len(points) - 1):
            left, right = adjacent[j - 1], adjacent[j]
            if left is not None and right is not None:
                partial[j] = left + right
        return partial

    def _update(self) -> None:
        scores = self.scores()
        points = [p.model_copy(update={"score": s}) for p, s in zip(self.record.points, scores, strict=True)]
        update: dict[str, Any] = {"points": points}
        if all(self._measured(p) for p in points):
            choice = choose(self.settings.criterion, scores)  # type: ignore[arg-type]
            update |= {"chosen_index": choice.index, "chosen_value": self.settings.grid[choice.index]}
        self.record = self.record.model_copy(update=update)
        atomic_write_text(self.record_path, self.record.to_json())

    def run(self) -> SearchRecord:
        """Measure every point not measured yet (saving after each), then make the choice."""
        s = self.settings
        check_inputs(s, self.inputs, lmms_accuracy=self.lmms is not None)
        if s.criterion == "consistency" and s.consistency.compare == "embedding":
            _ = self.embed  # a missing embedding model fails before any merge
        todo = [i for i, p in enumerate(self.record.points) if not self._measured(p)]
        if len(todo) < len(s.grid):
            log.info("resuming: %d of %d grid point(s) already measured", len(s.grid) - len(todo), len(s.grid))
        with _progress(not self.quiet) as progress:
            task = progress.add_task(f"search {s.parameter}", total=len(s.grid), completed=len(s.grid) - len(todo))
            for index, point in self.backend.measure_points(self, todo, progress):
                points = list(self.record.points)
                points[index] = point
                self.record = self.record.model_copy(update={"points": points})
                self._update()
                progress.advance(task)
        self._update()
        assert self.record.chosen_value is not None
        log.info("chosen %s = %g (grid point %d)", s.parameter, self.record.chosen_value, self.record.chosen_index)
        return self.record


def check_inputs(settings: SearchSettings, inputs: SearchInputs, *, lmms_accuracy: bool = False) -> None:
    """The inputs suit the criterion: accuracy needs labels (unless lmms-eval scores the points), uncertainty
    multiple-choice items only."""
    if settings.criterion == "accuracy" and not inputs.has_labels and not lmms_accuracy:
        raise DataError(
            f"criterion accuracy (the oracle) needs labels; dataset(s) {inputs.unlabelled} have no answers "
            "(or set lmms_eval.accuracy: true to score the points with lmms-eval's tasks)"
        )
    if settings.criterion == "uncertainty" and inputs.open_files:
        raise DataError(
            f"criterion uncertainty scores multiple-choice items only; {[str(f) for f in inputs.open_files]} hold "
            "open-ended items (no options): remove them from the search's data"
        )


def load_resident(base_model: str, device: str, dtype: str) -> tuple[Any, Any, str]:
    """The base loaded once on the run's device and dtype: (model, processor, resolved device)."""
    from uqmerge.core.devices import resolve_device, resolve_dtype
    from uqmerge.uq.api import load_model, saved_dtype

    resolved = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, resolved, saved_dtype(Path(base_model)))
    model, processor = load_model(base_model, device=resolved, dtype=torch_dtype)
    return model, processor, str(resolved)


def _prepare_dir(run_dir: Path, config: SearchConfig, digest: str, resume: bool) -> SearchRecord | None:
    """A fresh run directory (with ``config.yml``), or the saved record to resume (same digest only)."""
    if run_dir.exists() and any(run_dir.iterdir()):
        if not resume:
            raise OutputError(f"{run_dir}: run directory is not empty; pass --resume to continue that search")
        if not (run_dir / SEARCH_FILE).exists():
            raise OutputError(f"{run_dir}: no {SEARCH_FILE} to resume from")
        previous = SearchRecord.read(run_dir / SEARCH_FILE)
        if previous.digest != digest:
            raise ConfigError(f"{run_dir}: the config changed since this search started; use a new directory")
        return previous
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / CONFIG_FILE, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    return None


def write_chosen_model(config: MergeConfig, run_dir: Path, *, device: str, max_shard_size: int) -> Path:
    """Write the merge at the chosen value to ``run_dir/model`` with the streaming disk engine (atomic)."""
    out = run_dir / MODEL_DIR
    merge_to_dir(config, out, force=True, quiet=True, max_shard_size=max_shard_size, device=device)
    return out


def run_search(
    config: SearchConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    quiet: bool = False,
    backend: ExecutionBackend | None = None,
) -> SearchRecord:
    """Run the coefficient search as configured; returns the record also saved as ``run_dir/search.json``.

    The points are measured on ``backend`` (the caller closes it), else on the backend of ``config.execution``."""
    from uqmerge.report.search_report import write_search_report

    started = time.perf_counter()
    run_dir = Path(run_dir)
    digest = config_digest(config)
    previous = _prepare_dir(run_dir, config, digest, resume)
    done_before = previous.wall_s if previous is not None else 0.0
    if previous is not None and previous.complete and previous.model_dir and (run_dir / MODEL_DIR).exists():
        log.info("search already complete in %s; rewriting the report only", run_dir)
        write_search_report(previous, run_dir)
        return previous
    record = previous
    merger: IncrementalMerger | None = None
    processor: Any = None
    if record is None or not record.complete:
        s = config.search
        inputs = load_search_inputs(config.data, sample=s.sample, seed=s.seed)
        lmms_points = accuracy_signal(config.lmms_eval)
        check_inputs(s, inputs, lmms_accuracy=lmms_points is not None)
        embedding = s.criterion == "consistency" and s.consistency.compare == "embedding"
        embed = default_embed(s.consistency.model) if embedding else None  # fails before any model is loaded
        base = config.base_model or config.models[0].model
        with nullcontext(backend) if backend is not None else open_backend(config.execution) as backend:
            # A distributed backend's workers load their own resident base; the driver needs none.
            if not backend.distributed:
                model, processor, device = load_resident(base, config.device, config.dtype)
                merger = IncrementalMerger(model, device=device)
            search = CoefficientSearch(
                s,
                config.merge_config,
                merger,
                processor,
                inputs,
                config.uq,
                run_dir / SEARCH_FILE,
                digest=digest,
                config=config.model_dump(mode="json"),
                previous=previous,
                quiet=quiet,
                embed=embed,
                backend=backend,
                resident=ResidentSpec(base, config.device, config.dtype),
                lmms=lmms_points,
                lmms_dir=run_dir / LMMS_DIR / "points",
            )
            record = search.run()
    assert record.chosen_value is not None
    out = write_chosen_model(
        config.merge_config(record.chosen_value), run_dir, device=config.device, max_shard_size=config.max_shard_size
    )
    if config.lmms_eval is not None:
        score = _lmms_eval_chosen(config, record.chosen_value, merger, processor, run_dir / LMMS_DIR)
        record = record.model_copy(update={"lmms_score": score})
    record = record.model_copy(update={"model_dir": str(out), "wall_s": done_before + time.perf_counter() - started})
    atomic_write_text(run_dir / SEARCH_FILE, record.to_json())
    write_search_report(record, run_dir)
    return record


def _lmms_eval_chosen(
    config: SearchConfig, value: float, merger: IncrementalMerger | None, processor: Any, out_dir: Path
) -> float:
    """lmms-eval's score of the merge at the chosen ``value``, set in the resident model (the search's own, else the
    base loaded here: a distributed search's resident models live in its workers); results go to ``out_dir``."""
    from uqmerge.evaluate.lmms import evaluate_merge_in_resident

    assert config.lmms_eval is not None
    if merger is None:
        base = config.base_model or config.models[0].model
        model, processor, device = load_resident(base, config.device, config.dtype)
        merger = IncrementalMerger(model, device=device)
    name = f"{config.search.parameter}={value:g}"
    return evaluate_merge_in_resident(
        merger, config.merge_config(value), processor, config.lmms_eval, out_dir, name=name
    )
