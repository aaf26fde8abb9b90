#!/usr/bin/env bash
# Set up .venv with every extra, lint, and run the default test suite (slow tests excluded).
# Extra arguments are passed to pytest, e.g. `bash scripts/test.sh -m slow`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/ruff check dcem tests benchmarks scripts
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
