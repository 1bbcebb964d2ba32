"""Execution backends: where candidates' UQ and search points are computed (in this process, or on Ray)."""

from uqmerge.pipeline.execution.backend import ExecutionBackend, LocalBackend, ModelJob, ResidentSpec, open_backend
from uqmerge.pipeline.execution.settings import ExecutionSettings

__all__ = ["ExecutionBackend", "ExecutionSettings", "LocalBackend", "ModelJob", "ResidentSpec", "open_backend"]
