"""CEM and DCEM (Alg. 1) as a configuration, a functional state and a step.

The loop of the cross-entropy method is split the way ask/tell optimisers are:

* :class:`CEMConfig` -- validated once, immutable: sample and elite counts, temperature
  (``None`` for hard CEM), bounds, normalisation, convergence threshold, sync policy;
* :class:`CEMState` -- a NamedTuple of tensors: the Gaussian (``mu``, ``sigma``), per-problem
  ``done`` (converged) and ``failed`` (an iteration had no valid sample) flags, and the best
  sample seen with its value;
* :func:`ask` draws reparameterised samples, :func:`tell` refits the Gaussian from their
  values, :func:`step` does both with an objective, :func:`solve` runs ``n_iter`` steps.

States are never modified in place: every function returns a new state, and gradients flow
from the new ``mu``/``sigma`` to everything the objective and the old state depend on.
Problems may carry any leading batch shape ``(*B, D)``; values are ``(*B, N)``.

Example:
    >>> import torch
    >>> from dcem.optim import CEMConfig, init_state, ask, tell
    >>> cfg = CEMConfig(n_sample=100, n_elite=10, temp=None)
    >>> state = init_state(torch.zeros(3, 2), torch.ones(3, 2))
    >>> g = torch.Generator().manual_seed(0)
    >>> for _ in range(10):
    ...     X = ask(state, cfg, generator=g)                      # (3, 100, 2)
    ...     state = tell(state, cfg, X, (X - 1).pow(2).sum(-1))   # evaluate anywhere
    >>> bool(torch.allclose(state.mu, torch.ones(3, 2), atol=0.05))
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, cast

import torch
from torch import Tensor

from dcem._checks import check_bool, check_int, check_real
from dcem.optim.validate import (
    check_bound,
    check_bound_pair,
    check_generator,
    check_mean_std,
    check_noise,
    check_temp,
    check_tensor,
    check_values,
)
from dcem.optim.weights import (
    best_sample,
    gather_rows,
    hard_elites_checked,
    settle_refit,
    soft_elite_weights,
    weighted_moments,
)
from dcem.sync import check_sync, resolve_sync

__all__ = ["CEMConfig", "CEMState", "init_state", "ask", "tell", "step", "solve", "check_bound"]

Bound = float | Tensor | None


@dataclass(frozen=True)
class CEMConfig:
    """Hyper-parameters of one (D)CEM solve, checked on construction.

    Args:
        n_sample: samples per iteration ``N >= 1``.
        n_elite: elites ``k`` with ``1 <= k <= N``.
        n_iter: iterations ``T >= 1`` run by :func:`solve`.
        temp: soft top-k temperature ``tau > 0`` (DCEM; a float or a tensor of the batch
            shape), or ``None``/``0`` for hard CEM.
        lb, ub: optional box bounds (floats or tensors broadcastable to ``(*B, D)``);
            samples are clamped into them.
        normalize: standardise each problem's values before the soft top-k (scale-free temp).
        iter_eps: a problem stops updating once its mean moves less than this (2-norm) in
            one iteration; ``None``/``0`` never stops.
        track_best: keep the best sample seen in the state (``best_x``, ``best_f``).
        sync: ``"auto"``, ``"host"`` or ``"free"`` (:mod:`dcem.sync`).
    """

    n_sample: int = 20
    n_elite: int = 10
    n_iter: int = 10
    temp: float | Tensor | None = 1.0
    lb: Bound = None
    ub: Bound = None
    normalize: bool = True
    iter_eps: float | None = 1e-4
    track_best: bool = False
    sync: str = "auto"

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "n_sample", check_int("n_sample", self.n_sample, 1))
        set_(self, "n_elite", check_int("n_elite", self.n_elite, 1, self.n_sample))
        set_(self, "n_iter", check_int("n_iter", self.n_iter, 1))
        set_(self, "temp", check_temp(self.temp))
        check_bound_pair(self.lb, self.ub)
        check_bool("normalize", self.normalize)
        check_bool("track_best", self.track_best)
        eps = check_real("iter_eps", self.iter_eps, 0.0, none_ok=True)
        set_(self, "iter_eps", eps or None)
        check_sync(self.sync)

    @property
    def hard(self) -> bool:
        """Whether this is vanilla CEM (hard top-k)."""
        return self.temp is None


def _check_cfg(cfg: object) -> CEMConfig:
    if not isinstance(cfg, CEMConfig):
        raise TypeError(f"cfg must be a dcem.optim.CEMConfig, got {type(cfg).__name__}")
    return cfg


class CEMState(NamedTuple):
    """State of a batch of (D)CEM problems; shapes for a batch shape ``*B`` and dimension ``D``.

    Attributes:
        mu: mean of the sampling Gaussian, ``(*B, D)``.
        sigma: its per-coordinate standard deviation, ``(*B, D)``.
        done: ``(*B,)`` bool, the problem has converged (``iter_eps``) and no longer moves.
        failed: ``(*B,)`` bool, some iteration had no sample with a valid value and the
            problem kept its distribution for that iteration. Only where values cannot be
            read for free (the sync-free path on accelerators or under ``torch.compile``); on
            CPU both paths raise ``ValueError`` instead (:mod:`dcem.optim.validate`).
        best_x: best sample seen, ``(*B, D)`` (``mu`` at the start).
        best_f: its value, ``(*B,)`` (``+inf`` at the start; never NaN).
    """

    mu: Tensor
    sigma: Tensor
    done: Tensor
    failed: Tensor
    best_x: Tensor
    best_f: Tensor


def init_state(mu: Tensor, sigma: Tensor | float = 1.0) -> CEMState:
    """A fresh state from the initial Gaussian: ``mu (*B, D)`` finite, ``sigma`` (a float or a
    tensor broadcastable to ``mu``) finite and ``>= 0`` (:func:`dcem.optim.validate.check_mean_std`)."""
    return _fresh_state(*check_mean_std(mu, sigma))


def _fresh_state(mu: Tensor, sigma: Tensor) -> CEMState:
    """:func:`init_state` for a checked ``mu`` and ``sigma`` of the same shape."""
    batch = mu.shape[:-1]
    flags = torch.zeros(batch, dtype=torch.bool, device=mu.device)
    best_f = torch.full(batch, math.inf, dtype=mu.dtype, device=mu.device)
    return CEMState(mu, sigma, flags, flags, mu, best_f)


def _check_state(state: object, cfg: object) -> CEMConfig:
    """The structure of a state passed to :func:`ask`/:func:`tell` (its values were checked by
    :func:`init_state`) and the type of ``cfg``."""
    if not isinstance(state, CEMState):
        raise TypeError(f"state must be a dcem.optim.CEMState (see init_state), got {type(state).__name__}")
    mu = check_tensor("state.mu", state.mu, min_dim=1, what="(*B, D)")
    for name, t, shape in (("sigma", state.sigma, mu.shape), ("done", state.done, mu.shape[:-1])):
        if not isinstance(t, Tensor) or t.shape != shape or t.device != mu.device:
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(
                f"state.{name} must be a tensor of shape {tuple(shape)} on {mu.device}, got {got}"
            )
    cfg = _check_cfg(cfg)
    batch = mu.shape[:-1]
    for name, v, shape in (("temp", cfg.temp, batch), ("lb", cfg.lb, mu.shape), ("ub", cfg.ub, mu.shape)):
        if isinstance(v, Tensor) and not _broadcasts_to(v, shape):
            raise ValueError(f"{name} tensor of shape {tuple(v.shape)} does not broadcast to {tuple(shape)}")
    return cfg


def _broadcasts_to(t: Tensor, shape: torch.Size) -> bool:
    try:
        return torch.broadcast_shapes(t.shape, shape) == shape
    except RuntimeError:
        return False


def _bound(b: Bound, mu: Tensor) -> Tensor | None:
    if b is None:
        return None
    if isinstance(b, Tensor):
        try:
            return b.to(mu).expand(mu.shape).unsqueeze(-2)
        except RuntimeError as err:
            raise ValueError(
                f"bounds of shape {tuple(b.shape)} do not broadcast to (*B, D) = {tuple(mu.shape)}"
            ) from err
    return torch.full_like(mu, b).unsqueeze(-2)


def clamp_to_bounds(X: Tensor, cfg: CEMConfig, mu: Tensor) -> Tensor:
    """``X (*B, M, D)`` clamped into the bounds of ``cfg`` (given for ``mu (*B, D)``)."""
    if cfg.lb is None and cfg.ub is None:
        return X
    return torch.clamp(X, _bound(cfg.lb, mu), _bound(cfg.ub, mu))


def ask(
    state: CEMState, cfg: CEMConfig, *, generator: torch.Generator | None = None, noise: Tensor | None = None
) -> Tensor:
    """Reparameterised samples ``mu + sigma * eps`` clamped into the bounds, ``(*B, N, D)``.

    ``noise`` (standard normal, ``(*B, N, D)``) replaces the draw from ``generator``: pass it
    to share noise between calls or to draw it outside a compiled region.
    """
    cfg = _check_state(state, cfg)
    mu = state.mu
    if noise is not None:
        noise = check_noise(noise, (*mu.shape[:-1], cfg.n_sample, mu.shape[-1]), mu, "(*B, n_sample, D)")
    else:
        check_generator(generator, mu)
    return _ask(state, cfg, generator, noise)


def _ask(state: CEMState, cfg: CEMConfig, generator: torch.Generator | None, noise: Tensor | None) -> Tensor:
    mu, sigma = state.mu, state.sigma
    if noise is None:
        shape = (*mu.shape[:-1], cfg.n_sample, mu.shape[-1])
        noise = torch.randn(shape, generator=generator, device=mu.device, dtype=mu.dtype)
    X = torch.addcmul(mu.unsqueeze(-2), sigma.unsqueeze(-2), noise)
    return clamp_to_bounds(X, cfg, mu)


class _Update(NamedTuple):
    state: CEMState
    soft: Tensor | None  # DCEM: (B, N) weights of the samples
    elites: tuple[Tensor, Tensor] | None  # CEM: (B, k) indices of the elites and their 0/1 weights
    n_sample: int

    def weights(self) -> Tensor:
        """Weights ``(B, N)`` of every sample (hard CEM: 1 for valid elites, else 0)."""
        if self.soft is not None:
            return self.soft
        idx, w = cast(tuple[Tensor, Tensor], self.elites)  # set whenever soft is None
        return torch.zeros(idx.shape[0], self.n_sample, dtype=w.dtype, device=w.device).scatter_(1, idx, w)


def tell(state: CEMState, cfg: CEMConfig, X: Tensor, fX: Tensor) -> CEMState:
    """Refit the Gaussian of ``state`` from samples ``X (*B, M, D)`` and values ``fX (*B, M)``
    (``M >= n_elite``; integer or other-precision values are cast to ``X``'s dtype).

    Hard CEM (``temp=None``) averages the ``n_elite`` best samples, DCEM weights every sample
    by the soft top-k of the (normalised) values (Prop. 3); NaN and ``+inf`` values get
    weight 0, ``-inf`` is the best possible value. A problem with no valid value raises
    ``ValueError`` where values can be read for free (CPU, either path); elsewhere it keeps
    its Gaussian and is marked ``failed`` (:mod:`dcem.optim.validate`).
    """
    cfg = _check_state(state, cfg)
    mu = state.mu
    X = check_tensor("X", X, what="(*B, M, D)")
    if X.shape[:-2] != mu.shape[:-1] or X.dim() != mu.dim() + 1 or X.shape[-1] != mu.shape[-1]:
        raise ValueError(f"X must have shape (*B, M, D) for mu {tuple(mu.shape)}, got {tuple(X.shape)}")
    if X.shape[-2] < cfg.n_elite:
        raise ValueError(f"X must hold M >= n_elite = {cfg.n_elite} samples per problem, got {X.shape[-2]}")
    if X.device != mu.device or X.dtype != mu.dtype:
        raise ValueError(f"X must be {mu.dtype} on {mu.device} like state.mu, got {X.dtype} on {X.device}")
    fX = check_values(fX, X)
    return _tell(state, cfg, X, fX, resolve_sync(cfg.sync, mu)).state


def _flat(state: CEMState, B: int) -> CEMState:
    D = state.mu.shape[-1]
    return CEMState(*(t.reshape(B, D) if t.dim() == state.mu.dim() else t.reshape(B) for t in state))


def _tell(state: CEMState, cfg: CEMConfig, X: Tensor, fX: Tensor, host: bool, it: int = 0) -> _Update:
    """:func:`tell` on any batch shape: flattened to one batch dimension around :func:`_tell2d`."""
    batch, (N, D) = state.mu.shape[:-1], X.shape[-2:]
    B = math.prod(batch)
    temp = cfg.temp
    if isinstance(temp, Tensor):  # one temperature per problem, (B,)
        temp = temp.to(fX).expand(batch).reshape(B)
    if state.mu.dim() == 2:
        return _tell2d(state, cfg, temp, X, fX, host, it)
    upd = _tell2d(_flat(state, B), cfg, temp, X.reshape(B, N, D), fX.reshape(B, N), host, it)
    new = CEMState(*(t.reshape(*batch, D) if t.dim() == 2 else t.reshape(batch) for t in upd.state))
    return _Update(new, upd.soft, upd.elites, N)


def _tell2d(
    state: CEMState, cfg: CEMConfig, temp: float | Tensor | None, X: Tensor, fX: Tensor, host: bool, it: int
) -> _Update:
    """The refit for ``state`` of shape ``(B, D)``, ``X (B, N, D)``, ``fX (B, N)``; ``temp`` is
    ``cfg.temp`` with a tensor flattened to ``(B,)``.

    Every operation acts on each row alone and no branch depends on other rows, so a problem's
    update is the same bit for bit whatever else is in the batch (given the same samples).
    """
    mu, sigma, done, failed, best_x, best_f = state
    weights, elites = None, None
    if cfg.hard:
        idx, w_e, all_valid = hard_elites_checked(fX, cfg.n_elite, host)
        elites = idx, w_e
        if all_valid:  # every weight 1: the total is exactly n_elite (as w_e.sum), no row to check
            total = torch.full((X.shape[0], 1), float(cfg.n_elite), dtype=w_e.dtype, device=w_e.device)
            new_mu, new_sigma = weighted_moments(w_e, gather_rows(X, idx), total)
            wsum: Tensor | None = None
        else:
            wsum = w_e.sum(-1, keepdim=True)
            new_mu, new_sigma = weighted_moments(w_e, gather_rows(X, idx), wsum)
    else:
        all_valid = host and bool(torch.isfinite(fX).all())  # the same bits either way (faster)
        tau = cast("float | Tensor", temp)  # not None: cfg.hard is False
        weights = soft_elite_weights(fX, cfg.n_elite, tau, cfg.normalize, all_valid=all_valid, sync=cfg.sync)
        wsum = weights.sum(-1, keepdim=True)
        new_mu, new_sigma = weighted_moments(weights, X, wsum)
    new_mu, new_sigma, new_done, failed = settle_refit(
        (mu, sigma), (new_mu, new_sigma), wsum, done, failed, host=host, iter_eps=cfg.iter_eps, it=it
    )
    if cfg.track_best:  # a converged problem is frozen: its best sample too
        xb, fb = best_sample(X, fX)
        better = (fb < best_f) & ~done
        best_x = torch.where(better.unsqueeze(-1), xb, best_x)
        best_f = torch.where(better, fb, best_f)
    return _Update(CEMState(new_mu, new_sigma, new_done, failed, best_x, best_f), weights, elites, X.shape[1])


def _evaluate(f: Callable[[Tensor], Tensor], X: Tensor) -> Tensor:
    return check_values(f(X), X, returned_by="f")


def step(
    f: Callable[[Tensor], Tensor],
    state: CEMState,
    cfg: CEMConfig,
    *,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
) -> CEMState:
    """One iteration: :func:`ask`, evaluate ``f`` (``(*B, N, D) -> (*B, N)``), :func:`tell`."""
    X = ask(state, cfg, generator=generator, noise=noise)
    return tell(state, cfg, X, _evaluate(f, X))


def solve(
    f: Callable[[Tensor], Tensor],
    state: CEMState,
    cfg: CEMConfig,
    *,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
) -> CEMState:
    """``cfg.n_iter`` steps from ``state``; returns the final state.

    On the host-checked path the loop stops once every problem is ``done`` (a done problem is
    frozen, so this changes no result). ``noise`` of shape ``(n_iter, *B, N, D)`` gives every
    iteration's standard normal draws (for compiled or captured solves, where a
    ``torch.Generator`` cannot be used, or to give each problem its own draws: a problem's
    result depends only on its own rows of ``noise``, bit for bit).
    """
    if not callable(f):
        raise TypeError(f"f must be callable, got {type(f).__name__}")
    return _loop(lambda X: _evaluate(f, X), state, cfg, generator=generator, noise=noise)


def _loop(
    evaluate: Callable[[Tensor], Tensor],
    state: CEMState,
    cfg: CEMConfig,
    *,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    project: Callable[[Tensor], Tensor] | None = None,
    on_iter: Callable[[int, Tensor, Tensor, _Update], None] | None = None,
) -> CEMState:
    """The iterations of :func:`solve` (and of :func:`dcem.dcem`, which adds ``project``, applied
    to the samples before ``evaluate``, and ``on_iter(i, X, fX, update)`` for its callback)."""
    cfg = _check_state(state, cfg)
    mu = state.mu
    if noise is not None:
        noise = check_noise(noise, (cfg.n_iter, *mu.shape[:-1], cfg.n_sample, mu.shape[-1]), mu,
                            "(n_iter, *B, n_sample, D)")  # fmt: skip
    else:
        check_generator(generator, mu)
    host = resolve_sync(cfg.sync, mu)
    for i in range(cfg.n_iter):
        X = _ask(state, cfg, generator, None if noise is None else noise[i])
        if project is not None:
            X = project(X)
        fX = evaluate(X)
        upd = _tell(state, cfg, X, fX, host, i)
        state = upd.state
        if on_iter is not None:
            on_iter(i, X, fX, upd)
        if host and cfg.iter_eps and bool(state.done.all()):
            break
    return state
