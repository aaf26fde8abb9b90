"""The planner's captured loop (PlannerConfig.capture): equal to the eager sync-free plan.

CUDA graphs need a GPU; their static-buffer handling runs on CPU through the ``replay``
backend, and ``compile`` through Dynamo/AOTAutograd (``aot_eager``), which fails on any host
read, so these tests also prove the sync-free planner loop has none.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import dcem
from dcem.planning import Planner, PlannerConfig

RULES = ["cem", "dcem", "mppi", "icem"]


def quad_cost(U, target):
    """``(B, M, H, A)`` plans against ``target (B, H, A)``."""
    return (U - target.unsqueeze(1)).pow(2).sum((-1, -2))


def make(rule, capture, **kw):
    cfg = PlannerConfig(rule, n_sample=40, n_elite=5, n_iter=4, capture=capture, sync="free", **kw)
    opts = {"graph_backend": "replay"} if capture == "graph" else {"compile_kwargs": {"backend": "aot_eager"}}
    return Planner(5, 2, cfg, lower=-1.0, upper=1.0, capture_options=opts)


def plan(p, target, seed):
    return p.plan(quad_cost, batch_shape=(3,), generator=torch.Generator().manual_seed(seed),
                  dtype=torch.float64, cost_args=(target,))  # fmt: skip


@pytest.mark.parametrize("rule", RULES)
def test_graph_replay_equals_the_eager_sync_free_plan(rule):
    eager, cap = make(rule, "none"), make(rule, "graph")
    for seed in (0, 1):  # the second call replays the recorded loop with new inputs
        target = (
            torch.rand(3, 5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(10 + seed)) - 0.5
        )
        with torch.no_grad():
            a, b = plan(eager, target, seed), plan(cap, target, seed)
        for x, y in zip(a[:8], b[:8]):
            if x is not None:
                torch.testing.assert_close(x, y, rtol=0, atol=0)
        assert b.n_evals == 4
    assert len(cap._captures) == 1


@pytest.mark.parametrize("rule", ["cem", "dcem"])
def test_compiled_plan_equals_the_eager_sync_free_plan(rule):
    torch._dynamo.reset()
    eager, cap = make(rule, "none"), make(rule, "compile")
    target = torch.rand(3, 5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) - 0.5
    with torch.no_grad():
        a, b = plan(eager, target, 0), plan(cap, target, 0)
    torch.testing.assert_close(a.plan, b.plan, rtol=0, atol=0)
    torch.testing.assert_close(a.cost, b.cost, rtol=0, atol=0)


def test_auto_is_eager_on_cpu_and_iter_cb_is_refused_with_capture():
    p = make("cem", "auto")
    target = torch.zeros(3, 5, 2, dtype=torch.float64)
    with torch.no_grad():
        plan(p, target, 0)
    assert p._captures == {}  # CPU: eager
    with pytest.raises(ValueError, match="iter_cb"):
        make("cem", "graph").plan(quad_cost, batch_shape=(3,), cost_args=(target,), iter_cb=lambda *a: None)


def test_a_capture_that_fails_warns_once_and_plans_eagerly():
    def host_reading_cost(U, target):
        if float(U.abs().max()) > 10:  # a host read: not capturable under fullgraph compile
            raise AssertionError
        return quad_cost(U, target)

    torch._dynamo.reset()
    p = make("cem", "compile")
    target = torch.zeros(3, 5, 2, dtype=torch.float64)
    with torch.no_grad(), pytest.warns(RuntimeWarning, match="planning eagerly"):
        res = p.plan(host_reading_cost, batch_shape=(3,), cost_args=(target,), dtype=torch.float64)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")
        res2 = p.plan(host_reading_cost, batch_shape=(3,), cost_args=(target,), dtype=torch.float64)
    assert res.plan.shape == res2.plan.shape == (3, 5, 2)


def test_bad_capture_option():
    with pytest.raises(ValueError, match="capture"):
        PlannerConfig("cem", capture="cudagraph")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device available")
@pytest.mark.parametrize("rule", RULES)
def test_cuda_graph_plan_matches_eager(rule):
    cfg = PlannerConfig(rule, n_sample=200, n_elite=20, n_iter=5, capture="graph")
    p, e = Planner(5, 2, cfg, lower=-1.0, upper=1.0), Planner(5, 2, PlannerConfig(rule, 200, 20, 5),
                                                              lower=-1.0, upper=1.0)  # fmt: skip
    target = torch.rand(3, 5, 2, device="cuda") - 0.5
    with torch.no_grad(), dcem.sync_mode("free"):
        for seed in (0, 1):
            g1, g2 = (torch.Generator(device="cuda").manual_seed(seed) for _ in range(2))
            a = e.plan(quad_cost, batch_shape=(3,), generator=g1, device="cuda", cost_args=(target,))
            b = p.plan(quad_cost, batch_shape=(3,), generator=g2, device="cuda", cost_args=(target,))
            torch.testing.assert_close(a.plan, b.plan)
