"""Every bad argument of the planning package raises a clear error naming the argument."""

import math

import pytest
import torch

from dcem.control import CartpoleDx, PendulumDx, dcem_ctrl
from dcem.planning import Planner, PlannerConfig, rollout, rollout_objective


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(rule="pso"), "rule must be one of"),
        (dict(n_sample=0), "n_sample"),
        (dict(n_sample=10, n_elite=11), "n_elite"),
        (dict(n_iter=0), "n_iter"),
        (dict(temp=0.0), "temp"),
        (dict(lam=-1.0), "lam"),
        (dict(noise_beta=-0.5), "noise_beta"),
        (dict(keep_frac=1.5), "keep_frac"),
        (dict(pop_decay=0.5), "pop_decay"),
        (dict(momentum=1.0), "momentum"),
        (dict(momentum=-0.1), "momentum"),
        (dict(iter_eps=-1.0), "iter_eps"),
        (dict(std_scale=0.0), "std_scale"),
        (dict(select="first"), "select"),
        (dict(sync="gpu"), "sync"),
        (dict(n_iter=2.5), "n_iter"),
    ],
)
def test_config_value_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        PlannerConfig(**kw)


def test_config_type_errors():
    with pytest.raises(TypeError, match="differentiable"):
        PlannerConfig(differentiable=1)
    with pytest.raises(TypeError, match="checkpoint"):
        PlannerConfig(checkpoint="yes")
    with pytest.raises(TypeError, match="normalize"):
        PlannerConfig(normalize=None)


def test_planner_construction_errors():
    with pytest.raises(ValueError, match="horizon"):
        Planner(0, 1)
    with pytest.raises(ValueError, match="n_ctrl"):
        Planner(3, 0)
    with pytest.raises(ValueError, match="either config or options"):
        Planner(3, 1, PlannerConfig(), n_sample=5)
    with pytest.raises(TypeError, match="config must be"):
        Planner(3, 1, {"rule": "cem"})
    with pytest.raises(ValueError, match="lower must be < upper"):
        Planner(3, 1, lower=1.0, upper=-1.0)
    with pytest.raises(ValueError, match="lower must not contain NaN"):
        Planner(3, 1, lower=torch.tensor([math.nan]), upper=1.0)
    with pytest.raises(TypeError, match="upper must be a float or a floating-point tensor"):
        Planner(3, 1, upper=torch.tensor([1]))
    with pytest.raises(ValueError, match="z_lower must be < z_upper"):
        Planner(3, 1, decoder=lambda z: z, n_latent=2, z_lower=1.0, z_upper=0.0)
    with pytest.raises(TypeError, match="decoder must be callable"):
        Planner(3, 1, decoder="mlp", n_latent=2)
    with pytest.raises(ValueError, match="n_latent"):
        Planner(3, 1, decoder=lambda z: z)


def test_plan_call_errors():
    ok = lambda U: U.sum((-1, -2))  # noqa: E731
    p = Planner(3, 2, lower=-1.0, upper=1.0, n_sample=5, n_elite=2, n_iter=1)
    with pytest.raises(TypeError, match="cost must be callable"):
        p.plan(None)
    with pytest.raises(ValueError, match=r"init_mean must have shape \(\*B, 3, 2\)"):
        p.plan(ok, init_mean=torch.zeros(4, 2, 2))
    with pytest.raises(ValueError, match="batch_shape"):
        p.plan(ok, init_mean=torch.zeros(4, 3, 2), batch_shape=(5,))
    with pytest.raises(TypeError, match="init_mean must be a floating-point tensor"):
        p.plan(ok, init_mean=torch.zeros(4, 3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="init_mean must be finite"):
        p.plan(ok, init_mean=torch.full((1, 3, 2), math.inf))
    with pytest.raises(ValueError, match="init_std must be finite and >= 0"):
        p.plan(ok, init_std=-1.0)
    with pytest.raises(ValueError, match="init_std of shape"):
        p.plan(ok, init_std=torch.ones(4))
    with pytest.raises(ValueError, match="batch_shape"):
        p.plan(ok, batch_shape=(0,))
    with pytest.raises(ValueError, match=r"cost must return values of shape \(\*B, M\)"):
        p.plan(lambda U: U.sum(-1), batch_shape=(2,))
    with pytest.raises(TypeError, match="cost must return a real tensor"):
        p.plan(lambda U: 1.0)
    q = Planner(3, 2, lower=torch.zeros(4), upper=torch.ones(4), n_sample=5, n_elite=2, n_iter=1)
    with pytest.raises(ValueError, match="lower of shape"):
        q.plan(ok)
    d = Planner(3, 2, decoder=lambda z: z, n_latent=2, n_sample=5, n_elite=2, n_iter=1)
    with pytest.raises(ValueError, match="decoder must return plans of shape"):
        d.plan(ok, batch_shape=(1,))


def test_rollout_errors_name_the_argument():
    dx = PendulumDx()
    with pytest.raises(TypeError, match="dynamics must be"):
        rollout_objective("pendulum", torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"x_init must have shape \(\.\.\., n_state\) with n_state = 3"):
        rollout_objective(dx, torch.zeros(2, 5))
    with pytest.raises(ValueError, match="obs must be finite"):
        rollout_objective(dx, torch.full((2, 3), math.nan), name="obs")
    with pytest.raises(ValueError, match="discount"):
        rollout_objective(dx, torch.zeros(2, 3), discount=-1.0)
    obj = rollout_objective(dx, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="n_ctrl = 1"):
        obj(torch.zeros(2, 4, 5, 2))
    with pytest.raises(ValueError, match=r"plans must have shape \(\*B, N, H, n_ctrl\) with B = \(2,\)"):
        obj(torch.zeros(3, 4, 5, 1))
    with pytest.raises(ValueError, match="plans must have shape"):
        rollout(dx, dx.quadratic_cost, torch.zeros(3), torch.zeros(0, 1))
    # a planner whose n_ctrl disagrees with the dynamics fails on the first call, naming n_ctrl
    p = Planner(5, 2, lower=-1.0, upper=1.0, n_sample=4, n_elite=2, n_iter=1)
    with pytest.raises(ValueError, match="n_ctrl = 1"):
        p.plan(obj, batch_shape=(2,))


def test_dcem_ctrl_checks_obs_against_the_dynamics():
    dx = CartpoleDx()
    rew = lambda x, u: -x[..., 0]  # noqa: E731
    with pytest.raises(ValueError, match=r"obs must have shape \(\.\.\., n_state\) with n_state = 5"):
        dcem_ctrl(torch.zeros(2, 3), 4, 0.0, 1.0, 10, 2, 1, rew, 1, None, None, dx=dx)
    with pytest.raises(ValueError, match="init_mu"):
        dcem_ctrl(torch.zeros(2, 5), 4, torch.zeros(3, 4), 1.0, 10, 2, 1, rew, 1, None, None, dx=dx)
    with pytest.raises(ValueError, match="u_decode must return"):
        dcem_ctrl(torch.zeros(2, 5), 4, 0.0, 1.0, 10, 2, 1, rew, 1, None, None, dx=dx,
                  u_decode=lambda z: z, u_latent_dim=2)  # fmt: skip
