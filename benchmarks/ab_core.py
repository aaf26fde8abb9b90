"""A/B of the core against an older checkout of this project, in one process, interleaved.

The old ``soft_topk.py`` and ``cem.py`` are loaded from ``--old`` (e.g. a ``git worktree`` of an
earlier commit) next to the current package; both are timed in alternating rounds (medians
per round, one thread), so machine noise hits both alike. Prints new/old per round and the
median ratio (< 1: the current code is faster).

    git worktree add /tmp/old bdaebe3 && python benchmarks/ab_core.py --old /tmp/old
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch

import dcem


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _median_ms(fn, n: int) -> float:
    for _ in range(3):
        fn()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(ts)


def _ab(name: str, old, new, n: int, rounds: int) -> None:
    pairs = [(_median_ms(old, n), _median_ms(new, n)) for _ in range(rounds)]
    ratio = statistics.median(b / a for a, b in pairs)
    rows = " ".join(f"{b / a:.2f}" for a, b in pairs)
    sys.stdout.write(f"{name:36s} new/old per round: {rows}   median {ratio:.3f}\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", required=True, help="an older checkout (dcem/soft_topk.py, dcem/cem.py)")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    old_lml = _load("old_soft_topk", Path(args.old) / "dcem" / "soft_topk.py")
    old_cem = _load("old_cem", Path(args.old) / "dcem" / "cem.py")  # its lml is the current one
    for B in (1, 1000):
        x, g = torch.randn(B, 100).requires_grad_(), torch.randn(B, 100)
        _ab(f"lml fwd+bwd B={B} n=100 k=10", lambda x=x, g=g: old_lml.lml(x, 10).backward(g),
            lambda x=x, g=g: dcem.lml(x, 10).backward(g), 200, args.rounds)  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    for kind, B, nx in (("cem", 1000, 2), ("cem", 1000, 20), ("dcem", 100, 20), ("dcem", 4, 2)):
        theta = torch.randn(B, nx).requires_grad_(kind == "dcem")
        temp = None if kind == "cem" else 1.0

        def f(X, theta=theta, kind=kind):
            v = (X - theta.unsqueeze(1)).pow(2).sum(-1)
            return v + 0.1 * torch.sin(3 * X).sum(-1) if kind == "dcem" else v

        def run(fn, f=f, B=B, nx=nx, temp=temp, kind=kind):
            kw = dict(n_batch=B, n_sample=100, n_elite=10, n_iter=10, temp=temp, iter_eps=0, generator=gen)
            out = fn(f, nx, **kw)
            if kind == "dcem":
                out.sum().backward()

        _ab(f"{kind} B={B} nx={nx} N=100 T=10", lambda run=run: run(old_cem.dcem),
            lambda run=run: run(dcem.dcem), 10, args.rounds)  # fmt: skip


if __name__ == "__main__":
    main()
