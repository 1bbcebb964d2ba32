"""The Ray backend: candidates' UQ and search points on Ray actors, one resident model per actor.

The driver keeps the cache, the records and every decision: it looks each model up in the UQ cache, sends only
the misses to actors (a path, never the weights: every node reads the model from a path it can see), stores what
comes back, and yields results as they finish. Actors are placed by Ray's resources (``cpus_per_worker``, and
``gpus_per_worker`` when the device is CUDA); an actor whose process dies is restarted by Ray
(``max_restarts``) and its unfinished call re-run (``max_task_retries``), which gives the same numbers because
every call loads what it needs itself.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import ray
from ray.exceptions import RayActorError, RayTaskError
from ray.util import ActorPool

from uqmerge.core.devices import resolve_device
from uqmerge.core.errors import ConfigError, UQMergeError
from uqmerge.pipeline.execution.backend import ExecutionBackend, ModelJob
from uqmerge.pipeline.execution.settings import ExecutionSettings
from uqmerge.pipeline.execution.worker import ScoringWorker, SearchJob

if TYPE_CHECKING:
    from uqmerge.pipeline.search import CoefficientSearch
    from uqmerge.report.records import SearchPoint
    from uqmerge.uq.results import UQResult

log = logging.getLogger(__name__)


class RayBackend(ExecutionBackend):
    """Ray actors over a cluster at ``settings.address`` (started on this machine when None)."""

    name = "ray"
    distributed = True

    def __init__(self, settings: ExecutionSettings) -> None:
        self.settings = settings
        self._owns_ray = False
        self._actors: list[Any] = []
        self._device_type: str | None = None
        self._shared: dict[int, tuple[object, Any]] = {}

    # ---- the cluster and its actors --------------------------------------------------------------------
    def _connect(self) -> None:
        if ray.is_initialized():
            return
        address = self.settings.address
        log.info("Ray: %s", "starting a local cluster" if address is None else f"joining {address}")
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        self._owns_ray = True

    def _capacity(self, device_type: str) -> int:
        """Workers that fit the cluster: its CPUs per ``cpus_per_worker`` (and GPUs per ``gpus_per_worker``)."""
        s = self.settings
        resources = ray.cluster_resources()
        fits = int(resources.get("CPU", 0) // s.cpus_per_worker)
        if device_type == "cuda" and s.gpus_per_worker > 0:
            fits = min(fits, int(resources.get("GPU", 0) // s.gpus_per_worker))
        if fits < 1:
            need = f"{s.cpus_per_worker:g} CPU" + (f" and {s.gpus_per_worker:g} GPU" if device_type == "cuda" else "")
            raise ConfigError(
                f"execution: no Ray worker fits the cluster ({dict(resources)}); each needs {need}: lower "
                "execution.cpus_per_worker / gpus_per_worker or add nodes"
            )
        return fits

    def _pool(self, device_type: str, jobs: int) -> ActorPool:
        """An actor pool of ``min(workers, jobs)`` actors at least (started on first use, grown when needed)."""
        self._connect()
        if self._device_type not in (None, device_type):
            self._kill_actors()
        self._device_type = device_type
        s = self.settings
        wanted = min(s.workers or self._capacity(device_type), max(1, jobs))
        gpus = s.gpus_per_worker if device_type == "cuda" else 0
        actor_class = ray.remote(ScoringWorker).options(
            num_cpus=s.cpus_per_worker,
            num_gpus=gpus,
            max_restarts=s.max_restarts,
            max_task_retries=s.max_restarts,
        )
        started = [actor_class.remote(max(1, int(s.cpus_per_worker))) for _ in range(wanted - len(self._actors))]
        if started:
            for info in self._get([a.describe.remote() for a in started], "starting the workers"):
                log.info("Ray worker: pid %d on %s", info["pid"], info["host"])
            self._actors += started
        return ActorPool(list(self._actors))

    def start_workers(self, device_type: str = "cpu", count: int | None = None) -> int:
        """Start the actors now (else the first job starts them); returns how many are running."""
        self._pool(device_type, count or self.settings.workers or self._capacity(device_type))
        return len(self._actors)

    def _kill_actors(self) -> None:
        for actor in self._actors:
            ray.kill(actor, no_restart=True)
        self._actors = []

    def close(self) -> None:
        self._kill_actors()
        self._shared.clear()
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
        self._owns_ray = False

    def worker_info(self) -> list[dict[str, Any]]:
        """Each live worker's pid, host and peak RSS."""
        return self._get([a.describe.remote() for a in self._actors], "describing the workers")

    def _put(self, value: object) -> Any:
        """``value`` in the object store once (by identity) for all the calls that share it."""
        key = id(value)
        if key not in self._shared:
            self._shared[key] = (value, ray.put(value))  # the value is kept so its id is not reused
        return self._shared[key][1]

    def _submit(self, actor: Any, method: str, *args: Any) -> Any:
        """One call on one actor (an ObjectRef)."""
        return getattr(actor, method).remote(*args)

    def _results(self, pool: ActorPool, method: str, calls: Sequence[tuple[Any, ...]], what: str) -> Iterator[Any]:
        """Run ``method(*args)`` for every ``args`` on the pool's idle actors; results in completion order."""
        for args in calls:
            pool.submit(lambda actor, a: self._submit(actor, method, *a), args)
        while pool.has_next():
            try:
                yield pool.get_next_unordered()
            except RayTaskError as e:
                raise _cause(e, what) from None
            except RayActorError as e:
                raise UQMergeError(
                    f"a Ray worker died while {what} and could not be restarted (execution.max_restarts "
                    f"{self.settings.max_restarts}): {str(e).splitlines()[0]}"
                ) from None

    def _get(self, refs: list[Any], what: str) -> list[Any]:
        try:
            return ray.get(refs)
        except RayTaskError as e:
            raise _cause(e, what) from None

    # ---- the work --------------------------------------------------------------------------------------
    def score_models(self, jobs: Sequence[ModelJob]) -> Iterator[tuple[int, UQResult]]:
        from uqmerge.uq.api import cached_uq, store_uq, uq_request
        from uqmerge.uq.cache import UQCache

        misses = []
        for index, job in enumerate(jobs):
            cache = UQCache(job.cache_dir)
            request = uq_request(
                job.model_dir,
                job.datasets,
                job.config,
                device=resolve_device(job.device),
                dtype=job.dtype,
                cache=cache,
                use_cache=job.use_cache,
            )
            hit = cached_uq(request, job.datasets, job.config, cache) if job.use_cache else None
            if hit is not None:
                yield index, _as_returned(hit, job)
            else:
                misses.append((index, job, request, cache))
        if not misses:
            return
        device_type = misses[0][2].device.type
        pool = self._pool(device_type, len(misses))
        calls = [(index, request, self._put(job.datasets), job.config) for index, job, request, _ in misses]
        by_index = {index: (job, request, cache) for index, job, request, cache in misses}
        for index, result in self._results(pool, "uq", calls, "scoring a model's UQ"):
            job, request, cache = by_index[index]
            if job.use_cache:
                store_uq(request, result, cache)
            yield index, _as_returned(result, job)

    def measure_points(
        self, search: CoefficientSearch, indices: Sequence[int], progress: Any
    ) -> Iterator[tuple[int, SearchPoint]]:
        if not indices:
            return
        resident = search.resident
        if resident is None:
            raise TypeError("a CoefficientSearch on the Ray backend needs its ResidentSpec (how to load its base)")
        device = resolve_device(resident.device)
        s = search.settings
        job = SearchJob(
            key=uuid.uuid4().hex,
            settings=s,
            configs=tuple(search.config_at(value) for value in s.grid),
            inputs=search.inputs,
            uq_config=search.uq_config,
            base_model=resident.base_model,
            device=device.type,
            dtype=resident.dtype,
            lmms=search.lmms,
            lmms_dir=None if search.lmms_dir is None else str(search.lmms_dir),
        )
        pool = self._pool(device.type, len(indices))
        job_ref = ray.put(job)
        yield from self._results(pool, "point", [(index, job_ref) for index in indices], "measuring a search point")


def _as_returned(result: UQResult, job: ModelJob) -> UQResult:
    """As :func:`~uqmerge.uq.api.run_uq` returns it: without per-item records unless ``save_probs``."""
    return result if job.config.save_probs else result.without_probs()


def _cause(error: RayTaskError, what: str) -> Exception:
    """The worker's own exception (a one-line UQMergeError stays one), or a one-line error naming the call."""
    cause = error.cause
    log.debug("Ray worker error while %s: %s", what, error)  # the worker's traceback, for --verbose
    if isinstance(cause, UQMergeError):
        return cause
    return UQMergeError(f"a Ray worker failed while {what}: {type(cause).__name__}: {cause}")
