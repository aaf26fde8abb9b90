"""The functional controller :func:`dcem_ctrl`: the published reference's keywords and return
dictionary (time-major plans ``(T, n_batch, n_ctrl)`` at its boundary, rewards maximised by
minimising ``-reward``), optionally over a latent action space (``u_decode``), as a thin wrapper
over :class:`dcem.planning.Planner`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from dcem._checks import check_int, check_real
from dcem.control.dynamics import Dynamics
from dcem.planning import Planner, PlannerConfig, check_initial_state
from dcem.planning.timemajor import (
    ctrl_objective,
    default_unroll,
    latent_decoder,
    search_bound,
    verbose_cb,
)

__all__ = ["dcem_ctrl"]


def _rule(temp: float | None, rule: str | None) -> tuple[str, float]:
    """The planner rule and DCEM temperature of the ``temp``/``rule`` arguments of the wrappers."""
    t = check_real("temp", temp, 0.0, none_ok=True)
    if rule is None:
        rule = "dcem" if t else "cem"
    return rule, (t or 1.0)


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

    Rewards are maximised (the planner minimises ``-reward``). The rollout is
    ``unroll_dx(x (M, nx), u (T, M, n_ctrl)) -> (xs, rewards (M,))`` with ``M = n_batch * N``
    (``N`` candidates per iteration: the samples and the current mean); when ``unroll_dx`` is
    None, ``dx`` and ``rew_step(x (M, nx), u (M, n_ctrl)) -> (M,)`` build one (with ``discount``).

    Args:
        obs: observations ``(n_batch, nx)`` or ``(nx,)`` (``nx = dx.n_state`` when ``dx`` is given).
        plan_horizon: ``T >= 1``.
        init_mu, init_sigma: initial mean (default 0)/std (default 1) of the search
            distribution; floats or tensors broadcastable to ``(n_batch, d)`` with
            ``d = T * n_ctrl`` (batch-major, control fastest: entry ``t * n_ctrl + j``) or
            ``d = u_latent_dim``.
        n_sample, n_elite, n_iter: CEM sizes; each iteration is one call of the rollout.
        rew_step: per-step reward (used only when ``unroll_dx`` is None).
        n_ctrl: control dimension.
        temp: ``None``/0 for CEM, ``> 0`` for DCEM.
        unroll_dx: rollout function, see above.
        discount: reward discount; also discounts the terminal ``Q``.
        slew_rate_penalty: adds ``penalty * mean_t mean_j (u_t - u_{t+1})^2`` to the objective.
        Q: optional terminal critic ``Q(x_T, u_T) -> (Q1, Q2, ...)``, each ``(M, 1)``.
        Q_reduce: ``"mean"``, ``"max"`` or ``"min"`` over the critics.
        u_decode: optional decoder ``z (M, u_latent_dim) -> u (T, M, n_ctrl)``; the planner
            then searches the latent space.
        u_latent_dim: latent dimension (required with ``u_decode``).
        lb, ub: bounds of the search space (floats, or tensors of shape ``(n_ctrl,)`` repeated
            over time, or broadcastable to ``(n_batch, d)``).
        dcem_iter_eps, dcem_normalize: ``iter_eps`` and ``normalize`` of the planner.
        dcem_verbose: log the elite mean objective every iteration.
        dx: dynamics for the default rollout (its ``n_state`` is checked against ``obs``).
        generator: ``torch.Generator`` for reproducible samples.
        select: ``"mean"`` (the mean of the last sampled distribution), ``"best"`` (best
            candidate seen) or ``"min"`` (the better of the two); an invalid mean is replaced.

    Returns:
        dict with ``u`` (alias ``u_nominal``): plan ``(T, n_batch, n_ctrl)`` (``(T, n_ctrl)`` for
        1-D ``obs``); ``init_u``: first action ``u[0]``; ``cost``: objective of the plan
        ``(n_batch,)``; ``f``: the objective ``X (n_batch, N, d) -> (n_batch, N)``; ``z``: the
        latent solution ``(n_batch, u_latent_dim)`` when ``u_decode`` is given.
    """
    if not isinstance(obs, Tensor):
        raise TypeError(f"obs must be a tensor of shape (n_batch, nx), got {type(obs).__name__}")
    squeeze = obs.dim() == 1
    obs = obs.unsqueeze(0) if squeeze else obs
    if obs.dim() != 2:
        raise ValueError(f"obs must have shape (n_batch, nx) or (nx,), got {tuple(obs.shape)}")
    check_initial_state(obs, dx.n_state if dx is not None else obs.shape[-1], "obs")
    n_batch = obs.shape[0]
    T, n_ctrl = check_int("plan_horizon", plan_horizon, 1), check_int("n_ctrl", n_ctrl, 1)
    if Q is not None and Q_reduce not in ("mean", "max", "min"):
        raise ValueError(f"Q_reduce must be 'mean', 'max' or 'min' when Q is given, got {Q_reduce!r}")
    decoder = None
    if u_decode is not None:
        if u_latent_dim is None:
            raise ValueError("u_latent_dim is required with u_decode")
        d = check_int("u_latent_dim", u_latent_dim, 1)
        decoder = latent_decoder(u_decode, T, n_ctrl)
    else:
        d = T * n_ctrl
    unroll = unroll_dx if unroll_dx is not None else default_unroll(dx, rew_step, discount)
    cost = ctrl_objective(obs, T, n_ctrl, unroll, discount, slew_rate_penalty, Q, Q_reduce)
    rule, tau = _rule(temp, None)
    cfg = PlannerConfig(rule, n_sample, n_elite, n_iter, temp=tau, normalize=dcem_normalize,
                        iter_eps=dcem_iter_eps, select=select)  # fmt: skip
    latent = decoder is not None
    lo, hi = (search_bound(n, v, T, n_ctrl, d, latent) for n, v in (("lb", lb), ("ub", ub)))
    bounds: dict[str, Any] = {"z_lower": lo, "z_upper": hi} if latent else {"lower": lo, "upper": hi}
    planner = Planner(T, n_ctrl, cfg, decoder=decoder, n_latent=d if latent else None, **bounds)
    shape = (n_batch, *planner.search_shape)
    mean0, std0 = (
        search_bound(n, default if v is None else v, T, n_ctrl, d, latent)
        for n, v, default in (("init_mu", init_mu, 0.0), ("init_sigma", init_sigma, 1.0))
    )
    try:
        mean0 = torch.as_tensor(mean0).to(obs).expand(shape)
    except RuntimeError as err:
        raise ValueError(f"init_mu does not broadcast to (n_batch, d) = ({n_batch}, {d})") from err
    res = planner.plan(cost, init_mean=mean0, init_std=std0, generator=generator,
                       iter_cb=verbose_cb if dcem_verbose else None)  # fmt: skip

    def f(X: Tensor) -> Tensor:
        if X.dim() != 3 or X.shape[0] != n_batch or X.shape[2] != d:
            raise ValueError(
                f"f expects samples of shape (n_batch, N, {d}) = ({n_batch}, N, {d}), got {tuple(X.shape)}"
            )
        return cost(decoder(X) if decoder is not None else X.view(n_batch, X.shape[1], T, n_ctrl))

    u = res.plan.transpose(0, 1)
    u = u.squeeze(1) if squeeze else u
    out: dict[str, Any] = {"z": res.z} if latent else {}
    out.update(u=u, u_nominal=u, init_u=u[0], cost=res.cost, f=f)
    return out
