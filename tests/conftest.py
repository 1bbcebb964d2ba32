"""Shared fixtures: tiny random LLaVA-hf and Qwen2-VL checkpoints with fake fine-tunes, built once."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Keep the UQ cache of the test session out of the user's home (and fresh for every session).
os.environ["UQMERGE_CACHE"] = tempfile.mkdtemp(prefix="uqmerge-test-cache-")
torch.set_num_threads(min(2, torch.get_num_threads()))

# Registered here, once: a session fixture imported into several test modules is a separate fixture in
# each, and the mini zoo would be built once per importing module.
from zoo_fixtures import mini_zoo  # noqa: E402, F401

# The UQ tests' session models and data, registered as a plugin here so that pytest rewrites its asserts before
# any test module imports its helpers.
pytest_plugins = ("uq_fixtures",)


def _family(root: Path, builder, n_experts: int = 3) -> dict[str, Path]:
    from uqmerge.checkpoint.synthetic import make_fake_finetune

    base = builder(root / "base", seed=0, hidden=32, layers=1)
    out = {"base": base}
    for i in range(n_experts):
        out[f"expert{i}"] = make_fake_finetune(base, root / f"expert{i}", seed=100 + i, scale=0.05)
    return out


@pytest.fixture(scope="session")
def llava_family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny LLaVA-hf base and three fine-tune-like experts (vision tower untouched)."""
    from uqmerge.tiny import build_tiny_llava

    return _family(tmp_path_factory.mktemp("llava"), build_tiny_llava)


@pytest.fixture(scope="session")
def qwen2vl_family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny Qwen2-VL base and three fine-tune-like experts."""
    from uqmerge.tiny import build_tiny_qwen2vl

    return _family(tmp_path_factory.mktemp("qwen2vl"), build_tiny_qwen2vl)
