#!/usr/bin/env bash
# Type-check the library (dcem/ without dcem/experiments/) with mypy; configuration in pyproject.toml.
# Sets up .venv first (scripts/setup_env.sh), unless DCEM_PYTHON names an interpreter with mypy.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${DCEM_PYTHON:-}" ]; then
    bash scripts/setup_env.sh
    DCEM_PYTHON=.venv/bin/python
fi
exec "$DCEM_PYTHON" -m mypy "$@"
