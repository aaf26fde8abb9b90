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
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor

from dcem.optim.capture import Captured
from dcem.planning.config import PlannerConfig
from dcem.planning.rules import Gaussian

__all__ = ["LoopCaptures", "LoopOutput", "Loopable"]

_FAILED = object()
Start = tuple[Tensor, Tensor, "Tensor | None", "Tensor | None"]


class LoopOutput(NamedTuple):
    """The planner loop's result: the final Gaussian, the best candidate and the last mean
    candidate, each with its cost appended ``(B, D + 1)``, and the objective calls made."""

    state: Gaussian
    best_xf: Tensor
    mean_xf: Tensor
    n_evals: int
    use_best: Any = None  # rows returning the best candidate, when decided on the host (NumPy, (B,))


class Loopable(Protocol):
    """The public seam of :class:`dcem.planning.Planner` that a captured loop runs."""

    config: PlannerConfig

    def noise(self, it: int, B: int, D: int, like: Tensor, generator: torch.Generator | None) -> Tensor: ...

    def iterate(
        self, cost: Callable[[Tensor], Tensor], start: Start, batch: tuple[int, ...], *,
        noises: list[Tensor] | None = None, host: bool | None = None,
    ) -> LoopOutput: ...  # fmt: skip


def _loop_fn(planner: Loopable, cost: Callable[..., Tensor], layout: tuple) -> Callable[..., tuple]:
    """The loop as a function of tensors only: ``(mu, sigma, [lo], [hi], *noises, *cost_args)``."""
    has_lo, has_hi, n_iter, batch = layout

    def fn(*t: Tensor) -> tuple[Tensor, ...]:
        mu, sigma, i = t[0], t[1], 2
        lo = t[i] if has_lo else None
        i += has_lo
        hi = t[i] if has_hi else None
        i += has_hi
        noises, args = list(t[i : i + n_iter]), t[i + n_iter :]
        out = planner.iterate(lambda P: cost(P, *args), (mu, sigma, lo, hi), batch, noises=noises, host=False)
        return (*out.state, out.best_xf, out.mean_xf)

    return fn


class LoopCaptures(dict):
    """A planner's captured loops, keyed by objective and layout (a failed capture is remembered)."""

    def __init__(self, options: dict[str, Any]) -> None:
        super().__init__()
        self.options = options

    def run(
        self,
        planner: Loopable,
        mode: str,
        cost: Callable[..., Tensor],
        cost_args: tuple[Tensor, ...],
        start: Start,
        batch: tuple[int, ...],
        generator: torch.Generator | None,
    ) -> LoopOutput | None:
        """Run ``planner``'s loop captured (``mode`` ``"graph"`` or ``"compile"``); ``None`` means
        plan eagerly (the capture of this objective failed before)."""
        mu, sigma, lo, hi = start
        n_iter = planner.config.n_iter
        B, D = mu.shape
        noises = [planner.noise(i, B, D, mu, generator) for i in range(n_iter)]
        layout = (lo is not None, hi is not None, n_iter, batch)
        key = (cost, mode, layout, len(cost_args))
        cap: Any = self.get(key)
        if cap is _FAILED:
            return None
        inputs = (mu, sigma, *(b for b in (lo, hi) if b is not None), *noises, *cost_args)
        if cap is None:
            cap = Captured(_loop_fn(planner, cost, layout), mode, **self.options)
            try:
                out = cap(*inputs)
            except Exception as err:  # noqa: BLE001 - any failure of the capture means: plan eagerly
                self[key] = _FAILED
                warnings.warn(
                    f"dcem.planning: capture={mode!r} of this objective failed ({type(err).__name__}: "
                    f"{err}); planning eagerly from now on",
                    RuntimeWarning,
                    stacklevel=3,
                )
                return None
            self[key] = cap
        else:
            out = cap(*inputs)
        return LoopOutput(Gaussian(*out[:4]), out[4], out[5], n_iter)
