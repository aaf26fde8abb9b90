"""The no-autograd host loop (dcem/planning/hostloop.py) gives the general loop's plans bit for bit,
raises its errors, and the default start built once per shape is never written to."""

from __future__ import annotations

import math

import pytest
import torch

import dcem
import dcem.planning.planner as planner_mod
from dcem.planning import Planner, PlannerConfig
from dcem.planning.hostloop import HostLoop

H, A = 4, 2


def quadratic(dtype=torch.float64, bad: str | None = None, seen: list | None = None):
    target = torch.linspace(-0.7, 0.7, H * A, dtype=dtype).view(H, A)

    def cost(U):
        f = (U - target).pow(2).sum((-1, -2)) + 0.3 * U[..., 0, 0].sin()
        if seen is not None:
            seen.append(U.clone())
        if bad == "some":  # a few invalid costs in every row: NaN, +inf (never best) and a -inf (best)
            f = f.clone()
            f[..., 1], f[..., 3] = math.nan, math.inf
        if bad == "neg":
            f = f.clone()
            f[..., 2] = -math.inf
        if bad == "mean_nan":  # the mean candidate (the last one) invalid
            f = f.clone()
            f[..., -1] = math.nan
        return f

    return cost


def both(p: Planner, cost, monkeypatch, **kw) -> tuple:
    """The plan of the host loop and of the general loop (same generator seed), under no_grad."""
    out = []
    for general in (False, True):
        with monkeypatch.context() as m:
            if general:
                m.setattr(planner_mod, "host_loop_ok", lambda mu, host: False)
            ran = []
            m.setattr(HostLoop, "run", _spy(HostLoop.run, ran))
            with torch.no_grad():
                out.append(p.plan(cost, generator=torch.Generator().manual_seed(3), **kw))
            assert bool(ran) is not general  # the loop under test did run
    return tuple(out)


def _spy(fn, ran):
    def wrapped(*a, **k):
        ran.append(1)
        return fn(*a, **k)

    return wrapped


def assert_same(a, b) -> None:
    for x, y in zip(a, b, strict=True):
        if isinstance(x, torch.Tensor):
            assert x.dtype == y.dtype and x.shape == y.shape
            torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True)
        else:
            assert x == y


CASES = [
    ("cem", {}, {}),
    ("cem", {"select": "best"}, {}),
    ("mppi", {"select": "mean"}, {}),
    ("cem", {"iter_eps": 1e-3, "n_iter": 30}, {}),
    ("cem", {"momentum": 0.3, "pop_decay": 1.3}, {"bounds": "tensor"}),
    ("dcem", {}, {}),
    ("dcem", {"normalize": False, "temp": 2.0}, {"bounds": "lower"}),
    ("mppi", {}, {}),
    ("mppi", {"normalize": False, "lam": 2.0, "noise_beta": 0.0}, {"bounds": "none"}),
    ("icem", {}, {}),
    ("icem", {"pop_decay": 1.5, "momentum": 0.2, "noise_beta": 2.0}, {"bounds": "upper"}),
]


@pytest.mark.parametrize("rule,opts,extra", CASES)
@pytest.mark.parametrize("batch", [(1,), (3,), (2, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_host_loop_plans_equal_the_general_loop_bit_for_bit(rule, opts, extra, batch, dtype, monkeypatch):
    bounds = {
        None: {"lower": -1.0, "upper": 1.0},
        "tensor": {"lower": torch.tensor([-1.0, -0.5]), "upper": torch.tensor([1.0, 0.4])},
        "lower": {"lower": -0.2}, "upper": {"upper": 0.3}, "none": {},
    }[extra.get("bounds")]  # fmt: skip
    cfg = PlannerConfig(rule, 40, 5, opts.pop("n_iter", 6), **opts)
    p = Planner(H, A, cfg, **bounds)
    kw = {"batch_shape": batch, "dtype": dtype}
    if not bounds or "lower" not in bounds or "upper" not in bounds:
        kw["init_std"] = 0.5
    a, b = both(p, quadratic(dtype), monkeypatch, **kw)
    assert_same(a, b)


@pytest.mark.parametrize("rule", ["cem", "dcem", "mppi", "icem"])
@pytest.mark.parametrize("bad", ["some", "neg", "mean_nan"])
@pytest.mark.parametrize("select", ["min", "mean", "best"])
def test_invalid_costs_take_the_general_refit_with_the_same_plans(rule, bad, select, monkeypatch):
    p = Planner(H, A, PlannerConfig(rule, 30, 3, 5, select=select), lower=-1.0, upper=1.0)
    a, b = both(p, quadratic(bad=bad), monkeypatch, batch_shape=(3,))
    assert_same(a, b)


def test_a_latent_search_space_matches_too(monkeypatch):
    dec = torch.nn.Linear(3, H * A).double()
    decoder = lambda z: dec(z).view(*z.shape[:-1], H, A)  # noqa: E731
    p = Planner(H, A, PlannerConfig("icem", 30, 4, 5), lower=-1.0, upper=1.0, decoder=decoder, n_latent=3,
                z_lower=-2.0, z_upper=2.0)  # fmt: skip
    a, b = both(p, quadratic(), monkeypatch, batch_shape=(2,), dtype=torch.float64)
    assert_same(a, b)


def test_grad_enabled_plans_hand_over_after_the_first_iteration(monkeypatch):
    p = Planner(H, A, PlannerConfig("dcem", 30, 3, 5), lower=-1.0, upper=1.0)
    ran: list = []
    monkeypatch.setattr(HostLoop, "run", _spy(HostLoop.run, ran))
    res = p.plan(quadratic(), batch_shape=(2,), generator=torch.Generator().manual_seed(3))
    assert ran and not res.plan.is_inference()
    with torch.no_grad():
        ref = p.plan(quadratic(), batch_shape=(2,), generator=torch.Generator().manual_seed(3))
    assert_same(res, ref)


@pytest.mark.parametrize("rule", ["cem", "icem"])
def test_checkpointed_grad_enabled_plans_hand_over_after_one_general_iteration(rule, monkeypatch):
    p = Planner(H, A, PlannerConfig(rule, 30, 3, 5, checkpoint=True), lower=-1.0, upper=1.0)
    starts: list = []
    run = HostLoop.run
    monkeypatch.setattr(
        HostLoop,
        "run",
        lambda self, g, k, b, start_it: starts.append(start_it) or run(self, g, k, b, start_it),
    )
    res = p.plan(quadratic(), batch_shape=(2,), generator=torch.Generator().manual_seed(3))
    assert starts == [1] and not res.plan.is_inference()
    with torch.no_grad():
        ref = p.plan(quadratic(), batch_shape=(2,), generator=torch.Generator().manual_seed(3))
    assert starts == [1, 0]
    assert_same(res, ref)


def test_every_invalid_row_raises_the_general_error(monkeypatch):
    p = Planner(H, A, PlannerConfig("cem", 20, 3, 3), lower=-1.0, upper=1.0)
    cost = lambda U: torch.full(U.shape[:-2], math.nan, dtype=U.dtype)  # noqa: E731
    msgs = []
    for general in (False, True):
        with monkeypatch.context() as m:
            if general:
                m.setattr(planner_mod, "host_loop_ok", lambda mu, host: False)
            with torch.no_grad(), pytest.raises(ValueError, match="every candidate") as err:
                p.plan(cost, batch_shape=(2,))
            msgs.append(str(err.value))
    assert msgs[0] == msgs[1]


def test_sync_free_path_and_callbacks_keep_the_general_loop(monkeypatch):
    p = Planner(H, A, PlannerConfig("cem", 20, 3, 3), lower=-1.0, upper=1.0)
    ran: list = []
    monkeypatch.setattr(HostLoop, "run", _spy(HostLoop.run, ran))
    with torch.no_grad(), dcem.sync_mode("free"):
        p.plan(quadratic(), batch_shape=(2,))
    with torch.no_grad():
        p.plan(quadratic(), batch_shape=(2,), iter_cb=lambda *a: None)
    assert not ran


def test_the_cached_default_start_is_reused_and_never_written(monkeypatch):
    p = Planner(H, A, PlannerConfig("icem", 30, 4, 4), lower=-1.0, upper=1.0)
    seen: list = []
    with torch.no_grad():
        r1 = p.plan(quadratic(seen=seen), batch_shape=(2,), generator=torch.Generator().manual_seed(0))
    ((key, start),) = p._starts.items()
    before = [t.clone() for t in start[:4]]
    with torch.no_grad():
        r2 = p.plan(quadratic(), batch_shape=(2,), generator=torch.Generator().manual_seed(0))
    r3 = p.plan(quadratic(), batch_shape=(2,), generator=torch.Generator().manual_seed(0))
    assert len(p._starts) == 1 and p._starts[key] is start
    for t, b in zip(start[:4], before, strict=True):
        assert torch.equal(t, b)
    assert_same(r1, r2)
    assert_same(r1, r3)
    torch.testing.assert_close(seen[0][:, -1], torch.zeros(2, H, A, dtype=seen[0].dtype))  # the box middle
    p.lower, p.upper = -0.5, 0.5  # new float bounds: a new start
    with torch.no_grad():
        p.plan(quadratic(seen=seen), batch_shape=(2,), generator=torch.Generator().manual_seed(0))
    assert len(p._starts) == 2 and float(seen[-1].abs().max()) <= 0.5


@pytest.mark.parametrize("grad", [False, True])
def test_results_are_ordinary_tensors_that_share_no_memory(grad):
    p = Planner(H, A, PlannerConfig("cem", 20, 3, 3, select="best"), lower=-1.0, upper=1.0)
    with torch.set_grad_enabled(grad):
        res = p.plan(quadratic(), batch_shape=(1,), generator=torch.Generator().manual_seed(0))
    tensors = [t for t in res if isinstance(t, torch.Tensor)]
    assert not any(t.is_inference() or t.requires_grad for t in tensors)
    torch.testing.assert_close(res.plan, res.best_plan, rtol=0, atol=0)
    best = res.best_plan.clone()
    res.plan.add_(1.0)  # in place: no other field changes
    torch.testing.assert_close(res.best_plan, best, rtol=0, atol=0)
