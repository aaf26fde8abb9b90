"""Row-wise kernels of the LML dual solver (:mod:`dcem._lml_dual`): what makes a row's result
independent of the other rows of its batch, bit for bit, on CPU.

PyTorch's CPU kernels run a contiguous tensor as one flat loop whose vectorised body and scalar
tail round ``exp``/``log1p`` differently, so an entry's result would depend on where it sits in
the batch. :func:`rows_like` gives the solver a layout on which every kernel runs row by row;
:func:`newton_rows` runs the per-row updates of a few rows on Python floats, bit for bit as the
tensor loop does them.

Private: the public entry points are :func:`dcem.lml` and :class:`dcem.LML`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "SCALAR_ROWS",
    "alloc",
    "cpu_rows",
    "into",
    "log1p_rows",
    "newton_arrays",
    "newton_lists",
    "newton_one",
    "newton_rows",
    "round_f32",
    "rows_like",
]


def rows_like(x: Tensor, width: int) -> Tensor | None:
    """An uninitialised ``(B, width)`` tensor like ``x`` whose rows are ``width + 1`` apart, on CPU
    outside ``torch.func`` transforms (elsewhere ``None``: plain operations are used).

    PyTorch's CPU kernels run a contiguous tensor as one flat loop whose vectorised body and
    scalar tail round ``exp``/``log1p`` differently, so an entry's result would depend on where it
    sits in the batch. On this layout each kernel runs row by row (the rows cannot be merged into
    one loop), so every row sees the same split into vector and tail lanes whatever the other
    rows are. A ``(B, 1)`` tensor of this layout runs every entry through the scalar code.
    """
    if x.device.type != "cpu" or torch._C._are_functorch_transforms_active():
        return None
    return cpu_rows(x, width)


def cpu_rows(x: Tensor, width: int) -> Tensor:
    """:func:`rows_like` where the caller knows it runs on CPU outside ``torch.func``."""
    return torch.empty(x.shape[0], width + 1, dtype=x.dtype, device=x.device)[:, :width]


def alloc(x: Tensor) -> Tensor:
    out = rows_like(x, x.shape[-1])
    return torch.empty_like(x) if out is None else out


def into(out: Tensor, op, a: Tensor, b: Tensor) -> Tensor:
    """``op(a, b)`` written into ``out`` (``torch.compile`` takes no strided ``out=``: it gets a
    copy and an in-place operation, with the same exact result)."""
    if torch.compiler.is_compiling():
        return getattr(out.copy_(a), op.__name__ + "_")(b)
    return op(a, b, out=out)


def log1p_rows(t: Tensor, out: Tensor | None) -> Tensor:
    if out is None:
        return torch.log1p(t)
    return out.copy_(t).log1p_() if torch.compiler.is_compiling() else torch.log1p(t, out=out)


def round_f32(v: float) -> float:
    """``v`` rounded to float32 (``inf`` beyond its range), as a Python float."""
    if -3.4e38 < v < 3.4e38:  # cannot overflow: no need for NumPy's (slow) error-state switch
        return float(np.float32(v))
    with np.errstate(over="ignore"):
        return float(np.float32(v))


# CPU inputs of at most this many rows run the per-row updates of _lml_dual._newton on Python
# floats (the same IEEE float64 operations, so bit for bit the same result), saving the dispatch
# of ~20 tensor operations per iteration.
SCALAR_ROWS = 4


def newton_rows(
    z: Tensor, nu: Tensor, lo: Tensor, hi: Tensor, frozen: Tensor, k: int, n_iter: int, tol: float,
    ybuf: Tensor,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """:func:`dcem._lml_dual._newton` on the host with the per-row state held in Python floats."""
    nus, los, his = nu.flatten().tolist(), lo.flatten().tolist(), hi.flatten().tolist()
    nus, done = newton_lists(z, nus, los, his, frozen.flatten().tolist(), k, n_iter, tol, ybuf)
    back = torch.tensor(nus, dtype=torch.float64).unsqueeze(1)
    return back, torch.tensor(done).unsqueeze(1)


def newton_lists(
    z: Tensor, nus: list[float], los: list[float], his: list[float], done: list[bool], k: int, n_iter: int,
    tol: float, ybuf: Tensor,
) -> tuple[list[float], list[bool]]:  # fmt: skip
    """:func:`newton_rows` on Python lists (``nu``, ``lo``, ``hi``, ``frozen`` per row; changed in place)."""
    B, n = len(nus), z.shape[-1]
    lower = 2 * k <= n
    # outputs of the kernels the batched code runs, read back through NumPy views
    sbuf, nzbuf = torch.empty(B, 2, dtype=z.dtype), torch.empty(B, 1, dtype=z.dtype)
    s_out, q_out, sview, nzview = sbuf[:, :1], sbuf[:, 1:], sbuf.numpy(), nzbuf.numpy()
    logbuf = torch.empty(B, 2, dtype=torch.float64)[:, :1]  # rows_like(nu, 1) on CPU
    lview = logbuf.numpy()
    nz: float | Tensor = nzbuf
    armed = [False] * B  # rows that met the tolerance and took their last (polishing) step
    for _ in range(n_iter):
        if B == 1:  # a Python scalar holding the value nu rounds to in z's dtype
            nz = round_f32(nus[0]) if z.dtype == torch.float32 else nus[0]
        else:  # as torch.tensor(nus, dtype=z.dtype): rounded to nearest
            nzview[:, 0] = nus
        y = torch.add(z, nz, out=ybuf).sigmoid_()
        torch.sum(y, -1, keepdim=True, out=s_out)
        torch.sum(y * y, -1, keepdim=True, out=q_out)
        sums, squares = sview[:, 0].tolist(), sview[:, 1].tolist()
        met = [abs(k - s) <= tol for s in sums]
        # t of the log-Newton step; its log1p through the tensor kernel the batched code uses
        ts = [(k - s) / s if lower and s != 0 else (k - s) / (n - k) for s in sums]
        lview[:, 0] = ts
        logs = logbuf.log1p_().numpy()[:, 0].tolist()
        for i, (s, sq) in enumerate(zip(sums, squares)):
            if done[i] or armed[i]:
                continue
            v, ds, r = nus[i], s - sq, k - s
            if r > 0:
                los[i] = v
            else:
                his[i] = v
            # the tensor code's inf / NaN cases (s = 0, ds = 0, log1p(-1)) all leave the bracket
            if ds == 0 or (lower and s == 0) or ts[i] <= -1:
                cand = math.nan
            else:
                cand = v + logs[i] * (s if lower else n - s) / ds
            # torch.lerp(lo, hi, 0.5) is hi - (hi - lo) * 0.5; a row that met the tolerance keeps
            # its value instead of bisecting (its last, polishing step)
            if not los[i] <= cand <= his[i]:
                cand = v if met[i] else his[i] - (his[i] - los[i]) * 0.5
            nus[i] = cand
        armed = [a or m for a, m in zip(armed, met)]
        if all(d or a for d, a in zip(done, armed)):
            break
    return nus, [d or a for d, a in zip(done, armed)]


def newton_arrays(
    z: Tensor, nu: Tensor, lo: Tensor, hi: Tensor, frozen: Tensor, k: int, n_iter: int, tol: float,
    host: bool,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """:func:`dcem._lml_dual._newton` on CPU (``z`` of the :func:`rows_like` layout) with the per-row
    state in float64 NumPy arrays: the same IEEE operations as the tensor loop (``log1p`` through the
    same scalar tensor kernel), so the same bits, at a fraction of the dispatch cost per row update.

    On the host path the rows that have stopped are dropped from the passes over ``z`` once they are
    at least half of them (each row runs through the kernels alone, so this changes no bit)."""
    n = z.shape[-1]
    lower = 2 * k <= n
    nu_all = nu.numpy().reshape(-1).copy()
    nu_a, lo_a, hi_a = nu_all, lo.numpy().reshape(-1), hi.numpy().reshape(-1)
    stop_all = frozen.numpy().reshape(-1).copy()  # frozen on entry, or met the tolerance (host)
    fro_a, stop_a = stop_all, stop_all
    rows = None  # original indices of the rows still in the passes (None: all of them)
    zc, ybuf = z, cpu_rows(z, n)
    logbuf = torch.empty(len(nu_a), 2, dtype=torch.float64)[:, :1]
    lview = logbuf.numpy()[:, 0]
    with np.errstate(all="ignore"):  # inf / NaN cases leave the bracket, as in the tensor loop
        for _ in range(n_iter):
            y = torch.add(zc, torch.from_numpy(nu_a.astype(_NP[z.dtype])).unsqueeze(1), out=ybuf).sigmoid_()
            s = y.sum(-1).numpy().astype(np.float64)
            ds = s - (y * y).sum(-1).numpy().astype(np.float64)
            r = k - s
            met = np.abs(r) <= tol
            below = r > 0
            lo_a, hi_a = np.where(below, nu_a, lo_a), np.where(below, hi_a, nu_a)
            np.divide(r, s if lower else float(n - k), out=lview)
            logbuf.log1p_()
            step = lview * (s if lower else n - s)
            cand = nu_a + step / ds
            inside = (cand >= lo_a) & (cand <= hi_a)
            keep = np.where(met, nu_a, hi_a - (hi_a - lo_a) * 0.5)  # torch.lerp(lo, hi, 0.5)
            nu_a = np.where(stop_a if host else fro_a, nu_a, np.where(inside, cand, keep))
            if not host:
                continue
            stop_a = stop_a | met
            left = len(stop_a) - int(np.count_nonzero(stop_a))
            if left == 0 or 2 * left <= len(nu_a):  # write back, keep the rows still moving
                nu_all, stop_all, rows = _write_back(nu_all, stop_all, rows, nu_a, stop_a)
                if left == 0:
                    break
                keep_rows = np.flatnonzero(~stop_a)
                rows = keep_rows if rows is None else rows[keep_rows]
                nu_a, lo_a, hi_a = nu_a[keep_rows], lo_a[keep_rows], hi_a[keep_rows]
                stop_a = stop_a[keep_rows]
                m = len(keep_rows)  # the kept rows of z into ybuf's first rows (z itself is the caller's)
                zc = ybuf[:m].copy_(zc[torch.from_numpy(keep_rows)])
                ybuf, logbuf = cpu_rows(zc, n), logbuf[:m]
                lview = logbuf.numpy()[:, 0]
        nu_all, stop_all, _ = _write_back(nu_all, stop_all, rows, nu_a, stop_a if host else fro_a)
    return torch.from_numpy(nu_all).unsqueeze(1), torch.from_numpy(stop_all).unsqueeze(1)


_NP = {torch.float32: np.float32, torch.float64: np.float64}


def _write_back(nu_all, stop_all, rows, nu_a, stop_a):  # noqa: ANN001, ANN202
    if rows is None:
        return nu_a, stop_a, None
    nu_all[rows], stop_all[rows] = nu_a, stop_a
    return nu_all, stop_all, rows


def newton_one(
    z: Tensor, nu: float, lo: float, hi: float, k: int, n_iter: int, tol: float, host: bool = True
) -> tuple[float, bool]:
    """:func:`newton_lists` for one unfrozen row ``z`` (``(1, n)``, CPU) with fewer dispatches: the sums
    and the ``log1p`` go through the same kernels on the same layouts, read through NumPy views."""
    n = z.shape[-1]
    lower, f32 = 2 * k <= n, z.dtype == torch.float32
    buf = torch.empty(2, n + 1, dtype=z.dtype)
    y, s_out, q_out = buf[:1, :n], buf[1:, :1], buf[1:, 1:2]  # y as rows_like(z, n) lays out one row
    sview = buf[1].numpy()
    logbuf = torch.empty(1, 2, dtype=torch.float64)[:, :1]  # rows_like(nu, 1) on CPU
    lview = logbuf.numpy()
    for _ in range(n_iter):
        torch.add(z, round_f32(nu) if f32 else nu, out=y).sigmoid_()
        torch.sum(y, -1, keepdim=True, out=s_out)
        torch.sum(y * y, -1, keepdim=True, out=q_out)
        s, sq = float(sview[0]), float(sview[1])
        r = k - s
        if r > 0:
            lo = nu
        else:
            hi = nu
        t = r / s if lower and s != 0 else r / (n - k)
        lview[0, 0] = t
        logbuf.log1p_()
        ds = s - sq
        # the tensor code's inf / NaN cases (s = 0, ds = 0, log1p(-1)) all leave the bracket
        if ds == 0 or (lower and s == 0) or t <= -1:
            cand = math.nan
        else:
            cand = nu + float(lview[0, 0]) * (s if lower else n - s) / ds
        met = abs(r) <= tol
        if not lo <= cand <= hi:  # bisect (torch.lerp(lo, hi, 0.5)), or keep nu once met
            cand = nu if met else hi - (hi - lo) * 0.5
        nu = cand
        if met and host:  # this was the polishing step (sync-free: all n_iter iterations run)
            return nu, True
    return nu, False
