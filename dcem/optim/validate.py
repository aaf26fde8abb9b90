"""The one validation layer of the optimiser: every public entry point checks its input here.

:mod:`dcem.optim` (``CEMConfig``, ``init_state``, ``ask``, ``tell``, ``step``, ``solve``,
``Solver``), :func:`dcem.dcem`, :class:`dcem.layers.DCEMArgmin` and the planner call these
functions, so a bad argument gives the same ``ValueError``/``TypeError`` naming the argument and
the allowed range wherever it enters. Scalar checks live in :mod:`dcem._checks`.

Values held in tensors (NaN, signs, ``lb < ub``) are read only where that is free
(:func:`dcem.sync.host_reads_free`: CPU tensors outside ``torch.compile``), on both solver
paths alike, so on CPU the host-checked and the sync-free path accept exactly the same input.
On accelerators and under compilation such value checks are skipped (the structural ones,
shapes, dtypes and devices, always run).

The NaN/inf policy of the optimiser (also in the README):

* initial mean: finite; initial standard deviation: finite and ``>= 0``;
* bounds: no NaN, ``lb < +inf``, ``ub > -inf``, ``lb < ub`` (``lb = -inf``/``ub = +inf``
  mean unbounded);
* temperature: a finite float ``> 0`` (tensors: every entry), or ``None``/``0`` for hard CEM;
* costs: NaN and ``+inf`` are invalid (weight 0, never elite or best), ``-inf`` is the best
  possible value; an iteration in which some problem has no valid cost raises ``ValueError``
  where reading is free, and elsewhere keeps that problem's distribution and sets its
  ``failed`` flag (:class:`dcem.optim.CEMState`).
"""

from __future__ import annotations

import math
from numbers import Real
from typing import cast

import torch
from torch import Tensor

from dcem.sync import host_reads_free

__all__ = [
    "check_tensor",
    "check_finite",
    "check_bound",
    "check_bound_pair",
    "check_temp",
    "check_mean_std",
    "check_values",
    "check_noise",
    "check_generator",
]


def check_tensor(name: str, value: object, *, min_dim: int = 0, what: str = "") -> Tensor:
    """``value`` if it is a floating-point tensor with at least ``min_dim`` dimensions (``TypeError``)."""
    shape = f" of shape {what}" if what else ""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a floating-point tensor{shape}, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor{shape}, got dtype {value.dtype}")
    if value.dim() < min_dim:
        raise ValueError(f"{name} must be a tensor{shape}, got shape {tuple(value.shape)}")
    return value


def check_finite(name: str, t: Tensor, *, nonneg: bool = False) -> None:
    """Raise ``ValueError`` if ``t`` holds NaN or +-inf (or, with ``nonneg``, a negative entry).

    Read only where that is free (:func:`dcem.sync.host_reads_free`), on either solver path.
    """
    if not host_reads_free(t):
        return
    v = t.detach()
    if not bool(torch.isfinite(v).all()):
        raise ValueError(f"{name} must be finite (no NaN or +-inf)")
    if nonneg and not bool((v >= 0).all()):
        raise ValueError(f"{name} must be >= 0 everywhere")


def check_bound(name: str, value: object) -> None:
    """``value`` must be ``None``, a real number or a floating-point tensor, without NaN."""
    if value is None:
        return
    if isinstance(value, Tensor):
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a float or a floating-point tensor, got dtype {value.dtype}")
        if host_reads_free(value) and bool(torch.isnan(value).any()):
            raise ValueError(f"{name} must not contain NaN")
        return
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be None, a float or a tensor, got {type(value).__name__}")
    if math.isnan(value):
        raise ValueError(f"{name} must be None, a float or a tensor (no NaN), got {value!r}")


def check_bound_pair(lb: object, ub: object, names: tuple[str, str] = ("lb", "ub")) -> None:
    """Each bound as :func:`check_bound`; ``lb < +inf``, ``ub > -inf`` and ``lb < ub`` everywhere.

    Example:
        >>> check_bound_pair(1.0, -1.0)
        Traceback (most recent call last):
        ...
        ValueError: lb must be < ub in every coordinate, got lb=1.0, ub=-1.0
    """
    (n_lo, n_hi) = names
    check_bound(n_lo, lb)
    check_bound(n_hi, ub)
    lo = _readable(lb)
    hi = _readable(ub)
    if lo is not None and bool((lo == math.inf).any()):
        raise ValueError(f"{n_lo} must be < +inf (use -inf or None for no lower bound)")
    if hi is not None and bool((hi == -math.inf).any()):
        raise ValueError(f"{n_hi} must be > -inf (use +inf or None for no upper bound)")
    if lo is None or hi is None:
        return
    try:
        ok = bool((lo < hi).all())
    except RuntimeError as err:
        raise ValueError(
            f"{n_lo} of shape {tuple(lo.shape)} and {n_hi} of shape {tuple(hi.shape)} do not broadcast"
        ) from err
    if not ok:
        scalars = not isinstance(lb, Tensor) and not isinstance(ub, Tensor)
        got = f", got {n_lo}={lb!r}, {n_hi}={ub!r}" if scalars else ""
        raise ValueError(f"{n_lo} must be < {n_hi} in every coordinate{got}")


def _readable(b: object) -> Tensor | None:
    """A bound as a CPU tensor where its values may be read, else ``None``."""
    if b is None:
        return None
    if isinstance(b, Tensor):
        return b.detach() if host_reads_free(b) else None
    return torch.tensor(float(cast(float, b)), dtype=torch.float64)  # a real: every caller ran check_bound


def check_temp(temp: object, name: str = "temp") -> float | Tensor | None:
    """``None`` (hard CEM) for ``None``/``0``; a finite float ``> 0``; or a floating tensor ``> 0``."""
    if temp is None:
        return None
    if isinstance(temp, Tensor):
        if not temp.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {temp.dtype}")
        if host_reads_free(temp):
            v = temp.detach()
            if not bool((torch.isfinite(v) & (v > 0)).all()):
                raise ValueError(f"{name} tensor must be finite and > 0 (use temp=None for hard CEM)")
        return temp
    if isinstance(temp, bool) or not isinstance(temp, Real):
        raise TypeError(f"{name} must be None, 0, a finite float > 0 or a tensor, got {type(temp).__name__}")
    real = cast(float, temp)  # a numbers.Real, whose typeshed stub lacks the comparisons
    if not (real >= 0 and math.isfinite(real)):
        raise ValueError(f"{name} must be None, 0 or a finite float > 0, got {temp!r}")
    return float(real) if real > 0 else None


def broadcast_param(
    name: str, value: object, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, target: str
) -> Tensor:
    """``value`` (a real number, or a floating-point tensor broadcastable to ``shape``) as a tensor of
    ``shape`` with ``dtype`` and ``device`` (a tensor is expanded, not copied); ``target`` names the
    shape in the message of a tensor that does not broadcast."""
    if isinstance(value, Tensor):
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a float or a floating-point tensor, got dtype {value.dtype}")
        try:
            return value.to(dtype=dtype, device=device).expand(shape)
        except RuntimeError as err:
            raise ValueError(f"{name} of shape {tuple(value.shape)} does not broadcast to {target}") from err
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a float or a tensor, got {type(value).__name__}")
    return torch.full(shape, float(value), dtype=dtype, device=device)


def check_mean_std(
    mu: object, sigma: object, names: tuple[str, str] = ("mu", "sigma")
) -> tuple[Tensor, Tensor]:
    """The initial Gaussian: ``mu (*B, D)`` finite; ``sigma`` (a float or a tensor broadcastable
    to ``mu``, moved to its dtype and device) finite and ``>= 0``. Returns ``(mu, sigma)``
    with ``sigma`` expanded to ``mu``'s shape."""
    n_mu, n_sigma = names
    mu = check_tensor(n_mu, mu, min_dim=1, what="(*B, D)")
    if not isinstance(sigma, Tensor) and isinstance(sigma, Real) and not isinstance(sigma, bool):
        if not (math.isfinite(float(sigma)) and float(sigma) >= 0):
            raise ValueError(f"{n_sigma} must be a finite float >= 0, got {sigma!r}")
    sigma = broadcast_param(n_sigma, sigma, tuple(mu.shape), mu.dtype, mu.device, f"{n_mu} {tuple(mu.shape)}")
    check_finite(n_mu, mu)
    check_finite(n_sigma, sigma, nonneg=True)
    return mu, sigma


def check_values(fX: object, X: Tensor, name: str = "fX", *, returned_by: str | None = None) -> Tensor:
    """Costs ``fX (*B, N)`` of samples ``X (*B, N, D)``: a real tensor on ``X``'s device, cast
    to ``X``'s dtype (integer or other-precision costs are accepted). ``returned_by`` names the
    objective that computed them (then the message says "f must return ...")."""
    want = tuple(X.shape[:-1])
    what = f"{returned_by} must return" if returned_by else f"{name} must be"
    if not isinstance(fX, Tensor):
        raise TypeError(f"{what} a tensor of shape (*B, n_sample) = {want}, got {type(fX).__name__}")
    if fX.is_complex() or fX.dtype == torch.bool:
        raise TypeError(f"{what} real values, got dtype {fX.dtype}")
    if fX.device != X.device:
        raise ValueError(f"{what} values on the samples' device {X.device}, got {fX.device}")
    if tuple(fX.shape) != want:
        hint = " (transposed?)" if fX.dim() == 2 and tuple(fX.shape) == want[::-1] else ""
        raise ValueError(f"{what} values of shape (*B, n_sample) = {want}, got {tuple(fX.shape)}{hint}")
    return fX if fX.dtype == X.dtype else fX.to(X.dtype)


def check_noise(noise: object, shape: tuple[int, ...], like: Tensor, what: str) -> Tensor:
    """Standard normal draws of exactly ``shape``, on ``like``'s device and dtype."""
    noise = check_tensor("noise", noise, what=what)
    if tuple(noise.shape) != tuple(shape):
        raise ValueError(f"noise must have shape {what} = {tuple(shape)}, got {tuple(noise.shape)}")
    if noise.device != like.device:
        raise ValueError(f"noise must be on {like.device}, got {noise.device}")
    return noise if noise.dtype == like.dtype else noise.to(like.dtype)


def check_generator(generator: object, like: Tensor) -> None:
    """``None`` or a ``torch.Generator`` of ``like``'s device type."""
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if generator.device.type != like.device.type:
        raise ValueError(f"generator must be on the iterates' device {like.device}, got {generator.device}")


def check_box_defaults(
    lower: object, upper: object, init_mean: object, init_std: object, prefix: str = ""
) -> None:
    """Refuse to derive an initial mean/std from a box with an infinite side.

    The planner's defaults are the middle (``init_mean``) and a fraction of the width
    (``init_std``) of the box ``[lower, upper]``; with an infinite bound both are infinite, so a
    plan would be refused for an argument the user never gave. Name what to pass instead.
    """
    if lower is None or upper is None or (init_mean is not None and init_std is not None):
        return
    lo, hi = _readable(lower), _readable(upper)
    if (lo is not None and not bool(torch.isfinite(lo).all())) or (
        hi is not None and not bool(torch.isfinite(hi).all())
    ):
        missing = " and ".join(n for n, v in (("init_mean", init_mean), ("init_std", init_std)) if v is None)
        raise ValueError(
            f"{prefix}lower/{prefix}upper have an infinite entry, so the default {missing} (middle and width "
            f"of the box) would be infinite: pass {missing}, or finite bounds"
        )
