"""Batch-1 overhead: ``dcem.dcem(..., n_batch=1)`` against ``dcem.optim.solve`` on the same problem
and against the published 2020 code (issue 20, item 3).

One problem, ``nx = 2``, 100 samples, 10 elites, 10 iterations (``iter_eps = 0``: every
iteration runs), one thread. The three callables are timed round-robin in the same run (one call
of each per round, medians over the rounds), so the ratios are not skewed by load drifting on a
shared machine. Cases: hard CEM, DCEM forward and DCEM forward + backward (the objective's
parameters require grad).

``solve`` is given what a user of the functional API holds between calls: the
:class:`dcem.optim.CEMConfig` (built once); the initial state is built in every call.

The published code is optional: ``--ref-lml DIR --ref-dcem DIR`` (checkouts of locuslab/lml and
facebookresearch/dcem, imported from those folders at run time; nothing of them is part of
this project). ``--profile`` prints the top of a cProfile of ``dcem.dcem`` for the DCEM case.

Usage::

    python benchmarks/bench_batch1.py [--rounds 400] [--ref-lml DIR --ref-dcem DIR] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import load_reference  # noqa: E402

import dcem  # noqa: E402
from dcem.optim import CEMConfig, init_state, solve  # noqa: E402

NX, N_SAMPLE, N_ELITE, N_ITER = 2, 100, 10, 10


def round_robin(fns: dict[str, Callable[[], object]], rounds: int, warmup: int = 20) -> dict[str, float]:
    """Median milliseconds of each callable, timed one call of each per round (in a random order
    every round, so that none always pays for the garbage of the same predecessor), in CPU time
    of this thread: time spent descheduled on a loaded machine is not counted."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    keys, rng = list(fns), random.Random(0)
    for _ in range(rounds):
        rng.shuffle(keys)  # a random order every round: no callable always follows the same one
        for k in keys:
            t0 = time.thread_time()
            fns[k]()
            times[k].append(time.thread_time() - t0)
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def case(kind: str, ref_fn) -> dict[str, Callable[[], object]]:
    temp = None if kind == "cem" else 1.0
    theta = torch.randn(1, NX, generator=torch.Generator().manual_seed(0))
    theta.requires_grad_(kind == "dcem fwd+bwd")

    def f(X: torch.Tensor) -> torch.Tensor:
        return (X - theta.unsqueeze(1)).pow(2).sum(-1) + 0.1 * torch.sin(3 * X).sum(-1)

    g = torch.Generator().manual_seed(0)
    cfg = CEMConfig(N_SAMPLE, N_ELITE, N_ITER, temp=temp, iter_eps=0.0)
    backward = kind == "dcem fwd+bwd"

    def run(fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def go() -> None:
            out = fn()
            if backward:
                out.sum().backward()

        return go

    kw = dict(n_batch=1, n_sample=N_SAMPLE, n_elite=N_ELITE, n_iter=N_ITER, temp=temp, iter_eps=0.0)
    fns = {
        "dcem.dcem": run(lambda: dcem.dcem(f, NX, generator=g, **kw)),
        "optim.solve": run(lambda: solve(f, init_state(torch.zeros(1, NX), 1.0), cfg, generator=g).mu),
    }
    if ref_fn is not None:
        fns["published"] = run(lambda: ref_fn(f, NX, **kw))
    return fns


def profile(rounds: int) -> str:
    fns = case("dcem fwd", None)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(rounds):
        fns["dcem.dcem"]()
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(18)
    return out.getvalue()


def main(argv: list[str] | None = None) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--ref-lml", help="folder of a locuslab/lml checkout (optional)")
    parser.add_argument("--ref-dcem", help="folder of a facebookresearch/dcem checkout (optional)")
    parser.add_argument("--profile", action="store_true", help="cProfile of dcem.dcem (DCEM forward)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    _, ref_fn = load_reference(args.ref_lml, args.ref_dcem)
    lines = [
        "| case (B=1, nx=2, N=100, k=10, T=10) | dcem.dcem (ms) | optim.solve (ms) | published (ms) "
        "| dcem / solve (target <= 1.05) | published / dcem (target >= 1.5) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for kind in ("cem", "dcem fwd", "dcem fwd+bwd"):
        r = round_robin(case(kind, ref_fn), args.rounds)
        ours, base, ref = r["dcem.dcem"], r["optim.solve"], r.get("published")
        ref_s, speed = (f"{ref:.3f}", f"{ref / ours:.2f}x") if ref else ("n/a", "n/a")
        lines.append(f"| {kind} | {ours:.3f} | {base:.3f} | {ref_s} | {ours / base:.3f} | {speed} |")
        sys.stdout.write(lines[-1] + "\n")
        sys.stdout.flush()
    sys.stdout.write(
        f"\nmedians of {args.rounds} round-robin rounds (thread CPU time), torch {torch.__version__}, "
        "1 thread\n\n"
        + "\n".join(lines) + "\n"
    )  # fmt: skip
    if args.profile:
        sys.stdout.write("\n" + profile(args.rounds))


if __name__ == "__main__":
    main()
