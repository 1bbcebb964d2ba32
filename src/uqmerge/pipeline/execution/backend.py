"""The execution interface both backends implement, the local backend, and :func:`open_backend`."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any

from uqmerge.core.errors import ConfigError
from uqmerge.pipeline.execution.settings import ExecutionSettings

if TYPE_CHECKING:
    from types import TracebackType

    from uqmerge.pipeline.search import CoefficientSearch
    from uqmerge.report.records import SearchPoint
    from uqmerge.uq.config import UQConfig
    from uqmerge.uq.data import UQDataset
    from uqmerge.uq.results import UQResult

log = logging.getLogger(__name__)

RAY_EXTRA_HINT = "pip install 'uqmerge[ray]'"


@dataclass(frozen=True)
class ModelJob:
    """The UQ of one model directory, as :func:`uqmerge.uq.api.run_uq` takes it (datasets already prepared)."""

    model_dir: Path
    datasets: Sequence[UQDataset]
    config: UQConfig
    device: str = "auto"
    dtype: str = "auto"
    cache_dir: Path | None = None
    use_cache: bool = True
    progress: bool = False


@dataclass(frozen=True)
class ResidentSpec:
    """How to load a search's resident model anew in another process: its base, device and dtype names."""

    base_model: str
    device: str = "auto"
    dtype: str = "auto"


class ExecutionBackend(ABC):
    """Computes independent scores (one model's UQ, one search point) and hands them back to the driver, which
    keeps every decision (the stop rule, the search's choice) and every record, cache entry and resume file.

    Results are yielded as ``(index, result)`` in completion order; callers place them by index, so the order
    never changes a record. A backend is a context manager; :meth:`close` releases its workers.
    """

    name: str = "local"
    distributed: bool = False
    """True when the work runs outside this process (the driver then prefetches what it can in parallel)."""

    @abstractmethod
    def score_models(self, jobs: Sequence[ModelJob]) -> Iterator[tuple[int, UQResult]]:
        """The UQ of every job, cached and returned exactly as :func:`~uqmerge.uq.api.run_uq` would."""

    @abstractmethod
    def measure_points(
        self, search: CoefficientSearch, indices: Sequence[int], progress: Any
    ) -> Iterator[tuple[int, SearchPoint]]:
        """Grid points ``indices`` of ``search`` measured (:meth:`CoefficientSearch.measure`)."""

    def close(self) -> None:
        """Release the workers (nothing to do in-process)."""
        return None

    def __enter__(self) -> ExecutionBackend:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class LocalBackend(ExecutionBackend):
    """Everything in this process, one job after another: the code path uqmerge always had."""

    def score_models(self, jobs: Sequence[ModelJob]) -> Iterator[tuple[int, UQResult]]:
        from uqmerge.uq.api import run_uq

        for index, job in enumerate(jobs):
            result = run_uq(
                job.model_dir,
                job.datasets,
                job.config,
                device=job.device,
                dtype=job.dtype,
                cache_dir=job.cache_dir,
                use_cache=job.use_cache,
                progress=job.progress,
            )
            yield index, result

    def measure_points(
        self, search: CoefficientSearch, indices: Sequence[int], progress: Any
    ) -> Iterator[tuple[int, SearchPoint]]:
        for index in indices:
            yield index, search.measure(index, progress)


def open_backend(settings: ExecutionSettings | None) -> ExecutionBackend:
    """The backend of an ``execution:`` block (local when None); Ray is imported only for ``backend: ray``."""
    if settings is None or settings.backend == "local":
        return LocalBackend()
    if find_spec("ray") is None:
        raise ConfigError(f"execution.backend ray (--ray) needs the 'ray' extra: {RAY_EXTRA_HINT}")
    from uqmerge.pipeline.execution.ray_backend import RayBackend

    return RayBackend(settings)
