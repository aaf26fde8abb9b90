"""The planner's loop captured once per objective and shape (``PlannerConfig.capture``).

On an accelerator a plan is bound by kernel launches: ``n_iter`` iterations of sampling, a
batched rollout and a refit. With ``capture="graph"`` the sync-free loop is recorded once per
objective, batch shape and dtype/device into a CUDA graph and replayed (no gradients);
``"compile"`` compiles it with ``torch.compile(fullgraph=True)``. The noise of every
iteration is drawn outside the captured region from the caller's generator, so a captured
plan equals the eager sync-free plan with the same draws. The objective's per-call tensors
(states, observations) are passed as ``cost_args`` and become inputs of the captured loop.

If building the capture fails (an objective that is not capturable, say), the planner warns
once and plans eagerly for that objective from then on.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from dcem.optim.capture import Captured
from dcem.planning.rules import Gaussian

if TYPE_CHECKING:
    from dcem.planning.planner import Planner

__all__ = ["run_captured"]

_FAILED = object()


def _loop_fn(planner: Planner, cost: Callable[..., Tensor], layout: tuple) -> Callable[..., tuple]:
    """The loop as a function of tensors only: ``(mu, sigma, [lo], [hi], *noises, *cost_args)``."""
    has_lo, has_hi, n_iter, batch = layout

    def fn(*t: Tensor) -> tuple[Tensor, ...]:
        mu, sigma, i = t[0], t[1], 2
        lo = t[i] if has_lo else None
        i += has_lo
        hi = t[i] if has_hi else None
        i += has_hi
        noises, args = list(t[i : i + n_iter]), t[i + n_iter :]
        evaluate, _ = planner._evaluator(lambda P: cost(P, *args), batch)
        g, best_xf, mean_xf = planner._loop(
            evaluate, mu, sigma, lo, hi, None, None, noises=noises, host=False
        )
        return (*g, best_xf, mean_xf)

    return fn


def run_captured(
    planner: Planner,
    mode: str,
    cost: Callable[..., Tensor],
    cost_args: tuple[Tensor, ...],
    start: tuple[Tensor, Tensor, Tensor | None, Tensor | None],
    batch: tuple[int, ...],
    generator: torch.Generator | None,
) -> tuple[Gaussian, Tensor, Tensor] | None:
    """Run ``planner``'s loop captured (``mode`` ``"graph"`` or ``"compile"``); ``None`` means
    plan eagerly (the capture of this objective failed before)."""
    mu, sigma, lo, hi = start
    cfg = planner.config
    B, D = mu.shape
    noises = [planner._noise(B, cfg.population(i), D, mu, generator) for i in range(cfg.n_iter)]
    layout = (lo is not None, hi is not None, cfg.n_iter, batch)
    key = (cost, mode, layout, len(cost_args))
    cap: Any = planner._captures.get(key)
    if cap is _FAILED:
        return None
    inputs = (mu, sigma, *(b for b in (lo, hi) if b is not None), *noises, *cost_args)
    if cap is None:
        cap = Captured(_loop_fn(planner, cost, layout), mode, **planner.capture_options)
        try:
            out = cap(*inputs)
        except Exception as err:  # noqa: BLE001 - any failure of the capture means: plan eagerly
            planner._captures[key] = _FAILED
            warnings.warn(
                f"dcem.planning: capture={mode!r} of this objective failed ({type(err).__name__}: {err}); "
                "planning eagerly from now on",
                RuntimeWarning,
                stacklevel=3,
            )
            return None
        planner._captures[key] = cap
    else:
        out = cap(*inputs)
    return Gaussian(*out[:4]), out[4], out[5]
