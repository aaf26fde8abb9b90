import math

import numpy as np
import pytest
import torch

from dcem.control import (
    MPC,
    CartpoleDx,
    Dynamics,
    PendulumDx,
    cartpole_swingup_cost,
    dcem_ctrl,
    rollout_cost,
)
from dcem.planning import PlannerConfig

pytestmark = pytest.mark.usefixtures("sync_path")


class LinearDx(Dynamics):
    """x' = A x + B u, for LQR references."""

    def __init__(self, A, B, bound=1e3):
        super().__init__()
        self.n_state, self.n_ctrl, self.dt = A.shape[0], B.shape[1], 1.0
        self.register_buffer("A", A)
        self.register_buffer("B", B)
        self._set_bounds(-bound, bound)

    def _step(self, x, u):
        return x @ self.A.T.to(x) + u @ self.B.T.to(x)


def _lqr_first_action(A, B, Q, R, x0, H):
    """Finite-horizon LQR by the Riccati recursion: min sum_{t<H} x'Qx + u'Ru (no terminal cost)."""
    A, B, Q, R = (np.asarray(m, dtype=np.float64) for m in (A, B, Q, R))
    P = np.zeros_like(Q)
    K = None
    for _ in range(H):
        K = np.linalg.solve(R + B.T @ P @ B, B.T @ P @ A)
        P = Q + A.T @ P @ (A - B @ K)
    return -K @ np.asarray(x0, dtype=np.float64)


def _double_integrator():
    A = torch.tensor([[1.0, 0.1], [0.0, 1.0]], dtype=torch.float64)
    B = torch.tensor([[0.005], [0.1]], dtype=torch.float64)
    return A, B


def test_mpc_matches_lqr_batch():
    A, B = _double_integrator()
    Q, R = torch.eye(2, dtype=torch.float64), 0.1 * torch.eye(1, dtype=torch.float64)
    dx = LinearDx(A, B, bound=20.0).double()
    cost = lambda x, u: (x @ Q * x).sum(-1) + (u @ R * u).sum(-1)  # noqa: E731
    H = 4
    ctrl = MPC(
        H,
        dx,
        cost,
        PlannerConfig("cem", 400, 20, 25, std_scale=0.2),
        generator=torch.Generator().manual_seed(0),
    )
    x0 = torch.tensor([[1.0, 0.0], [-0.5, 1.0], [0.3, -2.0]], dtype=torch.float64)
    plan = ctrl.plan(x0)
    assert plan.u.shape == (H, 3, 1) and plan.cost.shape == (3,)
    for b in range(3):
        ref = _lqr_first_action(A, B, Q, R, x0[b], H)
        assert float(plan.u[0, b, 0]) == pytest.approx(float(ref[0]), abs=0.15 * max(1.0, abs(float(ref[0]))))
    # plan cost is the rollout cost of the returned plan
    torch.testing.assert_close(plan.cost, rollout_cost(dx, cost, x0, plan.u))


def test_dcem_ctrl_reference_interface_and_known_optimum():
    """Objective -sum_t (u_t - target_t)^2 has its optimum at the target sequence."""
    T, n_ctrl = 5, 2
    target = torch.linspace(-0.5, 0.5, T * n_ctrl).view(T, 1, n_ctrl)

    def unroll(x, u):
        assert u.shape[0] == T and u.shape[2] == n_ctrl and x.shape[0] == u.shape[1]
        return None, -(u - target).pow(2).sum((0, 2)) - 0 * x.sum(-1)

    obs = torch.zeros(3, 4)
    out = dcem_ctrl(
        obs,
        T,
        0.0,
        0.5,
        300,
        20,
        30,
        None,
        n_ctrl,
        None,
        unroll,
        lb=-1.0,
        ub=1.0,
        dcem_iter_eps=None,
        generator=torch.Generator().manual_seed(0),
    )
    assert set(out) >= {"u", "u_nominal", "init_u", "cost", "f"}
    assert out["u"].shape == (T, 3, n_ctrl)
    torch.testing.assert_close(out["init_u"], out["u"][0])
    torch.testing.assert_close(out["u"], target.expand(T, 3, n_ctrl), atol=0.05, rtol=0)
    assert out["cost"].shape == (3,) and float(out["cost"].max()) < 0.01
    # f evaluates samples (n_batch, N, T * n_ctrl) batch-major with the control fastest
    X = target.squeeze(1).reshape(1, 1, -1).expand(3, 2, -1)
    torch.testing.assert_close(out["f"](X), torch.zeros(3, 2))
    # 1-D obs: no batch dimension in u
    out1 = dcem_ctrl(torch.zeros(4), T, 0.0, 0.5, 50, 5, 3, None, n_ctrl, None, unroll)
    assert out1["u"].shape == (T, n_ctrl) and out1["init_u"].shape == (n_ctrl,)


def test_dcem_ctrl_dx_rew_step_and_latent_decode():
    dx = CartpoleDx()
    x = dx.sample_state(2, torch.Generator().manual_seed(0))
    rew = lambda x, u: -cartpole_swingup_cost(x, u)  # noqa: E731
    out = dcem_ctrl(
        x,
        10,
        0.0,
        50.0,
        100,
        10,
        3,
        rew,
        1,
        1.0,
        None,
        dx=dx,
        lb=dx.u_lower,
        ub=dx.u_upper,
        generator=torch.Generator().manual_seed(0),
    )
    assert out["u"].shape == (10, 2, 1) and out["u"].abs().max() <= 100
    torch.testing.assert_close(out["cost"], rollout_cost(dx, cartpole_swingup_cost, x, out["u"]))
    # discounted default rollout: cost = -sum_t 0.9^t r(x_t, u_t)
    out = dcem_ctrl(x, 10, 0.0, 50.0, 30, 5, 2, rew, 1, None, None, dx=dx, lb=-100.0, ub=100.0, discount=0.9)
    xs = dx.rollout(x, out["u"])
    ref = -sum(0.9**t * rew(xs[t], out["u"][t]) for t in range(10))
    torch.testing.assert_close(out["cost"], ref)
    W = torch.randn(3, 10)
    decode = lambda z: (50 * torch.tanh(z @ W)).T.unsqueeze(-1)  # noqa: E731  (M, 3) -> (10, M, 1)
    out = dcem_ctrl(
        x,
        10,
        None,
        None,
        50,
        5,
        3,
        rew,
        1,
        1.0,
        None,
        dx=dx,
        u_decode=decode,
        u_latent_dim=3,
        generator=torch.Generator().manual_seed(0),
    )
    assert out["z"].shape == (2, 3) and out["u"].shape == (10, 2, 1)
    torch.testing.assert_close(out["u"], decode(out["z"]))


def test_dcem_ctrl_slew_rate_and_q():
    T = 3

    def unroll(x, u):
        return x.unsqueeze(0).expand(T + 1, *x.shape), torch.zeros(x.shape[0])

    Q = lambda x, u: (x[:, :1] + u, 2 * x[:, :1] + u, None)  # noqa: E731
    obs = torch.ones(1, 2)
    out = dcem_ctrl(
        obs,
        T,
        0.0,
        1.0,
        10,
        2,
        1,
        None,
        1,
        None,
        unroll,
        Q=Q,
        Q_reduce="min",
        slew_rate_penalty=2.0,
        discount=0.5,
    )
    X = torch.tensor([[[0.0, 1.0, 0.0]]])
    # rewards = 0.5^2 * min(1 + 0, 2 + 0); obj = -0.25 + 2 * mean((0-1)^2, (1-0)^2)
    assert float(out["f"](X)) == pytest.approx(-0.25 + 2.0)


def test_warm_start_shift_and_bounds_per_dim():
    class TwoCtrl(Dynamics):
        def __init__(self):
            super().__init__()
            self.n_state, self.n_ctrl, self.dt = 1, 2, 1.0
            self._set_bounds(torch.tensor([-1.0, 0.0]), torch.tensor([1.0, 5.0]))

        def _step(self, x, u):
            return x + u[..., :1]

    dx = TwoCtrl()
    # cost pushes u0 -> -inf and u1 -> +inf: the optimum is on the (per-dimension) bounds
    cost = lambda x, u: u[..., 0] - u[..., 1]  # noqa: E731
    ctrl = MPC(
        3,
        dx,
        cost,
        PlannerConfig("cem", 64, 8, 10),
        shift_fill="last",
        generator=torch.Generator().manual_seed(0),
    )
    plan = ctrl.plan(torch.zeros(2, 1))
    assert bool((plan.u[..., 0] >= -1).all() and (plan.u[..., 1] <= 5).all() and (plan.u[..., 1] >= 0).all())
    torch.testing.assert_close(plan.u[..., 0], torch.full((3, 2), -1.0), atol=0.05, rtol=0)
    torch.testing.assert_close(plan.u[..., 1], torch.full((3, 2), 5.0), atol=0.2, rtol=0)
    warm = ctrl.warm_plan
    torch.testing.assert_close(warm[:-1], plan.u[1:])
    torch.testing.assert_close(warm[-1], plan.u[-1])
    for fill, expected in (("zero", torch.tensor([0.0, 0.0])), ("mid", torch.tensor([0.0, 2.5]))):
        c = MPC(3, dx, cost, PlannerConfig("cem", 16, 4, 2), shift_fill=fill)
        p = c.plan(torch.zeros(1, 1))
        torch.testing.assert_close(c.warm_plan[:-1], p.u[1:])
        torch.testing.assert_close(c.warm_plan[-1, 0], expected)
    # the warm start is the next initial mean: with a tiny sigma the plan barely moves
    c = MPC(
        3, dx, cost, PlannerConfig("cem", 16, 4, 1), init_sigma=torch.tensor([1e-6, 1e-6])
    )
    u_init = torch.tensor([[[0.5, 1.0]], [[0.2, 2.0]], [[0.1, 3.0]]])
    p = c.plan(torch.zeros(1, 1), u_init=u_init)
    torch.testing.assert_close(p.u, u_init, atol=1e-4, rtol=0)
    p2 = c.plan(torch.zeros(1, 1))
    torch.testing.assert_close(p2.u[:2], u_init[1:], atol=1e-4, rtol=0)
    c.reset()
    assert c.warm_plan is None


def test_dcem_plan_is_differentiable_and_matches_finite_differences():
    dx = PendulumDx().double()
    x0 = torch.tensor([[math.cos(2.5), math.sin(2.5), 0.3]], dtype=torch.float64)

    def plan_cost(x):
        c = MPC(
            5,
            dx,
            config=PlannerConfig("dcem", 30, 5, 4, temp=1.0, select="mean"),
            warm_start=False,
            generator=torch.Generator().manual_seed(0),
        )
        return c.plan(x).cost.sum()

    x = x0.clone().requires_grad_()
    (g,) = torch.autograd.grad(plan_cost(x), x)
    eps = 1e-6
    for k in range(3):
        e = torch.zeros_like(x0)
        e[0, k] = eps
        fd = (plan_cost(x0 + e) - plan_cost(x0 - e)) / (2 * eps)
        assert float(g[0, k]) == pytest.approx(float(fd), rel=1e-4, abs=1e-6)


def test_nan_costs_never_chosen():
    # diverging rollouts (NaN) for any plan whose first action is positive
    def rollout(x0, u):
        c = (u - 0.5).pow(2).sum((0, 2))
        return torch.where(u[0, :, 0] > 0, torch.full_like(c, float("nan")), c)

    ctrl = MPC(
        2,
        config=PlannerConfig("cem", 50, 5, 5, select="mean"),
        rollout=rollout,
        n_state=1,
        n_ctrl=1,
        u_lower=-1.0,
        u_upper=1.0,
        generator=torch.Generator().manual_seed(0),
    )
    p = ctrl.plan(torch.zeros(4, 1))
    assert bool(torch.isfinite(p.cost).all()) and bool((p.u[0] <= 0).all())

    # a final mean inside a NaN hole is replaced by the best finite sample
    def holey(x0, u):
        c = u.pow(2).sum((0, 2))
        return torch.where(u[0, :, 0].abs() < 0.3, torch.full_like(c, float("nan")), c)

    ctrl = MPC(
        1,
        config=PlannerConfig("cem", 100, 20, 3, select="mean"),
        rollout=holey,
        n_state=1,
        n_ctrl=1,
        u_lower=-1.0,
        u_upper=1.0,
        generator=torch.Generator().manual_seed(0),
    )
    p = ctrl.plan(torch.zeros(3, 1))
    assert bool(torch.isfinite(p.cost).all()) and bool((p.u[0].abs() >= 0.3).all())


def test_closed_loop_run_shapes():
    dx = PendulumDx()
    ctrl = MPC(
        5,
        dx,
        config=PlannerConfig("cem", 20, 4, 2),
        generator=torch.Generator().manual_seed(0),
    )
    out = ctrl.run(dx.sample_state(3, torch.Generator().manual_seed(0)), 4)
    assert out["x"].shape == (5, 3, 3) and out["u"].shape == (4, 3, 1) and out["cost"].shape == (4, 3)
    torch.testing.assert_close(out["x"][1], dx.step(out["x"][0], out["u"][0]))


@pytest.mark.slow
def test_pendulum_swingup_cem():
    dx = PendulumDx()
    ctrl = MPC(
        20,
        dx,
        config=PlannerConfig("cem", 300, 30, 8),
        generator=torch.Generator().manual_seed(0),
    )
    x0 = torch.tensor([[-1.0, 0.0, 0.0], [math.cos(2.5), math.sin(2.5), 0.0]])
    out = ctrl.run(x0, 100)
    assert bool((out["x"][-10:, :, 0] > 0.95).all())  # upright at the end


def test_bad_inputs():
    dx = CartpoleDx()
    with pytest.raises(ValueError, match="horizon"):
        MPC(0, dx)
    with pytest.raises(ValueError, match="u_lower"):
        MPC(5, dx, u_lower=torch.zeros(3))
    with pytest.raises(ValueError, match="n_elite"):
        MPC(5, dx, config=PlannerConfig("cem", 10, 11))
    with pytest.raises(ValueError, match="exactly one"):
        MPC(5)
    c = MPC(3, dx, config=PlannerConfig("cem", 10, 2, 1))
    with pytest.raises(ValueError, match="x must have shape"):
        c.plan(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="finite"):
        c.plan(torch.tensor([[0.0, float("inf"), 1.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="u_init"):
        c.plan(torch.zeros(2, 5), u_init=torch.zeros(2, 2, 1))
    with pytest.raises(ValueError, match="plan_horizon"):
        dcem_ctrl(torch.zeros(1, 5), 0, 0.0, 1.0, 10, 2, 1, None, 1, None, lambda x, u: (None, x[:, 0]))
    with pytest.raises(ValueError, match="obs"):
        dcem_ctrl(torch.zeros(1, 1, 5), 3, 0.0, 1.0, 10, 2, 1, None, 1, None, lambda x, u: (None, x[:, 0]))
    with pytest.raises(ValueError, match="unroll_dx"):
        dcem_ctrl(torch.zeros(1, 5), 3, 0.0, 1.0, 10, 2, 1, None, 1, None, lambda x, u: (None, x))
    with pytest.raises(ValueError, match="lb"):
        dcem_ctrl(
            torch.zeros(1, 5),
            3,
            0.0,
            1.0,
            10,
            2,
            1,
            None,
            2,
            None,
            lambda x, u: (None, x[:, 0]),
            lb=torch.zeros(4),
        )
    bad = MPC(
        2,
        config=PlannerConfig("cem", 4, 2, 1),
        rollout=lambda x, u: torch.zeros(3),
        n_state=1,
        n_ctrl=1,
        u_lower=-1.0,
        u_upper=1.0,
    )
    with pytest.raises(ValueError, match="rollout cost"):
        bad.plan(torch.zeros(1, 1))


@pytest.mark.parametrize("rule", ["mppi", "icem"])
def test_mpc_with_other_planner_rules(rule):
    dx = PendulumDx()
    x = dx.sample_state(3, torch.Generator().manual_seed(0))
    ctrl = MPC(8, dx, config=PlannerConfig(rule, 100, 10, 4), generator=torch.Generator().manual_seed(0))
    scale = 1.0 if rule in ("mppi", "icem") else 0.5  # the rule's std_scale (RULE_DEFAULTS)
    torch.testing.assert_close(ctrl.init_sigma, scale * (dx.u_upper - dx.u_lower))
    plan = ctrl.plan(x)
    zero = rollout_cost(dx, dx.quadratic_cost, x, torch.zeros(8, 3, 1))
    assert bool((plan.cost <= zero).all())
    torch.testing.assert_close(plan.cost, rollout_cost(dx, dx.quadratic_cost, x, plan.u))
    with pytest.raises(ValueError, match="lam"):
        MPC(8, dx, config=PlannerConfig("mppi", lam=0.0))


@pytest.mark.free_path
@pytest.mark.parametrize("temp", [None, 1.0])
def test_captured_mpc_plans_equal_eager_plans(temp):
    # capture="auto" (the default) is a CUDA graph on CUDA; the replay backend runs its
    # static-buffer handling on CPU and must reproduce the eager sync-free plans, warm start included
    from dcem.control import MPC, CartpoleDx, cartpole_swingup_cost

    def make(capture):
        g = torch.Generator().manual_seed(0)
        cfg = PlannerConfig("dcem" if temp else "cem", 64, 8, 4, temp=temp or 1.0, capture=capture)
        return MPC(10, CartpoleDx(), cartpole_swingup_cost, cfg, generator=g,
                   capture_options={"graph_backend": "replay"})  # fmt: skip

    eager, cap = make("none"), make("graph")
    x = torch.tensor([[0.0, 0.0, -1.0, 0.0, 0.0], [0.5, 0.1, -0.9, 0.4, 0.0]])
    with torch.no_grad():
        for _ in range(3):
            a, b = eager.plan(x), cap.plan(x)
            torch.testing.assert_close(a.u, b.u, rtol=0, atol=0)
            torch.testing.assert_close(a.cost, b.cost, rtol=0, atol=0)
    assert len(cap._kept_planner._captures) == 1
