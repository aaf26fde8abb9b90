import math

import pytest
import torch

from dcem.control import CartpoleDx, Dynamics, PendulumDx, cartpole_swingup_cost, check_state


def _cartpole_ref(state, u, g=9.8, mc=1.0, mp=0.1, l=0.5, dt=0.05):
    """Scalar re-derivation of the mpc.pytorch cartpole step (explicit Euler)."""
    x, dx, c, s, dth = state
    u = max(-100.0, min(100.0, u))
    th = math.atan2(s, c)
    tot = mc + mp
    tmp = (u + mp * l * dth**2 * s) / tot
    th_acc = (g * s - c * tmp) / (l * (4 / 3 - mp * c**2 / tot))
    x_acc = tmp - mp * l * th_acc * c / tot
    th2 = th + dt * dth
    return [x + dt * dx, dx + dt * x_acc, math.cos(th2), math.sin(th2), dth + dt * th_acc]


def test_cartpole_upright_push_hand_computed():
    dx = CartpoleDx().double()
    x = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    nxt = dx.step(x, torch.tensor([10.0], dtype=torch.float64))
    # by hand: tmp = 10/1.1; th_acc = -tmp / (0.5 (4/3 - 0.1/1.1)); x_acc = tmp - 0.05 th_acc / 1.1
    tmp = 10 / 1.1
    th_acc = -tmp / (0.5 * (4 / 3 - 0.1 / 1.1))
    x_acc = tmp - 0.05 * th_acc / 1.1
    assert th_acc == pytest.approx(-14.634146, abs=1e-5)
    expected = torch.tensor([0.0, 0.05 * x_acc, 1.0, 0.0, 0.05 * th_acc], dtype=torch.float64)
    torch.testing.assert_close(nxt, expected)


@pytest.mark.parametrize("u", [-150.0, -20.0, 0.0, 35.0, 100.0, 250.0])
def test_cartpole_matches_scalar_reference(u):
    state = [0.3, -0.2, math.cos(2.1), math.sin(2.1), 0.7]
    dx = CartpoleDx().double()
    got = dx.step(torch.tensor(state, dtype=torch.float64), torch.tensor([u], dtype=torch.float64))
    torch.testing.assert_close(got, torch.tensor(_cartpole_ref(state, u), dtype=torch.float64))


def test_pendulum_hand_computed():
    dx = PendulumDx().double()
    up = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    got = dx.step(up, torch.tensor([1.0], dtype=torch.float64))
    # dth' = 0.05 * 3/(m l^2) * 1 = 0.15, th' = 0.05 * 0.15
    torch.testing.assert_close(
        got, torch.tensor([math.cos(0.0075), math.sin(0.0075), 0.15], dtype=torch.float64)
    )
    side = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)  # th = pi/2, gravity 3g/(2l) = 15
    got = dx.step(side, torch.tensor([5.0], dtype=torch.float64))  # clamped to 2
    dth = 0.05 * (15.0 + 3.0 * 2.0)
    th = math.pi / 2 + 0.05 * dth
    torch.testing.assert_close(got, torch.tensor([math.cos(th), math.sin(th), dth], dtype=torch.float64))


def test_interface_and_bounds():
    for dx, ns, bound in ((CartpoleDx(), 5, 100.0), (PendulumDx(), 3, 2.0)):
        assert isinstance(dx, Dynamics)
        assert dx.n_state == ns and dx.n_ctrl == 1 and dx.dt == 0.05
        assert dx.u_lower.shape == (1,) and float(dx.u_upper) == bound and float(dx.u_lower) == -bound


@pytest.mark.parametrize("cls", [CartpoleDx, PendulumDx])
def test_batched_any_leading_dims_and_broadcast(cls):
    dx = cls()
    g = torch.Generator().manual_seed(0)
    x = dx.sample_state(6, g).view(2, 3, dx.n_state)
    u = torch.randn(2, 3, 1, generator=g)
    out = dx.step(x, u)
    assert out.shape == (2, 3, dx.n_state)
    for i in range(2):
        for j in range(3):
            torch.testing.assert_close(out[i, j], dx.step(x[i, j], u[i, j]))
    # a state broadcast against several controls
    out = dx.step(x[:, :1], u)
    assert out.shape == (2, 3, dx.n_state)
    torch.testing.assert_close(out[:, 2], dx.step(x[:, 0], u[:, 2]))


@pytest.mark.parametrize("cls", [CartpoleDx, PendulumDx])
def test_gradcheck_step(cls):
    dx = cls().double()
    x = dx.sample_state(3, torch.Generator().manual_seed(1)).double().requires_grad_()
    u = (
        0.3 * dx.u_upper.double() * torch.tensor([[-0.5], [0.1], [0.7]], dtype=torch.float64)
    ).requires_grad_()
    assert torch.autograd.gradcheck(dx.step, (x, u))


def test_gradcheck_params_and_rollout_fd():
    params = torch.nn.Parameter(torch.tensor([9.8, 1.0, 0.1, 0.5], dtype=torch.float64))
    dx = CartpoleDx(params=params).double()
    x0 = dx.sample_state(2, torch.Generator().manual_seed(2)).double()
    u = 20 * torch.randn(10, 2, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(3))

    def total(p):
        return cartpole_swingup_cost(CartpoleDx(params=p).rollout(x0, u)[:-1], u).sum()

    p = params.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(total, (p,))
    assert isinstance(dx.params, torch.nn.Parameter) and "params" in dict(dx.named_parameters())
    # central finite differences of the rollout cost w.r.t. the initial state
    x = x0.clone().requires_grad_()
    f = lambda z: cartpole_swingup_cost(dx.rollout(z, u)[:-1], u).sum()  # noqa: E731
    (g,) = torch.autograd.grad(f(x), x)
    eps = 1e-6
    for k in (0, 1, 4):
        e = torch.zeros_like(x0)
        e[0, k] = eps
        with torch.no_grad():
            fd = (f(x0 + e) - f(x0 - e)) / (2 * eps)
        assert float(g[0, k]) == pytest.approx(float(fd), rel=1e-5, abs=1e-6)


def test_rollout_shapes_and_time_major():
    dx = PendulumDx()
    x0 = dx.sample_state(4)
    u = torch.zeros(7, 4, 1)
    xs = dx.rollout(x0, u)
    assert xs.shape == (8, 4, 3)
    torch.testing.assert_close(xs[0], x0)
    torch.testing.assert_close(xs[3], dx.step(dx.step(dx.step(x0, u[0]), u[1]), u[2]))


def test_sample_state_distribution():
    x = CartpoleDx().sample_state(2000, torch.Generator().manual_seed(0))
    assert x.shape == (2000, 5)
    assert x[:, 0].abs().max() <= 0.5 and x[:, 1].abs().max() <= 0.5 and x[:, 4].abs().max() <= 1.0
    torch.testing.assert_close(x[:, 2] ** 2 + x[:, 3] ** 2, torch.ones(2000))
    assert float(x[:, 2].mean()) == pytest.approx(0.0, abs=0.06)  # th ~ U(-pi, pi)


def test_swingup_cost_hand_computed():
    x = torch.tensor([[2.0, 0.0, 0.5, 0.0, 0.0]])
    u = torch.tensor([[10.0]])
    # -(cos th - 0.1 x^2 - 1e-5 u^2) = -(0.5 - 0.4 - 0.001)
    assert float(cartpole_swingup_cost(x, u)[0]) == pytest.approx(-0.099)


def test_bad_inputs():
    dx = CartpoleDx()
    with pytest.raises(ValueError, match="x must have shape"):
        dx.step(torch.zeros(3, 4), torch.zeros(3, 1))
    with pytest.raises(ValueError, match="u must have shape"):
        dx.step(torch.zeros(3, 5), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="do not broadcast"):
        dx.step(torch.zeros(3, 5), torch.zeros(4, 1))
    with pytest.raises(TypeError):
        dx.step([0.0] * 5, torch.zeros(1))
    with pytest.raises(ValueError, match="params"):
        CartpoleDx(params=(1.0, 2.0))
    with pytest.raises(ValueError, match="dt"):
        PendulumDx(dt=0.0)
    with pytest.raises(ValueError, match="finite"):
        check_state(torch.tensor([0.0, float("nan"), 1.0, 0.0, 0.0]), 5, "x_init")
    with pytest.raises(ValueError, match="x_init must have shape"):
        check_state(torch.zeros(2, 4), 5, "x_init")
    with pytest.raises(ValueError, match="time-major"):
        dx.rollout(torch.zeros(5), torch.zeros(1))
