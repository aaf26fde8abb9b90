"""Where the batch-invariant soft top-k spends its time at batch 1000: its Newton loop against an
older checkout's, in one process, interleaved call by call (thread CPU time, one thread).

Prints, for float32 and float64 (B = 1000, n = 100, k = 10, the cheap start centred on the row
maximum, as on the host path), the median milliseconds and the ratio to the old loop of

* ``kernels row-wise``: one pass of the kernels of today's loop (``sigmoid(z + nu)`` into a buffer
  whose rows are ``n + 1`` apart, its sum and the sum of its square) against the old pass on a
  contiguous tensor (``sigmoid_``, sum, ``addcmul`` and sum);
* ``loop tensors``: today's tensor loop (accelerators, ``torch.compile``, ``torch.func``);
* ``loop cpu``: today's CPU loop (NumPy row state, stopped rows dropped from the passes);
* ``loop cpu contiguous``: the same on contiguous buffers, which is *not* batch-invariant (how much
  the row-wise layout costs).

    mkdir -p /tmp/old && git archive 096ff66 dcem | tar -x -C /tmp/old
    PYTHONPATH=. python benchmarks/ab_topk_loop.py --old /tmp/old
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ab_topk import _load_old, _paired_ms  # noqa: E402

from dcem import _lml_dual, _lml_rows  # noqa: E402


def _contiguous(x: torch.Tensor, width: int) -> torch.Tensor:
    return torch.empty(x.shape[0], width, dtype=x.dtype, device=x.device)


def _cases(old_dual, dt: torch.dtype) -> dict:
    B, n, k = 1000, 100, 10
    x = torch.randn(B, n, generator=torch.Generator().manual_seed(0), dtype=dt)
    z_old = x - x.amax(-1, keepdim=True)
    z = _lml_dual._scaled(x, x.amax(-1, keepdim=True), 1.0)
    lo_old = torch.full((B, 1), math.log(k / (n - k)), dtype=dt)
    hi_old = lo_old - z_old.amin(-1, keepdim=True)
    lo = torch.full((B, 1), math.log(k / (n - k)), dtype=torch.float64)
    hi = lo - z.amin(-1, keepdim=True).double()
    frozen, tol = torch.zeros(B, 1, dtype=torch.bool), _lml_dual._tol(z, k)
    nu = torch.randn(B, 1, dtype=dt)
    ybuf = _lml_rows.rows_like(z, n)

    def old_pass():
        y = torch.sigmoid_(z_old + nu)
        y.sum(-1, keepdim=True)
        torch.addcmul(y, y, y, value=-1.0).sum(-1, keepdim=True)

    def new_pass():
        y = torch.add(z, nu, out=ybuf).sigmoid_()
        y.sum(-1, keepdim=True)
        (y * y).sum(-1, keepdim=True)

    def cpu_contiguous():
        with mock.patch.object(_lml_rows, "rows_like", _contiguous):
            _lml_rows.newton_arrays(z.contiguous(), lo.clone(), lo, hi, frozen, k, 8, tol, True)

    return {
        "old": (lambda: old_dual._newton(z_old, lo_old.clone(), lo_old, hi_old, k, 8, True), old_pass),
        "kernels row-wise": new_pass,
        "loop tensors": lambda: _lml_dual._newton_tensors(z, lo.clone(), lo, hi, frozen, k, 8, True),
        "loop cpu": lambda: _lml_rows.newton_arrays(z, lo.clone(), lo, hi, frozen, k, 8, tol, True),
        "loop cpu contiguous": cpu_contiguous,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", required=True, help="an older checkout (096ff66's _newton signature)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    _load_old(Path(args.old))
    old_dual = sys.modules["_old_lml_dual"]
    for dt in (torch.float32, torch.float64):
        cases = _cases(old_dual, dt)
        old_loop, old_pass = cases.pop("old")
        for name, fn in cases.items():
            base = old_pass if name.startswith("kernels") else old_loop
            pairs = [_paired_ms(base, fn, 60) for _ in range(args.rounds)]
            ratio = statistics.median(b / a for a, b in pairs)
            a, b = (statistics.median(p[i] for p in pairs) for i in (0, 1))
            line = f"{str(dt)[6:]:8s} {name:20s} old {a:7.3f} ms new {b:7.3f} ms  new/old {ratio:.2f}"
            sys.stdout.write(line + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
