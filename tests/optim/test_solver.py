"""Graph capture: torch.compile(fullgraph) of plain dcem() calls and the Solver object.

``fullgraph=True`` fails on any host read (``bool(tensor)``, ``.item()``, NumPy) or graph
break, so compiling on CPU proves the sync-free path has none. ``aot_eager`` traces through
Dynamo and AOTAutograd like inductor but runs the ops eagerly (bitwise equal to eager, fast
to build); inductor itself is compiled in the slow tests. CUDA-graph capture runs when a GPU
is visible; its static-buffer handling is tested on CPU through the ``replay`` backend.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import dcem
from dcem.optim import CEMConfig, Solver, init_state, solve

CUDA = torch.cuda.is_available()


def objective(nx: int, dtype=torch.float64, device="cpu"):
    theta = torch.linspace(-1, 1, nx, dtype=dtype, device=device).requires_grad_()
    return theta, (lambda X: (X - theta).pow(2).sum(-1) + 0.1 * torch.sin(3 * X).sum(-1))


def _compiled_matches_eager(B: int, temp, backend: str, n_iter: int) -> None:
    theta, f = objective(20)

    def run(mu0):
        return dcem.dcem(f, 20, B, 100, 10, n_iter, temp, init_mu=mu0, iter_eps=1e-4, dtype=torch.float64)

    mu0 = torch.zeros(B, 20, dtype=torch.float64)
    torch.manual_seed(0)
    with dcem.sync_mode("free"):
        x_e = run(mu0)
    torch.manual_seed(0)
    x_c = torch.compile(run, fullgraph=True, backend=backend)(mu0)
    torch.testing.assert_close(x_c, x_e, rtol=1e-9, atol=1e-9)
    if temp is not None:
        (g_e,) = torch.autograd.grad(x_e.sum(), theta)
        (g_c,) = torch.autograd.grad(x_c.sum(), theta)
        torch.testing.assert_close(g_c, g_e, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("B", [100, 1000])
@pytest.mark.parametrize("temp", [1.0, None], ids=["dcem", "cem"])
def test_fullgraph_compile_of_plain_dcem_call_matches_eager(B, temp):
    # no data-dependent guard, host read or graph break: the sync-free path is chosen
    # automatically under compilation; 3 iterations keep the trace short
    torch._dynamo.reset()
    _compiled_matches_eager(B, temp, "aot_eager", n_iter=3)


@pytest.mark.slow
@pytest.mark.parametrize("B", [100, 1000])
def test_inductor_compile_of_dcem_with_backward_matches_eager(B):
    # inductor draws its own random numbers unless told to fall back to eager's
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    with inductor_config.patch(fallback_random=True):
        _compiled_matches_eager(B, 1.0, "inductor", n_iter=10)


def _reference(f, cfg, mu, sigma, seed):
    n = (cfg.n_iter, *mu.shape[:-1], cfg.n_sample, mu.shape[-1])
    noise = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=mu.dtype)
    return solve(f, init_state(mu, sigma), dataclasses.replace(cfg, sync="free"), noise=noise)


@pytest.mark.parametrize("temp", [1.0, None], ids=["dcem", "cem"])
def test_solver_compile_matches_the_eager_sync_free_solve(temp):
    torch._dynamo.reset()
    theta, f = objective(5)
    cfg = CEMConfig(50, 5, n_iter=2, temp=temp, iter_eps=1e-4)
    solver = Solver(f, cfg, capture="compile", compile_kwargs={"backend": "aot_eager"})
    mu = torch.zeros(7, 5, dtype=torch.float64)
    st = solver(mu, 1.0, generator=torch.Generator().manual_seed(0))
    ref = _reference(f, cfg, mu, 1.0, 0)
    for a, b in zip(st, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    if temp is not None:
        (g,) = torch.autograd.grad(st.mu.sum(), theta)
        (g_ref,) = torch.autograd.grad(ref.mu.sum(), theta)
        torch.testing.assert_close(g, g_ref, rtol=0, atol=0)
    # the same shape reuses the compiled loop; a new shape compiles once more
    solver(mu + 1, 1.0)
    solver(torch.zeros(3, 5, dtype=torch.float64), 1.0)
    assert len(solver.timings) == 2 and all(t > 0 for t in solver.timings.values())


def test_solver_graph_replays_on_static_buffers():
    theta, f = objective(4)
    cfg = CEMConfig(30, 5, n_iter=3, temp=1.0, iter_eps=None, track_best=True)
    solver = Solver(f, cfg, capture="graph", graph_backend="replay")
    with torch.no_grad():
        outs = [
            solver(
                torch.full((6, 4), v, dtype=torch.float64), 0.5, generator=torch.Generator().manual_seed(3)
            )
            for v in (0.0, 1.0)
        ]
        refs = [_reference(f, cfg, torch.full((6, 4), v, dtype=torch.float64), 0.5, 3) for v in (0.0, 1.0)]
    for st, ref in zip(outs, refs):
        for a, b in zip(st, ref):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(outs[0].mu, outs[1].mu)  # returned states are copies, not the buffers
    assert len(solver.timings) == 1


def test_solver_none_is_the_eager_loop_and_auto_is_none_on_cpu():
    _, f = objective(3)
    cfg = CEMConfig(40, 5, n_iter=5, temp=None)
    solver = Solver(f, cfg)
    mu = torch.zeros(2, 3, dtype=torch.float64)
    assert solver.mode_for(mu) == "none"
    st = solver(mu, 1.0, generator=torch.Generator().manual_seed(0))
    ref = solve(f, init_state(mu, 1.0), cfg, generator=torch.Generator().manual_seed(0))
    assert torch.equal(st.mu, ref.mu)


def test_solver_errors():
    _, f = objective(3)
    cfg = CEMConfig(10, 2)
    with pytest.raises(ValueError, match="capture"):
        Solver(f, cfg, capture="cudagraph")
    with pytest.raises(TypeError, match="cfg"):
        Solver(f, {"n_sample": 10})
    with pytest.raises(TypeError, match="f"):
        Solver(3, cfg)
    with pytest.raises(ValueError, match="CUDA"):
        with torch.no_grad():
            Solver(f, cfg, capture="graph")(torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="no_grad"):
        Solver(f, cfg, capture="graph", graph_backend="replay")(torch.zeros(2, 3, requires_grad=True))


# --------------------------------------------------------------------------- CUDA only


@pytest.mark.skipif(not CUDA, reason="no CUDA device available")
def test_cuda_sync_free_dcem_has_no_host_synchronisation():
    theta, f = objective(20, torch.float32, "cuda")
    mu = torch.zeros(100, 20, device="cuda")
    dcem.dcem(f, 20, 100, 100, 10, 10, 1.0, init_mu=mu)  # warm-up (lazy init may sync)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        x = dcem.dcem(f, 20, 100, 100, 10, 10, 1.0, init_mu=mu)
        torch.autograd.grad(x.sum(), theta)
        dcem.dcem(f, 20, 100, 100, 10, 10, None, init_mu=mu)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.skipif(not CUDA, reason="no CUDA device available")
@pytest.mark.parametrize("temp", [1.0, None], ids=["dcem", "cem"])
def test_cuda_graph_capture_matches_eager(temp):
    _, f = objective(20, torch.float32, "cuda")
    cfg = CEMConfig(100, 10, n_iter=10, temp=temp, iter_eps=None)
    solver = Solver(f, cfg, capture="graph")
    mu = torch.zeros(100, 20, device="cuda")
    with torch.no_grad():
        for seed in (0, 1):
            g = torch.Generator(device="cuda").manual_seed(seed)
            st = solver(mu, 1.0, generator=g)
            noise = torch.randn(
                10, 100, 100, 20, generator=torch.Generator(device="cuda").manual_seed(seed), device="cuda"
            )
            ref = solve(f, init_state(mu, 1.0), dataclasses.replace(cfg, sync="free"), noise=noise)
            torch.testing.assert_close(st.mu, ref.mu)


@pytest.mark.skipif(not CUDA, reason="no CUDA device available")
def test_cuda_reduce_overhead_compile_with_backward():
    theta, f = objective(20, torch.float32, "cuda")
    solver = Solver(f, CEMConfig(100, 10, n_iter=10, temp=1.0, iter_eps=None), capture="compile")
    for _ in range(3):  # reduce-overhead records on the second or third call
        st = solver(torch.zeros(100, 20, device="cuda"), 1.0)
        (g,) = torch.autograd.grad(st.mu.sum(), theta)
    assert torch.isfinite(g).all()


def test_captured_generic_function_per_shape_and_errors():
    from dcem.optim import Captured, resolve_capture

    def fn(a, b):
        return a * b, (a + b).sum(-1)

    cap = Captured(fn, "graph", graph_backend="replay")
    with torch.no_grad():
        for n in (3, 3, 5):
            a, b = torch.randn(n, 2), torch.randn(n, 2)
            p, s = cap(a, b)
            assert torch.equal(p, a * b) and torch.equal(s, (a + b).sum(-1))
    assert len(cap.timings) == 2
    with pytest.raises(ValueError, match="mode"):
        Captured(fn, "eager")
    with pytest.raises(ValueError, match="graph_backend"):
        Captured(fn, "graph", graph_backend="hip")
    assert resolve_capture("auto", torch.zeros(1)) == "none"
    assert resolve_capture("compile", torch.zeros(1)) == "compile"
