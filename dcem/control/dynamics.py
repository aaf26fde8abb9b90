"""Differentiable, batched dynamics models for control with CEM/DCEM.

:class:`Dynamics` (defined in :mod:`dcem.planning.dynamics`, re-exported here) is the small
interface every model implements (a learned model can take the place of the analytic ones):
dimensions ``n_state`` / ``n_ctrl``, per-dimension control bounds ``u_lower`` / ``u_upper`` of
shape ``(n_ctrl,)``, the time step ``dt`` and ``step(x, u)``, batched over any leading dimensions.

:class:`CartpoleDx` and :class:`PendulumDx` have the equations, parameters, bounds and state
layouts of the differentiable cartpole and pendulum of ``locuslab/mpc.pytorch`` (``mpc/env_dx``)
that the paper used:

- cartpole: state ``[x, dx, cos th, sin th, dth]``, force in ``[-100, 100]``, ``dt = 0.05``,
  explicit Euler, parameters (gravity, cart mass, pole mass, pole half-length) = (9.8, 1, 0.1, 0.5);
- pendulum: state ``[cos th, sin th, dth]``, torque in ``[-2, 2]``, ``dt = 0.05``, semi-implicit
  Euler (the angle uses the updated velocity), parameters (g, m, l) = (10, 1, 1).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dcem.planning.dynamics import Dynamics, check_state

__all__ = ["Dynamics", "CartpoleDx", "PendulumDx", "check_state", "cartpole_swingup_cost"]


def _uniform(
    n: int, low: float, high: float, generator: torch.Generator | None, dtype: torch.dtype
) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, dtype=dtype)


class CartpoleDx(Dynamics):
    """Cartpole (Barto et al., 1983) with the ``mpc.pytorch`` equations and explicit Euler.

    State ``[x, dx, cos th, sin th, dth]`` (``th = 0`` is upright), one force control bounded
    by ``force_mag = 100``, ``dt = 0.05``. The angle is recovered with ``atan2`` and advanced
    with the old angular velocity, the cart with the old velocity.

    Args:
        params: ``(gravity, masscart, masspole, length)``, default ``(9.8, 1.0, 0.1, 0.5)``;
            a tensor (possibly an ``nn.Parameter`` to learn it) or a sequence of 4 floats.
        dt: time step.
    """

    def __init__(self, params: Tensor | tuple[float, ...] | None = None, dt: float = 0.05) -> None:
        super().__init__()
        self.n_state, self.n_ctrl = 5, 1
        self._set_dt_and_params(dt, params, (9.8, 1.0, 0.1, 0.5), "gravity, masscart, masspole, length")
        self.force_mag = 100.0
        self._set_bounds(-self.force_mag, self.force_mag)
        self.register_buffer("goal_state", torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0]))
        self.register_buffer("goal_weights", torch.tensor([0.1, 0.1, 1.0, 1.0, 0.1]))
        self.ctrl_penalty = 0.001

    def _step(self, x: Tensor, u: Tensor) -> Tensor:
        g, mc, mp, length = self.params.to(x).unbind()
        total = mc + mp
        pml = mp * length
        force = self.clamp_ctrl(u)[..., 0]
        pos, vel, cos_th, sin_th, dth = x.unbind(-1)
        th = torch.atan2(sin_th, cos_th)
        tmp = (force + pml * dth.pow(2) * sin_th) / total
        th_acc = (g * sin_th - cos_th * tmp) / (length * (4.0 / 3.0 - mp * cos_th.pow(2) / total))
        x_acc = tmp - pml * th_acc * cos_th / total
        new_th = th + self.dt * dth
        return torch.stack(
            (
                pos + self.dt * vel,
                vel + self.dt * x_acc,
                torch.cos(new_th),
                torch.sin(new_th),
                dth + self.dt * th_acc,
            ),
            -1,
        )

    def sample_state(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Initial states of the paper's experiment: ``x, dx ~ U(-0.5, 0.5)``, ``th ~ U(-pi, pi)``,
        ``dth ~ U(-1, 1)``; shape ``(n, 5)``."""
        dt = self.u_lower.dtype
        pos = _uniform(n, -0.5, 0.5, generator, dt)
        vel = _uniform(n, -0.5, 0.5, generator, dt)
        th = _uniform(n, -math.pi, math.pi, generator, dt)
        dth = _uniform(n, -1.0, 1.0, generator, dt)
        return torch.stack((pos, vel, th.cos(), th.sin(), dth), -1).to(self.u_lower.device)


class PendulumDx(Dynamics):
    """Torque-limited pendulum with the ``mpc.pytorch`` equations (semi-implicit Euler).

    State ``[cos th, sin th, dth]`` (``th = 0`` is upright), torque bounded by 2, ``dt = 0.05``:
    ``dth' = dth + dt (3 g / (2 l) sin th + 3 / (m l^2) u)``, ``th' = th + dt dth'``.

    Args:
        params: ``(g, m, l)``, default ``(10, 1, 1)``; tensor (or ``nn.Parameter``) or 3 floats.
        dt: time step.
    """

    def __init__(self, params: Tensor | tuple[float, ...] | None = None, dt: float = 0.05) -> None:
        super().__init__()
        self.n_state, self.n_ctrl = 3, 1
        self._set_dt_and_params(dt, params, (10.0, 1.0, 1.0), "g, m, l")
        self.max_torque = 2.0
        self._set_bounds(-self.max_torque, self.max_torque)
        self.register_buffer("goal_state", torch.tensor([1.0, 0.0, 0.0]))
        self.register_buffer("goal_weights", torch.tensor([1.0, 1.0, 0.1]))
        self.ctrl_penalty = 0.001

    def _step(self, x: Tensor, u: Tensor) -> Tensor:
        g, m, length = self.params.to(x).unbind()
        torque = self.clamp_ctrl(u)[..., 0]
        cos_th, sin_th, dth = x.unbind(-1)
        th = torch.atan2(sin_th, cos_th)
        new_dth = dth + self.dt * (3.0 * g / (2.0 * length) * sin_th + 3.0 / (m * length**2) * torque)
        new_th = th + self.dt * new_dth
        return torch.stack((torch.cos(new_th), torch.sin(new_th), new_dth), -1)

    def sample_state(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Random states ``th ~ U(-pi, pi)``, ``dth ~ U(-1, 1)``; shape ``(n, 3)``."""
        dt = self.u_lower.dtype
        th = _uniform(n, -math.pi, math.pi, generator, dt)
        dth = _uniform(n, -1.0, 1.0, generator, dt)
        return torch.stack((th.cos(), th.sin(), dth), -1).to(self.u_lower.device)


def cartpole_swingup_cost(x: Tensor, u: Tensor) -> Tensor:
    """Per-step cost of the paper's cartpole experiment, ``-(cos th - 0.1 x^2 - 1e-5 |u|^2)``.

    Args:
        x: cartpole states ``(..., 5)``.
        u: forces ``(..., 1)``.

    Returns:
        costs ``(...)``; summed over ``t = 0..H-1`` (states before each action) it is the
        experiment's objective.
    """
    return -(x[..., 2] - 0.1 * x[..., 0].pow(2) - 1e-5 * u.pow(2).sum(-1))
