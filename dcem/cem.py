"""The cross-entropy method (CEM) and its differentiable variant (DCEM), Alg. 1 of the paper.

Both share one loop: sample ``N`` points from an isotropic Gaussian per batch element with the
reparameterisation trick, evaluate the objective, weight the samples by a (soft or hard) top-k
of the values and refit the Gaussian by weighted maximum likelihood (Props. 1 and 3). With
``temp=None`` (or 0) the weights are the hard top-k indicator and this is vanilla CEM; with a
temperature ``temp > 0`` they are the LML projection of ``-values / temp`` and the returned
mean is differentiable with respect to everything ``f`` closes over.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor

from dcem._checks import check_int
from dcem.optim.cem import CEMConfig, _fresh_state, _loop, _Update
from dcem.optim.validate import broadcast_param, check_generator, check_mean_std, check_values

__all__ = ["dcem", "IterCallback"]

Bound = float | Tensor | None
IterCallback = Callable[[int, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor], None]
_T = TypeVar("_T")


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
    sync: str = "auto",
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
        sync: ``"auto"`` (default), ``"host"`` or ``"free"`` (:mod:`dcem.sync`). On the
            host-checked path (default on CPU) the loop stops once every problem has
            converged (a converged problem is frozen, so this changes no result); on the
            sync-free path (default on accelerators and under ``torch.compile``) all
            ``n_iter`` iterations run with no host read. Both paths accept the same input:
            a problem whose samples all have NaN/``+inf`` values raises ``ValueError``
            wherever values can be read for free (CPU); elsewhere it keeps its distribution
            for that iteration (:func:`dcem.optim.solve` shows its ``failed`` flag).

    A problem's result depends only on its own arguments and draws, bit for bit: the other
    problems of the batch never change it (given the same samples).

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
    nx, n_batch = check_int("nx", nx, 1), check_int("n_batch", n_batch, 1)
    dtype, dev = _dtype_device([init_mu, init_sigma, lb, ub, temp], dtype, device)
    shape = (n_batch, nx)
    mu = _as_param("init_mu", init_mu, 0.0, shape, dtype, dev)
    mu, sigma = check_mean_std(mu, _as_param("init_sigma", init_sigma, 1.0, shape, dtype, dev), _INIT)
    check_generator(generator, mu)
    temp = _batch_temp(temp, n_batch, dtype, dev)
    cfg = _config(n_sample, n_elite, n_iter, temp, lb, ub, normalize, iter_eps, return_best, sync)
    state = _loop(
        _evaluator(f, n_batch, cfg.n_sample), _fresh_state(mu, sigma), cfg, generator=generator,
        project=proj_iterate_cb, on_iter=None if iter_cb is None else _on_iter(iter_cb),
    )  # fmt: skip
    out = state.best_x if return_best else state.mu
    if lb is None and ub is None:
        return out
    return torch.clamp(out, *(None if b is None else torch.as_tensor(b).to(out) for b in (lb, ub)))


def _evaluator(f: Callable[[Tensor], Tensor], n_batch: int, n_sample: int) -> Callable[[Tensor], Tensor]:
    """``f`` with its values checked; ``(n_batch * n_sample,)`` and ``(n_batch, n_sample, 1)``
    are accepted as the reference does."""

    other = ((n_batch * n_sample,), (n_batch, n_sample, 1))

    def evaluate(X: Tensor) -> Tensor:
        fX = f(X)
        if isinstance(fX, Tensor) and fX.dim() != 2 and fX.shape in other:
            fX = fX.reshape(n_batch, n_sample)
        return check_values(fX, X, returned_by="f")

    return evaluate


def _on_iter(iter_cb: IterCallback) -> Callable[[int, Tensor, Tensor, _Update], None]:
    """The reference's ``iter_cb(i, X, fX, I, X_I, mu, sigma)`` as a hook of the loop."""

    def on_iter(i: int, X: Tensor, fX: Tensor, upd: _Update) -> None:
        w = upd.weights().unsqueeze(-1)
        iter_cb(i, X, fX, w, w * X, upd.state.mu, upd.state.sigma)

    return on_iter


def _batch_temp(temp: _T, n_batch: int, dtype: torch.dtype, dev: torch.device) -> _T | Tensor:
    """A temperature tensor as ``(n_batch,)`` in the iterates' dtype and device (others unchanged)."""
    if not isinstance(temp, Tensor):
        return temp
    t = temp.to(device=dev, dtype=dtype) if temp.is_floating_point() else temp
    t = t.expand(n_batch) if t.dim() == 0 else t
    if t.shape != (n_batch,):
        raise ValueError(f"temp tensor must have shape (n_batch,) = ({n_batch},), got {tuple(t.shape)}")
    return t


_INIT = ("init_mu", "init_sigma")


def _dtype_device(
    tensors: list[object], dtype: torch.dtype | None, device: str | torch.device | None
) -> tuple[torch.dtype, torch.device]:
    """The iterates' dtype (given, else that of the first floating tensor argument, else the
    default dtype) and device (given, else that of the first tensor argument, else CPU)."""
    found = [t for t in tensors if isinstance(t, Tensor)]
    floating = [t.dtype for t in found if t.is_floating_point()]
    dtype = dtype or (floating[0] if floating else torch.get_default_dtype())
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype}")
    dev = torch.device(device) if device is not None else (found[0].device if found else torch.device("cpu"))
    return dtype, dev


def _as_param(
    name: str, value: Bound, default: float, shape: tuple[int, int], dtype: torch.dtype, device: torch.device
) -> Tensor:
    if value is None:
        value = default
    return broadcast_param(name, value, shape, dtype, device, f"(n_batch, nx) = {shape}")


def _config(
    n_sample: int, n_elite: int, n_iter: int, temp: float | Tensor | None, lb: Bound, ub: Bound,
    normalize: bool, iter_eps: float | None, track_best: bool, sync: str,
) -> CEMConfig:
    """``CEMConfig(...)``, memoised for hashable (tensor-free) arguments: a config is immutable,
    so repeated calls of :func:`dcem` with the same keywords validate them once."""
    args = (n_sample, n_elite, n_iter, temp, lb, ub, normalize, iter_eps, track_best, sync)
    if torch.compiler.is_compiling() or any(isinstance(a, Tensor) for a in args):
        return _new_config(*args)
    try:
        return _cached_config(*args)
    except TypeError:  # unhashable argument: let CEMConfig name it
        return _new_config(*args)


def _new_config(
    n_sample: int, n_elite: int, n_iter: int, temp: float | Tensor | None, lb: Bound, ub: Bound,
    normalize: bool, iter_eps: float | None, track_best: bool, sync: str,
) -> CEMConfig:
    return CEMConfig(
        n_sample, n_elite, n_iter, temp, lb, ub, normalize, iter_eps, track_best=track_best, sync=sync
    )


_cached_config = functools.lru_cache(maxsize=64, typed=True)(_new_config)  # typed: 1, 1.0, True differ
