"""Bounds of the planner's search space: checked once, broadcast to the batch when planning."""

from __future__ import annotations

from typing import overload

import torch
from torch import Tensor

from dcem.optim.cem import check_bound
from dcem.sync import host_reads_free

Bound = float | Tensor | None


def _check_bound_pair(lo: Bound, hi: Bound, what: str) -> None:
    check_bound(f"{what}lower", lo)
    check_bound(f"{what}upper", hi)
    if lo is None or hi is None:
        return
    lo_t, hi_t = torch.as_tensor(lo), torch.as_tensor(hi)
    if host_reads_free(lo_t) and host_reads_free(hi_t) and not bool((lo_t < hi_t).all()):
        raise ValueError(f"{what}lower must be < {what}upper in every dimension")


@overload
def _search_tensor(v: None, name: str, shape: tuple[int, ...], like: Tensor) -> None: ...
@overload
def _search_tensor(v: float | Tensor, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor: ...
@overload
def _search_tensor(v: Bound, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor | None: ...
def _search_tensor(v: Bound, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor | None:
    """``v`` broadcast to ``shape`` in ``like``'s dtype/device (None stays None)."""
    if v is None:
        return None
    t = torch.as_tensor(v, dtype=like.dtype, device=like.device) if not isinstance(v, Tensor) else v.to(like)
    try:
        return t.expand(shape)
    except RuntimeError as err:
        raise ValueError(f"{name} of shape {tuple(t.shape)} does not broadcast to {shape}") from err
