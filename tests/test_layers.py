"""DCEM as a layer (dcem.layers.DCEMArgmin): y*(x) = argmin_y E_theta(x, y).

References: closed-form minimisers of quadratic energies, central finite differences of the
same seeded layer, and the plain dcem() call with the same draws.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dcem
from dcem.layers import DCEMArgmin

pytestmark = pytest.mark.usefixtures("sync_path")


class Quadratic(nn.Module):
    """E(x, y) = |y - W x|^2 + 0.1 sum sin(3 y): minimiser near W x."""

    def __init__(self, n_x: int, n_y: int) -> None:
        super().__init__()
        self.W = nn.Parameter(
            torch.randn(n_y, n_x, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        )

    def forward(self, x, y):
        return (y - x @ self.W.T).pow(2).sum(-1) + 0.1 * torch.sin(3 * y).sum(-1)


def g(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("temp", [None, 1.0])
def test_finds_the_minimiser_of_a_quadratic_energy(temp):
    W = torch.tensor([[2.0, -1.0]], dtype=torch.float64)
    layer = DCEMArgmin(
        lambda x, y: (y - x @ W.T).pow(2).sum(-1),
        1,
        n_sample=200,
        n_elite=20,
        n_iter=30,
        temp=temp,
        init_sigma=3.0,
        iter_eps=1e-6,
    )
    x = torch.randn(8, 2, dtype=torch.float64, generator=g(1))
    torch.testing.assert_close(layer(x, generator=g(2)), x @ W.T, rtol=0, atol=2e-2)


def test_equals_the_plain_dcem_call_and_supports_leading_shapes():
    energy = Quadratic(3, 2)
    layer = DCEMArgmin(energy, 2, n_sample=30, n_elite=5, n_iter=5, init_sigma=2.0)
    x = torch.randn(2, 4, 3, dtype=torch.float64, generator=g(3))
    y = layer(x, generator=g(4))
    assert y.shape == (2, 4, 2)
    ref = dcem.dcem(
        lambda Y: energy(x.reshape(8, 1, 3), Y),
        2,
        8,
        30,
        5,
        5,
        1.0,
        init_sigma=2.0,
        iter_eps=None,
        generator=g(4),
        dtype=torch.float64,
    )
    torch.testing.assert_close(y.reshape(8, 2), ref, rtol=1e-12, atol=1e-12)
    assert [n for n, _ in layer.named_parameters()] == ["energy.W"]


def test_gradient_wrt_energy_parameters_equals_finite_differences():
    energy = Quadratic(2, 1)
    layer = DCEMArgmin(energy, 1, n_sample=20, n_elite=5, n_iter=4, temp=1.0, init_sigma=2.0)
    x = torch.randn(3, 2, dtype=torch.float64, generator=g(5))

    def loss():
        return layer(x, generator=g(6)).pow(2).sum()

    (grad,) = torch.autograd.grad(loss(), energy.W)
    h = 1e-6
    with torch.no_grad():
        fd = torch.zeros_like(energy.W)
        for i in range(energy.W.numel()):
            energy.W.view(-1)[i] += h
            up = loss()
            energy.W.view(-1)[i] -= 2 * h
            fd.view(-1)[i] = (up - loss()) / (2 * h)
            energy.W.view(-1)[i] += h
    assert grad.abs().max() > 1e-3
    torch.testing.assert_close(grad, fd, rtol=1e-5, atol=1e-8)


def test_n_iter_override_and_energies_with_a_trailing_one():
    layer = DCEMArgmin(lambda x, y: (y - x).pow(2), 1, n_sample=50, n_elite=5, init_sigma=2.0)
    x = torch.randn(4, 1, dtype=torch.float64, generator=g(7))
    assert layer(x, n_iter=1, generator=g(8)).shape == (4, 1)
    assert "n_iter=10" in repr(layer)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(n_y=0), "n_y"),
        (dict(n_elite=200), "n_elite"),
        (dict(init_sigma=0.0), "init_sigma"),
        (dict(init_mu=float("nan")), "init_mu"),
        (dict(temp=-1.0), "temp"),
        (dict(sync="cuda"), "sync"),
        (dict(energy=3), "energy"),
    ],
)
def test_bad_arguments_name_the_argument(kw, match):
    args = {"energy": lambda x, y: y.sum(-1), "n_y": 1, **kw}
    with pytest.raises((ValueError, TypeError), match=match):
        DCEMArgmin(args.pop("energy"), args.pop("n_y"), **args)
    if kw.get("n_y", 1) == 1 and "energy" not in kw and len(kw) == 1:
        with pytest.raises(TypeError, match="x"):
            DCEMArgmin(lambda x, y: y.sum(-1), 1)(torch.zeros(3, dtype=torch.long))
