"""The Ray execution backend: the same scores, selections and records as the local backend, and its faults."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from uqmerge.cli import app
from uqmerge.core.errors import ConfigError
from uqmerge.pipeline.config import parse_run_config
from uqmerge.pipeline.digest import config_digest
from uqmerge.pipeline.execution import ExecutionSettings, open_backend
from uqmerge.pipeline.runner import run_uq_merge
from uqmerge.pipeline.search import run_search
from uqmerge.pipeline.search_config import parse_search_config
from uqmerge.report.records import RunRecord

CANDIDATES = ("specialist-count", "specialist-position", "overtrained-size", "overconfident-shape-permuted")
RAY = {"backend": "ray", "workers": 2, "cpus_per_worker": 1, "gpus_per_worker": 0}
ONE_WORKER = {**RAY, "workers": 1}  # the fault tests: one process to kill and restart, less start-up on 2 cores
needs_ray = pytest.mark.skipif(
    find_spec("ray") is None, reason="the Ray backend needs the 'ray' extra: pip install 'uqmerge[ray]'"
)


# ---- settings (no cluster) ---------------------------------------------------------------------------------


def test_the_execution_block_is_checked_and_left_out_of_the_digest_and_the_record(tmp_path: Path) -> None:
    base = {
        "base_model": "base",
        "candidates": ["a", "b"],
        "uq": {"data": ["items.jsonl"]},
    }
    local = parse_run_config(base)
    on_ray = parse_run_config({**base, "execution": {"backend": "ray", "address": "auto", "workers": 3}})
    assert on_ray.execution.workers == 3 and local.execution.backend == "local"
    # A run started on one backend resumes on the other: the backend changes no number.
    assert config_digest(local) == config_digest(on_ray)
    assert "execution" not in on_ray.model_dump(mode="json")
    with pytest.raises(ConfigError, match=r"execution\.address: .*not a Ray address"):
        parse_run_config({**base, "execution": {"backend": "ray", "address": "somewhere"}})
    with pytest.raises(ConfigError, match=r"execution\.spare: unknown key"):
        parse_run_config({**base, "execution": {"spare": 1}})
    assert ExecutionSettings().with_ray("local").address is None
    assert ExecutionSettings().with_ray("ray://head:10001").address == "ray://head:10001"
    with pytest.raises(ConfigError, match="--ray: 'nowhere' is not a Ray address"):
        ExecutionSettings().with_ray("nowhere")


def test_without_ray_installed_the_ray_backend_is_a_one_line_error_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import uqmerge.pipeline.execution.backend as backend

    monkeypatch.setattr(backend, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"needs the 'ray' extra: pip install 'uqmerge\[ray\]'"):
        open_backend(ExecutionSettings(backend="ray"))
    assert open_backend(ExecutionSettings()).name == "local"


# ---- a local Ray cluster of 2 CPUs ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A UQ cache of this test alone, so that every candidate is scored (not read back from another run)."""
    cache = tmp_path / "uq-cache"
    monkeypatch.setenv("UQMERGE_CACHE", str(cache))
    return cache


def _run_config(zoo: Path, **execution: Any) -> dict[str, Any]:
    return {
        "base_model": str(zoo / "models" / "base"),
        "candidates": [{"id": c, "model": str(zoo / "models" / c)} for c in CANDIDATES],
        "merge": {"merge_method": "linear"},
        "uq": {
            "data": [str(zoo / "data" / "held_in" / f"{f}.jsonl") for f in ("count", "shape")],
            "perturbations": 2,
            "sample_ratio": 0.06,
            "batch_size": 8,
        },
        "selection": {"stop": "first_increase"},
        "device": "cpu",
        "execution": execution or {"backend": "local"},
    }


@pytest.fixture(scope="module")
def local_run(mini_zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: the run on the local backend, with a UQ cache of its own."""
    root = tmp_path_factory.mktemp("local-run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UQMERGE_CACHE", str(root / "uq-cache"))
        run_uq_merge(parse_run_config(_run_config(mini_zoo)), root / "run", quiet=True)
    return root / "run"


def _numbers(record: RunRecord) -> dict[str, Any]:
    """Everything of a run record but its timings."""
    data = record.model_dump(mode="json")
    data["steps"] = [{k: v for k, v in s.items() if k not in ("merge_s", "uq_s")} for s in data["steps"]]
    return {k: v for k, v in data.items() if k not in ("wall_s", "model_dir")}


def _files(run_dir: Path) -> dict[str, bytes]:
    paths = [*sorted((run_dir / "uq").iterdir()), *sorted((run_dir / "model").glob("*.safetensors"))]
    paths += [run_dir / "selected.json", run_dir / "config.resolved.yaml"]
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in paths}


@needs_ray
def test_run_on_ray_gives_the_local_backends_scores_selection_and_files_bit_for_bit(
    cluster: None, mini_zoo: Path, local_run: Path, tmp_path: Path, fresh_cache: Path
) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps(_run_config(mini_zoo)))
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(path), str(run_dir), "--ray", "auto", "-q"])
    assert result.exit_code == 0, result.output
    got, want = RunRecord.read(run_dir), RunRecord.read(local_run)
    assert not any(s.cache_hit for c in got.candidates.values() for s in c.scores.values())  # all scored on Ray
    assert got.selection == want.selection and got.selected == want.selected
    assert _numbers(got) == _numbers(want)
    assert _files(run_dir) == _files(local_run)


def _killing_backend(settings: ExecutionSettings, kills: int = 1) -> Any:
    """A Ray backend that SIGKILLs the process of the actor it has just given work, the first ``kills`` times."""
    import ray

    from uqmerge.pipeline.execution.ray_backend import RayBackend

    class Killing(RayBackend):
        def __init__(self, settings: ExecutionSettings) -> None:
            super().__init__(settings)
            self.killed: list[int] = []

        def _submit(self, actor: Any, method: str, *args: Any) -> Any:
            pid = ray.get(actor.describe.remote())["pid"] if len(self.killed) < kills else None
            ref = super()._submit(actor, method, *args)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)  # mid-call: the actor dies with its work unfinished
                self.killed.append(pid)
            return ref

    return Killing(settings)


@needs_ray
def test_a_killed_actor_is_restarted_by_ray_and_the_run_keeps_the_same_selection(
    cluster: None, mini_zoo: Path, local_run: Path, tmp_path: Path, fresh_cache: Path
) -> None:
    config = parse_run_config(_run_config(mini_zoo, **ONE_WORKER))
    backend = _killing_backend(config.execution)
    with backend:
        record = run_uq_merge(config, tmp_path / "run", quiet=True, backend=backend)
        alive = {w["pid"] for w in backend.worker_info()}
    assert len(backend.killed) == 1 and backend.killed[0] not in alive  # a new process took over
    want = RunRecord.read(local_run)
    assert record.selected == want.selected and record.selection == want.selection
    assert _numbers(record) == _numbers(want)


@needs_ray
def test_a_driver_killed_mid_run_resumes_without_rescoring_finished_candidates(
    cluster: None, mini_zoo: Path, local_run: Path, tmp_path: Path, fresh_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uqmerge.uq.api as api
    from uqmerge.pipeline.execution.ray_backend import RayBackend

    config = parse_run_config(_run_config(mini_zoo, **ONE_WORKER))
    store = api.store_uq

    def driver_dies_after_the_first_result(request, result, cache) -> None:
        store(request, result, cache)
        raise KeyboardInterrupt  # the driver is killed once one candidate's UQ is safely cached

    monkeypatch.setattr(api, "store_uq", driver_dies_after_the_first_result)
    with pytest.raises(KeyboardInterrupt):
        run_uq_merge(config, tmp_path / "run", quiet=True)
    monkeypatch.setattr(api, "store_uq", store)

    sent: list[str] = []

    class Counting(RayBackend):
        def _submit(self, actor: Any, method: str, *args: Any) -> Any:
            sent.append(method)
            return super()._submit(actor, method, *args)

    with Counting(config.execution) as backend:
        record = run_uq_merge(config, tmp_path / "run", resume=True, quiet=True, backend=backend)
    hits = [cid for cid, c in record.candidates.items() if c.scores["vl"].cache_hit]
    assert len(hits) == 1 and sent.count("uq") == len(CANDIDATES) - 1
    want = RunRecord.read(local_run)
    assert record.selected == want.selected and record.selection == want.selection


@needs_ray
def test_search_points_on_ray_equal_the_local_search(
    cluster: None, mini_zoo: Path, tmp_path: Path, fresh_cache: Path
) -> None:
    cfg = {
        "base_model": str(mini_zoo / "models" / "base"),
        "models": [str(mini_zoo / "models" / "specialist-count"), str(mini_zoo / "models" / "specialist-position")],
        "merge": {"merge_method": "task_arithmetic"},
        "search": {
            "parameter": "lambda",
            "grid": [0.0, 1.0, 3.0],
            "data": [str(mini_zoo / "data" / "held_in" / "count.jsonl")],
            "sample": 6,
            "consistency": {"max_new_tokens": 3},
        },
        "uq": {"perturbations": 2},
        "device": "cpu",
    }
    local = run_search(parse_search_config(cfg), tmp_path / "local", quiet=True)
    on_ray = run_search(parse_search_config({**cfg, "execution": RAY}), tmp_path / "ray", quiet=True)
    timings = {"merge_s", "eval_s"}
    assert [p.model_dump(exclude=timings) for p in on_ray.points] == [
        p.model_dump(exclude=timings) for p in local.points
    ]
    assert (on_ray.chosen_index, on_ray.chosen_value) == (local.chosen_index, local.chosen_value)
    want = {p.name: p.read_bytes() for p in (tmp_path / "local" / "model").glob("*.safetensors")}
    assert {p.name: p.read_bytes() for p in (tmp_path / "ray" / "model").glob("*.safetensors")} == want


@needs_ray
def test_uq_of_several_models_on_ray_equals_each_models_own_uq(cluster: None, mini_zoo: Path, tmp_path: Path) -> None:
    models = [str(mini_zoo / "models" / c) for c in CANDIDATES[:2]]
    data = ["--data", str(mini_zoo / "data" / "held_in" / "count.jsonl"), "-J", "2", "--sample-ratio", "0.06"]
    options = [*data, "--device", "cpu", "--no-cache", "-q"]
    result = CliRunner().invoke(
        app, ["uq", *models, *options, "--ray", "auto", "--workers", "2", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    for model in models:
        alone = CliRunner().invoke(app, ["uq", model, *options])
        assert alone.exit_code == 0, alone.output
        assert (tmp_path / f"{Path(model).name}.json").read_text().strip() == alone.stdout.strip()
    several = CliRunner().invoke(app, ["uq", *models, *options])
    assert several.exit_code == 2 and "pass --out DIR" in several.output


@needs_ray
def test_search_scored_by_lmms_eval_on_ray_equals_the_local_search(
    cluster: None, llava_family: dict[str, Path], tmp_path: Path
) -> None:
    pytest.importorskip("lmms_eval", reason="lmms-eval is not installed: pip install 'uqmerge[lmms]'")
    from lmms_fixtures import lmms_accuracy_search

    cfg = lmms_accuracy_search(llava_family, tmp_path, [0.0, 2.5])
    local = run_search(parse_search_config(cfg), tmp_path / "local", quiet=True)
    on_ray = run_search(parse_search_config({**cfg, "execution": RAY}), tmp_path / "ray", quiet=True)
    assert [p.model_dump(exclude={"merge_s", "eval_s"}) for p in on_ray.points] == [
        p.model_dump(exclude={"merge_s", "eval_s"}) for p in local.points
    ]
    assert on_ray.lmms_score == local.lmms_score and on_ray.chosen_value == local.chosen_value

    def log_likelihoods(run: Path, value: float) -> list[float]:
        samples = run / "lmms_eval" / "points" / f"lambda={value:g}" / "samples_colours_mc.jsonl"
        return [r[0][0] for line in samples.open() for r in json.loads(line)["resps"]]

    for value in (0.0, 2.5):  # each worker wrote its points' lmms-eval samples where the driver's would be
        assert log_likelihoods(tmp_path / "ray", value) == pytest.approx(log_likelihoods(tmp_path / "local", value))
