"""The model interface of the planner: :class:`Dynamics` and the state check :func:`check_state`.

:class:`Dynamics` is the small interface every model implements (a learned model can take the
place of the analytic ones of :mod:`dcem.control.dynamics`): dimensions ``n_state`` /
``n_ctrl``, per-dimension control bounds ``u_lower`` / ``u_upper`` of shape ``(n_ctrl,)``, the
time step ``dt`` and ``step(x, u)``, batched over any leading dimensions.
:meth:`Dynamics.rollout` unrolls a time-major control sequence. It lives with the planner,
whose objectives (:mod:`dcem.planning.rollout`) roll models out; :mod:`dcem.control` re-exports it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

__all__ = ["Dynamics", "check_state"]


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
