import math

import pytest
import torch

from dcem.control import Dynamics, PendulumChainDx, chain_upright_cost


def _ref_step(th, dth, u, n, g=10.0, m=1.0, l=1.0, k=2.0, umax=5.0, dt=0.05):
    """Scalar re-derivation: semi-implicit Euler of m l^2 th'' = m g l sin th + k lap(th) + u."""
    new_th, new_dth = [], []
    for i in range(n):
        lap = (th[i + 1] - th[i] if i + 1 < n else 0.0) - (th[i] - th[i - 1] if i > 0 else 0.0)
        ui = max(-umax, min(umax, u[i]))
        acc = (m * g * l * math.sin(th[i]) + k * lap + ui) / (m * l * l)
        new_dth.append(dth[i] + dt * acc)
        new_th.append(th[i] + dt * new_dth[-1])
    return new_th + new_dth


def test_matches_scalar_reference_and_clamps():
    dx = PendulumChainDx(6).double()
    g = torch.Generator().manual_seed(0)
    x = dx.sample_state(3, g)
    u = 8 * torch.randn(3, 6, generator=g, dtype=torch.float64)  # some beyond the bound of 5
    got = dx.step(x, u)
    for b in range(3):
        ref = _ref_step(x[b, :6].tolist(), x[b, 6:].tolist(), u[b].tolist(), 6)
        torch.testing.assert_close(got[b], torch.tensor(ref, dtype=torch.float64))
    torch.testing.assert_close(dx.step(x, u), dx.step(x, u.clamp(-5, 5)))


def test_contract_bounds_and_batching():
    dx = PendulumChainDx(7)
    assert isinstance(dx, Dynamics) and dx.n_ctrl == 7 and dx.n_state == 14 and dx.dt == 0.05
    assert torch.equal(dx.u_lower, torch.full((7,), -5.0)) and torch.equal(dx.u_upper, torch.full((7,), 5.0))
    x = dx.sample_state(12, torch.Generator().manual_seed(1)).reshape(3, 4, 14)
    u = torch.randn(3, 4, 7)
    out = dx.step(x, u)
    assert out.shape == (3, 4, 14)
    torch.testing.assert_close(out[1, 2], dx.step(x[1, 2], u[1, 2]))
    # broadcasting: one state, many controls
    assert dx.step(x[0, 0], u).shape == (3, 4, 14)
    xs = dx.rollout(x[0], torch.randn(5, 4, 7))
    assert xs.shape == (6, 4, 14) and torch.equal(xs[0], x[0])
    s = dx.sample_state(2000, torch.Generator().manual_seed(2))
    assert s[:, :7].abs().max() <= math.pi and s[:, 7:].abs().max() <= 1.0
    assert abs(float(s[:, :7].mean())) < 0.1


def test_gradients_float64_finite_differences():
    dx = PendulumChainDx(6).double()
    x = dx.sample_state(2, torch.Generator().manual_seed(3)).requires_grad_()
    u = (2 * torch.randn(2, 6, dtype=torch.float64)).requires_grad_()  # inside the bounds
    assert torch.autograd.gradcheck(lambda a, b: dx.step(a, b), (x, u))
    us = torch.randn(4, 2, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: chain_upright_cost(dx.rollout(a, b), torch.zeros(6)).sum(),
                                    (x, us))  # fmt: skip
    p = torch.nn.Parameter(torch.tensor([10.0, 1.0, 1.0, 2.0], dtype=torch.float64))
    dxp = PendulumChainDx(6, params=p)
    assert torch.autograd.gradcheck(lambda q: PendulumChainDx(6, params=q).step(x.detach(), u.detach()),
                                    (p.detach().clone().requires_grad_(),))  # fmt: skip
    assert dxp.params is p


def test_energy_is_conserved_without_control_no_drift():
    dx = PendulumChainDx(6, dt=0.01).double()
    x = dx.sample_state(8, torch.Generator().manual_seed(4))
    e0 = dx.energy(x)
    energies = []
    zero = torch.zeros(8, 6, dtype=torch.float64)
    for _ in range(5000):  # 50 s
        x = dx.step(x, zero)
        energies.append(dx.energy(x))
    e = torch.stack(energies)
    scale = 2 * 6 * 10.0  # the range of the gravity energy
    assert float((e - e0).abs().max()) < 0.02 * scale  # bounded oscillation
    drift = (e[-500:].mean(0) - e[:500].mean(0)).abs()
    assert float(drift.max()) < 0.002 * scale  # no secular drift
    # explicit Euler (angles advanced with the old velocity) drifts: the test can tell the two apart
    xe = dx.sample_state(8, torch.Generator().manual_seed(4))
    for _ in range(5000):
        th, dth = xe.split(6, -1)
        nxt = dx.step(xe, zero)
        xe = torch.cat((th + dx.dt * dth, nxt[..., 6:]), -1)
    assert float((dx.energy(xe) - e0).mean()) > 0.1 * scale


def test_equilibria_and_cost():
    dx = PendulumChainDx(6).double()
    zero = torch.zeros(6, dtype=torch.float64)
    hang = torch.cat((torch.full((6,), math.pi, dtype=torch.float64), zero))
    up = torch.zeros(12, dtype=torch.float64)
    torch.testing.assert_close(dx.step(hang, zero), hang, atol=1e-14, rtol=0)
    assert torch.equal(dx.step(up, zero), up)
    # hanging is stable: a small kick stays small; upright is not
    kick = torch.cat((torch.zeros(6), 0.01 * torch.ones(6))).double()
    xs_hang = dx.rollout(hang + kick, zero.expand(200, 6))
    xs_up = dx.rollout(up + kick, zero.expand(200, 6))
    assert float((xs_hang[:, :6] - math.pi).abs().max()) < 0.05
    assert float(xs_up[:, :6].abs().max()) > 1.0
    assert float(chain_upright_cost(up, zero)) == -1.0
    assert float(chain_upright_cost(hang, zero)) == pytest.approx(0.0, abs=1e-15)
    side = torch.cat((torch.full((6,), math.pi / 2, dtype=torch.float64), zero))
    assert float(chain_upright_cost(side, torch.full((6,), 2.0, dtype=torch.float64))) == pytest.approx(
        -0.496
    )


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_links"):
        PendulumChainDx(1)
    with pytest.raises(ValueError, match="max_torque"):
        PendulumChainDx(6, max_torque=0.0)
    with pytest.raises(ValueError, match="params"):
        PendulumChainDx(6, params=(1.0, 2.0))
    with pytest.raises(ValueError, match="n_ctrl"):
        PendulumChainDx(6).step(torch.zeros(12), torch.zeros(5))
    with pytest.raises(ValueError, match="2 \\* n_ctrl"):
        chain_upright_cost(torch.zeros(10), torch.zeros(6))


def test_docstring_example():
    import doctest

    import dcem.control.chain as mod

    result = doctest.testmod(mod)
    assert result.attempted > 0 and result.failed == 0
