#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install dcem into it.
# Usage: bash scripts/setup_env.sh [EXTRAS]   (default extras: demo,experiments,rl,dev,docs: all CI needs)
# torch is constrained to the CPU wheel of this machine kind through constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-demo,experiments,rl,dev,docs}"
py="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$py" -m venv .venv
    .venv/bin/python -m pip install --quiet --upgrade pip
fi
stamp=".venv/.dcem-installed-$(cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)-${extras//,/_}"
if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install -qq -c constraints.txt -e ".[${extras}]"
    touch "$stamp"
fi
