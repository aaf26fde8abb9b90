"""Gradients through the planner: DCEM and MPPI against finite differences, gradcheck, checkpointing."""

import pytest
import torch
from torch import nn

from dcem.planning import Planner

pytestmark = pytest.mark.usefixtures("sync_path")

H, A = 3, 2


def _objective(theta):
    """A smooth non-quadratic cost with parameters ``theta (H, A)``."""

    def cost(U):
        return (U - theta).pow(2).sum((-1, -2)) + 0.1 * torch.sin(3 * U).sum((-1, -2))

    return cost


def _solve(theta, rule, checkpoint=False, iter_cb_=None, **kw):
    opts = dict(rule=rule, n_sample=20, n_elite=5, n_iter=3, temp=1.0, lam=1.0, select="mean")
    opts.update(kw)
    p = Planner(H, A, checkpoint=checkpoint, **opts)
    x0 = torch.zeros(2, H, A, dtype=theta.dtype)
    g = torch.Generator().manual_seed(0)
    return p.plan(_objective(theta), init_mean=x0, init_std=0.5, generator=g, iter_cb=iter_cb_)


@pytest.mark.parametrize("rule", ["dcem", "mppi"])
def test_plan_and_cost_gradients_match_finite_differences(rule):
    theta0 = torch.linspace(-0.5, 0.5, H * A, dtype=torch.float64).view(H, A)
    w = torch.randn(2, H, A, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def loss(theta):
        res = _solve(theta, rule)
        return (w * res.plan).sum() + res.cost.sum()

    theta = theta0.clone().requires_grad_()
    (g,) = torch.autograd.grad(loss(theta), theta)
    d = torch.randn(H, A, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    eps = 1e-6
    fd = (loss(theta0 + eps * d) - loss(theta0 - eps * d)) / (2 * eps)
    assert float((g * d).sum()) == pytest.approx(float(fd), rel=1e-4, abs=1e-7)
    assert float(g.abs().sum()) > 0


@pytest.mark.parametrize("rule", ["dcem", "mppi"])
def test_gradcheck_tiny_float64(rule):
    def f(theta):
        p = Planner(2, 1, rule=rule, n_sample=6, n_elite=2, n_iter=2, temp=1.0, lam=1.0, select="mean")
        cost = lambda U: (U - theta).pow(2).sum((-1, -2)) + 0.1 * torch.sin(3 * U).sum((-1, -2))  # noqa: E731
        res = p.plan(cost, init_mean=torch.zeros(1, 2, 1, dtype=torch.float64), init_std=0.5,
                     generator=torch.Generator().manual_seed(0))  # fmt: skip
        return res.plan.reshape(-1)

    theta = torch.tensor([[0.3], [-0.2]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (theta,), eps=1e-6, atol=1e-5)


def test_mppi_classic_option_detaches_its_weights():
    theta = torch.zeros(H, A, dtype=torch.float64, requires_grad=True)
    g_diff = torch.autograd.grad(_solve(theta, "mppi").plan.sum(), theta)[0]
    g_classic = torch.autograd.grad(_solve(theta, "mppi", differentiable=False).plan.sum(), theta)[0]
    # both are defined, the classic rule carries no gradient through its weights
    assert float(g_classic.abs().sum()) == 0 and float(g_diff.abs().sum()) > 0


def _saved_bytes(fn):
    seen = {}

    def pack(t):
        st = t.untyped_storage()
        seen[(st.data_ptr(), st.nbytes())] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


@pytest.mark.parametrize("rule", ["dcem", "mppi"])
def test_checkpointed_iterations_give_the_same_gradients_with_less_saved(rule):
    torch.manual_seed(0)
    dec = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, H * A), nn.Unflatten(-1, (H, A))).double()
    theta = torch.linspace(-0.3, 0.3, H * A, dtype=torch.float64).view(H, A).requires_grad_()
    calls = []

    def run(ckpt, latent):
        calls.clear()
        kw = dict(decoder=dec, n_latent=2, z_lower=-2.0, z_upper=2.0) if latent else {}
        p = Planner(H, A, rule=rule, n_sample=30, n_elite=5, n_iter=4, temp=1.0, lam=1.0, checkpoint=ckpt,
                    select="min", **kw)  # fmt: skip

        def cost(U):
            calls.append(1)
            return _objective(theta)(U)

        res, saved = _saved_bytes(
            lambda: p.plan(
                cost, batch_shape=(2,), dtype=torch.float64, generator=torch.Generator().manual_seed(0)
            )
        )
        n_fwd = len(calls)
        params = [theta, *dec.parameters()] if latent else [theta]
        grads = torch.autograd.grad(res.cost.sum() + res.plan.pow(2).sum(), params)
        return res, grads, saved, n_fwd, len(calls)

    for latent in (False, True):
        r0, g0, s0, f0, _ = run(False, latent)
        r1, g1, s1, f1, total = run(True, latent)
        torch.testing.assert_close(r1.plan, r0.plan)
        torch.testing.assert_close(r1.cost, r0.cost)
        for a, b in zip(g0, g1):
            torch.testing.assert_close(a, b)
        assert f0 == f1 == 4 and total == 8  # the backward recomputes each iteration once
        assert s1 < 0.5 * s0, (s0, s1)


@pytest.mark.parametrize("rule", ["cem", "dcem", "mppi"])
def test_iteration_callback_is_called_once_per_iteration_under_checkpointing(rule):
    theta = torch.zeros(H, A, dtype=torch.float64, requires_grad=True)
    grads = []
    for ckpt in (False, True):
        seen = []

        def cb(i, X, fX, I, X_I, mu, sigma, seen=seen):
            assert X.shape == (2, 11, H * A) and I.shape == (2, 11, 1) and mu.shape == (2, H * A)
            seen.append(X_I.sum())  # the callback may build on the graph

        res = _solve(theta, rule, checkpoint=ckpt, n_sample=10, n_elite=3, iter_cb_=cb)
        (g,) = torch.autograd.grad(res.cost.sum() + sum(seen), theta)
        assert len(seen) == 3
        grads.append(g)
    torch.testing.assert_close(grads[0], grads[1])
