"""The start of a plan: the initial Gaussian and the bounds as flattened search-space tensors.

:func:`initial` checks and builds ``mu, sigma (B, D)`` and ``lo, hi (B, 1, D)`` (or ``None``).
A default start (no ``init_mean``; ``init_std`` absent or a float; bounds floats or ``None``)
is the same at every plan of one batch shape, dtype and device, so a planner builds and checks
it once (:class:`StartCache`) and hands the same tensors to every such plan; the planner never
writes into them.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

import torch
from torch import Tensor

from dcem._checks import check_int
from dcem.optim.validate import check_box_defaults
from dcem.planning.bounds import _search_tensor
from dcem.sync import host_reads_free

__all__ = ["StartCache", "initial", "plan_start"]

Start = tuple[Tensor, Tensor, "Tensor | None", "Tensor | None", tuple[int, ...]]


def _plain_bound(b: object) -> bool:
    return b is None or (isinstance(b, Real) and not isinstance(b, bool))


class StartCache(dict):
    """Default starts by ``(batch, dtype, device, bounds, std scale, init_std, search shape)``."""

    def key(self, box: tuple[Any, Any], std_scale: float, init_std: object, batch_shape: object,
            dtype: torch.dtype | None, device: object, S: tuple[int, ...]) -> tuple | None:  # fmt: skip
        """The cache key of a default start, ``None`` for any other (never cached)."""
        if not (_plain_bound(box[0]) and _plain_bound(box[1]) and _plain_bound(init_std)):
            return None
        if torch.is_inference_mode_enabled() or not isinstance(batch_shape, (tuple, type(None))):
            return None
        batch = tuple(batch_shape or ())
        if not all(type(b) is int for b in batch):
            return None
        dev = torch.device(device) if device is not None else torch.empty(0).device  # type: ignore[call-overload]
        return (batch, dtype or torch.get_default_dtype(), dev, box, std_scale, init_std, S)

    def get_or_build(self, key: tuple | None, build: Any) -> Start:
        """The start of ``key`` (built by ``build()`` and kept, at most 16 of them); ``None``: built."""
        if key is None:
            return build()
        got = self.get(key)
        if got is None:
            if len(self) >= 16:
                self.clear()
            got = self[key] = build()
        return got


def initial(
    S: tuple[int, ...],
    box: tuple[Any, Any, tuple[str, str]],
    std_scale: float,
    batch_shape: tuple[int, ...] | None,
    init_mean: Tensor | None,
    init_std: float | Tensor | None,
    dtype: torch.dtype | None,
    device: torch.device | str | None,
) -> Start:
    """``(mu, sigma, lo, hi, batch)`` for the search shape ``S`` and bounds ``box = (lo, hi, names)``."""
    if init_mean is not None:
        if not isinstance(init_mean, Tensor) or not init_mean.is_floating_point():
            raise TypeError("init_mean must be a floating-point tensor of shape (*B, *search_shape)")
        if init_mean.dim() < len(S) or tuple(init_mean.shape[init_mean.dim() - len(S) :]) != S:
            raise ValueError(
                f"init_mean must have shape (*B, {', '.join(map(str, S))}), got {tuple(init_mean.shape)}"
            )
        inferred = tuple(init_mean.shape[: init_mean.dim() - len(S)])
        if batch_shape is not None and tuple(batch_shape) != inferred:
            raise ValueError(f"init_mean has batch shape {inferred}, but batch_shape = {tuple(batch_shape)}")
        batch, like = inferred, init_mean
    else:
        batch = tuple(check_int("batch_shape", b, 1) for b in (batch_shape or ()))
        like = torch.empty(0, dtype=dtype or torch.get_default_dtype(), device=device)
    full = (*batch, *S)
    lo = _search_tensor(box[0], box[2][0], full, like)
    hi = _search_tensor(box[1], box[2][1], full, like)
    if init_mean is None:
        mid = torch.zeros(full, dtype=like.dtype, device=like.device)
        if lo is not None and hi is not None:
            mid = 0.5 * (lo + hi)
        elif lo is not None or hi is not None:
            mid = torch.clamp(mid, lo, hi)
        init_mean = mid
    if init_std is None:
        init_std = std_scale * (hi - lo) if lo is not None and hi is not None else 1.0
    sigma = _search_tensor(init_std, "init_std", full, init_mean)
    if host_reads_free(sigma) and not bool((torch.isfinite(sigma) & (sigma >= 0)).all()):
        raise ValueError("init_std must be finite and >= 0")
    if host_reads_free(init_mean) and not bool(torch.isfinite(init_mean).all()):
        raise ValueError("init_mean must be finite")
    B, D = math.prod(batch), math.prod(S)
    flat = lambda t: None if t is None else t.reshape(B, 1, D)  # noqa: E731
    return init_mean.reshape(B, D), sigma.reshape(B, D), flat(lo), flat(hi), batch


def plan_start(
    planner: Any,
    batch_shape: tuple[int, ...] | None,
    init_mean: Tensor | None,
    init_std: float | Tensor | None,
    dtype: torch.dtype | None,
    device: torch.device | str | None,
) -> Start:
    """The checked start of a plan of ``planner`` (a :class:`dcem.planning.Planner`, its bounds,
    search shape, ``config.std_scale`` and ``_starts`` cache): :func:`initial`, a default start
    built once per shape."""
    latent = planner.n_latent is not None
    prefix = "z_" if latent else ""
    box = (planner.z_lower, planner.z_upper) if latent else (planner.lower, planner.upper)
    S, std_scale = planner.search_shape, float(planner.config.std_scale)  # a float after __post_init__

    def build() -> Start:
        check_box_defaults(box[0], box[1], init_mean, init_std, prefix)  # shared validation (dcem.optim)
        names = (f"{prefix}lower", f"{prefix}upper")
        return initial(S, (*box, names), std_scale, batch_shape, init_mean, init_std, dtype, device)

    cache: StartCache = planner._starts
    key = (
        None if init_mean is not None else cache.key(box, std_scale, init_std, batch_shape, dtype, device, S)
    )
    return cache.get_or_build(key, build)
