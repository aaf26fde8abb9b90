"""One trajectory planner: CEM, DCEM, MPPI and iCEM over batch-major plans ``(*B, H, A)``.

The planner minimises an objective ``cost(plans (*B, N, H, A)) -> (*B, N)`` over action
sequences inside per-dimension bounds, or over a latent ``z`` whose decoded plans are
evaluated (eq. 8 of the paper). Every iteration draws ``N`` candidates from a Gaussian,
evaluates them *together with the Gaussian's mean* (and, for iCEM, the kept elites) in one
call of the objective and refits the Gaussian by the chosen rule (:mod:`dcem.planning.rules`).
The returned plan is chosen among evaluated candidates, so a plan of ``n_iter`` iterations
costs exactly ``n_iter`` objective calls: ``select="mean"`` is the mean of the last sampled
Gaussian, ``"best"`` the best candidate seen (:func:`dcem.optim.best_sample`: NaN and
``+inf`` never best, ``-inf`` best), ``"min"`` the better of the two. The last refit gives
the final distribution (``PlanResult.mean``/``std``) for warm starts.

Planning is differentiable by default, but a plan made without gradients (under
``torch.no_grad``, or one whose start and first objective values require none) runs under
``torch.inference_mode``: no autograd bookkeeping at all, the same plans, and the returned
tensors are ordinary ones. On CPU (host-checked path) such a plan runs the leaner loop of
:mod:`dcem.planning.hostloop`, again with the same plans bit for bit. ``config.capture``
captures the loop once per shape; on CPU the default stays eager (``torch.compile`` is faster
at steady state but compiles for minutes on its first call, see :class:`dcem.optim.Solver`).

Example:
    >>> import torch
    >>> from dcem.planning import Planner
    >>> target = torch.linspace(-0.5, 0.5, 4).view(4, 1)
    >>> cost = lambda U: (U - target).pow(2).sum((-1, -2))     # (B, N, 4, 1) -> (B, N)
    >>> p = Planner(4, 1, lower=-1.0, upper=1.0, rule="cem", n_sample=200, n_elite=20, n_iter=10)
    >>> res = p.plan(cost, batch_shape=(2,), generator=torch.Generator().manual_seed(0))
    >>> res.plan.shape, bool(res.cost.max() < 1e-2)
    (torch.Size([2, 4, 1]), True)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint as _checkpoint

from dcem._checks import check_int
from dcem.optim import best_sample
from dcem.optim.capture import resolve_capture
from dcem.optim.validate import check_bound_pair
from dcem.planning.bounds import _check_bound_pair, _search_tensor
from dcem.planning.capture import LoopCaptures, LoopOutput
from dcem.planning.config import PlannerConfig
from dcem.planning.hostloop import HostLoop, host_loop_ok
from dcem.planning.noise import colored_noise
from dcem.planning.result import PlanResult, assemble, plain
from dcem.planning.rules import Gaussian, refit
from dcem.planning.start import StartCache, plan_start
from dcem.sync import resolve_sync

__all__ = ["Planner", "PlanResult", "IterCallback"]

Bound = float | Tensor | None
IterCallback = Callable[[int, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor], None]
"""``iter_cb(i, X, fX, I, X_I, mu, sigma)`` with flattened candidates ``X (B, M, D)``, costs
``fX (B, M)``, weights ``I (B, M, 1)``, ``X_I = I * X`` and the refit ``mu, sigma (B, D)``."""


def _requires_grad(ts: tuple[Tensor | None, ...]) -> list[bool]:
    return [t is not None and t.requires_grad for t in ts]


class Planner:
    """Trajectory optimisation by CEM / DCEM / MPPI / iCEM (see the module docstring).

    Args:
        horizon: plan length ``H >= 1``.
        n_ctrl: action dimension ``A >= 1``.
        config: a :class:`PlannerConfig`; or give its fields as keyword ``options``.
        lower, upper: per-dimension action bounds (floats or tensors broadcastable to
            ``(A,)``, ``(H, A)`` or ``(*B, H, A)``); candidates (decoded ones too) are
            clamped into them. ``None``: unbounded.
        decoder: optional ``z (..., n_latent) -> plans (..., H, A)``; the planner then
            searches the latent space (``n_latent`` from the argument or ``decoder.n_latent``)
            with white noise (``noise_beta`` colours noise along the time of full plans only).
        z_lower, z_upper: latent bounds (floats or tensors broadcastable to ``(n_latent,)``).
        capture_options: keyword arguments of :class:`dcem.optim.Captured` for
            ``config.capture`` (``compile_kwargs``, ``graph_backend``).

    The planner holds no tensors of its own besides the given bounds; dtype and device
    follow ``init_mean`` (else the ``dtype``/``device`` arguments of :meth:`plan`).
    """

    def __init__(
        self,
        horizon: int,
        n_ctrl: int,
        config: PlannerConfig | None = None,
        *,
        lower: Bound = None,
        upper: Bound = None,
        decoder: Callable[[Tensor], Tensor] | None = None,
        n_latent: int | None = None,
        z_lower: Bound = None,
        z_upper: Bound = None,
        capture_options: dict[str, Any] | None = None,
        **options: Any,
    ) -> None:
        self.horizon = check_int("horizon", horizon, 1)
        self.n_ctrl = check_int("n_ctrl", n_ctrl, 1)
        if config is not None and options:
            raise ValueError(f"give either config or options, not both (got {sorted(options)})")
        self.config = config if config is not None else PlannerConfig(**options)
        if not isinstance(self.config, PlannerConfig):
            raise TypeError(f"config must be a PlannerConfig, got {type(self.config).__name__}")
        check_bound_pair(lower, upper, ("lower", "upper"))  # shared validation (dcem.optim)
        check_bound_pair(z_lower, z_upper, ("z_lower", "z_upper"))
        _check_bound_pair(lower, upper, "")
        self.lower, self.upper = lower, upper
        if decoder is not None:
            if not callable(decoder):
                raise TypeError(f"decoder must be callable, got {type(decoder).__name__}")
            n_latent = getattr(decoder, "n_latent", None) if n_latent is None else n_latent
            self.n_latent: int | None = check_int("n_latent", n_latent, 1)
        else:
            self.n_latent = None
        _check_bound_pair(z_lower, z_upper, "z_")
        self.decoder, self.z_lower, self.z_upper = decoder, z_lower, z_upper
        self.capture_options = dict(capture_options or {})
        self._captures = LoopCaptures(self.capture_options)  # captured loops by objective and layout
        self._starts = StartCache()  # default starts by shape, dtype and device

    @property
    def search_shape(self) -> tuple[int, ...]:
        """Per-problem shape of the search space: ``(H, A)`` or ``(n_latent,)``."""
        return (self.horizon, self.n_ctrl) if self.n_latent is None else (self.n_latent,)

    def plan(
        self,
        cost: Callable[..., Tensor],
        *,
        batch_shape: tuple[int, ...] | None = None,
        init_mean: Tensor | None = None,
        init_std: float | Tensor | None = None,
        generator: torch.Generator | None = None,
        iter_cb: IterCallback | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        cost_args: tuple[Tensor, ...] = (),
    ) -> PlanResult:
        """Minimise ``cost`` over plans (or latents); see the module docstring.

        Args:
            cost: objective ``(*B, M, H, A) -> (*B, M)``; ``M`` is the number of candidates
                of an iteration (``n_sample`` plus the mean and kept elites).
            batch_shape: ``*B`` (default: from ``init_mean``, else ``()``).
            init_mean: initial mean ``(*B, *search_shape)``; default the middle of the
                bounds (0 where unbounded).
            init_std: initial std (float or tensor broadcastable to the search shape);
                default ``config.std_scale`` times the width of the bounds (1 where unbounded).
            generator: ``torch.Generator`` for the sampling noise.
            iter_cb: see :data:`IterCallback`; called once per iteration (outside the
                checkpointed region, so never again in the backward pass).
            dtype, device: of the iterates when ``init_mean`` is not given.
            cost_args: tensors passed on as ``cost(plans, *cost_args)``; with
                ``config.capture`` they are inputs of the captured loop, so one ``cost``
                (the same object at every call) serves every state.

        Returns:
            :class:`PlanResult`.
        """
        if not callable(cost):
            raise TypeError(f"cost must be callable, got {type(cost).__name__}")
        mu, sigma, lo, hi, batch = plan_start(self, batch_shape, init_mean, init_std, dtype, device)
        start = (mu, sigma, lo, hi)
        mode = resolve_capture(self.config.capture, mu, compile_with_grad=False)
        if mode != "none":
            if iter_cb is not None:
                raise ValueError(f"iter_cb cannot be used with capture={self.config.capture!r}")
            out = self._captures.run(self, mode, cost, cost_args, start, batch, generator)
            if out is not None:
                return self._result(out, batch)
        call = cost if not cost_args else (lambda P: cost(P, *cost_args))
        res = self._result(self.iterate(call, start, batch, generator=generator, iter_cb=iter_cb), batch)
        return plain(res)  # inference tensors (of a loop without autograd) copied into ordinary ones

    # -- set-up -------------------------------------------------------------------------
    def _evaluator(
        self, cost: Callable[[Tensor], Tensor], batch: tuple[int, ...]
    ) -> tuple[Callable[[Tensor], Tensor], list[int]]:
        """``evaluate(X (B, M, D)) -> (B, M)``: decode, clamp, call ``cost``, check; counts calls."""
        counter = [0]
        H, A = self.horizon, self.n_ctrl

        def evaluate(X: Tensor) -> Tensor:
            B, M, _ = X.shape
            if self.decoder is not None:
                P = self.decoder(X.reshape(*batch, M, cast(int, self.n_latent)))  # set with the decoder
                if not isinstance(P, Tensor) or tuple(P.shape) != (*batch, M, H, A):
                    got = tuple(P.shape) if isinstance(P, Tensor) else type(P).__name__
                    raise ValueError(
                        f"decoder must return plans of shape (*B, M, H, A) = {(*batch, M, H, A)}, got {got}"
                    )
                P = self._clamp_plans(P)
            else:
                P = X.reshape(*batch, M, H, A)
            fX = cost(P)
            counter[0] += 1
            if not isinstance(fX, Tensor) or fX.is_complex() or fX.dtype == torch.bool:
                raise TypeError(
                    f"cost must return a real tensor of shape (*B, M) = {(*batch, M)}, "
                    f"got {type(fX).__name__}"
                )
            if tuple(fX.shape) != (*batch, M):
                raise ValueError(
                    f"cost must return values of shape (*B, M) = {(*batch, M)}, got {tuple(fX.shape)}"
                )
            if fX.dtype != X.dtype:  # a no-op conversion still costs a dispatch
                fX = fX.to(X.dtype)
            return fX if fX.dim() == 2 else fX.reshape(B, M)

        return evaluate, counter

    # -- the loop -----------------------------------------------------------------------
    def noise(self, it: int, B: int, D: int, like: Tensor, generator: torch.Generator | None) -> Tensor:
        """Standard normal draws ``(B, population(it), D)`` of iteration ``it`` (coloured along
        time when ``noise_beta`` and searching full plans), dtype/device of ``like``."""
        N, beta = self.config.population(it), self.config.noise_beta
        if beta and self.n_latent is None:
            shape = (B, N, self.horizon, self.n_ctrl)
            return colored_noise(
                shape, beta, generator=generator, dtype=like.dtype, device=like.device
            ).reshape(B, N, D)
        return torch.randn(B, N, D, generator=generator, dtype=like.dtype, device=like.device)

    def iterate(
        self,
        cost: Callable[[Tensor], Tensor],
        start: tuple[Tensor, Tensor, Tensor | None, Tensor | None],
        batch: tuple[int, ...],
        *,
        generator: torch.Generator | None = None,
        iter_cb: IterCallback | None = None,
        noises: list[Tensor] | None = None,
        host: bool | None = None,
    ) -> LoopOutput:
        """The iterations on flattened search-space tensors (the seam a captured loop runs).

        Args:
            cost: objective ``(*batch, M, H, A) -> (*batch, M)`` (decoded, clamped candidates).
            start: ``(mu, sigma)`` of shape ``(B, D)`` with ``B = prod(batch)``, ``D`` the size
                of the search space, and the bounds ``lo, hi`` ``(B, 1, D)`` or ``None``.
            batch: the batch shape ``*B``.
            generator: for the noise unless ``noises`` (one draw of :meth:`noise` per
                iteration) are given.
            iter_cb: see :data:`IterCallback`.
            host: the sync policy (``None``: from ``config.sync``); a captured loop passes ``False``.

        Returns:
            :class:`dcem.planning.capture.LoopOutput`: the final Gaussian, the best and the
            last mean candidate each with its cost appended ``(B, D + 1)``, objective calls.
        """
        evaluate, counter = self._evaluator(cost, batch)
        mu, sigma, lo, hi = start
        cfg, want = self.config, iter_cb is not None  # want: the same in forward and recomputation
        host = resolve_sync(cfg.sync, mu) if host is None else host
        B, D = mu.shape
        flags = torch.zeros(B, dtype=torch.bool, device=mu.device)
        g, kept = Gaussian(mu, sigma, flags, flags), mu.new_zeros(B, 0, D)
        best_f = torch.full((B,), math.inf, dtype=mu.dtype, device=mu.device)
        best_xf = mean_xf = torch.cat((mu, best_f.unsqueeze(-1)), -1)
        lean, pre = noises is None and not want and host_loop_ok(mu, host), None  # fewer operations
        if lean and not (torch.is_grad_enabled() and (cfg.checkpoint or any(_requires_grad(start)))):
            out, pre = self._host_loop(evaluate, counter, g, kept, best_xf, (lo, hi), generator, 0)
            if out is not None:
                return out
        with contextlib.ExitStack() as stack:
            if noises is None and not want and not torch.is_grad_enabled():
                stack.enter_context(torch.inference_mode())  # no autograd bookkeeping at all
            for i in range(cfg.n_iter):
                if i == 0 and pre is not None:
                    noise = mu  # unused: the first candidates are evaluated already
                else:
                    noise = self.noise(i, B, D, mu, generator) if noises is None else noises[i]
                step = self._step(evaluate, g, kept, noise, (lo, hi), host, i, want, None if i else pre)
                g, kept, xf, fb, mean_xf, X, fX, w = step
                if iter_cb is not None:  # outside the checkpointed region: called once per iteration
                    w = w.unsqueeze(-1)
                    iter_cb(i, X, fX, w, w * X, g.mu, g.sigma)
                better = fb < best_f
                best_xf = torch.where(better.unsqueeze(-1), xf, best_xf)
                best_f = torch.minimum(fb, best_f)
                if host and cfg.iter_eps and bool(g.done.all()):
                    break
                if i == 0 and noises is None and not want and torch.is_grad_enabled():
                    if not fX.requires_grad and not any(_requires_grad(start)):
                        stack.enter_context(torch.inference_mode())  # nothing is differentiable
                        if lean and cfg.n_iter > 1:  # (with checkpoint): the rest in the host loop
                            bounds = (lo, hi)
                            out, _ = self._host_loop(
                                evaluate, counter, g, kept, best_xf, bounds, generator, 1
                            )
                            return cast(LoopOutput, out)
        return LoopOutput(g, best_xf, mean_xf, counter[0])

    def _host_loop(
        self, evaluate: Callable[[Tensor], Tensor], counter: list[int], g: Gaussian, kept: Tensor,
        best_xf: Tensor, bounds: tuple[Tensor | None, Tensor | None], generator: torch.Generator | None,
        start_it: int,
    ) -> tuple[LoopOutput | None, tuple[Tensor, Tensor] | None]:  # fmt: skip
        """Iterations ``start_it, ...`` by :class:`dcem.planning.hostloop.HostLoop` (no autograd,
        CPU); or ``None`` and the first candidates and costs if these require gradients."""
        shape = (self.horizon, self.n_ctrl) if self.n_latent is None else None
        out, pre = HostLoop(self.config, evaluate, bounds, shape, generator).run(g, kept, best_xf, start_it)
        return (None, pre) if out is None else (LoopOutput(*out[:3], counter[0], out[3]), None)

    def _step(
        self,
        evaluate: Callable[[Tensor], Tensor],
        g: Gaussian,
        kept: Tensor,
        noise: Tensor,
        bounds: tuple[Tensor | None, Tensor | None],
        host: bool,
        i: int,
        want: bool,
        pre: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Any, ...]:
        """One iteration (recomputed in the backward pass with ``config.checkpoint``): the new
        Gaussian and kept elites, this iteration's best and mean candidates, ``X``, ``fX``, weights."""

        def it(mu_: Tensor, sigma_: Tensor, done_: Tensor, failed_: Tensor, kept_: Tensor, noise_: Tensor):
            g_ = Gaussian(mu_, sigma_, done_, failed_)
            return self._iteration(evaluate, g_, kept_, noise_, *bounds, host, i, want)

        if self.config.checkpoint and torch.is_grad_enabled():
            out = _checkpoint(it, *g, kept, noise, use_reentrant=False)
        else:
            out = self._iteration(evaluate, g, kept, noise, *bounds, host, i, want, pre)
        return (Gaussian(*out[:4]), *out[4:])

    def _iteration(
        self,
        evaluate: Callable[[Tensor], Tensor],
        g: Gaussian,
        kept: Tensor,
        noise: Tensor,
        lo: Tensor | None,
        hi: Tensor | None,
        host: bool,
        i: int,
        want_weights: bool,
        pre: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, ...]:
        """Sample, evaluate (one call), refit: the new state, this iteration's best and its
        candidates (``pre``: the candidates and costs, already evaluated)."""
        if pre is None:
            X = torch.addcmul(g.mu.unsqueeze(1), g.sigma.unsqueeze(1), noise)
            X = torch.cat((X, kept, g.mu.unsqueeze(1)), 1)  # the current mean is the last candidate
            if lo is not None or hi is not None:
                X = torch.clamp(X, lo, hi)
            fX = evaluate(X)
        else:
            X, fX = pre
        r = refit(self.config, g, X, fX, host, i, want_weights=want_weights)
        Xf = torch.cat((X, fX.unsqueeze(-1)), -1)  # carries each candidate's cost (with its gradient)
        xf, fb = best_sample(Xf, fX)
        s, w = r.state, cast(Tensor, r.weights) if want_weights else fX[:, :0]
        return s.mu, s.sigma, s.done, s.failed, r.kept, xf, fb, Xf[:, -1], X, fX, w

    def _result(self, out: LoopOutput, batch: tuple[int, ...]) -> PlanResult:
        decode = self._decode if self.decoder is not None else None
        return assemble(out, self.config.select, batch, self.search_shape, decode)

    def _decode(self, z: Tensor) -> Tensor:
        """Plans ``(*B, H, A)`` of latents ``(*B, n_latent)`` (decoded and clamped like candidates)."""
        return self._clamp_plans(cast("Callable[[Tensor], Tensor]", self.decoder)(z))  # only with a decoder

    def _clamp_plans(self, P: Tensor) -> Tensor:
        """Decoded plans ``(..., H, A)`` clamped into the action bounds (if any)."""
        if self.lower is None and self.upper is None:
            return P
        S = (self.horizon, self.n_ctrl)
        return torch.clamp(
            P, _search_tensor(self.lower, "lower", S, P), _search_tensor(self.upper, "upper", S, P)
        )
