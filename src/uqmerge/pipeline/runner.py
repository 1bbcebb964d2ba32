"""`uqmerge run`: Algorithm 1 with one resident model, guidance ablations, baselines, an optional coefficient
search over the selected merge, resume and a report."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from uqmerge.core.errors import ConfigError, OutputError
from uqmerge.core.files import atomic_write_text
from uqmerge.engine.incremental import IncrementalMerger
from uqmerge.engine.merge import merge_to_dir
from uqmerge.evaluate.lmms_config import accuracy_signal
from uqmerge.pipeline.config import RunConfig
from uqmerge.pipeline.digest import config_digest
from uqmerge.pipeline.execution.backend import ExecutionBackend, LocalBackend, ModelJob, ResidentSpec, open_backend
from uqmerge.report.records import (
    BaselineRecord,
    CandidateRecord,
    CandidateScore,
    RunRecord,
    SearchRecord,
    StepRecord,
)
from uqmerge.selection import (
    RUN_GUIDANCES,
    SelectionResult,
    Step,
    random_subsets,
    select_all,
    select_by_accuracy,
    select_by_cp_set_size,
    select_by_random_order,
    select_by_uncertainty,
)
from uqmerge.uq.config import UQConfig, UQMode

if TYPE_CHECKING:
    from uqmerge.uq.results import UQResult

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
MODEL_DIR = "model"
SEARCH_FILE = "search.json"


@dataclass
class RunState:
    """What a run has finished so far; saved after every step so ``--resume`` can continue."""

    digest: str
    steps: list[StepRecord] = field(default_factory=list)
    baselines: dict[str, BaselineRecord] = field(default_factory=dict)

    def save(self, run_dir: Path) -> None:
        data = {
            "digest": self.digest,
            "steps": [s.model_dump(mode="json") for s in self.steps],
            "baselines": {k: b.model_dump(mode="json") for k, b in self.baselines.items()},
        }
        atomic_write_text(run_dir / STATE_FILE, json.dumps(data, indent=2))

    @classmethod
    def load(cls, run_dir: Path) -> RunState | None:
        path = run_dir / STATE_FILE
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        steps = [StepRecord.model_validate(s) for s in data.get("steps", [])]
        baselines = {k: BaselineRecord.model_validate(b) for k, b in data.get("baselines", {}).items()}
        return cls(data["digest"], steps, baselines)


@dataclass(frozen=True)
class MergedScore:
    """The measure of one merged prefix and what it cost (kept until its selection step is recorded)."""

    value: float
    accuracy: float | None
    merge_s: float
    uq_s: float


class UQMergeRun:
    """One run of UQ-Merge in ``run_dir`` (see :func:`run_uq_merge`)."""

    def __init__(
        self, config: RunConfig, run_dir: Path, *, resume: bool, quiet: bool, backend: ExecutionBackend | None = None
    ) -> None:
        self.config = config
        self.backend = backend or LocalBackend()
        self.run_dir = run_dir
        self.quiet = quiet
        self.paths = {c.id: c.model for c in config.candidates}
        self.uq_config: UQConfig = config.uq.uq_config()
        self._datasets: list[Any] | None = None
        self._merger: IncrementalMerger | None = None
        self.processor: Any = None
        self.resumed = False  # set by _prepare_dir when it continues a run directory
        self.state = self._prepare_dir(resume)
        self.candidate_scores: dict[str, dict[str, CandidateScore]] = {c.id: {} for c in config.candidates}
        self.merged_scores: dict[tuple[str, ...], MergedScore] = {}
        self._prefetched: dict[tuple[str, str], UQResult] = {}

    # ---- set-up -----------------------------------------------------------------------------------
    def _prepare_dir(self, resume: bool) -> RunState:
        digest = config_digest(self.config)
        if self.run_dir.exists() and any(self.run_dir.iterdir()):
            previous = RunState.load(self.run_dir)
            if not resume:
                raise OutputError(f"{self.run_dir}: run directory is not empty; pass --resume to continue that run")
            if previous is None:
                raise OutputError(f"{self.run_dir}: no {STATE_FILE} to resume from")
            if previous.digest != digest:
                raise ConfigError(f"{self.run_dir}: the config changed since this run started; use a new directory")
            if (self.run_dir / MODEL_DIR).exists() and (self.run_dir / "run.json").exists():
                log.info("run already complete in %s; rewriting the report only", self.run_dir)
            log.info("resuming: %d completed step(s) reused", len(previous.steps))
            self.resumed = True
            return previous
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "uq").mkdir(exist_ok=True)
        resolved = self.config.model_dump(mode="json")
        atomic_write_text(self.run_dir / "config.resolved.yaml", yaml.safe_dump(resolved, sort_keys=False))
        state = RunState(digest)
        state.save(self.run_dir)
        return state

    @property
    def datasets(self) -> list[Any]:
        if self._datasets is None:
            from uqmerge.uq.data import load_uq_datasets

            cfg = self.uq_config
            self._datasets = load_uq_datasets(
                self.config.uq.data, seed=cfg.seed, sample_ratio=cfg.sample_ratio, real_options=cfg.real_options
            )
        return self._datasets

    @property
    def merger(self) -> IncrementalMerger:
        if self._merger is None:
            from uqmerge.core.devices import resolve_device, resolve_dtype
            from uqmerge.uq.api import load_model, saved_dtype

            # One device and dtype for the run: the resident merged model is scored exactly as candidates are.
            device = resolve_device(self.config.device)
            dtype = resolve_dtype(self.config.dtype, device, saved_dtype(Path(self.config.base_model)))
            model, self.processor = load_model(self.config.base_model, device=device, dtype=dtype)
            self._merger = IncrementalMerger(
                model,
                self.config.merge_config,
                device=str(device),
                low_memory=self.config.low_memory,
            )
        return self._merger

    @property
    def merge_bytes_read(self) -> int:
        """Bytes the resident merges read so far (0 when every prefix was a single model)."""
        return self._merger.bytes_read if self._merger is not None else 0

    # ---- scores -----------------------------------------------------------------------------------
    def candidate_uq(self, cid: str, config: UQConfig | None = None) -> CandidateScore:
        """UQ of one candidate from disk (cached by weight fingerprint); saved under ``uq/<id>.json``."""
        config = config or self.uq_config
        result = self._prefetched.pop((cid, config.mode.value), None)
        if result is None:
            [(_, result)] = self.backend.score_models([self._uq_job(cid, config)])
        log.info("candidate %s: %s %.6f%s", cid, result.measure, result.score, " (cache hit)" * result.cache_hit)
        suffix = "" if config == self.uq_config else f".{config.mode.value}"
        atomic_write_text(self.run_dir / "uq" / f"{cid}{suffix}.json", result.to_json())
        score = CandidateScore(
            score=result.score, accuracy=result.accuracy, measure=result.measure, cache_hit=result.cache_hit
        )
        self.candidate_scores[cid][config.mode.value] = score
        return score

    def _uq_job(self, cid: str, config: UQConfig) -> ModelJob:
        return ModelJob(
            Path(self.paths[cid]), self.datasets, config, device=self.config.device, dtype=self.config.dtype
        )

    def prefetch_candidates(self) -> None:
        """Score at once, through the backend, every candidate the guidance scores first (all of them, in the
        mode it sorts by); :meth:`candidate_uq` then takes each result once. Random guidance scores only its
        first candidate, and lmms-eval accuracy is measured in the resident model, so nothing is prefetched then."""
        guidance = self.config.selection.guidance
        if guidance == "random" or (guidance == "accuracy" and accuracy_signal(self.config.lmms_eval)):
            return
        config = self.uq_config.model_copy(update={"mode": UQMode.NONE}) if guidance == "accuracy" else self.uq_config
        ids = [c.id for c in self.config.candidates]
        for index, result in self.backend.score_models([self._uq_job(cid, config) for cid in ids]):
            self._prefetched[(ids[index], config.mode.value)] = result

    def model_uncertainty(self, cid: str) -> float:
        return float(self.candidate_uq(cid).score)

    def model_accuracy(self, cid: str) -> float:
        if accuracy_signal(self.config.lmms_eval):
            return self.lmms_score([cid], None, self.run_dir / "lmms_eval" / "candidates" / cid)
        score = self.candidate_uq(cid, self.uq_config.model_copy(update={"mode": UQMode.NONE}))
        if score.accuracy is None:
            raise ConfigError("selection.guidance accuracy needs labeled UQ data (an `answer` per item)")
        return float(score.accuracy)

    def lmms_score(self, ids: list[str], search_value: float | None, out_dir: Path) -> float:
        """lmms-eval's score of Merge(ids) (a single id: that candidate) set in the resident model; its results
        are written under ``out_dir``, and a resumed run reads them back instead of evaluating again."""
        from uqmerge.evaluate.lmms import evaluate_merge_in_resident, read_task_score, single_model_config

        assert self.config.lmms_eval is not None
        if self.resumed and (done := read_task_score(out_dir, self.config.lmms_eval.tasks)) is not None:
            log.info("lmms-eval %s: %.4f, read from %s", "+".join(ids), done, out_dir)
            return done
        if len(ids) == 1 and search_value is None:
            config = single_model_config(self.config.base_model, self.paths[ids[0]])
        else:
            config = self.config.merge_config(ids, search_value)
        merger = self.merger
        return evaluate_merge_in_resident(
            merger, config, self.processor, self.config.lmms_eval, out_dir, name="+".join(ids)
        )

    def merged_uncertainty(self, prefix: list[str]) -> float:
        """Set the resident model to Merge(prefix) and measure its UQ (no checkpoint is written)."""
        from uqmerge.uq.api import uncertainty_of_loaded_model

        start = time.perf_counter()
        self.merger.set_prefix(prefix)
        merged_at = time.perf_counter()
        result = uncertainty_of_loaded_model(
            self.merger.model, self.processor, self.datasets, self.uq_config, model_name="+".join(prefix)
        )
        self.merged_scores[tuple(prefix)] = MergedScore(
            value=float(result.score),
            accuracy=result.accuracy,
            merge_s=merged_at - start,
            uq_s=time.perf_counter() - merged_at,
        )
        log.info("merged %s: %s %.6f", "+".join(prefix), result.measure, result.score)
        return float(result.score)

    # ---- selection --------------------------------------------------------------------------------
    def _on_step(self, step: Step) -> None:
        merged = self.merged_scores.get(tuple(step.prefix)) if len(step.prefix) > 1 else None
        record = StepRecord(prefix=list(step.prefix), value=step.value)
        if merged is not None:
            timing = {"merge_s": merged.merge_s, "uq_s": merged.uq_s, "accuracy": merged.accuracy}
            record = record.model_copy(update=timing)
        self.state.steps.append(record)
        self.state.save(self.run_dir)

    def select(self) -> SelectionResult:
        s = self.config.selection
        ids = [c.id for c in self.config.candidates]
        known = [Step(tuple(r.prefix), r.value) for r in self.state.steps]
        common: dict[str, Any] = {"stop": s.stop, "known_steps": known, "on_step": self._on_step}
        rules: dict[str, Callable[[], SelectionResult]] = {
            "uncertainty": lambda: select_by_uncertainty(
                ids, self.model_uncertainty, self.merged_uncertainty, order=s.order, **common
            ),
            "cp_set_size": lambda: select_by_cp_set_size(
                ids, self.model_uncertainty, self.merged_uncertainty, order=s.order, **common
            ),
            "accuracy": lambda: select_by_accuracy(
                ids,
                self.model_accuracy,
                self.merged_uncertainty,
                order=s.order,
                model_uncertainty=self.model_uncertainty,
                **common,
            ),
            "random": lambda: select_by_random_order(
                ids, self.merged_uncertainty, seed=s.seed, model_uncertainty=self.model_uncertainty, **common
            ),
        }
        assert set(rules) == set(RUN_GUIDANCES), "every run guidance needs a rule here"
        return rules[s.guidance]()

    def baselines(self, selected_size: int) -> dict[str, BaselineRecord]:
        """Merge-all and same-size random subsets, scored with the same UQ (resumable)."""
        b = self.config.baselines
        ids = [c.id for c in self.config.candidates]
        jobs: list[tuple[str, SelectionResult]] = []
        if b.all:
            jobs.append(("all", select_all(ids)))
        if b.random_subset is not None:
            k = min(b.random_subset.k or selected_size, len(ids))
            for seed, res in zip(b.random_subset.seeds, random_subsets(ids, k, b.random_subset.seeds), strict=True):
                jobs.append((f"random_subset_k{k}_seed{seed}", res))
        for name, res in jobs:
            if name in self.state.baselines:
                continue
            prefix = list(res.selected)
            value = self.model_uncertainty(prefix[0]) if len(prefix) == 1 else self.merged_uncertainty(prefix)
            self.state.baselines[name] = BaselineRecord(models=prefix, uncertainty=value)
            self.state.save(self.run_dir)
        return self.state.baselines

    def search_coefficient(self, selected: list[str]) -> SearchRecord | None:
        """The ``search:`` block over Merge(selected): each grid value merged into the resident model and scored;
        ``search.json`` is saved after every point (and continued on resume). None without a ``search:`` block."""
        from uqmerge.pipeline.search import CoefficientSearch
        from uqmerge.pipeline.search_inputs import load_search_inputs

        s = self.config.search
        if s is None:
            return None
        path = self.run_dir / SEARCH_FILE
        previous = SearchRecord.read(path) if path.exists() else None
        if previous is not None and previous.complete and previous.digest == self.state.digest:
            log.info("coefficient search already complete: %s = %g", s.parameter, previous.chosen_value)
            return previous
        inputs = load_search_inputs(s.data or self.config.uq.data, sample=s.sample, seed=s.seed)
        lmms = self.config.lmms_eval
        search = CoefficientSearch(
            s,
            lambda value: self.config.merge_config(selected, value),
            None if self.backend.distributed else self.merger,  # a distributed backend loads its own
            self.processor,
            inputs,
            self.uq_config,
            path,
            digest=self.state.digest,
            config={
                "models": selected,
                **s.model_dump(mode="json"),
                **({} if lmms is None else {"lmms_eval": lmms.model_dump(mode="json")}),
            },
            previous=previous,
            quiet=self.quiet,
            backend=self.backend,
            resident=ResidentSpec(self.config.base_model, self.config.device, self.config.dtype),
            lmms=accuracy_signal(lmms),
            lmms_dir=self.run_dir / "lmms_eval" / "search",
        )
        return search.run()

    def write_model(self, selected: list[str], search_value: float | None = None) -> Path:
        """Write Merge(selected) (at the search's chosen value, if any) to ``run_dir/model`` with the streaming disk
        engine (atomic)."""
        out = self.run_dir / MODEL_DIR
        merge_to_dir(
            self.config.merge_config(selected, search_value),
            out,
            force=True,
            quiet=True,
            max_shard_size=self.config.max_shard_size,
            device=self.config.device,
        )
        return out


def run_uq_merge(
    config: RunConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    quiet: bool = False,
    on_stage: Callable[[str], None] | None = None,
    backend: ExecutionBackend | None = None,
) -> RunRecord:
    """Run UQ-Merge as configured; returns the run record also saved as ``run_dir/run.json``.

    The candidates' UQ and the search points run on ``backend`` (the caller closes it), else on the backend of
    ``config.execution``, opened and closed here."""
    started = time.perf_counter()
    if backend is not None:
        return _run(config, Path(run_dir), resume, quiet, on_stage, backend, started)
    with open_backend(config.execution) as opened:
        return _run(config, Path(run_dir), resume, quiet, on_stage, opened, started)


def _run(
    config: RunConfig,
    run_dir: Path,
    resume: bool,
    quiet: bool,
    on_stage: Callable[[str], None] | None,
    backend: ExecutionBackend,
    started: float,
) -> RunRecord:
    from uqmerge.report.run_report import write_run_report

    run = UQMergeRun(config, run_dir, resume=resume, quiet=quiet, backend=backend)
    stage = on_stage or (lambda _s: None)
    if backend.distributed:
        stage(f"scoring candidates on {backend.name}")
        run.prefetch_candidates()
    stage("scoring candidates and selecting")
    result = run.select()
    selected = list(result.selected)
    stage("baselines")
    baselines = run.baselines(len(selected))
    search = None
    if config.search is not None:
        stage(f"coefficient search over {config.search.parameter}")
        search = run.search_coefficient(selected)
    stage("writing the selected model")
    model_dir = run.write_model(selected, search.chosen_value if search is not None else None)
    if config.lmms_eval is not None:
        stage("lmms-eval on the selected model")
        run.lmms_score(selected, search.chosen_value if search is not None else None, run.run_dir / "lmms_eval")
    record = RunRecord(
        config=config.model_dump(mode="json"),
        candidates={c.id: CandidateRecord(model=c.model, scores=run.candidate_scores[c.id]) for c in config.candidates},
        selection=result.to_dict(),
        steps=run.state.steps,
        selected=selected,
        baselines=baselines,
        model_dir=str(model_dir),
        merge_bytes_read=run.merge_bytes_read,
        search=search,
        wall_s=time.perf_counter() - started,
    )
    atomic_write_text(Path(run_dir) / "selected.json", json.dumps(selected) + "\n")
    atomic_write_text(Path(run_dir) / "run.json", record.to_json())
    write_run_report(record, Path(run_dir))
    return record
