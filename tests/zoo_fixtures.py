"""Session-scoped zoo fixtures: the real ``mini`` zoo, built once, and a micro preset for quick builds.

``tests/conftest.py`` registers ``mini_zoo`` for every test module (importing it into a module
instead would make a second session fixture and a second build). ``mini_zoo`` is the path of a zoo
built by :func:`uqmerge.zoo.build.build_zoo` with preset ``mini`` and seed 0 (about a minute on 2
cores). Set ``UQMERGE_TEST_ZOO_DIR`` to build it there instead of a temporary directory: a later
session then reuses it (same preset, seed and code version) in a second.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from uqmerge.zoo.presets import BaseRecipe, ExpertRecipe, ZooPreset

MICRO_PRESET = ZooPreset(
    name="micro",
    base=BaseRecipe(steps=12, lr=1e-3, batch_size=8),
    experts=(
        ExpertRecipe("specialist-count", "specialist", "count", 4, 5e-4, 8, replay=0.25),
        ExpertRecipe("overtrained-size", "overtrained", "size", 8, 5e-4, 8),
        ExpertRecipe("overconfident-shape-permuted", "overconfident", "shape", 4, 5e-4, 8, "permuted", 0.25),
    ),
    train_items_per_family=24,
    eval_items_per_family=6,
)
"""A seconds-long preset of the real builder (every expert kind, with and without replay of base data) for
determinism and cache tests."""


@pytest.fixture(scope="session")
def mini_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``mini`` zoo of seed 0 (built once per session, or reused from ``UQMERGE_TEST_ZOO_DIR``)."""
    from uqmerge.zoo.build import build_zoo

    cache = os.environ.get("UQMERGE_TEST_ZOO_DIR")
    root = Path(cache) if cache else tmp_path_factory.mktemp("zoo") / "mini"
    return build_zoo(root, "mini", seed=0)
