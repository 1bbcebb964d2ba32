"""Session-scoped tiny models and MC data for the UQ tests (a plugin of conftest.py).

Models are memoised per process, so modules that import the same fixture share one build.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 20)}
_BUILT: dict[str, Any] = {}


def write_items(root: Path, rows: list[dict[str, Any]], name: str = "items.jsonl") -> Path:
    """Write ``rows`` as a JSONL file under ``root``; return its path."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / name
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def colour_items(root: Path, n: int = 6, *, start: int = 0) -> list[dict[str, Any]]:
    """``n`` colour questions with images of varied sizes, option counts, hints and answer styles."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    names = list(COLOURS)
    rows = []
    for i in range(start, start + n):
        colour = names[i % 4]
        Image.new("RGB", (24 + 5 * i, 32 + 3 * (i % 3)), COLOURS[colour]).save(root / "img" / f"{i}.png")
        k = 2 + i % 3
        options = [colour, *[c for c in names if c != colour][: k - 1]]
        if i % 2:
            options.reverse()
        row: dict[str, Any] = {
            "id": f"q{i}",
            "image": f"img/{i}.png",
            "question": "What colour is the image?" if i % 2 else "Which colour fills the picture?",
            "options": options,
            "answer": colour if i % 3 else "ABCD"[options.index(colour)],
        }
        if i % 3 == 1:
            row["hint"] = "Look at the image."
        rows.append(row)
    return rows


def _model(name: str, root: Path, builder) -> Path:
    if name not in _BUILT:
        _BUILT[name] = builder(root / name, seed=0, hidden=32, layers=2, init_std=0.2)
    return _BUILT[name]


@pytest.fixture(scope="session")
def uq_llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LLaVA with enough weight scale that option probabilities are far from uniform."""
    from uqmerge.tiny import build_tiny_llava

    return _model("llava", tmp_path_factory.getbasetemp() / "uq-models", build_tiny_llava)


@pytest.fixture(scope="session")
def uq_qwen2vl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen2-VL, same scale."""
    from uqmerge.tiny import build_tiny_qwen2vl

    return _model("qwen2vl", tmp_path_factory.getbasetemp() / "uq-models", build_tiny_qwen2vl)


@pytest.fixture(scope="session")
def uq_llava(uq_llava_dir: Path):
    """(model, processor) of the tiny LLaVA, loaded once."""
    if "llava-loaded" not in _BUILT:
        from uqmerge.core.devices import resolve_device
        from uqmerge.uq.api import load_model

        _BUILT["llava-loaded"] = load_model(uq_llava_dir, device=resolve_device("cpu"), dtype=_float32())
    return _BUILT["llava-loaded"]


@pytest.fixture(scope="session")
def uq_qwen2vl(uq_qwen2vl_dir: Path):
    """(model, processor) of the tiny Qwen2-VL, loaded once."""
    if "qwen2vl-loaded" not in _BUILT:
        from uqmerge.core.devices import resolve_device
        from uqmerge.uq.api import load_model

        _BUILT["qwen2vl-loaded"] = load_model(uq_qwen2vl_dir, device=resolve_device("cpu"), dtype=_float32())
    return _BUILT["qwen2vl-loaded"]


@pytest.fixture(scope="session")
def uq_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six labelled colour items in the JSONL format."""
    if "jsonl" not in _BUILT:
        root = tmp_path_factory.getbasetemp() / "uq-data"
        _BUILT["jsonl"] = write_items(root, colour_items(root, 6))
    return _BUILT["jsonl"]


def _float32():
    import torch

    return torch.float32
