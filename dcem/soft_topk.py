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

Paths (chosen by the sync policy of :mod:`dcem.sync`): each row freezes as soon as it meets a
rounding-level tolerance, so its result and gradient never depend on the other rows of the batch
(bitwise on CPU with one intra-op thread; with several, PyTorch may split an elementwise kernel
over more than 32,768 entries inside a row, which can then change in its last bit). The
host-checked path (default for CPU tensors) stops once every row is frozen, first from a cheap
start centred on the row maximum, then, for rows not converged in a few iterations, from the
k-th value; the sync-free path (accelerators, ``torch.func``/``torch.compile``) runs a fixed
iteration count from the k-th value with no host synchronisation.

Non-finite input: ``+inf`` entries get ``y = 1`` and ``-inf`` entries ``y = 0`` (exactly, with a
zero gradient) when at most ``k`` entries are ``+inf`` and at least ``k`` are above ``-inf``; NaN
or an infeasible count is a ``ValueError`` naming ``x``, on both paths, wherever ``x`` can be read
(always on CPU outside ``torch.compile``/``torch.func``, and on the host-checked path anywhere).
Elsewhere the check is skipped and such rows (and rows with an invalid tensor ``tau``) come out
as NaN rows, the other rows unaffected.

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
from numbers import Integral

import torch
from torch import Tensor, nn

from dcem._lml_dual import solve as _solve
from dcem._topk_checks import check_nonfinite, validate_k, validate_tau, validate_x
from dcem.sync import check_sync, host_reads_free, resolve_sync

__all__ = ["LML", "lml", "hard_topk"]

# Fixed Newton iteration counts for the path without host checks (accelerators, torch.func,
# torch.compile). Flat rows, ties, n up to 1e5, |x| up to 1e4 / tau and tau from 1e-4 to 1e3
# converge in at most 7 iterations in float64 and 5 in float32; the spares cost little.
_N_ITER = {torch.float32: 10, torch.float64: 14}
# Cap for the CPU path, which stops as soon as every row has converged.
_MAX_ITER = 50


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
        # separate correctly rounded operations only (no fused or transcendental kernels), so
        # that an entry's gradient does not depend on its position in the batch
        d = y - y * y  # y (1 - y)
        # all coordinates saturated (hard top-k limit): d = 0, so dg = 0 and the gradient is
        # exactly zero; the clamp only avoids 0 / 0
        dsum = d.sum(-1, keepdim=True).clamp_min(torch.finfo(d.dtype).tiny)
        dg = d * grad_y
        coef = dg.sum(-1, keepdim=True) / dsum
        grad_x = None
        if ctx.needs_input_grad[0]:
            # d * (g - <d, g> / sum(d)) / tau: the KKT Jacobian is diag(d) - d d^T / sum(d)
            grad_x = dg - d * coef
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
            float32 and cast back. ``+inf`` entries get 1 and ``-inf`` entries 0 (at most ``k``
            entries ``+inf``, at least ``k`` above ``-inf``); NaN is refused (see the module
            docstring for where these checks run).
        k: number of elements to (softly) select, an integer with ``1 <= k <= n``.
        tau: finite temperature ``> 0``: a float, or a tensor broadcastable to ``x.shape[:-1]``
            or, keeping the last dimension, to ``x.shape[:-1] + (1,)`` (e.g. ``(B, 1)`` for
            ``x`` of shape ``(B, n)``); the result is differentiable with respect to it. As ``tau -> 0`` the
            output approaches the hard top-k indicator (Prop. 2).
        n_iter: maximum number of safeguarded Newton iterations. On the host-checked path
            the solver stops as soon as every row meets the tolerance (default cap 50) and
            warns if one does not; on the sync-free path it runs exactly ``n_iter``
            iterations (default 10 in float32, 14 in float64; converged rows are frozen), with
            no host synchronisation. Each row freezes on its own criterion either way.
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
    x = validate_x(x)
    n = x.shape[-1]
    k = validate_k(k, n)
    if n_iter is not None and (isinstance(n_iter, bool) or not isinstance(n_iter, Integral) or n_iter < 1):
        raise ValueError(f"n_iter must be a positive integer, got {n_iter!r}")
    check_sync(sync)
    host = resolve_sync(sync, x)
    tau = validate_tau(tau, x, host or (isinstance(tau, Tensor) and host_reads_free(tau)))
    in_dtype = x.dtype
    if in_dtype not in (torch.float32, torch.float64):
        x = x.float()
    if isinstance(tau, Tensor) and tau.dtype != x.dtype:
        tau = tau.to(x.dtype)
    x2 = x if x.dim() == 2 else x.reshape(-1, n)
    tau2: float | Tensor = tau
    if isinstance(tau, Tensor):
        tau2 = tau.expand(x.shape[:-1]).reshape(-1, 1)  # (B, 1): one temperature per row
    checked = host or host_reads_free(x2)
    all_finite = True
    if checked and not _all_finite(x2):
        check_nonfinite(x2, k)
        all_finite = False
    xd = x2.detach()
    td = tau2.detach() if isinstance(tau2, Tensor) else tau2
    converged = True
    if k == n:
        # the polytope is the single point 1: sigmoid(big) = 1 with a zero Jacobian
        u = torch.full_like(xd, torch.finfo(xd.dtype).max)
        if not checked:  # rows that would be refused come out as NaN
            bad = (torch.isnan(xd) | (xd == -math.inf)).any(-1, keepdim=True)
            if isinstance(td, Tensor):
                bad = bad | ~((td > 0) & (td < math.inf))
            u = torch.where(bad, math.nan, u)
    else:
        iters = n_iter if n_iter is not None else (_MAX_ITER if host else _N_ITER[x.dtype])
        # the dual solve needs no graph: the gradient comes from the KKT conditions
        u, converged = _solve(xd, td, k, iters, host, all_finite)
    if not converged:
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


def _all_finite(x: Tensor) -> bool:
    # one reduction instead of isfinite().all() (several passes); an overflowing sum of finite
    # values only sends the call through the per-row test
    x = x.detach()
    return math.isfinite(float(x.sum())) or bool(torch.isfinite(x).all())


def hard_topk(x: Tensor, k: int) -> Tensor:
    """Hard top-k indicator along the last dimension, the ``tau -> 0`` limit of :func:`lml`.

    Ties are broken by position (lower index first) so exactly ``k`` ones are returned. It
    accepts the inputs :func:`lml` accepts (``+inf`` always selected, ``-inf`` never, NaN
    refused, checked where :func:`lml` checks them) and integer tensors.

    Args:
        x: values of shape ``(..., n)``, floating-point or integer.
        k: number of ones per row, ``1 <= k <= n``.

    Returns:
        a tensor like ``x`` holding 0 and 1 with ``k`` ones in each row; not differentiable.
    """
    x = validate_x(x, allow_int=True)
    n = x.shape[-1]
    k = validate_k(k, n)
    checked = True
    if x.is_floating_point():
        checked = resolve_sync("auto", x) or host_reads_free(x)
        if checked and not _all_finite(x):
            check_nonfinite(x.reshape(-1, n), k)
    idx = torch.argsort(x, dim=-1, descending=True, stable=True)[..., :k]
    out = torch.zeros_like(x).scatter_(-1, idx, 1)
    if not checked:  # rows that would be refused come out as NaN
        pos, live = (x == math.inf).sum(-1, keepdim=True), (x > -math.inf).sum(-1, keepdim=True)
        bad = torch.isnan(x).any(-1, keepdim=True) | (pos > k) | (live < k)
        out = torch.where(bad, math.nan, out)
    return out


class LML(nn.Module):
    """Module form of :func:`lml`: ``LML(k, tau)(x)`` projects along the last dimension.

    Args:
        k: number of elements to softly select.
        tau: temperature, a finite float ``> 0``.

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
        if isinstance(tau, Tensor):
            raise TypeError("tau must be a float for LML (pass tensor temperatures to dcem.lml)")
        validate_tau(tau, torch.zeros(1), True)
        self.k = int(k)
        self.tau = float(tau)

    def forward(self, x: Tensor) -> Tensor:
        return lml(x, self.k, self.tau)

    def extra_repr(self) -> str:
        return f"k={self.k}, tau={self.tau}"
