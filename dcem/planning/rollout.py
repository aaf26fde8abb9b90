"""Objectives for the planner built from a dynamics model and a per-step cost.

Plans are batch-major ``(..., H, A)``; an objective maps candidate plans ``(*B, N, H, A)``
to total costs ``(*B, N)`` (lower is better).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from dcem._checks import check_real
from dcem.planning.dynamics import Dynamics, check_state
from dcem.sync import host_reads_free

__all__ = ["Objective", "StepCost", "rollout", "rollout_objective", "check_initial_state"]

StepCost = Callable[[Tensor, Tensor], Tensor]
"""``cost(x, u) -> c``: states ``(..., n_state)``, controls ``(..., n_ctrl)`` -> costs ``(...)``."""
Objective = Callable[[Tensor], Tensor]
"""``cost(plans) -> c``: candidate plans ``(*B, N, H, A)`` -> total costs ``(*B, N)``."""


def check_initial_state(x: Tensor, n_state: int, name: str = "x_init") -> Tensor:
    """Check states ``(..., n_state)`` against a model's state size; finiteness where reading is free.

    Raises ``TypeError``/``ValueError`` naming ``name``. On an accelerator or under tracing the
    values are not read (no device synchronisation); only the type and shape are checked.
    """
    if isinstance(x, Tensor) and not host_reads_free(x):
        if not x.is_floating_point() or x.dim() == 0 or x.shape[-1] != n_state:
            raise ValueError(
                f"{name} must be a floating-point tensor of shape (..., n_state) with n_state = {n_state}, "
                f"got {x.dtype} {tuple(x.shape)}"
            )
        return x
    return check_state(x, n_state, name)


def rollout(
    dynamics: Dynamics,
    step_cost: StepCost,
    x_init: Tensor,
    plans: Tensor,
    terminal_cost: Callable[[Tensor], Tensor] | None = None,
    discount: float = 1.0,
) -> Tensor:
    """Total cost ``sum_{t<H} discount^t c(x_t, u_t) [+ discount^H terminal_cost(x_H)]``.

    Without autograd the states come from one :meth:`Dynamics.rollout
    <dcem.control.Dynamics.rollout>` (inputs validated once) and ``step_cost`` is called once
    on all of them, stacked along a leading time dimension (a :data:`StepCost` is batched
    over any leading dimensions); with autograd it is called step by step, so that no
    stacked copy of the states is saved for the backward pass.

    Args:
        dynamics: the model; ``x_{t+1} = dynamics.step(x_t, u_t)``.
        step_cost: see :data:`StepCost`.
        x_init: initial states ``(..., n_state)``.
        plans: batch-major controls ``(..., H, n_ctrl)``; leading dimensions broadcast with
            those of ``x_init``.
        terminal_cost: optional ``x_H (..., n_state) -> (...)``.
        discount: per-step discount factor.

    Returns:
        costs of shape ``broadcast(x_init.shape[:-1], plans.shape[:-2])``.
    """
    if plans.dim() < 2 or plans.shape[-2] < 1 or plans.shape[-1] != dynamics.n_ctrl:
        raise ValueError(
            f"plans must have shape (..., H, n_ctrl) with H >= 1 and n_ctrl = {dynamics.n_ctrl}, "
            f"got {tuple(plans.shape)}"
        )
    u = plans.movedim(-2, 0)  # (H, ..., n_ctrl)
    H = u.shape[0]
    if torch.is_grad_enabled():  # per step: no stacked copy of the states is kept for backward
        x, cs = x_init, []
        for t in range(H):
            cs.append(step_cost(x, u[t]))
            x = dynamics.step(x, u[t])
        c, x_last = torch.stack(torch.broadcast_tensors(*cs)), x
    else:
        xs = dynamics.rollout(x_init, u)  # (H + 1, ..., n_state)
        c, x_last = step_cost(xs[:-1], u), xs[-1]  # (H, ...)
    if discount != 1.0:
        gammas = discount ** torch.arange(H, dtype=c.dtype, device=c.device)
        c = c * gammas.view(H, *([1] * (c.dim() - 1)))
    total = c.sum(0)
    if terminal_cost is not None:
        total = total + discount**H * terminal_cost(x_last)
    return total


def rollout_objective(
    dynamics: Dynamics,
    x_init: Tensor,
    step_cost: StepCost | None = None,
    *,
    terminal_cost: Callable[[Tensor], Tensor] | None = None,
    discount: float = 1.0,
    name: str = "x_init",
) -> Objective:
    """The planner objective of rolling candidate plans out of ``x_init (*B, n_state)``.

    Args:
        dynamics: the model (its ``n_state``/``n_ctrl`` are checked against the inputs).
        x_init: initial states ``(*B, n_state)``; checked (shape, finite) and reported as
            ``name`` in errors.
        step_cost: per-step cost; default ``dynamics.quadratic_cost``.
        terminal_cost, discount: see :func:`rollout`.

    Returns:
        ``cost(plans (*B, N, H, n_ctrl)) -> (*B, N)``.
    """
    if not isinstance(dynamics, Dynamics):
        raise TypeError(f"dynamics must be a dcem.control.Dynamics, got {type(dynamics).__name__}")
    check_initial_state(x_init, dynamics.n_state, name)
    discount = float(check_real("discount", discount, 0.0))
    c = step_cost if step_cost is not None else dynamics.quadratic_cost
    x0 = x_init.unsqueeze(-2)
    batch = tuple(x_init.shape[:-1])

    def cost(plans: Tensor) -> Tensor:
        if plans.dim() != len(batch) + 3 or tuple(plans.shape[: len(batch)]) != batch:
            raise ValueError(
                f"plans must have shape (*B, N, H, n_ctrl) with B = {batch} from {name}, "
                f"got {tuple(plans.shape)}"
            )
        return rollout(dynamics, c, x0, plans, terminal_cost, discount)

    return cost
