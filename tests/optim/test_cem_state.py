"""The functional optimiser core: CEMConfig, CEMState, ask/tell/step/solve (dcem.optim.cem).

References: the reference-compatible ``dcem.dcem`` loop (same draws, same result), brute
force over the samples for the best-sample rule, and hand-made batches for leading shapes.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import dcem
from dcem.optim import CEMConfig, CEMState, ask, best_sample, init_state, solve, step, tell

pytestmark = pytest.mark.usefixtures("sync_path")


def quad(target: torch.Tensor):
    return lambda X: (X - target.unsqueeze(-2)).pow(2).sum(-1)


@pytest.mark.parametrize("temp", [None, 1.0])
def test_ask_tell_loop_equals_dcem(temp):
    # a user who evaluates the samples elsewhere gets exactly what dcem() returns
    target = torch.randn(4, 3, dtype=torch.float64)
    cfg = CEMConfig(n_sample=40, n_elite=6, n_iter=7, temp=temp, iter_eps=None)
    g = torch.Generator().manual_seed(5)
    state = init_state(torch.zeros(4, 3, dtype=torch.float64), 2.0)
    for _ in range(cfg.n_iter):
        X = ask(state, cfg, generator=g)
        state = tell(state, cfg, X, quad(target)(X))
    x = dcem.dcem(
        quad(target),
        3,
        4,
        40,
        6,
        7,
        temp,
        init_sigma=2.0,
        iter_eps=None,
        dtype=torch.float64,
        generator=torch.Generator().manual_seed(5),
    )
    assert torch.equal(state.mu, x)


@pytest.mark.parametrize("temp", [None, 0.5])
def test_leading_batch_shapes_equal_the_flattened_batch(temp):
    target = torch.randn(2, 3, 4, dtype=torch.float64)
    cfg = CEMConfig(n_sample=30, n_elite=5, n_iter=5, temp=temp, iter_eps=1e-3, track_best=True)
    noise = torch.randn(5, 2, 3, 30, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mu0 = torch.zeros(2, 3, 4, dtype=torch.float64)
    st = solve(quad(target), init_state(mu0, 1.0), cfg, noise=noise)
    flat = solve(
        quad(target.reshape(6, 4)), init_state(mu0.reshape(6, 4), 1.0), cfg, noise=noise.reshape(5, 6, 30, 4)
    )
    assert st.mu.shape == (2, 3, 4) and st.done.shape == (2, 3) and st.best_f.shape == (2, 3)
    for a, b in zip(st, flat):
        torch.testing.assert_close(a.reshape(b.shape), b, rtol=0, atol=0)


def test_states_are_never_modified_in_place():
    cfg = CEMConfig(n_sample=20, n_elite=4, temp=1.0, track_best=True)
    st0 = init_state(torch.zeros(3, 2), 1.0)
    copies = [t.clone() for t in st0]
    st1 = step(quad(torch.ones(3, 2)), st0, cfg, generator=torch.Generator().manual_seed(0))
    assert isinstance(st1, CEMState)
    for a, b in zip(st0, copies):
        assert torch.equal(a, b)


def test_best_sample_rule_brute_force():
    X = torch.randn(3, 6, 2)
    fX = torch.tensor(
        [[3.0, math.nan, 1.0, 2.0, math.inf, 5.0], [math.nan] * 6, [0.0, -math.inf, math.nan, -1.0, 2.0, 3.0]]
    )
    xb, fb = best_sample(X, fX)
    assert fb.tolist() == [1.0, math.inf, -math.inf]
    assert torch.equal(xb[0], X[0, 2]) and torch.equal(xb[2], X[2, 1])


def test_tracked_best_is_the_best_sample_ever_evaluated():
    target = torch.randn(2, 3)
    cfg = CEMConfig(n_sample=25, n_elite=5, n_iter=6, temp=1.0, iter_eps=None, track_best=True)
    seen_X, seen_f = [], []

    def f(X):
        v = quad(target)(X)
        seen_X.append(X.detach()), seen_f.append(v.detach())
        return v

    st = solve(f, init_state(torch.zeros(2, 3), 1.0), cfg, generator=torch.Generator().manual_seed(1))
    allX, allf = torch.cat(seen_X, 1), torch.cat(seen_f, 1)
    i = allf.argmin(1)
    assert torch.equal(st.best_f, allf.min(1).values)
    assert torch.equal(st.best_x, allX[torch.arange(2), i])


def test_gradients_flow_through_tell_to_the_objective_parameters():
    theta = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    cfg = CEMConfig(n_sample=30, n_elite=5, n_iter=4, temp=1.0, iter_eps=None)
    noise = torch.randn(4, 2, 30, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def out(th):
        return solve(quad(th), init_state(torch.zeros(2, 3, dtype=torch.float64), 1.0), cfg, noise=noise).mu

    (g,) = torch.autograd.grad(out(theta).sum(), theta)
    h, e = 1e-6, torch.zeros_like(theta)
    e[0, 1] = h
    fd = (out(theta + e).sum() - out(theta - e).sum()) / (2 * h)
    torch.testing.assert_close(g[0, 1], fd, rtol=1e-5, atol=1e-8)


def test_noise_argument_must_match_the_sample_shape():
    cfg = CEMConfig(n_sample=10, n_elite=2)
    with pytest.raises(ValueError, match="noise"):
        ask(init_state(torch.zeros(3, 2)), cfg, noise=torch.zeros(3, 11, 2))


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(n_sample=0), "n_sample"),
        (dict(n_elite=21), "n_elite"),
        (dict(n_elite=2.5), "n_elite"),
        (dict(n_iter=0), "n_iter"),
        (dict(temp=-1.0), "temp"),
        (dict(temp=math.nan), "temp"),
        (dict(iter_eps=-1.0), "iter_eps"),
        (dict(sync="gpu"), "sync"),
        (dict(lb=math.nan), "lb"),
        (dict(ub=torch.tensor([math.nan])), "ub"),
        (dict(normalize=1), "normalize"),
        (dict(temp=torch.tensor([1.0, 0.0])), "temp"),
    ],
)
def test_config_rejects_bad_values_naming_the_key(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        CEMConfig(**{"n_sample": 20, **kw})


def test_config_is_immutable_and_normalises_temp():
    cfg = CEMConfig(temp=0)
    assert cfg.hard and cfg.temp is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.n_sample = 3  # type: ignore[misc]


def test_init_state_errors():
    with pytest.raises(TypeError, match="mu"):
        init_state(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="sigma"):
        init_state(torch.zeros(3, 2), torch.ones(4))
    with pytest.raises(ValueError, match="sigma"):
        init_state(torch.zeros(3, 2), -1.0)
