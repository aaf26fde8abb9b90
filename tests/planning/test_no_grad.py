"""Plans made without gradients run with no autograd bookkeeping (torch.inference_mode), give the
same plans as differentiable ones, and hand back ordinary tensors."""

from __future__ import annotations

import pytest
import torch

from dcem.planning import Planner, PlannerConfig

RULES = ["cem", "dcem", "mppi", "icem"]


def setup(rule, target_grad=False):
    target = torch.linspace(-0.5, 0.5, 4, dtype=torch.float64).view(4, 1).requires_grad_(target_grad)
    modes: list[bool] = []

    def cost(U):
        modes.append(torch.is_inference_mode_enabled())
        return (U - target).pow(2).sum((-1, -2))

    p = Planner(4, 1, PlannerConfig(rule, 60, 6, 4), lower=-1.0, upper=1.0)
    return p, cost, modes, target


def plan(p, cost):
    return p.plan(cost, batch_shape=(2,), generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.mark.parametrize("rule", RULES)
def test_no_grad_plans_equal_differentiable_ones_and_are_ordinary_tensors(rule):
    p, cost, modes, target = setup(rule, target_grad=True)
    ref = plan(p, cost)
    assert ref.cost.requires_grad and not any(modes)  # differentiable: never in inference mode
    modes.clear()
    with torch.no_grad():
        res = plan(p, cost)
    assert all(modes) and len(modes) == 4
    for a, b in zip(ref, res):
        if isinstance(a, torch.Tensor):
            assert not b.is_inference() and not b.requires_grad
            torch.testing.assert_close(a.detach(), b, rtol=0, atol=0)
    w = torch.ones(2, 4, 1, dtype=torch.float64, requires_grad=True)  # usable in autograd afterwards
    (w * res.plan).sum().backward()
    torch.testing.assert_close(w.grad, res.plan)
    res.plan.add_(1.0)  # and in place


@pytest.mark.parametrize("rule", RULES)
def test_grad_enabled_plan_with_nothing_differentiable_drops_the_bookkeeping(rule):
    p, cost, modes, _ = setup(rule, target_grad=False)
    res = plan(p, cost)
    assert modes == [False, True, True, True]  # from the second objective call on
    assert not res.plan.is_inference() and not res.cost.requires_grad
    with torch.no_grad():
        ref = plan(p, cost)
    torch.testing.assert_close(res.plan, ref.plan, rtol=0, atol=0)


def test_a_differentiable_start_keeps_gradients():
    p, cost, modes, _ = setup("dcem")
    mean = torch.zeros(2, 4, 1, dtype=torch.float64, requires_grad=True)
    res = p.plan(cost, init_mean=mean, generator=torch.Generator().manual_seed(0))
    assert not any(modes) and res.cost.requires_grad
    (g,) = torch.autograd.grad(res.cost.sum(), mean)
    assert torch.isfinite(g).all()
