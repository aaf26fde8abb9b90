"""Adapters from the reference controller's time-major conventions to the batch-major planner.

The published ``dcem_ctrl`` (kept as :func:`dcem.control.dcem_ctrl`) works with time-major
controls ``u (T, M, n_ctrl)``, flattened search vectors ``(n_batch, T * n_ctrl)`` (control
fastest), rollouts ``unroll_dx(x (M, nx), u) -> (xs, rewards (M,))`` that are maximised and
decoders ``z (M, d) -> u (T, M, n_ctrl)``. These helpers turn each into the planner's form:
plans ``(n_batch, N, T, n_ctrl)`` and costs ``(n_batch, N)`` to minimise; :func:`rollout_cost`
and :func:`select_solution` are the time-major forms kept for compatibility (both exported by
:mod:`dcem.control.mpc`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from dcem._checks import check_choice
from dcem.optim import invalid_mask
from dcem.planning.dynamics import Dynamics
from dcem.planning.rollout import StepCost, rollout

__all__ = [
    "rollout_cost",
    "select_solution",
    "search_bound",
    "ctrl_objective",
    "default_unroll",
    "latent_decoder",
    "verbose_cb",
]

log = logging.getLogger("dcem.control.mpc")


def rollout_cost(
    dx: Dynamics,
    cost: StepCost,
    x_init: Tensor,
    u: Tensor,
    terminal_cost: Callable[[Tensor], Tensor] | None = None,
    discount: float = 1.0,
) -> Tensor:
    """Total cost ``sum_{t<H} discount^t cost(x_t, u_t) [+ discount^H terminal_cost(x_H)]``.

    The time-major form of :func:`dcem.planning.rollout`.

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
    return rollout(dx, cost, x_init, u.movedim(0, -2), terminal_cost, discount)


def select_solution(mu: Tensor, cost_mu: Tensor, tracker: Any, select: str) -> tuple[Tensor, Tensor]:
    """Pick ``(n_batch, d)``: the mean ``mu``, the best sample ``tracker.x`` (cost ``.f``) or the better.

    Kept for compatibility; :class:`dcem.planning.Planner` applies the same rule. A mean with
    an invalid (NaN/``+inf``) cost is always replaced by a best sample with a valid cost.
    Returns the solution and a boolean ``(n_batch,)`` telling where the best sample was taken.
    """
    check_choice("select", select, ("mean", "best", "min"))
    bx, bf = tracker.x, tracker.f
    if bx is None or bf is None:
        raise RuntimeError("no iteration was recorded")
    if select == "best":
        use_best = torch.ones_like(bf, dtype=torch.bool)
    elif select == "min":
        use_best = ~(cost_mu.detach() <= bf)
    else:
        use_best = invalid_mask(cost_mu.detach())
    use_best = use_best & ~invalid_mask(bf)
    return torch.where(use_best.unsqueeze(-1), bx.to(mu.dtype), mu), use_best


def search_bound(name: str, v: float | Tensor, T: int, n_ctrl: int, d: int, latent: bool) -> float | Tensor:
    """A ``dcem_ctrl`` bound (float, ``(n_ctrl,)`` repeated over time, or ``(.., d)``) in planner form."""
    if not isinstance(v, Tensor) or v.dim() == 0:
        return v
    if latent or v.shape[-1] == 1:
        return v
    if v.shape[-1] == n_ctrl and v.dim() == 1:
        return v
    if v.shape[-1] != d:
        raise ValueError(f"{name} must have {n_ctrl} (per control) or {d} entries, got {tuple(v.shape)}")
    return v.reshape(*v.shape[:-1], T, n_ctrl)


def ctrl_objective(
    obs: Tensor, T: int, n_ctrl: int, unroll: Callable[[Tensor, Tensor], tuple[Any, Tensor]],
    discount: float, slew: float | None, Q: Callable[..., tuple[Tensor, ...]] | None, Q_reduce: str | None,
) -> Callable[[Tensor], Tensor]:  # fmt: skip
    """``dcem_ctrl``'s objective on batch-major plans ``(n_batch, N, T, n_ctrl) -> (n_batch, N)``."""
    n_batch, nx = obs.shape

    def cost(plans: Tensor) -> Tensor:
        N = plans.shape[1]
        M = n_batch * N
        u = plans.reshape(M, T, n_ctrl).transpose(0, 1)
        xs, rews = unroll(obs.unsqueeze(1).expand(n_batch, N, nx).reshape(M, nx), u)
        if not isinstance(rews, Tensor) or rews.shape != (M,):
            got = tuple(rews.shape) if isinstance(rews, Tensor) else type(rews).__name__
            raise ValueError(f"unroll_dx must return (xs, rewards) with rewards of shape ({M},), got {got}")
        if Q is not None:
            q = torch.cat(tuple(Q(xs[-1], u[-1])[:2]), dim=1)
            qT = q.mean(1) if Q_reduce == "mean" else (q.amax(1) if Q_reduce == "max" else q.amin(1))
            rews = rews + discount ** (T - 1) * qT
        obj = -rews
        if T > 1 and slew:
            obj = obj + slew * (u[:-1] - u[1:]).pow(2).mean(0).mean(-1)
        return obj.view(n_batch, N)

    return cost


def default_unroll(
    dx: Dynamics | None, rew_step: Callable[[Tensor, Tensor], Tensor] | None, discount: float
) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]:
    if dx is None or rew_step is None:
        raise ValueError("give unroll_dx, or both dx and rew_step to build the rollout")

    def unroll(x: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        xs = dx.rollout(x, u)  # (T + 1, M, nx)
        rews = torch.stack([rew_step(xs[t], u[t]) for t in range(u.shape[0])])
        gammas = discount ** torch.arange(u.shape[0], dtype=rews.dtype, device=rews.device)
        return xs, (gammas.unsqueeze(-1) * rews).sum(0)

    return unroll


def latent_decoder(u_decode: Callable[[Tensor], Tensor], T: int, n_ctrl: int) -> Callable[[Tensor], Tensor]:
    """``u_decode (M, d) -> (T, M, n_ctrl)`` as a planner decoder ``(..., d) -> (..., T, n_ctrl)``."""

    def decode(z: Tensor) -> Tensor:
        lead = z.shape[:-1]
        u = u_decode(z.reshape(-1, z.shape[-1]))
        M = z.numel() // z.shape[-1]
        if not isinstance(u, Tensor) or u.shape != (T, M, n_ctrl):
            got = tuple(u.shape) if isinstance(u, Tensor) else type(u).__name__
            raise ValueError(f"u_decode must return (T, M, n_ctrl) = ({T}, {M}, {n_ctrl}), got {got}")
        return u.transpose(0, 1).reshape(*lead, T, n_ctrl)

    return decode


def verbose_cb(i: int, X: Tensor, fX: Tensor, I: Tensor, X_I: Tensor, mu: Tensor, sigma: Tensor) -> None:
    w = I.view(fX.shape)
    fin = torch.where(w > 0, fX, torch.zeros_like(fX))
    log.info("dcem_ctrl iter %d: elite objective %.4f", i, float((fin * w).sum() / w.sum()))
