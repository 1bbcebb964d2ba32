#!/usr/bin/env bash
# The README's test command: set up .venv, lint, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests benchmarks experiments
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
