"""The functional controller :func:`dcem_ctrl`: the published reference's keywords and return
dictionary (time-major plans ``(T, n_batch, n_ctrl)`` at its boundary, rewards maximised by
minimising ``-reward``), optionally over a latent action space (``u_decode``), as a thin wrapper
over :class:`dcem.planning.Planner`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from dcem._checks import check_int
from dcem.planning import Dynamics, Planner, PlannerConfig, check_initial_state
from dcem.planning.config import resolve_config
from dcem.planning.timemajor import (
    ctrl_objective,
    default_unroll,
    latent_decoder,
    search_bound,
    verbose_cb,
)

__all__ = ["dcem_ctrl"]


def dcem_ctrl(
    obs: Tensor, plan_horizon: int, init_mu: float | Tensor | None, init_sigma: float | Tensor | None,
    n_sample: int, n_elite: int, n_iter: int, rew_step: Callable[[Tensor, Tensor], Tensor] | None,
    n_ctrl: int, temp: float | None, unroll_dx: Callable[[Tensor, Tensor], tuple[Any, Tensor]] | None,
    discount: float = 1.0, slew_rate_penalty: float | None = None,
    Q: Callable[[Tensor, Tensor], tuple[Tensor, ...]] | None = None, Q_reduce: str | None = None,
    u_decode: Callable[[Tensor], Tensor] | None = None, u_latent_dim: int | None = None,
    lb: float | Tensor = -1.0, ub: float | Tensor = 1.0, dcem_iter_eps: float | None = 1e-3,
    dcem_normalize: bool = True, dcem_verbose: bool = False, *,
    dx: Dynamics | None = None, generator: torch.Generator | None = None, select: str = "mean",
) -> dict[str, Any]:  # fmt: skip
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
    keys = {"n_sample": n_sample, "n_elite": n_elite, "n_iter": n_iter, "temp": temp, "select": select,
            "dcem_iter_eps": dcem_iter_eps, "dcem_normalize": dcem_normalize}  # fmt: skip
    cfg, _ = resolve_config("dcem_ctrl", (), keys, warn=False)  # the published keywords: no warning
    problem = Reference(obs, plan_horizon, n_ctrl, rew_step, unroll_dx, discount, slew_rate_penalty,
                        Q, Q_reduce, u_decode, u_latent_dim, dx)  # fmt: skip
    return plan_reference(problem, cfg, (init_mu, init_sigma), (lb, ub), generator, dcem_verbose)


class Reference(NamedTuple):
    """The problem of a :func:`dcem_ctrl` call, in its published keywords (see there)."""

    obs: Tensor
    plan_horizon: int
    n_ctrl: int
    rew_step: Callable[[Tensor, Tensor], Tensor] | None
    unroll_dx: Callable[[Tensor, Tensor], tuple[Any, Tensor]] | None
    discount: float
    slew_rate_penalty: float | None
    Q: Callable[[Tensor, Tensor], tuple[Tensor, ...]] | None
    Q_reduce: str | None
    u_decode: Callable[[Tensor], Tensor] | None
    u_latent_dim: int | None
    dx: Dynamics | None


def _objective(p: Reference) -> tuple[Tensor, bool, int, int, Callable[[Tensor], Tensor], Any, int]:
    """Checked ``obs (n_batch, nx)``, whether it was 1-D, ``T``, ``n_ctrl``, the planner's
    objective, the latent decoder (or None) and the search dimension ``d``."""
    obs = p.obs
    if not isinstance(obs, Tensor):
        raise TypeError(f"obs must be a tensor of shape (n_batch, nx), got {type(obs).__name__}")
    squeeze = obs.dim() == 1
    obs = obs.unsqueeze(0) if squeeze else obs
    if obs.dim() != 2:
        raise ValueError(f"obs must have shape (n_batch, nx) or (nx,), got {tuple(obs.shape)}")
    check_initial_state(obs, p.dx.n_state if p.dx is not None else obs.shape[-1], "obs")
    T, n_ctrl = check_int("plan_horizon", p.plan_horizon, 1), check_int("n_ctrl", p.n_ctrl, 1)
    if p.Q is not None and p.Q_reduce not in ("mean", "max", "min"):
        raise ValueError(f"Q_reduce must be 'mean', 'max' or 'min' when Q is given, got {p.Q_reduce!r}")
    decoder, d = None, T * n_ctrl
    if p.u_decode is not None:
        if p.u_latent_dim is None:
            raise ValueError("u_latent_dim is required with u_decode")
        d = check_int("u_latent_dim", p.u_latent_dim, 1)
        decoder = latent_decoder(p.u_decode, T, n_ctrl)
    unroll = p.unroll_dx if p.unroll_dx is not None else default_unroll(p.dx, p.rew_step, p.discount)
    cost = ctrl_objective(obs, T, n_ctrl, unroll, p.discount, p.slew_rate_penalty, p.Q, p.Q_reduce)
    return obs, squeeze, T, n_ctrl, cost, decoder, d


def plan_reference(
    p: Reference, cfg: PlannerConfig, init: tuple[Any, Any], bounds: tuple[Any, Any],
    generator: torch.Generator | None, verbose: bool,
) -> dict[str, Any]:  # fmt: skip
    """Plan ``p`` with ``cfg`` from ``init = (init_mu, init_sigma)`` inside ``bounds = (lb, ub)``;
    the return dictionary of :func:`dcem_ctrl`."""
    obs, squeeze, T, n_ctrl, cost, decoder, d = _objective(p)
    n_batch, latent = obs.shape[0], decoder is not None
    lo, hi = (search_bound(n, v, T, n_ctrl, d, latent) for n, v in zip(("lb", "ub"), bounds))
    box: dict[str, Any] = {"z_lower": lo, "z_upper": hi} if latent else {"lower": lo, "upper": hi}
    planner = Planner(T, n_ctrl, cfg, decoder=decoder, n_latent=d if latent else None, **box)
    shape = (n_batch, *planner.search_shape)
    mean0, std0 = (
        search_bound(n, default if v is None else v, T, n_ctrl, d, latent)
        for n, v, default in zip(("init_mu", "init_sigma"), init, (0.0, 1.0))
    )
    try:
        mean0 = torch.as_tensor(mean0).to(obs).expand(shape)
    except RuntimeError as err:
        raise ValueError(f"init_mu does not broadcast to (n_batch, d) = ({n_batch}, {d})") from err
    res = planner.plan(cost, init_mean=mean0, init_std=std0, generator=generator,
                       iter_cb=verbose_cb if verbose else None)  # fmt: skip

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
