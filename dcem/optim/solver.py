"""A (D)CEM solver object that compiles or captures its loop once per problem shape.

On an accelerator an eager solve is bound by kernel launches (hundreds per iteration), not
arithmetic. :class:`Solver` removes that overhead without the user doing anything special:

``capture="none"``
    the eager loop of :func:`dcem.optim.solve` (host-checked or sync-free by ``cfg.sync``).
``capture="compile"``
    ``torch.compile(fullgraph=True)`` of the sync-free loop, once per shape/dtype/device
    (``mode="reduce-overhead"``, i.e. CUDA graphs, on CUDA). Differentiable. The noise of
    every iteration is drawn outside the compiled region from the ``generator``, so results
    are reproducible and equal to the eager sync-free solve with the same draws.
``capture="graph"``
    replay of a captured no-grad solve (planning): the loop is recorded once per shape
    into a CUDA graph and replayed on static input buffers; the first call for a shape
    pays the capture. Only for CUDA tensors and without gradients.
``capture="auto"`` (default)
    ``"graph"`` for CUDA tensors when gradients are off, ``"compile"`` for CUDA tensors
    with gradients, ``"none"`` on CPU. On CPU the eager loop is the fastest *per call
    including compilation*, not at steady state: for DCEM forward + backward (batch 100,
    nx 20, 100 samples, 10 iterations, one thread) the compiled loop takes 70 ms against
    eager's 120 ms (1.7x), but its first call compiles for 247 s with an empty inductor cache
    (58 s with a warm one, in a new process), so it pays off only after about 1,200 (warm)
    to 5,000 (cold) calls of one shape (``benchmarks/bench_compile_cpu.py``; torch 2.13 CPU,
    a shared 2-core machine). Long CPU training loops of one shape may pass
    ``capture="compile"`` explicitly.

Example:
    >>> import torch
    >>> from dcem.optim import CEMConfig, Solver
    >>> target = torch.tensor([1.0, -2.0])
    >>> solver = Solver(lambda X: (X - target).pow(2).sum(-1), CEMConfig(100, 10, temp=None))
    >>> st = solver(torch.zeros(4, 2), 1.0, generator=torch.Generator().manual_seed(0))
    >>> bool(torch.allclose(st.mu, target.expand(4, 2), atol=1e-2))
    True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from dcem._checks import check_choice
from dcem.optim.capture import CAPTURE_MODES, Captured, resolve_capture
from dcem.optim.cem import CEMConfig, CEMState, init_state, solve
from dcem.optim.validate import check_generator

__all__ = ["Solver", "CAPTURE_MODES"]


class Solver:
    """Solve batches of (D)CEM problems of one objective, compiled or captured once per shape.

    Args:
        f: objective, ``(*B, N, D) -> (*B, N)``; it may close over parameters (they are read
            at every call, also from a captured graph).
        cfg: the hyper-parameters (:class:`CEMConfig`); ``cfg.sync`` applies to
            ``capture="none"``, the captured modes always run the sync-free loop.
        capture: ``"auto"``, ``"none"``, ``"compile"`` or ``"graph"`` (module docstring).
        compile_kwargs: extra arguments for ``torch.compile`` (e.g. ``{"backend": "aot_eager"}``).
        graph_backend: ``"cuda"`` (CUDA graphs; the default) or ``"replay"``, which re-runs
            the recorded loop on the static buffers on any device (used to test the
            ``"graph"`` mode's buffer handling on CPU).

    Calling it as ``solver(mu, sigma, generator=g)`` with ``mu (*B, D)`` returns the final
    :class:`CEMState`. ``solver.timings`` records, per shape, the seconds the first call
    took (compile or capture included).
    """

    def __init__(
        self,
        f: Callable[[Tensor], Tensor],
        cfg: CEMConfig,
        *,
        capture: str = "auto",
        compile_kwargs: dict[str, Any] | None = None,
        graph_backend: str = "cuda",
    ) -> None:
        if not callable(f):
            raise TypeError(f"f must be callable, got {type(f).__name__}")
        if not isinstance(cfg, CEMConfig):
            raise TypeError(f"cfg must be a dcem.optim.CEMConfig, got {type(cfg).__name__}")
        self.f, self.cfg = f, cfg
        self.capture = check_choice("capture", capture, CAPTURE_MODES)
        self.compile_kwargs = dict(compile_kwargs or {})
        self.graph_backend = check_choice("graph_backend", graph_backend, ("cuda", "replay"))
        self._free = dataclasses.replace(cfg, sync="free")
        self._captured = {
            mode: Captured(self._loop, mode, compile_kwargs=compile_kwargs, graph_backend=graph_backend)
            for mode in ("compile", "graph")
        }

    @property
    def timings(self) -> dict[tuple, float]:
        """Seconds of the first call of each captured shape (compile or capture included)."""
        return {**self._captured["compile"].timings, **self._captured["graph"].timings}

    def mode_for(self, mu: Tensor) -> str:
        """The capture mode a call with ``mu`` uses (``"auto"`` resolved)."""
        return resolve_capture(self.capture, mu)

    def _loop(self, mu: Tensor, sigma: Tensor, noise: Tensor) -> CEMState:
        return solve(self.f, init_state(mu, sigma), self._free, noise=noise)

    def __call__(
        self, mu: Tensor, sigma: Tensor | float = 1.0, *, generator: torch.Generator | None = None
    ) -> CEMState:
        state0 = init_state(mu, sigma)
        check_generator(generator, state0.mu)
        mode = self.mode_for(mu)
        if mode == "none":
            return solve(self.f, state0, self.cfg, generator=generator)
        shape = (self.cfg.n_iter, *mu.shape[:-1], self.cfg.n_sample, mu.shape[-1])
        noise = torch.randn(shape, generator=generator, dtype=mu.dtype, device=mu.device)
        return self._captured[mode](state0.mu, state0.sigma, noise)
