#!/usr/bin/env bash
# The API reference site (MkDocs + mkdocstrings, config in mkdocs.yml).
#   bash scripts/docs.sh build [DIR]   strict build into DIR (default site/): fails on a public object
#                                       without a docstring, a broken link or anchor, any warning
#   bash scripts/docs.sh serve         build and serve on http://127.0.0.1:8000, rebuilding on change
# Sets up .venv with the docs extra first (scripts/setup_env.sh), unless DCEM_PYTHON names an
# interpreter that has it already.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-build}"
if [ -z "${DCEM_PYTHON:-}" ]; then
    bash scripts/setup_env.sh
    DCEM_PYTHON=.venv/bin/python
fi
export NO_MKDOCS_2_WARNING=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$DCEM_PYTHON" scripts/check_docstrings.py
case "$mode" in
    build) exec "$DCEM_PYTHON" -m mkdocs build --strict --site-dir "${2:-site}" ;;
    serve) exec "$DCEM_PYTHON" -m mkdocs serve --strict "${@:2}" ;;
    *) echo "usage: bash scripts/docs.sh build [DIR] | serve [mkdocs serve options]" >&2; exit 2 ;;
esac
