"""The scoring worker a Ray actor wraps: one model resident at a time, loaded from a path every node can see."""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import resource
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from uqmerge.engine.recipe import MergeConfig
    from uqmerge.evaluate.lmms_config import LmmsEvalSettings
    from uqmerge.pipeline.search import CoefficientSearch
    from uqmerge.pipeline.search_config import SearchSettings
    from uqmerge.pipeline.search_inputs import SearchInputs
    from uqmerge.report.records import SearchPoint
    from uqmerge.uq.api import UQRequest
    from uqmerge.uq.config import UQConfig
    from uqmerge.uq.data import UQDataset
    from uqmerge.uq.results import UQResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchJob:
    """Everything a worker needs to measure any grid point of one search in its own resident model.

    ``configs`` is the merge at each grid value (grid order); ``device`` is the driver's resolved device type;
    ``lmms`` (lmms-eval tasks) scores each point's accuracy, its results written under ``lmms_dir`` when given.
    """

    key: str
    settings: SearchSettings
    configs: tuple[MergeConfig, ...]
    inputs: SearchInputs
    uq_config: UQConfig
    base_model: str
    device: str
    dtype: str
    lmms: LmmsEvalSettings | None = None
    lmms_dir: str | None = None


def _peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def _local_device(device: Any) -> Any:
    """A CUDA device without its index: the worker sees only the GPU(s) its scheduler gave it."""
    import torch

    return torch.device("cuda") if torch.device(device).type == "cuda" else torch.device("cpu")


class ScoringWorker:
    """Scores one model at a time: a candidate's UQ, or grid points of a search merged into a resident base.

    Every call is self-contained (the job says what to load), so a worker restarted after a crash redoes the
    call from scratch and returns the same numbers.
    """

    def __init__(self, threads: int = 1) -> None:
        import torch
        from transformers.utils import logging as hf_logging

        torch.set_num_threads(max(1, threads))
        hf_logging.disable_progress_bar()  # no per-model tqdm bars in the worker logs
        self._search_key: str | None = None
        self._search: CoefficientSearch | None = None

    def describe(self) -> dict[str, Any]:
        """Process id, host and peak RSS (MiB) of this worker."""
        return {"pid": os.getpid(), "host": socket.gethostname(), "peak_rss_mib": _peak_rss_mib()}

    def _drop_resident(self) -> None:
        if self._search is None:
            return
        self._search_key = None
        self._search = None
        gc.collect()  # a model's modules hold reference cycles: free it before the next one loads

    def uq(
        self, index: int, request: UQRequest, datasets: Sequence[UQDataset], config: UQConfig
    ) -> tuple[int, UQResult]:
        """The UQ of one model directory (no cache: the driver owns it)."""
        from uqmerge.uq.api import compute_uq

        self._drop_resident()  # one model in memory at a time
        request = dataclasses.replace(request, device=_local_device(request.device))
        return index, compute_uq(request, datasets, config)

    def point(self, index: int, job: SearchJob) -> tuple[int, SearchPoint]:
        """Grid point ``index`` of ``job`` merged into the resident base and measured."""
        from rich.progress import Progress

        search = self._resident(job)
        with Progress(disable=True) as progress:
            return index, search.measure(index, progress)

    def _resident(self, job: SearchJob) -> CoefficientSearch:
        """The search of ``job`` around a resident base model, loaded once per job (and again after a restart)."""
        if self._search_key == job.key and self._search is not None:
            return self._search
        from uqmerge.engine.incremental import IncrementalMerger
        from uqmerge.pipeline.search import CoefficientSearch, load_resident

        self._drop_resident()
        device = str(_local_device(job.device))
        model, processor, resolved = load_resident(job.base_model, device, job.dtype)
        configs = dict(zip(job.settings.grid, job.configs, strict=True))
        self._search = CoefficientSearch(
            job.settings,
            configs.__getitem__,
            IncrementalMerger(model, device=resolved),
            processor,
            job.inputs,
            job.uq_config,
            Path(os.devnull),  # never written: the driver keeps the record
            digest=job.key,
            config={},
            quiet=True,
            lmms=job.lmms,
            lmms_dir=None if job.lmms_dir is None else Path(job.lmms_dir),
        )
        self._search_key = job.key
        log.info("worker %d: resident %s for search %s", os.getpid(), job.base_model, job.key[:8])
        return self._search
