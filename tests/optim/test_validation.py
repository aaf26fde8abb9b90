"""The one validation layer of the optimiser (:mod:`dcem.optim.validate`) and its NaN/inf policy:
every public entry point refuses bad input by name, the same way on both solver paths."""

from __future__ import annotations

import math

import pytest
import torch

import dcem
from dcem.layers import DCEMArgmin
from dcem.optim import CEMConfig, Solver, ask, init_state, solve, step, tell

pytestmark = pytest.mark.usefixtures("sync_path")


def quad(X):
    return (X - 1).pow(2).sum(-1)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(lb=1.0, ub=-1.0), "lb must be < ub"),
        (dict(lb=0.5, ub=0.5), "lb must be < ub"),
        (dict(lb=torch.tensor([0.0, 2.0]), ub=torch.tensor([1.0, 1.0])), "lb must be < ub"),
        (dict(lb=math.inf), "lb must be < \\+inf"),
        (dict(ub=-math.inf), "ub must be > -inf"),
        (dict(lb=math.nan), "lb"),
        (dict(ub="1"), "ub"),
        (dict(temp=torch.tensor([1.0, math.inf])), "temp"),
        (dict(temp=torch.tensor([1.0, math.nan])), "temp"),
        (dict(temp=-1.0), "temp"),
        (dict(n_elite=30), "n_elite"),
        (dict(iter_eps=-1.0), "iter_eps"),
        (dict(sync="gpu"), "sync"),
    ],
)
def test_config_refuses_bad_fields_by_name(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        CEMConfig(n_sample=20, n_elite=5, **kw)


@pytest.mark.parametrize(
    "mu,sigma,match",
    [
        (torch.full((2, 2), math.nan), 1.0, "mu must be finite"),
        (torch.tensor([[0.0, math.inf]]), 1.0, "mu must be finite"),
        (torch.zeros(2, 2), -torch.ones(2, 2), "sigma must be >= 0"),
        (torch.zeros(2, 2), torch.tensor([1.0, math.nan]), "sigma must be finite"),
        (torch.zeros(2, 2), -1.0, "sigma"),
        (torch.zeros(2, 2), torch.ones(3, 2), "sigma of shape"),
        (torch.zeros(2, 2, dtype=torch.long), 1.0, "mu must be a floating-point"),
        (torch.zeros(()), 1.0, "mu"),
        (torch.zeros(2, 2), "1", "sigma"),
    ],
)
def test_init_state_refuses_bad_values_by_name(mu, sigma, match):
    with pytest.raises((ValueError, TypeError), match=match):
        init_state(mu, sigma)


def test_ask_tell_refuse_wrong_config_state_and_costs():
    cfg = CEMConfig(n_sample=20, n_elite=5)
    st = init_state(torch.zeros(2, 3))
    X = ask(st, cfg)
    fX = quad(X)
    with pytest.raises(TypeError, match="cfg must be a dcem.optim.CEMConfig"):
        ask(st, {"n_sample": 20})
    with pytest.raises(TypeError, match="cfg must be a dcem.optim.CEMConfig"):
        tell(st, None, X, fX)
    with pytest.raises(TypeError, match="state must be a dcem.optim.CEMState"):
        tell((st.mu, st.sigma), cfg, X, fX)
    with pytest.raises(ValueError, match="fX must be values of shape .* \\(transposed\\?\\)"):
        tell(st, cfg, X, fX.T.contiguous())  # today: a message about k
    with pytest.raises(ValueError, match="fX must be values of shape"):
        tell(st, cfg, X, fX[:1])
    with pytest.raises(TypeError, match="fX must be real values"):
        tell(st, cfg, X, fX > 0)
    with pytest.raises(TypeError, match="fX must be a tensor"):
        tell(st, cfg, X, fX.tolist())
    with pytest.raises(ValueError, match="X must hold M >= n_elite"):
        tell(st, cfg, X[:, :3], fX[:, :3])
    with pytest.raises(ValueError, match="X must be"):
        tell(st, cfg, X.double(), fX)
    with pytest.raises(ValueError, match="noise must have shape"):
        ask(st, cfg, noise=torch.randn(2, 3, 20))
    with pytest.raises(ValueError, match="noise must have shape"):
        solve(quad, st, CEMConfig(20, 5, n_iter=2), noise=torch.randn(3, 2, 20, 3))
    with pytest.raises(TypeError, match="generator"):
        solve(quad, st, cfg, generator=0)
    with pytest.raises(ValueError, match="temp tensor of shape"):
        solve(quad, st, CEMConfig(20, 5, temp=torch.ones(3)))
    with pytest.raises(ValueError, match="lb tensor of shape"):
        solve(quad, st, CEMConfig(20, 5, lb=torch.zeros(4), ub=1.0))
    with pytest.raises(TypeError, match="f must be callable"):
        solve(3, st, cfg)
    with pytest.raises(ValueError, match="f must return values of shape"):
        step(lambda X: quad(X).T, st, cfg)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.int64], ids=str)
def test_costs_of_another_dtype_are_cast(dtype):
    cfg = CEMConfig(n_sample=20, n_elite=5, temp=None)
    st = init_state(torch.zeros(2, 3))
    X = ask(st, cfg, generator=torch.Generator().manual_seed(0))
    a = tell(st, cfg, X, (10 * quad(X)).to(dtype))
    b = tell(st, cfg, X, (10 * quad(X)).to(dtype).to(X.dtype))
    assert torch.equal(a.mu, b.mu)


@pytest.mark.parametrize("temp", [None, 1.0])
def test_minus_inf_is_the_best_value_on_both_paths(temp):
    # -inf is valid on both paths (it was refused on one of them): every -inf sample is elite
    cfg = CEMConfig(n_sample=20, n_elite=5, temp=temp, iter_eps=None)
    st = init_state(torch.zeros(2, 3))
    X = ask(st, cfg, generator=torch.Generator().manual_seed(0))
    fX = quad(X)
    fX[:, :3] = -math.inf
    new = tell(st, cfg, X, fX)
    assert bool(torch.isfinite(new.mu).all()) and not bool(new.failed.any())
    out = dcem.dcem(lambda X: torch.where(X[..., :1].sum(-1) > 0, -math.inf, quad(X)), 3, 2, temp=temp)
    assert bool(torch.isfinite(out).all())


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("temp", [None, 1.0])
def test_a_problem_without_valid_costs_raises_on_cpu_on_both_paths(bad, temp):
    cfg = CEMConfig(n_sample=20, n_elite=5, temp=temp)
    st = init_state(torch.zeros(2, 3))

    def f(X):
        v = quad(X)
        return torch.cat([v[:1], torch.full_like(v[1:], bad)])

    X = ask(st, cfg)
    for run in (
        lambda: tell(st, cfg, X, f(X)),
        lambda: step(f, st, cfg),
        lambda: solve(f, st, cfg),
        lambda: Solver(f, cfg, capture="none")(st.mu, 1.0),
        lambda: DCEMArgmin(lambda x, Y: f(Y), 3, n_sample=20, temp=temp)(torch.zeros(2, 1)),
    ):
        with pytest.raises(ValueError, match="NaN or \\+inf value .*rows \\[1\\]"):
            run()


def test_dcem_argmin_refuses_non_finite_x_and_names_the_energy():
    layer = DCEMArgmin(lambda x, Y: (Y - x).pow(2).sum(-1), 1, n_sample=10, n_elite=2)
    with pytest.raises(ValueError, match="x must be finite"):
        layer(torch.tensor([[math.nan]]))
    bad = DCEMArgmin(lambda x, Y: Y.sum(), 1, n_sample=10, n_elite=2)
    with pytest.raises(ValueError, match="energy must return values of shape"):
        bad(torch.zeros(2, 1))
