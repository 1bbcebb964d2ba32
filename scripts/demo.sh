#!/usr/bin/env bash
# The README's demo command: set up .venv, then run `uqmerge demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/uqmerge demo "$@"
