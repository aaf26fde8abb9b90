"""Capture of a sync-free tensor function, once per input shape: ``torch.compile`` or a CUDA graph.

:class:`Captured` wraps ``fn(*tensors) -> tuple of tensors`` (a NamedTuple such as
:class:`dcem.optim.CEMState` is kept as its type) and, per shape/dtype/device of the inputs:

``mode="compile"``
    ``torch.compile(fn, fullgraph=True)`` (``mode="reduce-overhead"``, i.e. CUDA graphs, on
    CUDA); differentiable.
``mode="graph"``
    records ``fn`` once on static input buffers and replays it: a
    :class:`torch.cuda.CUDAGraph` (``backend="cuda"``), or, to test the buffer handling on any
    device, a re-run of ``fn`` on the static buffers (``backend="replay"``). No gradients.

``fn`` must be sync-free (no host reads; run it under the ``"free"`` sync policy) and take its
randomness as an input tensor (a ``torch.Generator`` cannot be captured). The one-off
compile/capture seconds of each shape are kept in :attr:`Captured.timings`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from dcem._checks import check_choice

__all__ = ["Captured", "CAPTURE_MODES", "resolve_capture"]

CAPTURE_MODES = ("auto", "none", "compile", "graph")
"""The ``capture`` options of :class:`Captured` and :class:`dcem.optim.Solver` (:func:`resolve_capture`)."""


def resolve_capture(capture: str, t: Tensor, *, compile_with_grad: bool = True) -> str:
    """``"auto"`` resolved for tensors like ``t``: on CUDA ``"graph"`` without gradients and
    ``"compile"`` with them (``"none"`` with them when ``compile_with_grad`` is off, for loops
    whose compilation is slow to build); ``"none"`` elsewhere (the eager host-checked loop is
    fastest on CPU)."""
    if capture != "auto":
        return capture
    if t.device.type != "cuda":
        return "none"
    if torch.is_grad_enabled():
        return "compile" if compile_with_grad else "none"
    return "graph"


def _rebuild(like: Any, tensors: list[Tensor]) -> Any:
    return type(like)(*tensors) if hasattr(like, "_fields") else tuple(tensors)


class _Graph:
    """``fn`` recorded once on static input buffers and replayed (see the module docstring)."""

    def __init__(self, fn: Callable[..., Any], example: tuple[Tensor, ...], backend: str) -> None:
        self.static_in = tuple(t.detach().clone() for t in example)
        self.backend, self.fn = backend, fn
        with torch.no_grad():
            if backend == "cuda":
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    for _ in range(2):  # warm-up outside the graph (allocator, lazy init)
                        fn(*self.static_in)
                torch.cuda.current_stream().wait_stream(stream)
                self.graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(self.graph):
                    self.static_out = fn(*self.static_in)
            else:
                self.static_out = fn(*self.static_in)

    def __call__(self, *inputs: Tensor) -> Any:
        for buf, t in zip(self.static_in, inputs):
            buf.copy_(t)
        if self.backend == "cuda":
            self.graph.replay()
        else:
            with torch.no_grad():
                for buf, t in zip(self.static_out, self.fn(*self.static_in)):
                    if isinstance(buf, Tensor):
                        buf.copy_(t)
        # the outputs live in static buffers that the next replay overwrites: hand out copies
        out = [t.clone() if isinstance(t, Tensor) else t for t in self.static_out]
        return _rebuild(self.static_out, out)


class Captured:
    """``fn`` compiled or captured once per input signature (see the module docstring).

    Args:
        fn: the sync-free function of tensors.
        mode: ``"compile"`` or ``"graph"``.
        compile_kwargs: extra arguments for ``torch.compile`` (e.g. ``{"backend": "aot_eager"}``).
        graph_backend: ``"cuda"`` (default) or ``"replay"`` (any device; for tests).
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        mode: str,
        *,
        compile_kwargs: dict[str, Any] | None = None,
        graph_backend: str = "cuda",
    ) -> None:
        self.fn = fn
        self.mode = check_choice("mode", mode, ("compile", "graph"))
        self.compile_kwargs = dict(compile_kwargs or {})
        self.graph_backend = check_choice("graph_backend", graph_backend, ("cuda", "replay"))
        self._cache: dict[tuple, Callable[..., Any]] = {}
        self.timings: dict[tuple, float] = {}

    def _build(self, inputs: tuple[Tensor, ...]) -> Callable[..., Any]:
        dev = inputs[0].device
        if self.mode == "compile":
            kw = dict(self.compile_kwargs)
            if dev.type == "cuda":
                kw.setdefault("mode", "reduce-overhead")
            return torch.compile(self.fn, fullgraph=True, **kw)
        if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
            raise ValueError("capture='graph' runs without gradients: call it under torch.no_grad()")
        if self.graph_backend == "cuda" and dev.type != "cuda":
            raise ValueError("capture='graph' needs CUDA tensors (use capture='compile' or 'none' on CPU)")
        return _Graph(self.fn, inputs, self.graph_backend)

    def __call__(self, *inputs: Tensor) -> Any:
        key = (tuple((tuple(t.shape), t.dtype, t.device) for t in inputs), torch.is_grad_enabled())
        fn = self._cache.get(key)
        if fn is not None:
            return fn(*inputs)
        t0 = time.perf_counter()
        fn = self._cache[key] = self._build(inputs)
        out = fn(*inputs)
        if inputs[0].device.type == "cuda":
            torch.cuda.synchronize(inputs[0].device)
        self.timings[key] = time.perf_counter() - t0
        return out
