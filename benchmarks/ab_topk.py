"""A/B of the soft top-k against an older checkout of this project, in one process, interleaved.

The old ``dcem/soft_topk.py`` and ``dcem/_lml_dual.py`` are loaded from ``--old`` (e.g. a
``git worktree`` or ``git archive`` of an earlier commit) next to the current package; both are
timed in alternating rounds (one thread) on the LML cases of ``bench_core.py`` (forward +
backward, n = 100, k = 10) and a few more, so machine noise hits both alike: within a round the
two alternate call by call, each call timed in CPU time of this thread (time spent descheduled
on a loaded machine is not counted), and the round's figure is the median per call. Prints
new/old per round and the median ratio (< 1: the current code is faster).

    mkdir /tmp/old && git archive 096ff66 dcem | tar -x -C /tmp/old
    python benchmarks/ab_topk.py --old /tmp/old
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

import dcem


def _paired_ms(fa, fb, n: int) -> tuple[float, float]:
    """Median thread CPU milliseconds of ``fa`` and ``fb``, called alternately ``n`` times each."""
    for _ in range(3):
        fa()
        fb()
    ta, tb = [], []
    for _ in range(n):
        t0 = time.thread_time()
        fa()
        t1 = time.thread_time()
        fb()
        t2 = time.thread_time()
        ta.append(t1 - t0)
        tb.append(t2 - t1)
    return 1e3 * statistics.median(ta), 1e3 * statistics.median(tb)


def _load_old(root: Path):
    """The old soft_topk with its own private solver modules (``_lml_dual`` and, where the old
    checkout has it, ``_lml_rows``), registered under private names."""
    renames = {}
    for name in ("_lml_rows", "_lml_dual"):  # _lml_dual imports _lml_rows
        path = root / "dcem" / f"{name}.py"
        if not path.exists():
            continue
        src = path.read_text()
        for old, new in renames.items():
            src = src.replace(f"from dcem.{old}", f"from {new}")
        module = type(sys)(f"_old{name}")
        exec(compile(src, str(path), "exec"), module.__dict__)  # noqa: S102
        sys.modules[module.__name__] = module
        renames[name] = module.__name__
    src = (root / "dcem" / "soft_topk.py").read_text()
    for old, new in renames.items():
        src = src.replace(f"from dcem.{old}", f"from {new}")
    module = type(sys)("_old_soft_topk")
    exec(compile(src, str(root / "dcem" / "soft_topk.py"), "exec"), module.__dict__)  # noqa: S102
    return module


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", required=True, help="an older checkout (dcem/soft_topk.py, dcem/_lml_dual.py)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", default="", help="run only the cases whose name contains this text")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    old = _load_old(Path(args.old))
    gen = torch.Generator().manual_seed(0)
    f32, f64 = torch.float32, torch.float64
    cases = [(1000, f32, "host"), (1, f32, "host"), (4, f32, "host"), (1000, f64, "host"),
             (1000, f32, "free"),
             (1, f32, "free")]  # fmt: skip
    for B, dt, sync in cases:
        x = torch.randn(B, 100, generator=gen, dtype=dt).requires_grad_()
        g = torch.randn(B, 100, generator=gen, dtype=dt)
        name = f"lml fwd+bwd B={B} n=100 k=10 {str(dt)[6:]} {sync}"
        if args.only not in name:
            continue
        n = 40 if B >= 1000 else 300

        def run(lml, x=x, g=g, sync=sync):
            lml(x, 10, sync=sync).backward(g)

        pairs = [_paired_ms(lambda: run(old.lml), lambda: run(dcem.lml), n) for _ in range(args.rounds)]
        ratio = statistics.median(b / a for a, b in pairs)
        rows = " ".join(f"{b / a:.2f}" for a, b in pairs)
        old_ms = statistics.median(a for a, _ in pairs)
        new_ms = statistics.median(b for _, b in pairs)
        sys.stdout.write(f"{name:44s} old {old_ms:7.3f} ms new {new_ms:7.3f} ms  new/old per round: "
                         f"{rows}   median {ratio:.3f}\n")  # fmt: skip
        sys.stdout.flush()


if __name__ == "__main__":
    main()
