#!/usr/bin/env bash
# Build the sdist and the wheel, install the wheel into a fresh virtual environment outside the
# source tree, and run from there what a user would: the README's example, `dcem demo --quick` and
# the smallest experiment (which reads its Hydra configs from the package data).
# Fails on a missing package file (every dcem/**.py, .yaml and py.typed of the repository must be in
# the wheel), an undeclared dependency (the fresh environment holds only what the metadata asks for,
# torch constrained by constraints.txt) or a version that differs from dcem.__version__.
# Usage: bash scripts/check_wheel.sh [EXTRAS]   (default: demo,experiments)
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
extras="${1:-demo,experiments}"
if [ -z "${DCEM_PYTHON:-}" ]; then
    bash scripts/setup_env.sh
    DCEM_PYTHON=.venv/bin/python
fi
work="$(mktemp -d)"
start=$SECONDS
step() { echo "== [$((SECONDS - start)) s] $*"; }
trap 'rm -rf "$work"' EXIT

step "build (sdist, then the wheel from the sdist)"
"$DCEM_PYTHON" -m build --outdir "$work/dist" . > "$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
wheel="$(ls "$work"/dist/dcem-*.whl)"
ls -l "$work"/dist | tail -n +2

step "package files: every tracked dcem/**.py, .yaml and py.typed is in the wheel"
git ls-files 'dcem/*.py' 'dcem/*.yaml' 'dcem/py.typed' > "$work/tracked.txt"
"$DCEM_PYTHON" - "$wheel" "$work/tracked.txt" <<'PY'
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
tracked = open(sys.argv[2]).read().split()
missing = [p for p in tracked if p not in names]
if missing:
    sys.exit("missing from the wheel: " + " ".join(missing))
print(f"{len(tracked)} files, all in {sys.argv[1].rsplit('/', 1)[-1]}")
PY

step "fresh virtual environment, wheel[$extras]"
"${PYTHON:-python3}" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -qq --no-compile -c "$root/constraints.txt" "$wheel[$extras]"
"$work/venv/bin/python" -m pip check

mkdir "$work/run"
cd "$work/run"  # no source tree on the path from here on
sed -n '/^## Example/,/^## /p' "$root/README.md" | sed -n '/^```python/,/^```/p' | sed '1d;$d' > readme_example.py
test -s readme_example.py
export PYTHONPATH="" MPLBACKEND=Agg
step "installed package"
"$work/venv/bin/python" - "$work/venv" <<'PY'
import importlib.metadata, sys
import dcem
if not dcem.__file__.startswith(sys.argv[1]):
    sys.exit(f"dcem imported from {dcem.__file__}, not from the fresh environment")
if importlib.metadata.version("dcem") != dcem.__version__:
    sys.exit(f"metadata version {importlib.metadata.version('dcem')} != dcem.__version__ {dcem.__version__}")
print("dcem", dcem.__version__, "from", dcem.__file__)
PY
step "README example"
"$work/venv/bin/python" readme_example.py > readme_example.out
tail -n 3 readme_example.out
step "dcem demo --quick"
"$work/venv/bin/dcem" demo --quick --out demo-out > demo.log 2>&1 || { cat demo.log; exit 1; }
tail -n 1 demo.log
if [[ ",$extras," == *",experiments,"* ]]; then
    step "dcem-exp regression scale=tiny (configs from the package data)"
    "$work/venv/bin/dcem-exp" regression scale=tiny progress=false out_dir=regression-out > regression.log 2>&1 \
        || { cat regression.log; exit 1; }
    ls regression-out
fi
echo "check_wheel: OK in $((SECONDS - start)) s"
