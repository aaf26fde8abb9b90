"""CPU cost and pay-off of ``Solver(capture="compile")`` against the eager loop (DCEM fwd + bwd).

The problem of the issue: batch 100, nx 20, 100 samples, 10 elites, 10 iterations, the
wiggly objective of ``bench_core.py`` with gradients to its parameters, one thread. Measured:

* ``first call``: seconds of the first compiled call in a fresh process, once with an empty
  inductor cache (``cold``) and once more in a new process reusing that cache (``warm``);
* ``steady``: median ms per fwd+bwd of the eager loop and of the compiled loop (after its
  first call), measured alternately in the same process, and their ratio.

Each phase runs in its own subprocess (``--phase``) so that the cache state is honest.

Usage::

    python benchmarks/bench_compile_cpu.py [--repeats 30] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from dcem.optim import CEMConfig, Solver


def problem(capture: str) -> tuple:
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(100, 20, generator=g).requires_grad_(True)

    def f(X: torch.Tensor) -> torch.Tensor:
        return (X - theta.unsqueeze(1)).pow(2).sum(-1) + 0.1 * torch.sin(3 * X).sum(-1)

    cfg = CEMConfig(100, 10, 10, temp=1.0, iter_eps=None)
    solver = Solver(f, cfg, capture=capture)

    def run() -> None:
        st = solver(torch.zeros(100, 20), 1.0, generator=g)
        st.mu.sum().backward()

    return run, theta


def phase(repeats: int) -> dict:
    eager, _ = problem("none")
    comp, _ = problem("compile")
    t0 = time.perf_counter()
    comp()
    first = time.perf_counter() - t0
    out = {"first_s": first}
    if repeats:
        for fn in (eager, comp, eager, comp):  # warm-up
            fn()
        te, tc = [], []
        for _ in range(repeats):
            for fn, acc in ((eager, te), (comp, tc)):
                t0 = time.perf_counter()
                fn()
                acc.append(time.perf_counter() - t0)
        out.update(eager_ms=1e3 * statistics.median(te), compile_ms=1e3 * statistics.median(tc))
    return out


def main(argv: list[str] | None = None) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--phase", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.phase:
        print(json.dumps(phase(args.repeats)))
        return
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "TORCHINDUCTOR_FX_GRAPH_CACHE": "1"}
        res = {}
        for name, reps in (("cold", 0), ("warm", args.repeats)):
            cmd = [sys.executable, __file__, "--phase", "--repeats", str(reps)]
            cmd += ["--threads", str(args.threads)]
            done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
            res[name] = json.loads(done.stdout.strip().splitlines()[-1])
    w = res["warm"]
    print(f"torch {torch.__version__}, {args.threads} thread(s), DCEM fwd+bwd, B 100, nx 20, N 100, k 10")
    print("| quantity | value |\n|---|---|")
    print(f"| first compiled call, empty cache | {res['cold']['first_s']:.1f} s |")
    print(f"| first compiled call, warm cache (new process) | {w['first_s']:.1f} s |")
    print(f"| eager, steady state | {w['eager_ms']:.1f} ms |")
    print(f"| compiled, steady state | {w['compile_ms']:.1f} ms |")
    print(f"| steady-state speed-up (eager / compiled) | {w['eager_ms'] / w['compile_ms']:.2f}x |")
    be = w["first_s"] * 1e3 / max(w["eager_ms"] - w["compile_ms"], 1e-9)
    bc = res["cold"]["first_s"] * 1e3 / max(w["eager_ms"] - w["compile_ms"], 1e-9)
    print(f"| calls to amortise the first call (warm / cold cache) | {be:.0f} / {bc:.0f} |")


if __name__ == "__main__":
    main()
