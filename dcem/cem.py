"""The cross-entropy method (CEM) and its differentiable variant (DCEM), Alg. 1 of the paper.

Both share one loop: sample ``N`` points from an isotropic Gaussian per batch element with the
reparameterisation trick, evaluate the objective, weight the samples by a (soft or hard) top-k
of the values and refit the Gaussian by weighted maximum likelihood (Props. 1 and 3). With
``temp=None`` (or 0) the weights are the hard top-k indicator and this is vanilla CEM; with a
temperature ``temp > 0`` they are the LML projection of ``-values / temp`` and the returned
mean is differentiable with respect to everything ``f`` closes over.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from numbers import Integral, Real

import numpy as np
import torch
from torch import Tensor

from dcem.soft_topk import lml

__all__ = ["dcem", "IterCallback"]

Bound = float | Tensor | None
IterCallback = Callable[[int, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor], None]


def _check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _infer_dtype_device(
    tensors: list[object], device: str | torch.device | None
) -> tuple[torch.dtype, torch.device]:
    dtype = None
    dev = None
    for t in tensors:
        if isinstance(t, Tensor):
            if dtype is None and t.is_floating_point():
                dtype = t.dtype
            if dev is None:
                dev = t.device
    if device is not None:
        dev = torch.device(device)
    return dtype or torch.get_default_dtype(), dev or torch.device("cpu")


def _as_param(
    name: str, value: Bound, default: float, shape: tuple[int, int], dtype: torch.dtype, device: torch.device
) -> Tensor:
    if value is None:
        value = default
    if isinstance(value, Tensor):
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
        try:
            return value.to(device=device, dtype=dtype).expand(shape)
        except RuntimeError as err:
            raise ValueError(
                f"{name} of shape {tuple(value.shape)} does not broadcast to (n_batch, nx) = {shape}"
            ) from err
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a float or a tensor, got {type(value).__name__}")
    return torch.full(shape, float(value), dtype=dtype, device=device)


def _as_bound(
    name: str, value: Bound, shape: tuple[int, int], dtype: torch.dtype, device: torch.device
) -> Tensor | None:
    if value is None:
        return None
    t = _as_param(name, value, 0.0, shape, dtype, device)
    if t.device.type == "cpu" and bool(torch.isnan(t).any()):
        raise ValueError(f"{name} must not contain NaN")
    return t


def _values(fX: Tensor, n_batch: int, n_sample: int, dtype: torch.dtype) -> Tensor:
    """Check the shape of ``f``'s output and bring it to ``(n_batch, n_sample)`` in ``dtype``."""
    if not isinstance(fX, Tensor):
        raise TypeError(f"f must return a tensor of shape (n_batch, n_sample), got {type(fX).__name__}")
    if fX.is_complex() or fX.dtype == torch.bool:
        raise TypeError(f"f must return real values, got dtype {fX.dtype}")
    if fX.dtype != dtype:
        fX = fX.to(dtype)  # integer costs, or another precision than the iterates
    if fX.shape == (n_batch, n_sample):
        return fX
    if fX.shape in ((n_batch * n_sample,), (n_batch, n_sample, 1)):
        return fX.reshape(n_batch, n_sample)
    raise ValueError(
        f"f must return values of shape (n_batch, n_sample) = ({n_batch}, {n_sample}), "
        f"got {tuple(fX.shape)}"
    )


def _standardize(v: Tensor, valid: Tensor | None = None) -> Tensor:
    """Per-row standardisation (unbiased std plus 1e-6, as the reference) over the entries
    where ``valid`` holds (all by default; the others become 0).

    The deviations are scaled by their largest magnitude before squaring, so costs up to the
    largest finite value of the dtype normalise without overflow.
    """
    if valid is None:
        count = torch.full_like(v[..., :1], v.shape[-1])
        dev = v - v.mean(-1, keepdim=True)
    else:
        zero = torch.zeros_like(v)
        count = valid.sum(-1, keepdim=True).to(v.dtype)
        mean = torch.where(valid, v, zero).sum(-1, keepdim=True) / count.clamp_min(1)
        dev = torch.where(valid, v - mean, zero)
    m = dev.abs().amax(-1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny).detach()
    var = (dev / m).pow(2).sum(-1, keepdim=True) / (count - 1).clamp_min(1)
    return dev / (m * var.sqrt() + 1e-6)


def _invalid(fX: Tensor) -> Tensor:
    """NaN and +inf values are never elite (``-inf`` is the best possible value)."""
    return torch.isnan(fX) | (fX == math.inf)


def _hard_elites(fX: Tensor, n_elite: int, on_cpu: bool) -> tuple[Tensor, Tensor]:
    """Indices ``(B, k)`` of the ``k`` smallest values and their weights (0 for invalid ones).

    On CPU NumPy's introselect is several times faster than ``torch.topk`` for short rows;
    both order NaN last.
    """
    v = fX.detach()
    if on_cpu:
        part = np.argpartition(v.numpy(), n_elite - 1, axis=-1)[:, :n_elite]
        idx = torch.from_numpy(np.ascontiguousarray(part))
    else:
        idx = torch.topk(v.nan_to_num(nan=math.inf), n_elite, dim=-1, largest=False, sorted=False).indices
    w = (~_invalid(v.gather(1, idx))).to(fX.dtype)
    return idx, w


def _soft_weights(
    fX: Tensor, n_elite: int, temp: float | Tensor, normalize: bool, all_valid: bool
) -> Tensor:
    """Soft top-k weights ``(B, N)`` summing to ``n_elite`` per row (Prop. 3, eq. 5).

    Invalid values (NaN, +inf) get weight 0; a row with at most ``n_elite`` valid values
    weights each of them by one. ``all_valid`` skips the masking when the caller knows
    every value is finite.
    """
    tscale = temp if isinstance(temp, float) else temp.unsqueeze(-1)
    n = fX.shape[-1]
    if all_valid:  # (a CPU-only path: reading var on the host is free)
        if normalize and n > 1:
            var, mean = torch.var_mean(fX, -1, keepdim=True)
            if bool(torch.isfinite(var).all()):
                return lml((mean - fX) / ((var.sqrt() + 1e-6) * tscale), n_elite, 1.0)
            fX = _standardize(fX)  # squares overflowed: rescale before squaring
        return lml(fX / -tscale, n_elite, 1.0)
    valid = ~_invalid(fX)
    finite = torch.isfinite(fX)  # valid and not -inf
    n_valid = valid.sum(-1, keepdim=True)
    v = torch.where(finite, fX, torch.zeros_like(fX))
    if normalize:
        v = _standardize(v, finite)
    s = v / -tscale
    # invalid values sit far below every finite score, -inf costs (the best possible) far above
    inf = torch.full_like(s, math.inf)
    low = torch.where(finite, s, inf).amin(-1, keepdim=True).nan_to_num(posinf=0.0)
    high = torch.where(finite, s, -inf).amax(-1, keepdim=True).nan_to_num(neginf=0.0)
    s = torch.where(finite, s, torch.where(valid, high + 1e3, low - 1e3).detach())
    I = lml(s, n_elite, 1.0)
    I = torch.where(valid, I, torch.zeros_like(I))
    return torch.where(n_valid <= n_elite, valid.to(I.dtype), I)


def _moments(w: Tensor, X: Tensor, wsum: Tensor) -> tuple[Tensor, Tensor]:
    """Weighted mean and standard deviation over dim 1: ``w (B, M)``, ``X (B, M, nx)``."""
    tiny = torch.finfo(X.dtype).tiny
    wsum = wsum.clamp_min(tiny)
    w3 = w.unsqueeze(1)
    mu = torch.bmm(w3, X).squeeze(1) / wsum
    D = X - mu.unsqueeze(1)
    var = torch.bmm(w3, D * D).squeeze(1) / wsum
    return mu, var.clamp_min(tiny).sqrt()


def dcem(
    f: Callable[[Tensor], Tensor],
    nx: int,
    n_batch: int = 1,
    n_sample: int = 20,
    n_elite: int = 10,
    n_iter: int = 10,
    temp: float | Tensor | None = 1.0,
    lb: Bound = None,
    ub: Bound = None,
    init_mu: Bound = None,
    init_sigma: Bound = None,
    device: str | torch.device | None = None,
    iter_cb: IterCallback | None = None,
    proj_iterate_cb: Callable[[Tensor], Tensor] | None = None,
    lml_verbose: int = 0,
    lml_eps: float = 1e-3,
    normalize: bool = True,
    iter_eps: float | None = 1e-4,
    *,
    generator: torch.Generator | None = None,
    return_best: bool = False,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Minimise ``f`` with (differentiable) CEM over an isotropic Gaussian.

    Keyword names and call conventions follow the published reference implementation, so code
    written for it runs unchanged; see the README for the deliberate differences (``temp``
    divides the values, per-element convergence, tensor bounds, generator, best sample,
    robustness to NaN/inf costs).

    Args:
        f: objective; receives samples ``X`` of shape ``(n_batch, n_sample, nx)`` and returns
            values of shape ``(n_batch, n_sample)`` (``(n_batch * n_sample,)`` and
            ``(n_batch, n_sample, 1)`` are accepted too). Lower is better. NaN and +inf
            values are never elite.
        nx: dimension of the domain.
        n_batch: number of independent problems solved in parallel.
        n_sample: samples per iteration ``N``.
        n_elite: elites ``k`` with ``1 <= k <= N``.
        n_iter: iterations ``T``.
        temp: temperature ``tau`` of the soft top-k; ``None`` or ``0`` gives vanilla CEM with
            a hard top-k. A tensor of shape ``(n_batch,)`` gives one temperature per problem.
        lb, ub: optional box bounds, floats or tensors broadcastable to ``(n_batch, nx)``;
            samples and the result are clamped into them.
        init_mu, init_sigma: initial mean (default 0) and standard deviation (default 1),
            floats or tensors broadcastable to ``(n_batch, nx)``; tensors requiring grad get
            gradients through the reparameterised samples.
        device: device of the iterates (default: that of the tensor arguments, else CPU).
        iter_cb: called as ``iter_cb(i, X, fX, I, X_I, mu, sigma)`` after each iteration with
            ``I`` of shape ``(n_batch, n_sample, 1)`` and ``X_I = I * X``.
        proj_iterate_cb: optional map applied to the samples before ``f``.
        lml_verbose, lml_eps: accepted for compatibility and ignored (the soft top-k is
            solved to machine precision).
        normalize: standardise the values of each problem before the soft top-k so ``temp``
            is scale free.
        iter_eps: a problem stops updating once its mean moves less than this (2-norm) in
            one iteration; ``None`` or ``0`` runs all iterations.
        generator: ``torch.Generator`` for the samples; fixes the result bit for bit.
        return_best: return the best sample seen instead of the final mean.
        dtype: dtype of the iterates (default: that of the tensor arguments, else the
            default dtype).

    Returns:
        the final mean (or best sample), shape ``(n_batch, nx)``.

    Example:
        >>> import torch, dcem
        >>> target = torch.tensor([1.0, -2.0])
        >>> f = lambda X: (X - target).pow(2).sum(-1)
        >>> g = torch.Generator().manual_seed(0)
        >>> x = dcem.dcem(f, nx=2, n_sample=100, n_elite=10, n_iter=10, temp=None, generator=g)
        >>> bool(torch.allclose(x, target.expand(1, 2), atol=1e-2))
        True
    """
    del lml_verbose, lml_eps  # compatibility only
    if not callable(f):
        raise TypeError(f"f must be callable, got {type(f).__name__}")
    nx = _check_int("nx", nx, 1)
    n_batch = _check_int("n_batch", n_batch, 1)
    n_sample = _check_int("n_sample", n_sample, 1)
    n_iter = _check_int("n_iter", n_iter, 1)
    if isinstance(n_elite, bool) or not isinstance(n_elite, Integral) or not 1 <= n_elite <= n_sample:
        raise ValueError(
            f"n_elite must be an integer with 1 <= n_elite <= n_sample = {n_sample}, got {n_elite!r}"
        )
    n_elite = int(n_elite)
    if temp is not None and not isinstance(temp, Tensor):
        if isinstance(temp, bool) or not isinstance(temp, Real) or not (temp >= 0 and math.isfinite(temp)):
            raise ValueError(f"temp must be None, 0 or a finite float > 0, got {temp!r}")
        temp = float(temp) if temp > 0 else None
    if iter_eps is not None and (not isinstance(iter_eps, Real) or iter_eps < 0):
        raise ValueError(f"iter_eps must be None or a float >= 0, got {iter_eps!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")

    inferred_dtype, dev = _infer_dtype_device([init_mu, init_sigma, lb, ub, temp], device)
    dtype = dtype or inferred_dtype
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point dtype, got {dtype}")
    shape = (n_batch, nx)
    mu = _as_param("init_mu", init_mu, 0.0, shape, dtype, dev)
    sigma = _as_param("init_sigma", init_sigma, 1.0, shape, dtype, dev)
    if dev.type == "cpu" and not bool((sigma.detach() >= 0).all()):
        raise ValueError("init_sigma must be >= 0")
    lo = _as_bound("lb", lb, shape, dtype, dev)
    hi = _as_bound("ub", ub, shape, dtype, dev)
    if lo is not None and hi is not None and dev.type == "cpu" and not bool((lo < hi).all()):
        raise ValueError("lb must be < ub in every coordinate")
    if isinstance(temp, Tensor):
        temp = temp.to(device=dev, dtype=dtype)
        if temp.dim() == 0:
            temp = temp.expand(n_batch)
        if temp.shape != (n_batch,):
            raise ValueError(
                f"temp tensor must have shape (n_batch,) = ({n_batch},), got {tuple(temp.shape)}"
            )
        if temp.device.type == "cpu" and not bool((temp > 0).all()):
            raise ValueError("temp tensor must be > 0 (use temp=None for hard CEM)")

    on_cpu = dev.type == "cpu"
    rows = torch.arange(n_batch, device=dev).unsqueeze(-1) * n_sample  # (n_batch, 1) offsets
    check_iters = bool(iter_eps) and on_cpu
    done = torch.zeros(n_batch, 1, dtype=torch.bool, device=dev)
    all_invalid = torch.zeros((), dtype=torch.bool, device=dev)
    best_x: Tensor | None = None
    best_f: Tensor | None = None
    for i in range(n_iter):
        eps = torch.randn(n_batch, n_sample, nx, generator=generator, device=dev, dtype=dtype)
        X = torch.addcmul(mu.unsqueeze(1), sigma.unsqueeze(1), eps)
        if lo is not None or hi is not None:
            X = torch.clamp(
                X,
                None if lo is None else lo.unsqueeze(1),
                None if hi is None else hi.unsqueeze(1),
            )
        if proj_iterate_cb is not None:
            X = proj_iterate_cb(X)
        fX = _values(f(X), n_batch, n_sample, dtype)
        if temp is None:
            idx, w_e = _hard_elites(fX, n_elite, on_cpu)
            # row-offset indices into the flattened samples: index_select is much faster than
            # gather with an expanded index on CPU
            flat = (idx + rows).reshape(-1)
            X_e = X.reshape(n_batch * n_sample, nx).index_select(0, flat).view(n_batch, n_elite, nx)
            wsum = w_e.sum(-1, keepdim=True)
            new_mu, new_sigma = _moments(w_e, X_e, wsum)
            I = None
            all_valid = False
        else:
            all_valid = on_cpu and bool(torch.isfinite(fX).all())
            I = _soft_weights(fX, n_elite, temp, normalize, all_valid)
            wsum = I.sum(-1, keepdim=True)
            new_mu, new_sigma = _moments(I, X, wsum)
        if not all_valid:
            none_valid = (wsum == 0).any()
            if on_cpu:
                if bool(none_valid):
                    raise ValueError(
                        f"every sample of some batch element has a NaN or +inf value (iteration {i})"
                    )
            else:
                all_invalid = all_invalid | none_valid
        if return_best:
            if I is None:
                fb, Xb = torch.where(w_e > 0, fX.gather(1, idx), math.inf), X_e
            else:
                fb, Xb = torch.where(I > 0, fX, math.inf), X
            fmin, arg = fb.detach().min(-1)
            xb = Xb.gather(1, arg.view(n_batch, 1, 1).expand(n_batch, 1, nx)).squeeze(1)
            if best_x is None:
                best_x, best_f = xb, fmin
            else:
                better = (fmin < best_f).unsqueeze(-1)
                best_x = torch.where(better, xb, best_x)
                best_f = torch.minimum(fmin, best_f)
        if iter_eps:
            moved = (new_mu - mu).detach().norm(dim=-1, keepdim=True)
            mu = torch.where(done, mu, new_mu)
            # the reference stops before refitting sigma on the converging iteration
            sigma = torch.where(done | (moved < iter_eps), sigma, new_sigma)
            done = done | (moved < iter_eps)
        else:
            mu, sigma = new_mu, new_sigma
        if iter_cb is not None:
            if I is None:
                I = torch.zeros_like(fX).scatter(1, idx, w_e)
            w = I.unsqueeze(-1)
            iter_cb(i, X, fX, w, w * X, mu, sigma)
        if check_iters and bool(done.all()):
            break
    if not on_cpu and bool(all_invalid):
        raise ValueError("every sample of some batch element had a NaN or +inf value")
    out = best_x if return_best and best_x is not None else mu
    if lo is not None or hi is not None:
        out = torch.clamp(out, lo, hi)
    return out
