"""Temperature-scaled Limited Multi-Label (LML) projection: the soft top-k of eq. (4).

For values ``x`` of shape ``(..., n)``, an integer ``0 < k <= n`` and a temperature
``tau > 0`` the projection is

.. math::

    \\Pi_{L_k}(x/\\tau) = \\arg\\min_{0<y<1} -x^\\top y - \\tau H_b(y)
    \\quad \\text{s.t.}\\quad 1^\\top y = k,

with the binary entropy ``H_b``. Its KKT conditions give ``y_i = sigmoid((x_i + nu)/tau)``
for the scalar dual variable ``nu`` that makes ``sum(y) = k``. We solve for ``nu`` with a
safeguarded Newton method on the monotone function ``g(nu) = sum_i sigmoid(z_i + nu) - k``
(``z = x / tau``), inside a bracket that is provably valid for any ``n``, ``k`` and ties:

* let ``z_(k)`` and ``z_(k+1)`` be the k-th and (k+1)-th largest entries; then
  ``g(-z_(k) - log(n - k)) < 0`` (at most ``k - 1`` from the top entries plus at most one from
  the other ``n - k + 1``) and ``g(-z_(k+1) + log k) >= 0`` (the top ``k + 1`` entries each give
  at least ``k / (k + 1)``).

Each row is shifted by its own k-th largest value before solving, which leaves the
projection unchanged (the constraint absorbs constant shifts) and keeps the entries that are
not saturated close to zero, so their differences are computed exactly even for
``|x| ~ 1e6``. Newton steps use logarithmic residuals (``log S - log k`` below the root,
``log(n - S) - log(n - k)`` above it), which are nearly linear in ``nu`` in the saturated tails,
and fall back to bisection whenever a step leaves the bracket. The iteration count is fixed,
so there is no host synchronisation inside the loop.

The backward pass is the closed form obtained by implicitly differentiating the KKT
conditions: with ``d_i = y_i (1 - y_i)``,

``dL/dx = d * (g - <d, g> / sum(d)) / tau`` and
``dL/dtau = -(1/tau) * sum_i g_i d_i (u_i - <d, u> / sum(d))`` with ``u = z + nu``.

It costs O(n) and saves only the pre-activation ``u``. When every coordinate is saturated
(the hard top-k limit) ``sum(d) = 0`` and the gradient is exactly zero.
"""

from __future__ import annotations

import math
import warnings
from numbers import Integral, Real

import torch
from torch import Tensor, nn

__all__ = ["LML", "lml", "hard_topk"]

# Newton iterations after the bracketed initial guess. Chosen from the convergence study in
# tests/test_lml.py (adversarial inputs converge in <= 6 iterations in float64); a few spare
# iterations cost little and make the fixed count safe.
_N_ITER = {torch.float32: 8, torch.float64: 12}


def _validate_k(k: object, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, Integral):
        if isinstance(k, Real) and float(k).is_integer():
            k = int(k)  # type: ignore[arg-type]
        else:
            raise ValueError(f"k must be an integer with 1 <= k <= n = {n}, got {k!r}")
    k = int(k)
    if not 1 <= k <= n:
        raise ValueError(f"k must be an integer with 1 <= k <= n = {n}, got {k}")
    return k


def _validate_tau(tau: float | Tensor, x: Tensor) -> float | Tensor:
    if isinstance(tau, Tensor):
        if not tau.is_floating_point():
            raise TypeError(f"tau must be a floating-point tensor, got dtype {tau.dtype}")
        batch_shape = x.shape[:-1]
        try:
            torch.broadcast_shapes(tau.shape, batch_shape)
        except RuntimeError as err:
            raise ValueError(
                f"tau of shape {tuple(tau.shape)} does not broadcast to the batch shape "
                f"{tuple(batch_shape)} of x"
            ) from err
        if tau.device.type == "cpu" and not bool(torch.all(tau > 0)):
            raise ValueError("tau must be > 0 everywhere (use dcem.hard_topk for tau = 0)")
        return tau
    if isinstance(tau, bool) or not isinstance(tau, Real):
        raise TypeError(f"tau must be a positive float or a tensor, got {type(tau).__name__}")
    tau = float(tau)
    if not (tau > 0 and math.isfinite(tau)):
        raise ValueError(f"tau must be a finite float > 0, got {tau} (use dcem.hard_topk for 0)")
    return tau


def _solve(z: Tensor, k: int, n_iter: int) -> Tensor:
    """Return ``u = z + nu`` with ``sum(sigmoid(u), -1) = k``.

    ``z`` has shape ``(B, n)`` with ``1 <= k < n``; it is already scaled by ``1/tau``.
    """
    n = z.shape[-1]
    top = torch.topk(z, k + 1, dim=-1, sorted=True).values
    zk, zk1 = top[..., k - 1 : k], top[..., k : k + 1]
    z = z - zk  # centre on the k-th largest: z_(k) = 0, z_(k+1) = -gap
    gap = zk - zk1
    lo = torch.full_like(gap, -math.log(n - k))
    hi = gap + math.log(k)
    # The root lies where the k-th entry is above and the (k+1)-th below one half,
    # up to the logarithmic slack of the bracket: start in the middle of the gap.
    nu = torch.clamp(0.5 * gap, min=lo, max=hi)
    tiny = torch.finfo(z.dtype).tiny
    # rows within a few rounding errors of the root stop moving: at the root the sign of
    # the residual is rounding noise and must not shrink the bracket onto the wrong side
    # (pairwise summation of n terms in [0, 1] summing to k errs by about eps * k * log2 n)
    done_tol = torch.finfo(z.dtype).eps * k * (8 + math.log2(n))
    for _ in range(n_iter):
        y = torch.sigmoid(z + nu)
        s = y.sum(-1, keepdim=True)
        ds = (y - y * y).sum(-1, keepdim=True)
        below = s < k
        lo = torch.where(below, nu, lo)
        hi = torch.where(below, hi, nu)
        # Newton steps on log(S / k) below the root and on log((n - S) / (n - k)) above it,
        # written with log1p of the residual so that they stay exact near the root
        r = k - s
        rest = torch.clamp(n - s, min=tiny)
        step_lo = torch.log1p(r / torch.clamp(s, min=tiny)) * s
        step_hi = torch.log1p(r / (n - k)) * rest
        step = torch.where(below, step_lo, step_hi) / torch.clamp(ds, min=tiny)
        cand = nu + step
        ok = (cand >= lo) & (cand <= hi)
        nxt = torch.where(ok, cand, 0.5 * (lo + hi))
        nu = torch.where((s - k).abs() <= done_tol, nu, nxt)
    return z + nu


class _LMLFunction(torch.autograd.Function):
    """Autograd function behind :func:`lml`; ``x`` is 2-D ``(B, n)`` and ``1 <= k < n``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, tau: float | Tensor, k: int, n_iter: int) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        z = x / tau
        u = _solve(z, k, n_iter)
        return torch.sigmoid(u), u

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        _, tau, _, _ = inputs
        _, u = output
        ctx.tau_is_tensor = isinstance(tau, Tensor)
        if ctx.tau_is_tensor:
            ctx.save_for_backward(u, tau)
        else:
            ctx.save_for_backward(u)
            ctx.tau = tau
        ctx.mark_non_differentiable(u)

    @staticmethod
    def backward(ctx, grad_y: Tensor, _grad_u: Tensor):  # type: ignore[override]
        if ctx.tau_is_tensor:
            u, tau = ctx.saved_tensors
        else:
            (u,) = ctx.saved_tensors
            tau = ctx.tau
        y = torch.sigmoid(u)
        d = y - y * y
        dsum = d.sum(-1, keepdim=True)
        safe = torch.where(dsum > 0, dsum, torch.ones_like(dsum))
        dg = d * grad_y
        # projection onto the tangent space of sum(y) = k, weighted by d
        coef = dg.sum(-1, keepdim=True) / safe
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = (dg - d * coef) / tau
        grad_tau = None
        if ctx.tau_is_tensor and ctx.needs_input_grad[1]:
            # u is finite wherever d > 0; zero it elsewhere to avoid 0 * inf
            u_f = torch.where(d > 0, u, torch.zeros_like(u))
            ubar = (d * u_f).sum(-1, keepdim=True) / safe
            grad_tau = -(dg * (u_f - ubar)).sum(-1, keepdim=True) / tau
        return grad_x, grad_tau, None, None


def lml(x: Tensor, k: int, tau: float | Tensor = 1.0, *, n_iter: int | None = None) -> Tensor:
    """Soft top-k: project ``x / tau`` onto the interior of the LML polytope (eq. 4).

    Args:
        x: values of shape ``(..., n)``; the projection acts on the last dimension.
            float32 or float64 are computed natively; float16/bfloat16 are computed in
            float32 and cast back.
        k: number of elements to (softly) select, an integer with ``1 <= k <= n``.
        tau: temperature ``> 0``: a float, or a tensor broadcastable to ``x.shape[:-1]``
            (then the result is differentiable with respect to it). As ``tau -> 0`` the
            output approaches the hard top-k indicator (Prop. 2).
        n_iter: number of safeguarded Newton iterations (default: 10 for float32, 14 for
            float64, which converge on every input we know of).

    Returns:
        ``y`` of the same shape, dtype and device as ``x``, with ``0 <= y <= 1`` and
        ``y.sum(-1) == k`` (to ``1e-5 * k`` in float32, ``1e-10 * k`` in float64).

    Example:
        >>> import torch, dcem
        >>> y = dcem.lml(torch.tensor([3.0, 1.0, 2.0, 0.0]), k=2, tau=0.1)
        >>> y.round(decimals=3)
        tensor([1.0000, 0.0000, 1.0000, 0.0000])
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension (..., n)")
    n = x.shape[-1]
    if n == 0:
        raise ValueError("x must have a non-empty last dimension")
    k = _validate_k(k, n)
    tau = _validate_tau(tau, x)
    if n_iter is not None and (isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 1):
        raise ValueError(f"n_iter must be a positive integer, got {n_iter!r}")

    in_dtype = x.dtype
    if in_dtype not in (torch.float32, torch.float64):
        x = x.float()
    if isinstance(tau, Tensor) and tau.dtype != x.dtype:
        tau = tau.to(x.dtype)
    if k == n:
        # the polytope is the single point 1: the output does not depend on x
        y = torch.ones_like(x) + 0.0 * x
        if isinstance(tau, Tensor):
            y = y + 0.0 * tau.unsqueeze(-1)
        return y.to(in_dtype)
    if not torch.compiler.is_compiling() and x.device.type == "cpu" and not bool(torch.isfinite(x).all()):
        raise ValueError("x must be finite (no NaN or inf); mask invalid entries to a large finite value")

    iters = n_iter if n_iter is not None else _N_ITER[x.dtype]
    batch_shape = x.shape[:-1]
    x2 = x.reshape(-1, n)
    tau2: float | Tensor = tau
    if isinstance(tau, Tensor):
        tau2 = tau.expand(batch_shape).reshape(-1, 1)  # (B, 1): one temperature per row
    y, u = _LMLFunction.apply(x2, tau2, k, iters)
    if x.device.type == "cpu":
        _check_convergence(y, k)
    return y.reshape(x.shape).to(in_dtype)


def _check_convergence(y: Tensor, k: int) -> None:
    """Warn if the projection missed the constraint (free on CPU: no device sync)."""
    if torch.compiler.is_compiling():
        return
    tol = (1e-5 if y.dtype == torch.float32 else 1e-10) * k
    try:
        bad = bool(((y.sum(-1) - k).abs() > tol).any())
    except RuntimeError:  # inside torch.func transforms data-dependent checks are unavailable
        return
    if bad:
        warnings.warn(
            "dcem.lml: the dual solve did not reach the tolerance on some rows; "
            "increase n_iter",
            RuntimeWarning,
            stacklevel=3,
        )


def hard_topk(x: Tensor, k: int) -> Tensor:
    """Hard top-k indicator along the last dimension, the ``tau -> 0`` limit of :func:`lml`.

    Ties are broken by position (lower index first) so exactly ``k`` ones are returned.

    Args:
        x: values of shape ``(..., n)``.
        k: number of ones per row, ``1 <= k <= n``.

    Returns:
        a tensor like ``x`` holding 0 and 1 with ``k`` ones in each row; not differentiable.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension (..., n)")
    k = _validate_k(k, x.shape[-1])
    idx = torch.topk(x, k, dim=-1, sorted=False).indices
    out = torch.zeros_like(x)
    return out.scatter_(-1, idx, 1.0)


class LML(nn.Module):
    """Module form of :func:`lml`: ``LML(k, tau)(x)`` projects along the last dimension.

    Args:
        k: number of elements to softly select.
        tau: temperature ``> 0``.

    Shape:
        - Input: ``(..., n)`` with ``n >= k``.
        - Output: same shape as the input.

    Example:
        >>> import torch, dcem
        >>> layer = dcem.LML(k=2, tau=1.0)
        >>> float(layer(torch.randn(5, 10)).sum(-1).mean())  # doctest: +ELLIPSIS
        2.0...
    """

    def __init__(self, k: int, tau: float = 1.0) -> None:
        super().__init__()
        if isinstance(k, bool) or not isinstance(k, Integral) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        _validate_tau(tau, torch.zeros(1))
        self.k = int(k)
        self.tau = float(tau)

    def forward(self, x: Tensor) -> Tensor:
        return lml(x, self.k, self.tau)

    def extra_repr(self) -> str:
        return f"k={self.k}, tau={self.tau}"
