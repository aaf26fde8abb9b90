"""Model-predictive control with CEM / DCEM over action sequences (eq. 7 of the paper).

Two entry points, both built on :func:`dcem.dcem`:

- :func:`dcem_ctrl`: the functional controller with the keywords and return dictionary of the
  published reference (time-major plans ``(T, n_batch, n_ctrl)``), optionally over a latent
  action space through ``u_decode``.
- :class:`MPC`: a receding-horizon controller object: plan, apply the first action, shift the
  plan to warm-start the next step; per-dimension bounds, a batch of systems, CEM
  (``temp=None``) or DCEM (``temp > 0``, differentiable), and either a dynamics model with a
  per-step cost or a user-supplied rollout-cost function.

A plan whose cost is NaN/inf (a diverging rollout) is never returned when a finite sample
exists: such samples are never elite, and a final mean with a non-finite cost is replaced by the
best finite sample seen.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from numbers import Integral, Real
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from dcem.cem import dcem
from dcem.control.dynamics import Dynamics, check_state

__all__ = ["dcem_ctrl", "MPC", "Plan", "rollout_cost", "select_solution", "StepCost", "RolloutCost"]

log = logging.getLogger(__name__)

StepCost = Callable[[Tensor, Tensor], Tensor]
"""``cost(x, u) -> c``: states ``(..., n_state)``, controls ``(..., n_ctrl)`` -> costs ``(...)``."""
RolloutCost = Callable[[Tensor, Tensor], Tensor]
"""``rollout(x_init, u) -> c``: ``x_init (M, n_state)``, ``u (H, M, n_ctrl)`` -> total costs ``(M,)``."""


def _pos_int(name: str, v: object, low: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, Integral) or v < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
    return int(v)


def rollout_cost(
    dx: Dynamics,
    cost: StepCost,
    x_init: Tensor,
    u: Tensor,
    terminal_cost: Callable[[Tensor], Tensor] | None = None,
    discount: float = 1.0,
) -> Tensor:
    """Total cost ``sum_{t<H} discount^t cost(x_t, u_t) [+ discount^H terminal_cost(x_H)]``.

    The rollout is batched over all leading dimensions (one Python loop over time only).

    Args:
        dx: dynamics model.
        cost: per-step cost, see :data:`StepCost`.
        x_init: initial states ``(..., n_state)``.
        u: time-major controls ``(H, ..., n_ctrl)``.
        terminal_cost: optional ``x_H (..., n_state) -> (...)``.
        discount: per-step discount factor.

    Returns:
        costs of shape ``broadcast(x_init.shape[:-1], u.shape[1:-1])``.
    """
    if u.dim() < 2 or u.shape[0] < 1:
        raise ValueError(f"u must be time-major (H, ..., n_ctrl) with H >= 1, got {tuple(u.shape)}")
    x = x_init
    total: Tensor | float = 0.0
    gamma = 1.0
    for t in range(u.shape[0]):
        total = total + gamma * cost(x, u[t])
        x = dx.step(x, u[t])
        gamma *= discount
    if terminal_cost is not None:
        total = total + gamma * terminal_cost(x)
    return total  # type: ignore[return-value]  # a Tensor since H >= 1


class _BestTracker:
    """``iter_cb`` for :func:`dcem.dcem` recording the best finite sample seen (no host sync)."""

    def __init__(self) -> None:
        self.x: Tensor | None = None
        self.f: Tensor | None = None

    def __call__(
        self, i: int, X: Tensor, fX: Tensor, I: Tensor, X_I: Tensor, mu: Tensor, sigma: Tensor
    ) -> None:
        f = torch.where(torch.isfinite(fX), fX, torch.full_like(fX, math.inf)).detach()
        fmin, arg = f.min(-1)
        x = X.gather(1, arg.view(-1, 1, 1).expand(-1, 1, X.shape[-1])).squeeze(1)
        if self.x is None or self.f is None:
            self.x, self.f = x, fmin
        else:
            better = fmin < self.f
            self.x = torch.where(better.unsqueeze(-1), x, self.x)
            self.f = torch.where(better, fmin, self.f)


def _chain(*cbs: Callable[..., None] | None) -> Callable[..., None]:
    def cb(*args: Any) -> None:
        for c in cbs:
            if c is not None:
                c(*args)

    return cb


def select_solution(mu: Tensor, cost_mu: Tensor, tracker: _BestTracker, select: str) -> tuple[Tensor, Tensor]:
    """Pick the returned solution ``(n_batch, d)``: the final mean, the best sample or the better.

    A mean with a non-finite cost is always replaced by the best finite sample. Returns the
    solution and a boolean ``(n_batch,)`` telling where the best sample was taken; the caller
    re-evaluates the cost of the solution (so it carries gradients).
    """
    if tracker.x is None or tracker.f is None:
        raise RuntimeError("no iteration was recorded")
    bx, bf = tracker.x, tracker.f
    if select == "best":
        use_best = torch.ones_like(bf, dtype=torch.bool)
    elif select == "min":
        use_best = ~(cost_mu.detach() <= bf)
    else:  # "mean"
        use_best = ~torch.isfinite(cost_mu.detach())
    use_best = use_best & torch.isfinite(bf)
    return torch.where(use_best.unsqueeze(-1), bx.to(mu.dtype), mu), use_best


def dcem_ctrl(
    obs: Tensor,
    plan_horizon: int,
    init_mu: float | Tensor | None,
    init_sigma: float | Tensor | None,
    n_sample: int,
    n_elite: int,
    n_iter: int,
    rew_step: Callable[[Tensor, Tensor], Tensor] | None,
    n_ctrl: int,
    temp: float | None,
    unroll_dx: Callable[[Tensor, Tensor], tuple[Any, Tensor]] | None,
    discount: float = 1.0,
    slew_rate_penalty: float | None = None,
    Q: Callable[[Tensor, Tensor], tuple[Tensor, ...]] | None = None,
    Q_reduce: str | None = None,
    u_decode: Callable[[Tensor], Tensor] | None = None,
    u_latent_dim: int | None = None,
    lb: float | Tensor = -1.0,
    ub: float | Tensor = 1.0,
    dcem_iter_eps: float | None = 1e-3,
    dcem_normalize: bool = True,
    dcem_verbose: bool = False,
    *,
    dx: Dynamics | None = None,
    generator: torch.Generator | None = None,
    select: str = "mean",
) -> dict[str, Any]:
    """Plan a batch of action sequences with (D)CEM; the reference controller's interface.

    Rewards are maximised (the objective handed to CEM is ``-reward``). The rollout is
    ``unroll_dx(x (M, nx), u (T, M, n_ctrl)) -> (xs, rewards (M,))`` with ``M = n_batch * N``;
    when ``unroll_dx`` is None, ``dx`` and ``rew_step(x (M, nx), u (M, n_ctrl)) -> (M,)`` build
    one (with ``discount``).

    Args:
        obs: observations ``(n_batch, nx)`` or ``(nx,)``.
        plan_horizon: ``T >= 1``.
        init_mu, init_sigma: initial mean/std of the search distribution; floats or tensors
            broadcastable to ``(n_batch, d)`` with ``d = T * n_ctrl`` (batch-major, control
            fastest: entry ``t * n_ctrl + j``) or ``d = u_latent_dim``.
        n_sample, n_elite, n_iter: CEM sizes.
        rew_step: per-step reward (used only when ``unroll_dx`` is None).
        n_ctrl: control dimension.
        temp: ``None``/0 for CEM, ``> 0`` for DCEM.
        unroll_dx: rollout function, see above.
        discount: reward discount; also discounts the terminal ``Q``.
        slew_rate_penalty: adds ``penalty * mean_t mean_j (u_t - u_{t+1})^2`` to the objective.
        Q: optional terminal critic ``Q(x_T, u_T) -> (Q1, Q2, ...)``, each ``(M, 1)``.
        Q_reduce: ``"mean"``, ``"max"`` or ``"min"`` over the critics.
        u_decode: optional decoder ``z (M, u_latent_dim) -> u (T, M, n_ctrl)``; CEM then searches
            the latent space.
        u_latent_dim: latent dimension (required with ``u_decode``).
        lb, ub: bounds of the search space (floats, or tensors of shape ``(n_ctrl,)`` repeated
            over time, or broadcastable to ``(n_batch, d)``).
        dcem_iter_eps, dcem_normalize: ``iter_eps`` and ``normalize`` of :func:`dcem.dcem`.
        dcem_verbose: log the elite mean objective every iteration.
        dx: dynamics for the default rollout.
        generator: ``torch.Generator`` for reproducible samples.
        select: ``"mean"`` (reference: the final mean), ``"best"`` (best sample seen) or
            ``"min"`` (the better of the two); a non-finite mean is always replaced.

    Returns:
        dict with ``u`` (alias ``u_nominal``): plan ``(T, n_batch, n_ctrl)`` (``(T, n_ctrl)`` for
        1-D ``obs``); ``init_u``: first action ``u[0]``; ``cost``: objective of the plan
        ``(n_batch,)``; ``f``: the objective ``X (n_batch, N, d) -> (n_batch, N)``; ``z``: the
        latent solution ``(n_batch, u_latent_dim)`` when ``u_decode`` is given.
    """
    if not isinstance(obs, Tensor):
        raise TypeError(f"obs must be a tensor of shape (n_batch, nx), got {type(obs).__name__}")
    squeeze = obs.dim() == 1
    if squeeze:
        obs = obs.unsqueeze(0)
    if obs.dim() != 2:
        raise ValueError(f"obs must have shape (n_batch, nx) or (nx,), got {tuple(obs.shape)}")
    n_batch, nx = obs.shape
    check_state(obs, nx, "obs")
    T = _pos_int("plan_horizon", plan_horizon)
    n_ctrl = _pos_int("n_ctrl", n_ctrl)
    n_sample = _pos_int("n_sample", n_sample)
    if select not in ("mean", "best", "min"):
        raise ValueError(f"select must be 'mean', 'best' or 'min', got {select!r}")
    if Q is not None and Q_reduce not in ("mean", "max", "min"):
        raise ValueError(f"Q_reduce must be 'mean', 'max' or 'min' when Q is given, got {Q_reduce!r}")
    if u_decode is not None:
        if u_latent_dim is None:
            raise ValueError("u_latent_dim is required with u_decode")
        d = _pos_int("u_latent_dim", u_latent_dim)
    else:
        d = T * n_ctrl
    if unroll_dx is None:
        if dx is None or rew_step is None:
            raise ValueError("give unroll_dx, or both dx and rew_step to build the rollout")

        def unroll_dx(x: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
            xs = dx.rollout(x, u)  # (T + 1, M, nx)
            rews = torch.stack([rew_step(xs[t], u[t]) for t in range(u.shape[0])])
            gammas = discount ** torch.arange(u.shape[0], dtype=rews.dtype, device=rews.device)
            return xs, (gammas.unsqueeze(-1) * rews).sum(0)

    def bounds(name: str, v: float | Tensor) -> float | Tensor:
        if (
            isinstance(v, Tensor)
            and u_decode is None
            and v.dim() == 1
            and v.numel() == n_ctrl
            and d != n_ctrl
        ):
            return v.repeat(T)
        if isinstance(v, Tensor) and v.dim() >= 1 and v.shape[-1] not in (1, d):
            raise ValueError(f"{name} must have {n_ctrl} (per control) or {d} entries, got {tuple(v.shape)}")
        return v

    lb, ub = bounds("lb", lb), bounds("ub", ub)

    def f(X: Tensor) -> Tensor:
        if X.dim() != 3 or X.shape[0] != n_batch or X.shape[2] != d:
            raise ValueError(
                f"f expects samples of shape (n_batch, N, {d}) = ({n_batch}, N, {d}), got {tuple(X.shape)}"
            )
        N = X.shape[1]
        if u_decode is not None:
            u = u_decode(X.reshape(n_batch * N, d))
            if u.shape != (T, n_batch * N, n_ctrl):
                raise ValueError(
                    f"u_decode must return (T, M, n_ctrl) = ({T}, {n_batch * N}, {n_ctrl}), "
                    f"got {tuple(u.shape)}"
                )
        else:
            u = X.reshape(n_batch * N, T, n_ctrl).transpose(0, 1)
        x0 = obs.unsqueeze(1).expand(n_batch, N, nx).reshape(n_batch * N, nx)
        xs, rews = unroll_dx(x0, u)
        if not isinstance(rews, Tensor) or rews.shape != (n_batch * N,):
            got = tuple(rews.shape) if isinstance(rews, Tensor) else type(rews).__name__
            raise ValueError(
                f"unroll_dx must return (xs, rewards) with rewards of shape ({n_batch * N},), got {got}"
            )
        if Q is not None:
            qs = Q(xs[-1], u[-1])
            q = torch.cat(tuple(qs[:2]), dim=1)
            qT = q.mean(1) if Q_reduce == "mean" else (q.amax(1) if Q_reduce == "max" else q.amin(1))
            rews = rews + discount ** (T - 1) * qT
        obj = -rews
        if T > 1 and slew_rate_penalty:
            obj = obj + slew_rate_penalty * (u[:-1] - u[1:]).pow(2).mean(0).mean(-1)
        return obj.view(n_batch, N)

    verbose_cb = None
    if dcem_verbose:

        def verbose_cb(
            i: int, X: Tensor, fX: Tensor, I: Tensor, X_I: Tensor, mu: Tensor, sigma: Tensor
        ) -> None:
            w = I.view(fX.shape)
            fin = torch.where(w > 0, fX, torch.zeros_like(fX))
            log.info("dcem_ctrl iter %d: elite objective %.4f", i, float((fin * w).sum() / w.sum()))

    tracker = _BestTracker()
    mu = dcem(
        f,
        d,
        n_batch=n_batch,
        n_sample=n_sample,
        n_elite=n_elite,
        n_iter=n_iter,
        temp=temp,
        lb=lb,
        ub=ub,
        init_mu=init_mu,
        init_sigma=init_sigma,
        normalize=dcem_normalize,
        iter_eps=dcem_iter_eps,
        device=obs.device,
        dtype=obs.dtype,
        iter_cb=_chain(tracker, verbose_cb),
        generator=generator,
    )
    cost_mu = f(mu.unsqueeze(1)).squeeze(1)
    sol, use_best = select_solution(mu, cost_mu, tracker, select)
    cost = torch.where(use_best, f(sol.unsqueeze(1)).squeeze(1), cost_mu)
    out: dict[str, Any] = {}
    if u_decode is not None:
        out["z"] = sol
        u = u_decode(sol)
    else:
        u = sol.view(n_batch, T, n_ctrl).transpose(0, 1)
    if squeeze:
        u = u.squeeze(1)
    out.update(u=u, u_nominal=u, init_u=u[0], cost=cost, f=f)
    return out


class Plan(NamedTuple):
    """Result of :meth:`MPC.plan`: ``u`` time-major ``(H, n_batch, n_ctrl)``, ``cost`` ``(n_batch,)``."""

    u: Tensor
    cost: Tensor


class MPC(nn.Module):
    """Receding-horizon controller solving ``min_u sum_t C(x_t, u_t)`` with CEM or DCEM.

    Give either a dynamics model ``dx`` and a per-step ``cost`` (default: ``dx.quadratic_cost``),
    or a ``rollout`` function ``(x_init (M, n_state), u (H, M, n_ctrl)) -> cost (M,)`` together
    with ``n_state``/``n_ctrl``/bounds. :meth:`act` plans, returns the first action and keeps
    the plan shifted by one step as the initial mean of the next call (warm start).

    Args:
        horizon: planning horizon ``H >= 1``.
        dx: dynamics model (gives ``n_state``, ``n_ctrl`` and default bounds).
        cost: per-step cost ``(x, u) -> (...)`` used with ``dx``.
        terminal_cost: optional ``x_H -> (...)`` used with ``dx``.
        rollout: user rollout-cost function (instead of ``dx``/``cost``).
        n_state, n_ctrl: dimensions (required with ``rollout``).
        u_lower, u_upper: per-dimension bounds, floats or tensors of shape ``(n_ctrl,)``.
        n_sample, n_elite, n_iter: CEM sizes.
        temp: ``None`` (or 0) for CEM; ``> 0`` for DCEM, whose plan is differentiable w.r.t.
            the initial state and anything the cost/dynamics depend on.
        init_sigma: initial std, float or ``(n_ctrl,)`` tensor; default
            ``sigma_scale * (u_upper - u_lower)``.
        sigma_scale: see ``init_sigma``.
        iter_eps, normalize: forwarded to :func:`dcem.dcem`.
        warm_start: reuse the shifted previous plan as the initial mean.
        shift_fill: last action of a shifted plan: ``"last"`` (repeat), ``"zero"`` (clamped 0)
            or ``"mid"`` (middle of the bounds).
        select: ``"mean"``, ``"best"`` or ``"min"`` (default; the better of the final mean and
            the best sample seen). Non-finite plans are never returned when a finite sample exists.
        generator: ``torch.Generator`` for reproducibility.
    """

    def __init__(
        self,
        horizon: int,
        dx: Dynamics | None = None,
        cost: StepCost | None = None,
        *,
        terminal_cost: Callable[[Tensor], Tensor] | None = None,
        rollout: RolloutCost | None = None,
        n_state: int | None = None,
        n_ctrl: int | None = None,
        u_lower: float | Tensor | None = None,
        u_upper: float | Tensor | None = None,
        n_sample: int = 100,
        n_elite: int = 10,
        n_iter: int = 10,
        temp: float | None = None,
        init_sigma: float | Tensor | None = None,
        sigma_scale: float = 0.5,
        iter_eps: float | None = None,
        normalize: bool = True,
        warm_start: bool = True,
        shift_fill: str = "last",
        select: str = "min",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.horizon = _pos_int("horizon", horizon)
        self.n_sample = _pos_int("n_sample", n_sample)
        self.n_iter = _pos_int("n_iter", n_iter)
        if isinstance(n_elite, bool) or not isinstance(n_elite, Integral) or not 1 <= n_elite <= n_sample:
            raise ValueError(f"n_elite must be an integer in [1, n_sample = {n_sample}], got {n_elite!r}")
        self.n_elite = int(n_elite)
        if temp is not None and (not isinstance(temp, Real) or temp < 0 or not math.isfinite(temp)):
            raise ValueError(f"temp must be None or a finite float >= 0, got {temp!r}")
        self.temp = None if temp is None or temp == 0 else float(temp)
        if shift_fill not in ("last", "zero", "mid"):
            raise ValueError(f"shift_fill must be 'last', 'zero' or 'mid', got {shift_fill!r}")
        if select not in ("mean", "best", "min"):
            raise ValueError(f"select must be 'mean', 'best' or 'min', got {select!r}")
        if (dx is None) == (rollout is None):
            raise ValueError("give exactly one of dx (with an optional cost) or rollout")
        if dx is not None:
            if not isinstance(dx, Dynamics):
                raise TypeError(f"dx must be a dcem.control.Dynamics, got {type(dx).__name__}")
            self.dx: Dynamics | None = dx
            self.n_state, self.n_ctrl = dx.n_state, dx.n_ctrl
            self.cost = cost if cost is not None else dx.quadratic_cost
            lo = dx.u_lower if u_lower is None else u_lower
            hi = dx.u_upper if u_upper is None else u_upper
        else:
            if not callable(rollout):
                raise TypeError("rollout must be callable")
            self.dx = None
            self.cost = cost
            self.n_state = _pos_int("n_state", n_state)
            self.n_ctrl = _pos_int("n_ctrl", n_ctrl)
            if u_lower is None or u_upper is None:
                raise ValueError("u_lower and u_upper are required with rollout")
            lo, hi = u_lower, u_upper
        self.terminal_cost = terminal_cost
        self.rollout_fn = rollout
        lo_t = self._bound("u_lower", lo)
        hi_t = self._bound("u_upper", hi)
        if not bool((lo_t < hi_t).all()):
            raise ValueError("u_lower must be < u_upper in every control dimension")
        self.register_buffer("u_lower", lo_t)
        self.register_buffer("u_upper", hi_t)
        if init_sigma is None:
            if not (isinstance(sigma_scale, Real) and sigma_scale > 0):
                raise ValueError(f"sigma_scale must be > 0, got {sigma_scale!r}")
            sig = float(sigma_scale) * (hi_t - lo_t)
        else:
            sig = self._bound("init_sigma", init_sigma)
            if not bool((sig > 0).all()):
                raise ValueError("init_sigma must be > 0")
        self.register_buffer("init_sigma", sig)
        self.iter_eps = iter_eps
        self.normalize = normalize
        self.warm_start = warm_start
        self.shift_fill = shift_fill
        self.select = select
        self.generator = generator
        self._warm: Tensor | None = None

    def _bound(self, name: str, v: float | Tensor) -> Tensor:
        t = torch.as_tensor(v, dtype=torch.get_default_dtype()) if not isinstance(v, Tensor) else v.detach()
        if t.dim() > 1 or (t.dim() == 1 and t.numel() not in (1, self.n_ctrl)):
            raise ValueError(
                f"{name} must be a float or have shape (n_ctrl,) = ({self.n_ctrl},), got {tuple(t.shape)}"
            )
        t = t.to(torch.get_default_dtype()).expand(self.n_ctrl).clone()
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} must be finite")
        return t

    @property
    def warm_plan(self) -> Tensor | None:
        """The shifted previous plan used as the next initial mean, ``(H, n_batch, n_ctrl)``, or None."""
        if self._warm is None:
            return None
        return self._warm.view(self._warm.shape[0], self.horizon, self.n_ctrl).transpose(0, 1)

    def reset(self) -> None:
        """Forget the warm-start plan (call at the start of an episode)."""
        self._warm = None

    def _costs(self, x0: Tensor, u: Tensor) -> Tensor:
        """Total cost of ``u (H, M, n_ctrl)`` from ``x0 (M, n_state)``, shape ``(M,)``."""
        if self.rollout_fn is not None:
            c = self.rollout_fn(x0, u)
        else:
            if self.dx is None or self.cost is None:  # unreachable: the constructor sets them
                raise RuntimeError("MPC has neither a rollout function nor dx and cost")
            c = rollout_cost(self.dx, self.cost, x0, u, self.terminal_cost)
        if not isinstance(c, Tensor) or c.shape != (x0.shape[0],):
            got = tuple(c.shape) if isinstance(c, Tensor) else type(c).__name__
            raise ValueError(f"the rollout cost must have shape (M,) = ({x0.shape[0]},), got {got}")
        return c

    def plan(
        self, x: Tensor, u_init: Tensor | None = None, iter_cb: Callable[..., None] | None = None
    ) -> Plan:
        """Solve the planning problem from states ``x (n_batch, n_state)`` (or ``(n_state,)``).

        Args:
            x: current states; must be finite.
            u_init: optional initial mean ``(H, n_batch, n_ctrl)``; default the warm start
                (if any and ``warm_start``), else the middle of the bounds.
            iter_cb: optional :func:`dcem.dcem` iteration callback (e.g. to record the samples).

        Returns:
            :class:`Plan` with ``u (H, n_batch, n_ctrl)`` and ``cost (n_batch,)``.
        """
        check_state(x, self.n_state, "x")
        squeeze = x.dim() == 1
        if squeeze:
            x = x.unsqueeze(0)
        if x.dim() != 2:
            raise ValueError(f"x must have shape (n_batch, n_state) or (n_state,), got {tuple(x.shape)}")
        B, H, m = x.shape[0], self.horizon, self.n_ctrl
        lo = self.u_lower.to(x).repeat(H)
        hi = self.u_upper.to(x).repeat(H)
        if u_init is not None:
            if u_init.shape != (H, B, m):
                raise ValueError(
                    f"u_init must have shape (H, n_batch, n_ctrl) = ({H}, {B}, {m}), "
                    f"got {tuple(u_init.shape)}"
                )
            mu0: Tensor = u_init.to(x).transpose(0, 1).reshape(B, H * m)
        elif self.warm_start and self._warm is not None and self._warm.shape[0] == B:
            mu0 = self._warm.to(x)
        else:
            mu0 = (0.5 * (lo + hi)).expand(B, H * m)

        def f(X: Tensor) -> Tensor:
            N = X.shape[1]
            u = X.reshape(B * N, H, m).transpose(0, 1)
            x0 = x.unsqueeze(1).expand(B, N, self.n_state).reshape(B * N, self.n_state)
            return self._costs(x0, u).view(B, N)

        tracker = _BestTracker()
        mu = dcem(
            f,
            H * m,
            n_batch=B,
            n_sample=self.n_sample,
            n_elite=self.n_elite,
            n_iter=self.n_iter,
            temp=self.temp,
            lb=lo,
            ub=hi,
            init_mu=mu0,
            init_sigma=self.init_sigma.to(x).repeat(H),
            normalize=self.normalize,
            iter_eps=self.iter_eps,
            iter_cb=_chain(tracker, iter_cb),
            generator=self.generator,
            dtype=x.dtype,
            device=x.device,
        )
        cost_mu = f(mu.unsqueeze(1)).squeeze(1)
        sol, use_best = select_solution(mu, cost_mu, tracker, self.select)
        cost = torch.where(use_best, f(sol.unsqueeze(1)).squeeze(1), cost_mu)
        self._warm = self._shift(sol.detach().view(B, H, m)).reshape(B, H * m)
        u = sol.view(B, H, m).transpose(0, 1)
        if squeeze:
            return Plan(u.squeeze(1), cost.squeeze(0))
        return Plan(u, cost)

    def _shift(self, u: Tensor) -> Tensor:
        """Shift a batch-major plan ``(B, H, n_ctrl)`` one step forward and fill the last action."""
        if self.shift_fill == "last":
            tail = u[:, -1:]
        elif self.shift_fill == "zero":
            tail = torch.clamp(torch.zeros_like(u[:, -1:]), self.u_lower.to(u), self.u_upper.to(u))
        else:
            tail = (0.5 * (self.u_lower + self.u_upper)).to(u).expand_as(u[:, -1:])
        return torch.cat((u[:, 1:], tail), 1)

    def act(self, x: Tensor) -> Tensor:
        """Plan from ``x (n_batch, n_state)`` and return the first action ``(n_batch, n_ctrl)``."""
        return self.plan(x).u[0]

    forward = act

    @torch.no_grad()
    def run(
        self,
        x_init: Tensor,
        n_steps: int,
        env: Dynamics | None = None,
        progress: bool = False,
    ) -> dict[str, Tensor]:
        """Closed-loop simulation for ``n_steps`` steps (no gradients).

        Args:
            x_init: initial states ``(n_batch, n_state)``.
            n_steps: number of control steps ``>= 1``.
            env: system to simulate (default: the planning model ``dx``).
            progress: show a tqdm progress bar.

        Returns:
            dict with ``x`` ``(n_steps + 1, n_batch, n_state)``, ``u`` ``(n_steps, n_batch, n_ctrl)``,
            ``plan_cost`` ``(n_steps, n_batch)`` and, when a per-step cost is known,
            ``cost`` ``(n_steps, n_batch)`` (the realised step costs).
        """
        n_steps = _pos_int("n_steps", n_steps)
        env = env if env is not None else self.dx
        if env is None:
            raise ValueError("env is required when the controller was built from a rollout function")
        check_state(x_init, self.n_state, "x_init")
        self.reset()
        xs, us, pcs, cs = [x_init], [], [], []
        it = range(n_steps)
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, desc="mpc", leave=False)
        for _ in it:
            p = self.plan(xs[-1])
            u0 = p.u[0]
            if self.cost is not None:
                cs.append(self.cost(xs[-1], u0))
            us.append(u0)
            pcs.append(p.cost)
            xs.append(env.step(xs[-1], u0))
        out = {"x": torch.stack(xs), "u": torch.stack(us), "plan_cost": torch.stack(pcs)}
        if cs:
            out["cost"] = torch.stack(cs)
        return out
