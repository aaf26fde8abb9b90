"""Warm-start shifting of a receding-horizon plan (a new tensor; the input is never modified)."""

from __future__ import annotations

import torch
from torch import Tensor

from dcem._checks import check_choice, check_int

__all__ = ["shift_plan", "SHIFT_FILLS"]

SHIFT_FILLS = ("last", "zero", "mid")


def shift_plan(
    plan: Tensor,
    steps: int = 1,
    fill: str = "last",
    lower: Tensor | float | None = None,
    upper: Tensor | float | None = None,
) -> Tensor:
    """Drop the first ``steps`` actions of ``plan (..., H, A)`` and append ``steps`` new ones.

    Args:
        plan: batch-major plans ``(..., H, A)``.
        steps: actions executed since the plan was made, ``0 <= steps <= H``.
        fill: the appended actions: ``"last"`` repeats the last action, ``"zero"`` is 0
            (clamped into the bounds), ``"mid"`` the middle of the bounds.
        lower, upper: action bounds (floats or tensors broadcastable to ``(A,)``); required
            by ``"mid"``, optional for ``"zero"``.

    Returns:
        the shifted plans, a new tensor of the same shape, dtype and device.

    Example:
        >>> import torch
        >>> shift_plan(torch.tensor([[1.0], [2.0], [3.0]])).squeeze(-1)
        tensor([2., 3., 3.])
    """
    if not isinstance(plan, Tensor) or plan.dim() < 2:
        got = tuple(plan.shape) if isinstance(plan, Tensor) else type(plan).__name__
        raise ValueError(f"plan must be a tensor of shape (..., H, A), got {got}")
    H = plan.shape[-2]
    steps = check_int("steps", steps, 0, H)
    check_choice("fill", fill, SHIFT_FILLS)
    lo = None if lower is None else torch.as_tensor(lower).to(plan)
    hi = None if upper is None else torch.as_tensor(upper).to(plan)
    if steps == 0:
        return plan.clone()
    tail_shape = (*plan.shape[:-2], steps, plan.shape[-1])
    if fill == "last":
        tail = plan[..., -1:, :].expand(tail_shape)
    elif fill == "zero":
        tail = torch.zeros(tail_shape, dtype=plan.dtype, device=plan.device)
        if lo is not None or hi is not None:
            tail = torch.clamp(tail, lo, hi)
    else:
        if lo is None or hi is None:
            raise ValueError("fill='mid' needs both lower and upper")
        tail = (0.5 * (lo + hi)).expand(tail_shape)
    return torch.cat((plan[..., steps:, :], tail), -2)
