"""Differentiable, batched dynamics models for control with CEM/DCEM.

:class:`Dynamics` is the small interface every model implements (a learned model can take the
place of the analytic ones): dimensions ``n_state`` / ``n_ctrl``, per-dimension control bounds
``u_lower`` / ``u_upper`` of shape ``(n_ctrl,)``, the time step ``dt`` and ``step(x, u)``, batched
over any leading dimensions. :meth:`Dynamics.rollout` unrolls a time-major control sequence.

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
from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

__all__ = ["Dynamics", "CartpoleDx", "PendulumDx", "check_state", "cartpole_swingup_cost"]


def check_state(x: Tensor, n_state: int, name: str = "x") -> Tensor:
    """Validate a state tensor ``(..., n_state)``: floating point, right size, finite values.

    This synchronises with the device (finiteness check); call it at entry points, not inside
    rollouts. Returns ``x`` unchanged.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (..., {n_state}), got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() == 0 or x.shape[-1] != n_state:
        raise ValueError(
            f"{name} must have shape (..., n_state) with n_state = {n_state}, got {tuple(x.shape)}"
        )
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} must be finite (found NaN or inf)")
    return x


def _batch_shape(x: Tensor, u: Tensor) -> tuple[int, ...]:
    """Broadcast leading shape of ``x (..., n_state)`` and ``u (..., n_ctrl)``."""
    a, b = x.shape[:-1], u.shape[:-1]
    if a == b:
        return tuple(a)
    try:
        return tuple(torch.broadcast_shapes(a, b))
    except RuntimeError as err:
        raise ValueError(
            f"leading dimensions of x {tuple(x.shape)} and u {tuple(u.shape)} do not broadcast"
        ) from err


class Dynamics(nn.Module, ABC):
    """Common interface of a (differentiable) discrete-time dynamics model ``x' = f(x, u)``.

    Subclasses set ``n_state``, ``n_ctrl``, ``dt`` and call :meth:`_set_bounds`, and implement
    :meth:`_step` on already validated tensors.

    Attributes:
        n_state: state dimension.
        n_ctrl: control dimension.
        dt: time step in seconds.
        u_lower, u_upper: buffers of shape ``(n_ctrl,)`` with the control bounds.
        goal_state, goal_weights, ctrl_penalty: the quadratic tracking cost of
            :meth:`quadratic_cost` (as in ``mpc.pytorch``).
    """

    n_state: int
    n_ctrl: int
    dt: float
    u_lower: Tensor
    u_upper: Tensor
    goal_state: Tensor
    goal_weights: Tensor
    ctrl_penalty: float

    def _set_dt_and_params(
        self, dt: float, params: Tensor | tuple[float, ...] | None, default: tuple[float, ...], names: str
    ) -> None:
        """Validate ``dt`` and store the physical ``params`` (a learnable ``nn.Parameter`` as is,
        anything else as a buffer), which must have ``len(default)`` entries named ``names``."""
        if not (isinstance(dt, (int, float)) and dt > 0 and math.isfinite(dt)):
            raise ValueError(f"dt must be a finite float > 0, got {dt!r}")
        self.dt = float(dt)
        p = torch.tensor(default) if params is None else params
        if not isinstance(p, Tensor):
            p = torch.tensor(p, dtype=torch.get_default_dtype())
        if p.shape != (len(default),):
            raise ValueError(f"params must have {len(default)} entries ({names}), got {tuple(p.shape)}")
        if isinstance(p, nn.Parameter):
            self.params = p
        else:
            self.register_buffer("params", p.clone())

    def _set_bounds(self, lower: float | Tensor, upper: float | Tensor) -> None:
        lo = torch.as_tensor(lower, dtype=torch.get_default_dtype()).expand(self.n_ctrl).clone()
        hi = torch.as_tensor(upper, dtype=torch.get_default_dtype()).expand(self.n_ctrl).clone()
        if not bool((lo < hi).all()):
            raise ValueError("u_lower must be < u_upper in every control dimension")
        self.register_buffer("u_lower", lo)
        self.register_buffer("u_upper", hi)

    def _check_xu(self, x: Tensor, u: Tensor) -> None:
        if not isinstance(x, Tensor) or not isinstance(u, Tensor):
            raise TypeError("x and u must be torch.Tensors")
        if x.dim() == 0 or x.shape[-1] != self.n_state:
            raise ValueError(
                f"x must have shape (..., n_state) with n_state = {self.n_state}, got {tuple(x.shape)}"
            )
        if u.dim() == 0 or u.shape[-1] != self.n_ctrl:
            raise ValueError(
                f"u must have shape (..., n_ctrl) with n_ctrl = {self.n_ctrl}, got {tuple(u.shape)}"
            )
        _batch_shape(x, u)

    def step(self, x: Tensor, u: Tensor) -> Tensor:
        """One time step.

        Args:
            x: states ``(..., n_state)``.
            u: controls ``(..., n_ctrl)`` (clamped into the bounds); leading dimensions
                broadcast with those of ``x``.

        Returns:
            next states ``(..., n_state)`` (broadcast leading dimensions). Non-finite inputs
            propagate (no host synchronisation); validate entry points with :func:`check_state`.
        """
        self._check_xu(x, u)
        if x.shape[:-1] == u.shape[:-1]:
            return self._step(x, u)
        batch = _batch_shape(x, u)
        return self._step(x.expand(*batch, self.n_state), u.expand(*batch, self.n_ctrl))

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        return self.step(x, u)

    @abstractmethod
    def _step(self, x: Tensor, u: Tensor) -> Tensor:
        """The model on validated inputs."""

    def clamp_ctrl(self, u: Tensor) -> Tensor:
        """Clamp controls ``(..., n_ctrl)`` into ``[u_lower, u_upper]`` (per dimension)."""
        return torch.clamp(u, self.u_lower.to(u), self.u_upper.to(u))

    def rollout(self, x_init: Tensor, u: Tensor) -> Tensor:
        """Unroll a time-major control sequence.

        Args:
            x_init: initial states ``(..., n_state)``.
            u: controls ``(H, ..., n_ctrl)`` with ``H >= 1``.

        Returns:
            states ``(H + 1, ..., n_state)``, ``x_0 = x_init`` first.
        """
        if u.dim() < 2:
            raise ValueError(f"u must be time-major with shape (H, ..., n_ctrl), got {tuple(u.shape)}")
        self._check_xu(x_init, u[0])
        batch = _batch_shape(x_init, u[0])
        xs = [x_init.expand(*batch, self.n_state)]
        for t in range(u.shape[0]):
            xs.append(self._step(xs[-1], u[t].expand(*batch, self.n_ctrl)))
        return torch.stack(xs)

    def quadratic_cost(self, x: Tensor, u: Tensor) -> Tensor:
        """Per-step tracking cost ``sum_i w_i (x_i - goal_i)^2 + ctrl_penalty * |u|^2``, shape ``(...)``."""
        goal = self.goal_state.to(x)
        w = self.goal_weights.to(x)
        return (w * (x - goal).pow(2)).sum(-1) + self.ctrl_penalty * u.pow(2).sum(-1)

    def sample_state(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Random initial states ``(n, n_state)``; see the subclass for the distribution."""
        raise NotImplementedError


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
