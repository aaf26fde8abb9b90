"""Argument checks shared by :func:`dcem.lml`, :class:`dcem.LML` and :func:`dcem.hard_topk`.

Each raises ``TypeError`` (wrong kind) or ``ValueError`` (wrong value) naming the argument and
the allowed range. The NaN/infinity policy (see :mod:`dcem.soft_topk`) lives in
:func:`check_nonfinite`, which callers run wherever reading ``x`` is allowed.

Private: the public entry points are in :mod:`dcem.soft_topk`.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import cast

import torch
from torch import Tensor

__all__ = ["validate_k", "validate_x", "check_nonfinite", "validate_tau"]


def validate_k(k: object, n: int) -> int:
    msg = f"k must be an integer with 1 <= k <= n = {n} (the size of the last dimension of x)"
    if isinstance(k, bool) or not isinstance(k, Real):
        raise (ValueError if k is None or isinstance(k, bool) else TypeError)(f"{msg}, got {k!r}")
    real = cast(float, k)  # a numbers.Real, whose typeshed stub lacks the comparisons
    if not isinstance(k, Integral) and not float(real).is_integer():
        raise ValueError(f"{msg}, got {k!r}")
    if not 1 <= real <= n:
        raise ValueError(f"{msg}, got {k!r}")
    return int(real)


def validate_x(x: object, allow_int: bool = False) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    ok = x.is_floating_point() or (allow_int and not x.is_complex() and x.dtype != torch.bool)
    if not ok:
        kinds = "a real (floating-point or integer)" if allow_int else "a floating-point"
        raise TypeError(f"x must be {kinds} tensor, got dtype {x.dtype}")
    if x.dim() == 0 or x.shape[-1] == 0:
        raise ValueError(f"x must have shape (..., n) with n >= 1, got {tuple(x.shape)}")
    return x


def check_nonfinite(x2: Tensor, k: int) -> None:
    """Refuse NaN, and rows whose infinities cannot be honoured (``x2`` is ``(B, n)``, not all finite)."""
    if bool(torch.isnan(x2).any()):
        raise ValueError("x must not contain NaN (mask an entry with -inf to leave it out, +inf to keep it)")
    pos = (x2 == math.inf).sum(-1)
    live = (x2 > -math.inf).sum(-1)
    bad = ((pos > k) | (live < k)).nonzero()
    if bad.numel():
        i = int(bad[0, 0])
        raise ValueError(
            f"x: row {i} (of the flattened batch) has {int(pos[i])} entries +inf and {int(live[i])} "
            f"above -inf, but k = {k}: +inf entries are always selected and -inf entries never, so "
            "a row needs at most k entries +inf and at least k above -inf"
        )


def validate_tau(tau: float | Tensor, x: Tensor, check_values: bool) -> float | Tensor:
    """A float, or a tensor broadcastable to ``x.shape[:-1]`` (returned in that form)."""
    if isinstance(tau, Tensor):
        if not tau.is_floating_point():
            raise TypeError(f"tau must be a floating-point tensor, got dtype {tau.dtype}")
        if tau.device != x.device:
            raise ValueError(f"tau must be on the device of x ({x.device}), got {tau.device}")
        batch = x.shape[:-1]
        for form in (tau, tau.squeeze(-1) if tau.dim() and tau.shape[-1] == 1 else None):
            if form is not None and _broadcasts(form.shape, batch):
                tau = form
                break
        else:
            raise ValueError(
                f"tau of shape {tuple(tau.shape)} broadcasts neither to the batch shape "
                f"{tuple(batch)} of x nor to {tuple(batch) + (1,)}"
            )
        if check_values and not bool(torch.all((tau > 0) & (tau < math.inf))):
            raise ValueError("tau must be finite and > 0 everywhere (use dcem.hard_topk for tau = 0)")
        return tau
    if isinstance(tau, bool) or not isinstance(tau, Real):
        raise TypeError(f"tau must be a positive float or a tensor, got {type(tau).__name__}")
    tau = float(tau)
    if not (tau > 0 and math.isfinite(tau)):
        raise ValueError(f"tau must be a finite float > 0, got {tau} (use dcem.hard_topk for 0)")
    return tau


def _broadcasts(shape: torch.Size, target: torch.Size) -> bool:
    try:
        return torch.broadcast_shapes(shape, target) == target
    except RuntimeError:
        return False
