"""The planner's loop without autograd on the host-checked CPU path: the same plans, fewer operations.

A plan that needs no gradients (made under ``torch.no_grad``, or whose first objective values
require none) on CPU float32/float64 tensors and the host-checked path spends its time outside
the objective on dispatching many small operations, not on arithmetic. :class:`HostLoop` runs
the iterations of :meth:`dcem.planning.Planner.iterate` with fewer of them, each shortcut giving
the same bits (``tests/planning/test_hostloop.py`` compares the two loops bit for bit):

- the noise is drawn into the candidates' tensor and scaled there (the same draws, the same
  ``addcmul``), the current mean and kept elites written after it: no concatenation;
- the best candidate is tracked on the host (a NumPy view of the costs; the first lowest valid
  cost of a row, as :func:`dcem.optim.best_sample`), copied only when it improves;
- CEM/iCEM elites by NumPy's introselect as :func:`dcem.optim.hard_elites`; when they are all
  valid their weights are ones, so the moments reuse one weight tensor;
- DCEM/MPPI rows whose costs are all finite skip the masks of the general weights (every
  ``torch.where`` there selects the unmasked value);
- the coloured-noise spectrum is computed once per horizon and exponent (:mod:`dcem.planning.noise`).

Anything else (an invalid cost: the general refit, which also raises its errors) goes through
the functions of the general loop.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from dcem.optim import gather_rows, settle_refit
from dcem.optim.weights import _invalid_last, _tiny
from dcem.planning.config import PlannerConfig, Rule
from dcem.planning.noise import colored_noise
from dcem.planning.rules import Gaussian, refit
from dcem.soft_topk import lml

__all__ = ["HostLoop", "host_loop_ok"]

_FLOATS = (torch.float32, torch.float64)


def host_loop_ok(mu: Tensor, host: bool) -> bool:
    """Whether :class:`HostLoop` may run a plan on tensors like ``mu`` (CPU float32/float64, host path)."""
    return host and mu.device.type == "cpu" and mu.dtype in _FLOATS


def _scalar(b: Tensor | None) -> Tensor | float | None:
    """A bound broadcast from one value (strides 0: a float bound) as that value (a cheaper clamp,
    the same result), else the bound."""
    if b is None or any(b.stride()):
        return b
    return float(b.detach().numpy().flat[0])


def _standardize(v: Tensor, count: Tensor, dof: Tensor, tiny: float) -> Tensor:
    """:func:`dcem.optim.standardize` of ``v (B, M)`` without a mask, in place where it can be
    (``count``, ``dof``: ``M`` and ``max(M - 1, 1)`` as ``(B, 1)`` tensors, the divisors there)."""
    dev = v - v.sum(-1, keepdim=True).div_(count)
    m = dev.abs().amax(-1, keepdim=True).clamp_min_(tiny)
    t = dev / m
    var = t.mul_(t).sum(-1, keepdim=True).div_(dof)
    return dev.div_(var.clamp_min_(tiny).sqrt_().mul_(m).add_(1e-6))


def _moments(w3: Tensor, X: Tensor, wsum: Tensor, tiny: float) -> tuple[Tensor, Tensor]:
    """:func:`dcem.optim.weighted_moments` for ``w3 (B, 1, M)`` and ``wsum (B, 1, 1) >= tiny``,
    in place where it can be (the same operations on the same values)."""
    mu = torch.bmm(w3, X).div_(wsum)
    dev = X - mu
    var = torch.bmm(w3, dev.mul_(dev)).div_(wsum)
    return mu.squeeze(1), var.clamp_min_(tiny).sqrt_().squeeze(1)


def _kept_host(n: int, X: Tensor, fX: Tensor, a: np.ndarray) -> Tensor:
    """:func:`dcem.planning.rules._kept` (``n >= 1``), without the NaN replacement when there is none."""
    v = fX if fX.is_contiguous() and not np.isnan(a).any() else _invalid_last(fX)
    idx = torch.topk(v, n, dim=-1, largest=False, sorted=False).indices
    return gather_rows(X, idx)


def _mean_candidate(last: Tensor | tuple[Tensor, Tensor]) -> Tensor:
    """The last candidate (the mean) of ``X (B, M, D)`` with its cost of ``fX (B, M)``: ``(B, D + 1)``."""
    if not isinstance(last, tuple):
        return last
    X, fX = last
    return torch.cat((X.select(1, -1), fX.narrow(1, fX.shape[1] - 1, 1)), -1)


def _use_best(select: str, mean_f: np.ndarray, best_f: np.ndarray) -> np.ndarray:
    """Rows whose plan is the best candidate rather than the last mean one (``select``), from the
    costs on the host: the comparisons of :func:`dcem.planning.result.assemble`."""
    if select == "best":
        use = np.ones(best_f.shape, dtype=bool)
    elif select == "min":
        use = ~(mean_f <= best_f)
    else:
        use = ~(mean_f < math.inf)
    return use & (best_f < math.inf)


class _Best:
    """The best candidate so far with its cost, ``(B, D + 1)``, and its costs as a host array."""

    def __init__(self, best_xf: Tensor) -> None:
        self.xf = best_xf.clone() if best_xf.shape[0] > 1 else best_xf  # updated in place
        self.f = best_xf.select(1, -1).numpy().copy()
        self.rows = np.arange(best_xf.shape[0])
        self.ref: tuple[Tensor, int] | None = None  # one problem: its best is candidate ref[1] of ref[0]

    def update(self, X: Tensor, a: np.ndarray) -> None:
        """As :func:`dcem.optim.best_sample` and the general loop's ``torch.where``: each row's
        first lowest valid cost of ``a (B, M)`` replaces the tracked one where it is lower."""
        if len(self.f) == 1:  # one problem: argmin is the first lowest cost unless a NaN comes first
            j = int(a[0].argmin())
            fj = a[0, j]
            if fj == fj:
                if fj < self.f[0]:
                    self.f[0], self.ref = fj, (X, j)
                return
        if np.isnan(a).any():
            a = np.where(np.isnan(a), math.inf, a)
        arg = a.argmin(-1)
        fb = a[self.rows, arg]
        better = fb < self.f
        if len(better) == 1:
            if better[0]:
                self.f[0], self.ref = fb[0], (X, int(arg[0]))
            return
        if not better.any():
            return
        r = np.flatnonzero(better)
        self.f[r] = fb[r]
        rt = torch.from_numpy(r)
        D = X.shape[-1]
        self.xf[rt, :D] = X[rt, torch.from_numpy(arg[r])]
        self.xf[rt, D] = torch.from_numpy(fb[r])

    def result(self) -> Tensor:
        """The best candidates with their costs ``(B, D + 1)``."""
        if self.ref is None:
            return self.xf
        X, j = self.ref
        return torch.cat((X.select(0, 0).select(0, j), torch.from_numpy(self.f))).unsqueeze(0)


class HostLoop:
    """The iterations ``start_it, ..., n_iter - 1`` of a plan, under ``torch.inference_mode``.

    Args:
        cfg: the planner's configuration.
        evaluate: ``X (B, M, D) -> fX (B, M)`` of the planner (decode, clamp, objective, checks).
        bounds: ``lo, hi`` ``(B, 1, D)`` or ``None``.
        plan_shape: ``(H, A)`` when the search space is the plans (coloured noise), else ``None``.
        generator: of the noise.
    """

    def __init__(
        self,
        cfg: PlannerConfig,
        evaluate: Callable[[Tensor], Tensor],
        bounds: tuple[Tensor | None, Tensor | None],
        plan_shape: tuple[int, int] | None,
        generator: torch.Generator | None,
    ) -> None:
        self.cfg, self.evaluate, self.generator = cfg, evaluate, generator
        self.bounds = tuple(_scalar(b) for b in bounds)
        self.clamp = bounds[0] is not None or bounds[1] is not None
        self.beta = cfg.noise_beta if plan_shape is not None else 0.0
        self.plan_shape = plan_shape
        self.ones: dict[int, tuple[Tensor, Tensor]] = {}
        self.n_keep = cfg.n_keep
        self.hard = cfg.rule is Rule.CEM or cfg.rule is Rule.ICEM
        self.pops = [cfg.population(i) for i in range(cfg.n_iter)]  # candidates drawn per iteration
        self.divisors: dict[int, tuple[Tensor, Tensor]] = {}
        self.rows = np.zeros((0, 1), dtype=np.intp)

    def run(
        self, g: Gaussian, kept: Tensor, best_xf: Tensor, start_it: int
    ) -> tuple[tuple[Gaussian, Tensor, Tensor, np.ndarray] | None, tuple[Tensor, Tensor] | None]:
        """From the state before iteration ``start_it``: the final Gaussian, the best candidate
        and the last mean candidate, each with its cost appended ``(B, D + 1)``, and per row
        whether ``config.select`` returns the best one (as :func:`dcem.planning.result.assemble`
        decides); or, when the first objective values require gradients (grad mode on), ``None``
        and that iteration's candidates and costs ``(X, fX)``, for the differentiable loop."""
        cfg, best = self.cfg, _Best(best_xf)
        self.rows = best.rows[:, None]
        last: Tensor | tuple[Tensor, Tensor] = best_xf  # the mean candidate of the last iteration
        mean_f = best.f  # and its cost
        with contextlib.ExitStack() as stack:
            if not torch.is_grad_enabled():
                stack.enter_context(torch.inference_mode())  # no autograd bookkeeping at all
            for i in range(start_it, cfg.n_iter):
                X = self._sample(g, kept, i)
                fX = self.evaluate(X)
                if i == start_it and torch.is_grad_enabled():
                    if fX.requires_grad:
                        return None, (X, fX)
                    stack.enter_context(torch.inference_mode())  # nothing is differentiable
                a = (fX if not fX.requires_grad else fX.detach()).numpy()
                g, kept = self._refit(g, X, fX, a, i), kept if not self.n_keep else self._kept(X, fX, a)
                best.update(X, a)
                last, mean_f = (X, fX), a[:, -1]
                if cfg.iter_eps and bool(g.done.all()):
                    break
        return (g, best.result(), _mean_candidate(last), _use_best(cfg.select, mean_f, best.f)), None

    def _noise(self, B: int, N: int, D: int, like: Tensor, out: Tensor | None) -> Tensor:
        """The draws of :meth:`Planner.noise` (``(B, N, D)``), into ``out`` where they are white."""
        if not self.beta:
            return torch.randn(B, N, D, generator=self.generator, dtype=like.dtype, out=out)
        H, A = self.plan_shape  # type: ignore[misc]
        x = colored_noise((B, N, H, A), self.beta, generator=self.generator, dtype=like.dtype)
        return x.reshape(B, N, D)

    def _sample(self, g: Gaussian, kept: Tensor, it: int) -> Tensor:
        """The candidates ``(B, N + n_kept + 1, D)`` of iteration ``it``: samples, kept elites, mean."""
        mu = g.mu
        B, D = mu.shape
        N, K = self.pops[it], kept.shape[1]
        X = torch.empty(B, N + K + 1, D, dtype=mu.dtype)
        Xn = X.narrow(1, 0, N)
        if B == 1 and not self.beta:  # contiguous: the draws land in place (the same stream)
            noise = self._noise(B, N, D, mu, Xn)
        else:
            noise = self._noise(B, N, D, mu, None)
        torch.addcmul(mu.unsqueeze(1), g.sigma.unsqueeze(1), noise, out=Xn)
        if K:
            X.narrow(1, N, K).copy_(kept)
        X.select(1, N + K).copy_(mu)
        if self.clamp:
            X.clamp_(*self.bounds)  # type: ignore[arg-type]  # float or tensor bounds (``_scalar``)
        return X

    def _refit(self, g: Gaussian, X: Tensor, fX: Tensor, a: np.ndarray, it: int) -> Gaussian:
        """:func:`dcem.planning.rules.refit` of the host path: the new Gaussian (kept elites: the caller)."""
        cfg = self.cfg
        lean = self._weighted(X, fX, a)
        if lean is None:  # an invalid cost: the general refit (which raises where it must)
            r = refit(cfg, g, X, fX, True, it)
            return r.state
        mu, sigma = lean
        if cfg.momentum:
            m = cfg.momentum
            mu, sigma = m * g.mu + (1 - m) * mu, m * g.sigma + (1 - m) * sigma
        done, failed = g.done, g.failed
        if cfg.iter_eps:
            mu, sigma, done, failed = settle_refit(
                (g.mu, g.sigma), (mu, sigma), None, done, failed, host=True, iter_eps=cfg.iter_eps, it=it
            )
        return Gaussian(mu, sigma, done, failed)

    def _weighted(self, X: Tensor, fX: Tensor, a: np.ndarray) -> tuple[Tensor, Tensor] | None:
        """The rule's refit ``(mu, sigma)`` when every weighted cost is valid, else ``None``."""
        cfg = self.cfg
        B, M, _ = X.shape
        k = min(cfg.n_elite, M)
        tiny = _tiny(X.dtype)
        if self.hard:
            part = a.argpartition(k - 1, axis=-1)[:, :k]
            # the k-th smallest cost sits at k - 1, the other elites' costs are <= it, NaN last
            if B == 1:
                if not a[0, part[0, k - 1]] < math.inf:
                    return None
                Xe = X.select(0, 0).index_select(0, torch.from_numpy(part[0])).unsqueeze(0)
            else:
                if not (a[self.rows[:, 0], part[:, k - 1]] < math.inf).all():
                    return None
                Xe = gather_rows(X, torch.from_numpy(np.ascontiguousarray(part)))
            w3, wsum = self._ones(B, k, X.dtype)
            return _moments(w3, Xe, wsum, tiny)
        if not np.isfinite(a).all():
            return None
        if cfg.rule is Rule.DCEM:
            # soft_elite_weights(fX, k, temp, normalize, all_valid=True, sync) with the lean standardize
            v = self._standardize(fX, tiny) if cfg.normalize else fX
            w = lml(v / -cfg.temp, k, 1.0, sync=cfg.sync)
        else:  # MPPI: softmax(-cost / lam), as mppi_weights computes an all-finite row
            w = torch.softmax((self._standardize(fX, tiny) if cfg.normalize else fX) / -cfg.lam, -1)
        w3 = w.unsqueeze(1)
        return _moments(w3, X, w3.sum(-1, keepdim=True), tiny)

    def _kept(self, X: Tensor, fX: Tensor, a: np.ndarray) -> Tensor:
        return _kept_host(min(self.n_keep, X.shape[1]), X, fX, a)

    def _standardize(self, v: Tensor, tiny: float) -> Tensor:
        B, M = v.shape
        div = self.divisors.get(M)
        if div is None:
            div = self.divisors[M] = (torch.full((B, 1), float(M), dtype=v.dtype),
                                      torch.full((B, 1), float(max(M - 1, 1)), dtype=v.dtype))  # fmt: skip
        return _standardize(v, div[0], div[1], tiny)

    def _ones(self, B: int, k: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Weights ``(B, 1, k)`` of all-valid elites (ones) and their sum ``(B, 1, 1)``."""
        got = self.ones.get(k)
        if got is None:
            got = self.ones[k] = (
                torch.ones(B, 1, k, dtype=dtype),
                torch.full((B, 1, 1), float(k), dtype=dtype),
            )
        return got
