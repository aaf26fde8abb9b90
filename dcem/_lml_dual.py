"""The scalar dual solver of the LML projection (:func:`dcem.lml`): safeguarded Newton steps on
``g(nu) = sum_i sigmoid(z_i + nu) - k`` inside a provably valid bracket, with logarithmic residuals.
See :mod:`dcem.soft_topk` for the maths.

Every row (problem) is solved on its own: it freezes as soon as it meets the tolerance, and its
iterates depend on nothing but its own values, so its result is bitwise the same alone, in any
batch and in any order. The host-checked path stops when every row is frozen; the sync-free path
runs a fixed count. Infinite entries are exact: ``+inf`` gives ``y = 1`` and ``-inf`` gives
``y = 0``; rows where that is infeasible, or that hold a NaN, come out as NaN (the public
function refuses them wherever it can read ``x``).

Private: the public entry points are :func:`dcem.lml` and :class:`dcem.LML`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dcem._lml_rows import (
    SCALAR_ROWS,
    alloc,
    cpu_rows,
    into,
    log1p_rows,
    newton_arrays,
    newton_one,
    newton_rows,
    round_f32,
    rows_like,
)

__all__ = ["solve"]

# Iterations the cheap start (centred on the row maximum) may take before a row moves on to the
# robust start (centred on its k-th largest value).
_MAX_FIRST = 8
# Gap (in units of tau) between the k-th and (k+1)-th values above which Newton starts mid-gap.
_GAP_START = 2.0


def _newton(
    z: Tensor, nu: Tensor, lo: Tensor, hi: Tensor, frozen: Tensor, k: int, n_iter: int, host: bool
) -> tuple[Tensor, Tensor]:
    """Safeguarded Newton iterations for ``sum(sigmoid(z + nu)) = k`` on the rows of ``z``.

    ``lo``/``hi`` bracket the root (``g(lo) <= 0 <= g(hi)``) and ``lo <= nu <= hi``; the
    per-row state (``nu``, ``lo``, ``hi``, ``(B, 1)``) is float64 whatever the dtype of ``z``,
    and ``nu`` is rounded to it for each pass over ``z``. A row that meets the rounding-level
    tolerance is frozen from then on (``frozen`` rows never move). With ``host`` the loop stops
    once every row is frozen, else it runs ``n_iter`` iterations without reading anything on the
    host. Returns ``nu`` and the frozen mask.
    """
    tol = _tol(z, k)
    if z.device.type == "cpu" and not _tracing():
        if z.shape[0] == 1:  # one row: nothing to do if frozen, else the Python-float loop
            if frozen.item():
                return nu, frozen
            one, done = newton_one(z, nu.item(), lo.item(), hi.item(), k, n_iter, tol, host)
            return torch.tensor([[one]], dtype=torch.float64), torch.tensor([[done]])
        if host and z.shape[0] <= SCALAR_ROWS:
            return newton_rows(z, nu, lo, hi, frozen, k, n_iter, tol, cpu_rows(z, z.shape[-1]))
        return newton_arrays(z, nu, lo, hi, frozen, k, n_iter, tol, host)
    return _newton_tensors(z, nu, lo, hi, frozen, k, n_iter, host)


def _newton_tensors(
    z: Tensor, nu: Tensor, lo: Tensor, hi: Tensor, frozen: Tensor, k: int, n_iter: int, host: bool
) -> tuple[Tensor, Tensor]:
    """:func:`_newton` on tensors only (accelerators, ``torch.compile``, ``torch.func``); on CPU
    outside those, :func:`dcem._lml_rows.newton_arrays` does the same operations, bit for bit."""
    n = z.shape[-1]
    tol = _tol(z, k)
    ybuf, col = rows_like(z, n), rows_like(nu, 1)
    armed = torch.zeros_like(frozen)  # host: rows that met the tolerance and took their last step
    for _ in range(n_iter):
        nz = nu.to(z.dtype)
        y = torch.sigmoid(z + nz) if ybuf is None else into(ybuf, torch.add, z, nz).sigmoid_()
        s = y.sum(-1, keepdim=True).double()
        r = k - s
        met = r.abs() <= tol
        ds = s - (y * y).sum(-1, keepdim=True).double()  # sum of y (1 - y)
        below = r > 0
        lo = torch.where(below, nu, lo)
        hi = torch.where(below, hi, nu)
        # Newton step on log(S / k) when k <= n / 2 and on log((n - S) / (n - k)) otherwise:
        # the logarithm of the smaller of S and n - S is nearly linear in nu around the root,
        # so the steps stay accurate from far away. log1p keeps them exact near the root.
        if 2 * k <= n:
            step = log1p_rows(r / s, col) * s
        else:
            step = log1p_rows(r / (n - k), col) * (n - s)
        # ds = 0 (saturated rows) gives inf or NaN here, which the bracket test sends to bisection
        cand = nu + step / ds
        inside = (cand >= lo) & (cand <= hi)
        keep = torch.where(met, nu, torch.lerp(lo, hi, 0.5))
        if host:
            # a row that meets the tolerance takes one more (polishing) Newton step, then stays
            # where it is: its path depends on nothing but itself, and the loop ends once every
            # row has stopped
            nu = torch.where(frozen | armed, nu, torch.where(inside, cand, keep))
            armed = armed | met
            if bool((frozen | armed).all()):
                return nu, frozen | armed
        else:
            # sync-free: the iteration count is fixed, so a converged row may keep refining below the
            # tolerance on its own (its path still depends on nothing but itself); only the rows
            # frozen on entry stay put, and a converged row whose step would leave the bracket keeps
            # its value instead of bisecting away from its root
            nu = torch.where(frozen, nu, torch.where(inside, cand, keep))
    return nu, frozen | armed


def _tol(z: Tensor, k: int) -> float:
    # pairwise summation of n terms in [0, 1] that add up to k errs by about eps * k * log2(n)
    return torch.finfo(z.dtype).eps * k * (8 + math.log2(z.shape[-1]))


def _scaled(x: Tensor, shift: Tensor, tau: float | Tensor) -> Tensor:
    out = rows_like(x, x.shape[-1])
    z = x - shift if out is None else into(out, torch.sub, x, shift)
    return z if isinstance(tau, float) and tau == 1.0 else z.div_(tau)


def _start(lo: Tensor, hi: Tensor, k: int, n: int, gap: Tensor | None = None) -> Tensor:
    """Initial dual variable inside the bracket ``[lo, hi]``.

    By default the end of the bracket from which the log-Newton steps of :func:`_newton`
    approach the root monotonically (``log S`` is close to concave in ``nu``, ``log(n - S)``
    to convex). When the k-th and (k+1)-th largest values are separated by a clear ``gap``
    the sum is flat across it and the middle of the gap is already (nearly) the root.
    """
    end = lo if 2 * k <= n else hi
    if gap is None:
        return end.clone()
    return torch.where(gap > _GAP_START, torch.minimum(torch.maximum(0.5 * gap, lo), hi), end)


def _from_max(x: Tensor, tau: float | Tensor, k: int, n_iter: int) -> tuple[Tensor, Tensor]:
    """Cheap start for finite rows on the host path: centre on the row maximum (no order statistics).

    With ``z = (x - max) / tau <= 0`` the dual root lies in
    ``[log(k / (n - k)), log(k / (n - k)) - min(z)]`` (all entries below, resp. above, the
    extreme ones). Converges in a few iterations unless the values are very spread out or the
    root is far from the maximum, where rounding limits the attainable residual; such rows move
    on to :func:`_from_kth`.
    """
    n = x.shape[-1]
    z = _scaled(x, x.amax(-1, keepdim=True), tau)
    lo = torch.full((x.shape[0], 1), math.log(k / (n - k)), dtype=torch.float64, device=x.device)
    hi = (lo - z.amin(-1, keepdim=True).double()).clamp_max(torch.finfo(x.dtype).max)
    frozen = torch.zeros_like(lo, dtype=torch.bool)
    nu, frozen = _newton(z, _start(lo, hi, k, n), lo, hi, frozen, k, n_iter, True)
    return z.add_(nu.to(z.dtype)), frozen


def _from_max_row(x: Tensor, tau: float | Tensor, k: int, n_iter: int) -> tuple[Tensor, bool]:
    """:func:`_from_max` for one float32/float64 CPU row: the same kernels on the same layout for
    ``z``, the bracket, start and Newton updates on Python floats (the same IEEE float64 operations
    as the tensor code, so the same bits)."""
    n = x.shape[-1]
    z = torch.sub(x, x.amax(-1, keepdim=True), out=torch.empty(1, n + 1, dtype=x.dtype)[:, :n])
    if not (isinstance(tau, float) and tau == 1.0):
        z.div_(tau)
    lo = math.log(k / (n - k))
    hi = min(lo - z.amin().item(), torch.finfo(z.dtype).max)  # clamp_max (a NaN stays NaN)
    nu, done = newton_one(z, lo if 2 * k <= n else hi, lo, hi, k, n_iter, _tol(z, k))
    if z.dtype == torch.float32:  # nu rounded to z's dtype, as nu.to(z.dtype)
        nu = round_f32(nu)
    return z.add_(nu), done


def _from_kth(x: Tensor, tau: float | Tensor, k: int, n_iter: int, host: bool) -> tuple[Tensor, Tensor]:
    """Robust start: centre each row on its k-th largest value (see :mod:`dcem.soft_topk`).

    The bracket ``[-log(n - k), gap + log k]`` (``gap`` between the k-th and (k+1)-th largest
    scaled values) holds for any input whose k-th and (k+1)-th largest values are finite, the
    ``+inf`` (``-inf``) entries adding exactly one (zero) to the sum. The other rows are settled
    here and frozen: exactly k entries ``+inf`` (they get 1, the rest 0), exactly k entries above
    ``-inf`` (they get 1), or a NaN / an infeasible count of infinities / an invalid ``tau`` (NaN).
    """
    n = x.shape[-1]
    big = torch.finfo(x.dtype).max
    top = torch.topk(x, k + 1, dim=-1, sorted=True).values  # NaN ranks first
    xk, xk1 = top[..., k - 1 : k], top[..., k : k + 1]
    regular = torch.isfinite(xk) & torch.isfinite(xk1)
    k_inf = (xk == math.inf) & (xk1 < math.inf)  # exactly k entries +inf
    k_live = (xk1 == -math.inf) & torch.isfinite(xk)  # exactly k entries above -inf
    bad = torch.isnan(top[..., :1]) | ~(regular | k_inf | k_live)
    if isinstance(tau, Tensor):
        bad = bad | ~((tau > 0) & (tau < math.inf))
    regular = regular & ~bad
    # k_inf rows: centre on the largest finite value, so that nu = -big sends it to 0
    zero = torch.zeros_like(xk)
    shift = torch.where(k_inf, torch.where(xk1 > -math.inf, xk1, zero), xk)
    z = _scaled(x, shift, tau)
    gap = torch.where(regular, ((xk - xk1) / tau).clamp_max(big), zero).double()
    lo = torch.full_like(gap, -math.log(n - k))
    hi = gap + math.log(k)
    settled = torch.where(k_live & ~bad, big, torch.where(k_inf & ~bad, -big, torch.full_like(gap, math.nan)))
    nu = torch.where(regular, _start(lo, hi, k, n, gap), settled)
    nu, frozen = _newton(z, nu, lo, hi, ~regular, k, n_iter, host)
    return z.add_(nu.to(z.dtype)), frozen


def _tracing() -> bool:
    return torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active()


def _one_row(x: Tensor) -> bool:
    """Whether the cheap start of one row can run on Python floats (:func:`_from_max_row`)."""
    return x.dtype in (torch.float32, torch.float64) and x.device.type == "cpu" and not _tracing()


def solve(
    x: Tensor, tau: float | Tensor, k: int, n_iter: int, host: bool, all_finite: bool
) -> tuple[Tensor, bool]:
    """Return ``u`` of shape ``(B, n)`` with ``sum(sigmoid(u), -1) = k`` and a convergence flag.

    ``x`` has shape ``(B, n)`` with ``1 <= k < n``; ``tau`` is a float or a ``(B, 1)`` tensor.
    ``u = (x - t) / tau`` for a per-row threshold ``t`` (``u = -+big`` where an infinity settles
    the entry). ``all_finite`` (host path only) says that the caller has checked every entry is
    finite. On the host path finite rows try the cheap start of :func:`_from_max` first and the
    rows it leaves unconverged are solved by :func:`_from_kth`; the flag is ``True`` on the
    sync-free path.
    """
    if not host:
        return _from_kth(x, tau, k, n_iter, False)[0], True
    if all_finite:
        first = None
    else:
        first = torch.isfinite(x).all(-1).nonzero().squeeze(1)
    if first is None and x.shape[0] == 1 and _one_row(x):
        u1, done1 = _from_max_row(x, tau, k, min(n_iter, _MAX_FIRST))
        if done1:
            return u1, True
        u1, done = _from_kth(x, tau, k, n_iter, True)
        return u1, bool(done.all())
    if first is None or first.numel():
        xf = x if first is None else x[first]
        tf = tau[first] if isinstance(tau, Tensor) and first is not None else tau
        uf, done = _from_max(xf, tf, k, min(n_iter, _MAX_FIRST))
        if first is None and bool(done.all()):
            return uf, True
        if first is None:
            u, todo = uf, ~done.squeeze(1)
        else:
            u = alloc(x).index_copy_(0, first, uf)
            todo = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
            todo[first] = ~done.squeeze(1)
        rest = todo.nonzero().squeeze(1)
    else:
        u, rest = alloc(x), None
    xr = x if rest is None else x[rest]
    tr = tau[rest] if isinstance(tau, Tensor) and rest is not None else tau
    ur, done = _from_kth(xr, tr, k, n_iter, True)
    if rest is None:
        return ur, bool(done.all())
    u[rest] = ur
    return u, bool(done.all())
