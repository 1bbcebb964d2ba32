#!/usr/bin/env bash
# Create .venv (Python >= 3.11) and install uqmerge with every extra and its dev tools; idempotent and quick
# when done.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.uqmerge-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  # torch first, pinned to the CPU build this project targets: pyproject only bounds torch from below, and
  # resolving that range would pull the newest release with several GB of CUDA wheels.
  .venv/bin/pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
  .venv/bin/pip install --quiet -e ".[dev]"
  touch "$stamp"
fi
