"""The scalar dual solver of the LML projection (:func:`dcem.lml`): safeguarded Newton steps on
``g(nu) = sum_i sigmoid(z_i + nu) - k`` inside a provably valid bracket, with logarithmic residuals,
on the host-checked path (early stop; a float64 NumPy loop for tiny CPU inputs) or the sync-free
path (fixed iteration count; rows that meet the tolerance take no bisection steps).
See :mod:`dcem.soft_topk` for the maths.

Private: the public entry points are :func:`dcem.lml` and :class:`dcem.LML`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = ["solve"]

def _newton(
    z: Tensor, nu: Tensor, lo: Tensor, hi: Tensor, k: int, n_iter: int, early_exit: bool
) -> tuple[Tensor, bool]:
    """Safeguarded Newton iterations for ``sum(sigmoid(z + nu)) = k`` on the rows of ``z``.

    ``lo``/``hi`` bracket the root (``g(lo) <= 0 <= g(hi)``) and ``lo <= nu <= hi``. Returns
    the final ``nu`` and whether every row reached the rounding-level tolerance (always
    ``False`` when ``early_exit`` is off: then exactly ``n_iter`` iterations run, rows that
    have reached the tolerance stay where they are, and nothing synchronises with the host).
    """
    n = z.shape[-1]
    # pairwise summation of n terms in [0, 1] that add up to k errs by about eps * k * log2(n)
    tol = torch.finfo(z.dtype).eps * k * (8 + math.log2(n))
    lower_form = 2 * k <= n
    for _ in range(n_iter):
        y = torch.sigmoid_(z + nu)
        s = y.sum(-1, keepdim=True)
        ds = torch.addcmul(y, y, y, value=-1.0).sum(-1, keepdim=True)  # sum of y (1 - y)
        r = k - s
        if early_exit:
            if r.abs().max().item() <= tol:
                return nu, True
            conv = None  # the host path stops instead of freezing rows
        else:
            conv = r.abs() <= tol
        below = r > 0
        lo = torch.where(below, nu, lo)
        hi = torch.where(below, hi, nu)
        # Newton step on log(S / k) when k <= n / 2 and on log((n - S) / (n - k)) otherwise:
        # the logarithm of the smaller of S and n - S is nearly linear in nu around the root,
        # so the steps stay accurate from far away. log1p keeps them exact near the root.
        if lower_form:
            step = torch.log1p(r / s) * s
        else:
            step = torch.log1p(r / (n - k)) * (n - s)
        # ds = 0 (saturated rows) gives inf or NaN here, which the bracket test sends to bisection
        cand = nu + step / ds
        # a step that would leave the bracket bisects, except on rows that have converged:
        # without the host check the loop runs on, and a saturated row (r = 0, ds = 0) would
        # otherwise bisect away from its exact root; converged rows still take Newton steps,
        # which refine each entry below the tolerance on the sum
        mid = torch.lerp(lo, hi, 0.5)
        fallback = mid if conv is None else torch.where(conv, nu, mid)
        nu = torch.where((cand >= lo) & (cand <= hi), cand, fallback)
    return nu, False


def _scaled(x: Tensor, shift: Tensor, tau: float | Tensor) -> Tensor:
    z = x - shift
    return z if isinstance(tau, float) and tau == 1.0 else z.div_(tau)


def _solve_from_max(x: Tensor, tau: float | Tensor, k: int, n_iter: int) -> tuple[Tensor, bool]:
    """Cheap start for the CPU path: centre on the row maximum (no order statistics).

    With ``z = (x - max) / tau <= 0`` the dual root lies in
    ``[log(k / (n - k)), log(k / (n - k)) - min(z)]`` (all entries below, resp. above, the
    extreme ones). Converges in a few iterations unless the values are very spread out or
    the root is far from the maximum, where rounding limits the attainable residual; then
    the caller falls back to :func:`_solve_from_kth`.
    """
    n = x.shape[-1]
    z = _scaled(x, x.amax(-1, keepdim=True), tau)
    lo = torch.full((x.shape[0], 1), math.log(k / (n - k)), dtype=x.dtype, device=x.device)
    hi = lo - z.amin(-1, keepdim=True)
    nu, converged = _newton(z, _start(lo, hi, k, n), lo, hi, k, n_iter, True)
    return z.add_(nu), converged


def _solve_from_kth(
    x: Tensor, tau: float | Tensor, k: int, n_iter: int, early_exit: bool
) -> tuple[Tensor, bool]:
    """Robust start: centre each row on its k-th largest value (see the module docstring).

    The bracket ``[-log(n - k), gap + log k]`` (``gap`` between the k-th and (k+1)-th
    largest scaled values) holds for any input, and the entries that are not saturated
    sit near zero, so their differences are exact even for ``|x| ~ 1e6``.
    """
    n = x.shape[-1]
    top = torch.topk(x, k + 1, dim=-1, sorted=True).values
    xk = top[..., k - 1 : k]
    z = _scaled(x, xk, tau)
    gap = (xk - top[..., k : k + 1]) / tau
    lo = torch.full_like(gap, -math.log(n - k))
    hi = gap + math.log(k)
    nu, converged = _newton(z, _start(lo, hi, k, n, gap), lo, hi, k, n_iter, early_exit)
    return z.add_(nu), converged


def _step(
    nu: float, lo: float, hi: float, s: float, ds: float, k: int, n: int, lower_form: bool, conv: bool = False
) -> tuple[float, float, float]:
    """One safeguarded log-Newton update of :func:`_newton` for a single row, on floats
    (a converged row, ``conv``, keeps ``nu`` instead of bisecting)."""
    r = k - s
    if r > 0:
        lo = nu
    else:
        hi = nu
    if lower_form:
        step = math.log1p(r / s) * s
    else:
        step = math.log1p(max(r / (n - k), -1.0 + 1e-16)) * (n - s)
    cand = nu + step / ds if ds > 0 else math.inf
    return (cand if lo <= cand <= hi else (nu if conv else 0.5 * (lo + hi))), lo, hi


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
    return torch.where(gap > _GAP_START, torch.clamp(0.5 * gap, min=lo, max=hi), end)


# Gap (in units of tau) between the k-th and (k+1)-th values above which Newton starts mid-gap.
_GAP_START = 2.0


def _solve_numpy(x: Tensor, tau: float | Tensor, k: int, n_iter: int) -> tuple[Tensor, bool]:
    """The k-th-value-centred solve of :func:`_solve_from_kth` in float64 NumPy.

    For small CPU problems the cost of the torch solve is the per-operation dispatch, not
    arithmetic, so the same bracket, start and safeguarded log-Newton steps run on float64
    NumPy rows with the scalar updates in plain Python; float64 makes the result at least
    as accurate as the torch path.
    """
    n = x.shape[-1]
    xs = x.numpy().astype(np.float64)
    t = tau.numpy().astype(np.float64) if isinstance(tau, Tensor) else float(tau)
    # stop at the rounding level of the output dtype: the float64 iterate is then exact to
    # the last digit the caller can see
    tol = torch.finfo(x.dtype).eps * k * (8 + math.log2(n))
    lo_k, hi_k = -math.log(n - k), math.log(k)
    lower_form = 2 * k <= n
    nus = []
    converged = True
    # exp overflow gives the correct limit y = 0; NaN from non-finite input is reported by
    # the caller (the solve then does not converge)
    with np.errstate(all="ignore"):
        part = np.partition(xs, (n - k - 1, n - k), axis=-1)
        xk = part[:, n - k : n - k + 1]
        z = xs - xk
        gap = xk - part[:, n - k - 1 : n - k]
        if not (isinstance(t, float) and t == 1.0):
            z, gap = z / t, gap / t
        for row, g in zip(z, gap[:, 0].tolist()):
            lo, hi = lo_k, g + hi_k
            nu = min(0.5 * g, hi) if g > _GAP_START else (lo if lower_form else hi)
            for _ in range(n_iter):
                y = 1.0 / (1.0 + np.exp(-(row + nu)))
                s = float(y.sum())
                conv = abs(k - s) <= tol
                # a last Newton step from the converged point refines every entry
                nu, lo, hi = _step(nu, lo, hi, s, s - float(y @ y), k, n, lower_form, conv)
                if conv:
                    break
            else:
                converged = False
            nus.append(nu)
        u = z + np.asarray(nus)[:, None]
    return torch.from_numpy(u).to(x.dtype), converged


# Small CPU problems (few rows, few entries) are solved by :func:`_solve_numpy`.
_NUMPY_MAX_NUMEL = 2048
_NUMPY_MAX_ROWS = 4
# Iterations the cheap CPU start may take before the robust start takes over.
_MAX_FIRST = 8


def _solve(x: Tensor, tau: float | Tensor, k: int, n_iter: int, host: bool) -> tuple[Tensor, bool]:
    """Return ``u`` of shape ``(B, n)`` with ``sum(sigmoid(u), -1) = k`` and a convergence flag.

    ``x`` has shape ``(B, n)`` with ``1 <= k < n``; ``tau`` is a float or a ``(B, 1)``
    tensor. ``u = (x - t) / tau`` for a per-row threshold ``t``.
    """
    small = x.numel() <= _NUMPY_MAX_NUMEL and x.shape[0] <= _NUMPY_MAX_ROWS
    if host and small and x.device.type == "cpu":
        return _solve_numpy(x, tau, k, n_iter)
    if host:
        u, converged = _solve_from_max(x, tau, k, min(n_iter, _MAX_FIRST))
        if converged:
            return u, True
    return _solve_from_kth(x, tau, k, n_iter, host)


solve = _solve
