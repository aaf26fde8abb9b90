#!/usr/bin/env bash
# Everything that needs a GPU, in one run (for the device machine; about 5 minutes on an H200):
# the CUDA cases of the core suites (both solver paths), the CUDA-graph / sync-debug tests, and
# the accelerator benchmark. Output goes to $OUT (default ./gpu-out).
# Usage: bash scripts/gpu_checks.sh [--ref-lml DIR --ref-dcem DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-out}"
mkdir -p "$out"
py="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
"$py" -m pytest -q -p no:cacheprovider -o addopts="" -m "not rl" -k cuda \
    tests/test_lml.py tests/test_cem.py tests/control tests/optim tests/planning \
    > "$out/pytest-cuda.txt" 2>&1
echo "pytest exit $?" >> "$out/pytest-cuda.txt"
tail -3 "$out/pytest-cuda.txt"
"$py" benchmarks/bench_gpu.py --device cuda --repeats 20 "$@" > "$out/bench_gpu.md" 2>&1
echo "bench exit $?" >> "$out/bench_gpu.md"
cat "$out/bench_gpu.md"
