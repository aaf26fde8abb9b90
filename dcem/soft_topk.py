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
``|x| ~ 1e6``. Newton steps use logarithmic residuals (``log S - log k`` when ``k <= n / 2``,
``log(n - S) - log(n - k)`` otherwise, through ``log1p`` so they stay exact near the root),
which are nearly linear in ``nu`` far from it, and fall back to bisection whenever a step
would leave the bracket; typical inputs converge in 3-6 iterations.

Paths (chosen by the sync policy of :mod:`dcem.sync`): on the host-checked path (the default
for CPU tensors) the loop stops as soon as every row meets a rounding-level tolerance, first
from a cheap start centred on the row maximum, then, if that has not converged in a few
iterations, from the k-th value; CPU inputs of a few rows are solved in float64 NumPy, where
per-operation overhead is lower. On the sync-free path (the default on accelerators and inside
``torch.func``/``torch.compile``) a fixed iteration count runs from the k-th value with no host
synchronisation; rows that reach the tolerance are frozen, so the result meets the same
accuracy contract.

The backward pass is the closed form obtained by implicitly differentiating the KKT
conditions: with ``d_i = y_i (1 - y_i)``,

``dL/dx = d * (g - <d, g> / sum(d)) / tau`` and
``dL/dtau = -(1/tau) * sum_i g_i d_i (u_i - <d, u> / sum(d))`` with ``u = z + nu``.

It costs O(n) and saves only the output ``y`` (and ``u`` when ``tau`` is a tensor). When every
coordinate is saturated (the hard top-k limit) ``sum(d) = 0`` and the gradient is exactly zero.
Forward-mode derivatives (``jvp``) use the same Jacobian.
"""

from __future__ import annotations

import math
import warnings
from numbers import Integral, Real

import torch
from torch import Tensor, nn

from dcem._lml_dual import solve as _solve
from dcem.sync import check_sync, host_reads_free, resolve_sync

__all__ = ["LML", "lml", "hard_topk"]

# Fixed Newton iteration counts for the path without host checks (accelerators, torch.func,
# torch.compile). Flat rows, ties, n up to 1e5, |x| up to 1e4 / tau and tau from 1e-4 to 1e3
# converge in at most 7 iterations in float64 and 5 in float32; the spares cost little.
_N_ITER = {torch.float32: 10, torch.float64: 14}
# Cap for the CPU path, which stops as soon as every row has converged.
_MAX_ITER = 50


def _validate_k(k: object, n: int) -> int:
    if isinstance(k, bool):
        raise ValueError(f"k must be an integer with 1 <= k <= n = {n}, got {k!r}")
    if isinstance(k, Integral):
        value = int(k)
    elif isinstance(k, Real) and float(k).is_integer():
        value = int(float(k))
    else:
        raise ValueError(f"k must be an integer with 1 <= k <= n = {n}, got {k!r}")
    if not 1 <= value <= n:
        raise ValueError(f"k must be an integer with 1 <= k <= n = {n}, got {value}")
    return value


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
        if host_reads_free(tau) and not bool(torch.all(tau > 0)):
            raise ValueError("tau must be > 0 everywhere (use dcem.hard_topk for tau = 0)")
        return tau
    if isinstance(tau, bool) or not isinstance(tau, Real):
        raise TypeError(f"tau must be a positive float or a tensor, got {type(tau).__name__}")
    tau = float(tau)
    if not (tau > 0 and math.isfinite(tau)):
        raise ValueError(f"tau must be a finite float > 0, got {tau} (use dcem.hard_topk for 0)")
    return tau


class _LMLCore(torch.autograd.Function):
    """``y = sigmoid(u)`` where ``u`` solves the LML dual for ``x``; backward from the KKT system.

    The dual solve happens outside (without autograd); this function only attaches the
    implicit gradient, so it composes with ``torch.func`` transforms.
    """

    generate_vmap_rule = True

    @classmethod
    def apply(cls, x: Tensor, tau: float | Tensor, u: Tensor) -> Tensor:  # type: ignore[override]
        # With setup_context defined, Function.apply binds default arguments through
        # inspect.signature on every call (about 10 us, most of the cost for small inputs).
        # forward takes no defaults, so outside torch.func transforms we call the C
        # implementation directly; inside them the full path is kept.
        if torch._C._are_functorch_transforms_active():
            return super().apply(x, tau, u)
        # _C._FunctionBase.apply, which torch's stubs do not declare
        return super(torch.autograd.Function, cls).apply(x, tau, u)  # type: ignore[misc]

    @staticmethod
    def forward(x: Tensor, tau: float | Tensor, u: Tensor) -> Tensor:  # type: ignore[override]
        return torch.sigmoid(u)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        _, tau, u = inputs
        ctx.tau_is_tensor = isinstance(tau, Tensor)
        if ctx.tau_is_tensor:
            # u is only needed for the derivative with respect to tau
            ctx.save_for_backward(output, tau, u)
            ctx.save_for_forward(output, tau, u)
        else:
            ctx.save_for_backward(output)
            ctx.save_for_forward(output)
            ctx.tau = tau

    @staticmethod
    def backward(ctx, grad_y: Tensor):  # type: ignore[override]
        if ctx.tau_is_tensor:
            y, tau, u = ctx.saved_tensors
        else:
            (y,) = ctx.saved_tensors
            tau = ctx.tau
        d = torch.addcmul(y, y, y, value=-1.0)  # y (1 - y)
        # all coordinates saturated (hard top-k limit): d = 0, so dg = 0 and the gradient is
        # exactly zero; the clamp only avoids 0 / 0
        dsum = d.sum(-1, keepdim=True).clamp_min(torch.finfo(d.dtype).tiny)
        dg = d * grad_y
        coef = dg.sum(-1, keepdim=True) / dsum
        grad_x = None
        if ctx.needs_input_grad[0]:
            # d * (g - <d, g> / sum(d)) / tau: the KKT Jacobian is diag(d) - d d^T / sum(d)
            grad_x = torch.addcmul(dg, d, coef, value=-1.0)
            if not (isinstance(tau, float) and tau == 1.0):
                grad_x = grad_x / tau
        grad_tau = None
        if ctx.tau_is_tensor and ctx.needs_input_grad[1]:
            # u is finite wherever d > 0; zero it elsewhere to avoid 0 * inf
            live = d > 0
            u_f = torch.where(live, u, torch.zeros_like(u))
            if torch.is_grad_enabled():
                # double backward: u was solved without a graph; let it vary as logit(y), which
                # has the same value, so that second derivatives through tau are right
                lg = torch.logit(torch.where(live, y, torch.full_like(y, 0.5)))
                u_f = u_f + torch.where(live, lg - lg.detach(), torch.zeros_like(lg))
            ubar = (d * u_f).sum(-1, keepdim=True) / dsum
            grad_tau = -(dg * (u_f - ubar)).sum(-1, keepdim=True) / tau
        return grad_x, grad_tau, None


class _LMLFunction(_LMLCore):
    """:class:`_LMLCore` with forward-mode AD (``torch.func.jacfwd``, ``forward_ad``).

    Kept separate because ``torch.compile`` cannot trace a custom ``jvp``; compiled code
    uses :class:`_LMLCore`.
    """

    @staticmethod
    def jvp(ctx, x_t: Tensor | None, tau_t: Tensor | None, _u_t: Tensor | None) -> Tensor:  # type: ignore[override]
        """Forward mode: ``y_t = J_x x_t + (dy/dtau) tau_t`` with the same KKT Jacobian."""
        if ctx.tau_is_tensor:
            y, tau, u = ctx.saved_tensors
        else:
            (y,) = ctx.saved_tensors
            tau = ctx.tau
        d = y - y * y
        dsum = d.sum(-1, keepdim=True).clamp_min(torch.finfo(d.dtype).tiny)
        y_t = torch.zeros_like(y)
        if x_t is not None:
            dx = d * x_t
            y_t = (dx - d * (dx.sum(-1, keepdim=True) / dsum)) / tau
        if ctx.tau_is_tensor and tau_t is not None:
            live = d > 0
            u_f = torch.where(live, u, torch.zeros_like(u))
            ubar = (d * u_f).sum(-1, keepdim=True) / dsum
            y_t = y_t - d * (u_f - ubar) * (tau_t / tau)
        return y_t


def lml(
    x: Tensor, k: int, tau: float | Tensor = 1.0, *, n_iter: int | None = None, sync: str = "auto"
) -> Tensor:
    """Soft top-k: project ``x / tau`` onto the interior of the LML polytope (eq. 4).

    Args:
        x: values of shape ``(..., n)``; the projection acts on the last dimension.
            float32 or float64 are computed natively; float16/bfloat16 are computed in
            float32 and cast back. Must be finite.
        k: number of elements to (softly) select, an integer with ``1 <= k <= n``.
        tau: temperature ``> 0``: a float, or a tensor broadcastable to ``x.shape[:-1]``
            (then the result is differentiable with respect to it). As ``tau -> 0`` the
            output approaches the hard top-k indicator (Prop. 2).
        n_iter: maximum number of safeguarded Newton iterations. On the host-checked path
            the solver stops as soon as every row meets the tolerance (default cap 50) and
            warns if it does not; on the sync-free path it runs exactly ``n_iter``
            iterations (default 10 in float32, 14 in float64; converged rows are frozen), with
            no host synchronisation.
        sync: ``"auto"`` (default), ``"host"`` or ``"free"``: whether the solver may read
            the residual on the host to stop early (see :mod:`dcem.sync`). ``"auto"`` is
            ``"host"`` for CPU tensors and ``"free"`` on accelerators and under
            ``torch.compile``/``torch.func``. Both paths meet the same accuracy contract.

    Returns:
        ``y`` of the same shape, dtype and device as ``x``, with ``0 <= y <= 1`` and
        ``y.sum(-1) == k`` (to ``1e-5 * k`` in float32, ``1e-10 * k`` in float64).

    Example:
        >>> import torch, dcem
        >>> y = dcem.lml(torch.tensor([3.0, 1.0, 2.0, 0.0]), k=2, tau=0.1)
        >>> y.round(decimals=3)
        tensor([1.0000, 0.0070, 0.9930, 0.0000])
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
    check_sync(sync)

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
    host = resolve_sync(sync, x)
    if n_iter is not None:
        iters = n_iter
    else:
        iters = _MAX_ITER if host else _N_ITER[x.dtype]
    x2 = x if x.dim() == 2 else x.reshape(-1, n)
    tau2: float | Tensor = tau
    if isinstance(tau, Tensor):
        tau2 = tau.expand(x.shape[:-1]).reshape(-1, 1)  # (B, 1): one temperature per row
    # the dual solve needs no graph: the gradient comes from the KKT conditions
    u, converged = _solve(x2.detach(), tau2.detach() if isinstance(tau2, Tensor) else tau2, k, iters, host)
    if (not host and host_reads_free(x2)) or (host and not converged):
        # on the host path checked only here, so that the common path pays nothing for it; on
        # the sync-free path only where reading is free (elsewhere non-finite rows give NaN)
        if not bool(torch.isfinite(x2).all()):
            raise ValueError(
                "x must be finite (no NaN or inf); mask invalid entries with a large finite value"
            )
    if host and not converged:
        warnings.warn(
            f"dcem.lml: the dual solve did not reach the tolerance within {iters} iterations; "
            "increase n_iter",
            RuntimeWarning,
            stacklevel=2,
        )
    fn = _LMLCore if torch.compiler.is_compiling() else _LMLFunction
    y = fn.apply(x2, tau2, u)
    if x.dim() != 2:
        y = y.reshape(x.shape)
    return y if y.dtype == in_dtype else y.to(in_dtype)


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
    idx = torch.argsort(x, dim=-1, descending=True, stable=True)[..., :k]
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
        >>> round(float(layer(torch.randn(5, 10)).sum(-1).mean()), 4)
        2.0
    """

    k: int
    tau: float

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
