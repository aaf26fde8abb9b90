"""A chain of torque-controlled pendulums coupled by torsional springs: known, differentiable
dynamics with as many control dimensions as links (a discrete, driven sine-Gordon chain).

Link ``i`` is a pendulum (point mass ``m`` on a massless rod of length ``l``, angle ``th_i`` from
the upright, ``th = 0`` up) driven by its own torque ``u_i``; neighbouring pendulums are coupled
by torsional springs of stiffness ``k`` (the chain's ends are free). The equations of motion are

    m l^2 th_i'' = m g l sin th_i + k (th_{i+1} - 2 th_i + th_{i-1}) + u_i

(missing neighbours of the end links left out), the Hamiltonian

    E = sum_i (m l^2 dth_i^2 / 2 + m g l cos th_i) + (k / 2) sum_i (th_{i+1} - th_i)^2

is separable, and the step is semi-implicit (symplectic) Euler: the velocities are updated with
the old angles, the angles with the new velocities, so the energy of the uncontrolled chain
oscillates around its initial value instead of drifting.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from dcem.control.dynamics import Dynamics

__all__ = ["PendulumChainDx", "chain_upright_cost"]


class PendulumChainDx(Dynamics):
    """``n_links`` coupled pendulums, one torque each (``n_ctrl = n_links``).

    State ``[th_1, ..., th_n, dth_1, ..., dth_n]`` (angles unwrapped, ``th = 0`` upright), so
    ``n_state = 2 n_links``; torques in ``[-max_torque, max_torque]``, ``dt = 0.05``.

    Args:
        n_links: number of pendulums (>= 2).
        params: ``(g, m, l, k)``, default ``(10, 1, 1, 2)``; a tensor (possibly an
            ``nn.Parameter``) or 4 floats.
        max_torque: control bound per link (default 5, half the gravity torque ``m g l``, so a
            hanging pendulum cannot be lifted without swinging).
        dt: time step.

    Example:
        >>> import torch
        >>> dx = PendulumChainDx(6)
        >>> x = dx.sample_state(4, torch.Generator().manual_seed(0))
        >>> dx.step(x, torch.zeros(4, 6)).shape
        torch.Size([4, 12])
    """

    def __init__(
        self,
        n_links: int = 6,
        params: Tensor | tuple[float, ...] | None = None,
        max_torque: float = 5.0,
        dt: float = 0.05,
    ) -> None:
        super().__init__()
        if isinstance(n_links, bool) or not isinstance(n_links, int) or n_links < 2:
            raise ValueError(f"n_links must be an integer >= 2, got {n_links!r}")
        if not (isinstance(max_torque, (int, float)) and max_torque > 0 and math.isfinite(max_torque)):
            raise ValueError(f"max_torque must be a finite float > 0, got {max_torque!r}")
        self.n_links = n_links
        self.n_state, self.n_ctrl = 2 * n_links, n_links
        self._set_dt_and_params(dt, params, (10.0, 1.0, 1.0, 2.0), "g, m, l, k")
        self.max_torque = float(max_torque)
        self._set_bounds(-self.max_torque, self.max_torque)
        self.register_buffer("goal_state", torch.zeros(2 * n_links))
        self.register_buffer("goal_weights", torch.cat((torch.ones(n_links), 0.1 * torch.ones(n_links))))
        self.ctrl_penalty = 0.001

    def _step(self, x: Tensor, u: Tensor) -> Tensor:
        g, m, length, k = self.params.to(x).unbind()
        th, dth = x.split(self.n_links, -1)
        inertia = m * length**2
        acc = (m * g * length * torch.sin(th) + k * _laplacian(th) + self.clamp_ctrl(u)) / inertia
        new_dth = dth + self.dt * acc
        return torch.cat((th + self.dt * new_dth, new_dth), -1)

    def energy(self, x: Tensor) -> Tensor:
        """Total energy ``E`` of states ``(..., n_state)``, shape ``(...)`` (see the module docstring)."""
        g, m, length, k = self.params.to(x).unbind()
        th, dth = x.split(self.n_links, -1)
        kinetic = 0.5 * m * length**2 * dth.pow(2).sum(-1)
        gravity = (m * g * length * torch.cos(th)).sum(-1)
        spring = 0.5 * k * torch.diff(th, dim=-1).pow(2).sum(-1)
        return kinetic + gravity + spring

    def sample_state(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Random states ``(n, 2 n_links)``: every ``th_i ~ U(-pi, pi)`` and ``dth_i ~ U(-1, 1)``,
        independently."""
        dt = self.u_lower.dtype
        th = (2 * torch.rand(n, self.n_links, generator=generator, dtype=dt) - 1) * math.pi
        dth = 2 * torch.rand(n, self.n_links, generator=generator, dtype=dt) - 1
        return torch.cat((th, dth), -1).to(self.u_lower.device)


def _laplacian(th: Tensor) -> Tensor:
    """``th_{i+1} - 2 th_i + th_{i-1}`` with free ends (missing neighbours left out), ``(..., n)``."""
    d = torch.diff(th, dim=-1)
    return F.pad(d, (0, 1)) - F.pad(d, (1, 0))


def chain_upright_cost(x: Tensor, u: Tensor) -> Tensor:
    """Per-step cost of the chain experiment, ``-mean_i (1 + cos th_i) / 2 + 1e-3 mean_i u_i^2``:
    minus the mean height of the pendulums (0 hanging, 1 upright) plus a small torque penalty.

    Args:
        x: chain states ``(..., 2 n)``.
        u: torques ``(..., n)``.

    Returns:
        costs ``(...)``: -1 for a chain upright without torque, 0 for one hanging down; the return
        (minus the cost) of a plan is positive unless it spends much torque.
    """
    n = u.shape[-1]
    if x.shape[-1] != 2 * n:
        raise ValueError(f"x must have 2 * n_ctrl = {2 * n} entries in its last dimension, got {x.shape[-1]}")
    return -0.5 * (1 + torch.cos(x[..., :n])).mean(-1) + 1e-3 * u.pow(2).mean(-1)
