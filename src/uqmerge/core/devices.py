"""Devices and dtypes: one parser for ``--device``/``dtype`` names and one policy for ``auto``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from uqmerge.core.errors import ConfigError

if TYPE_CHECKING:
    import torch

DTYPE_NAMES: tuple[str, ...] = ("float32", "bfloat16", "float16")
"""The dtype names configs and options accept (besides ``auto`` where a command allows it)."""


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of ``float32``, ``bfloat16`` or ``float16``; any other name is a ConfigError."""
    import torch

    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise ConfigError(f"unknown dtype {name!r}; use {', '.join(DTYPE_NAMES)}")
    return dtypes[name]


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` → ``bfloat16``."""
    return str(dtype).removeprefix("torch.")


def resolve_device(device: str) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when available, else the CPU).

    Asking for CUDA on a machine without it is an error rather than a silent fall-back to the CPU.
    """
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from e
    if resolved.type not in ("cpu", "cuda"):
        raise ConfigError(f"unsupported device {device!r}; use cpu, cuda, cuda:N or auto")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available; use cpu or auto")
    return resolved


def resolve_dtype(name: str, device: torch.device, saved: object = None) -> torch.dtype:
    """A compute dtype: ``auto`` is float32 on the CPU and the checkpoint's ``saved`` dtype on CUDA.

    ``saved`` is what ``config.json`` records (a torch dtype or its name); unknown or missing means float32.
    """
    import torch

    if name != "auto":
        return torch_dtype(name)
    if device.type == "cpu":
        return torch.float32
    if isinstance(saved, torch.dtype):
        return saved
    return torch_dtype(str(saved)) if str(saved) in DTYPE_NAMES else torch.float32
