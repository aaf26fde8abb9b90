#!/usr/bin/env bash
# Set up .venv and run the 2-D CEM/DCEM demo; extra arguments go to `dcem demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh demo
exec .venv/bin/dcem demo "$@"
