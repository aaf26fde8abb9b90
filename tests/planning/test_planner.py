"""The one planner: every rule on known problems, bounds, call counts, latent path, batch shapes."""

import math

import pytest
import torch

from dcem.planning import Planner, PlannerConfig, Rule, rollout_objective
from dcem.planning.rules import mppi_weights

pytestmark = pytest.mark.usefixtures("sync_path")

RULES = ["cem", "dcem", "mppi", "icem"]
H, A = 5, 2
TARGET = torch.linspace(-0.6, 0.6, H * A).view(H, A)


def quadratic(target=TARGET):
    """cost(U) = sum_t |U_t - target_t|^2: the optimum is the target sequence (cost 0)."""
    calls = []

    def cost(U):
        calls.append(U.shape)
        return (U - target.to(U)).pow(2).sum((-1, -2))

    return cost, calls


def _planner(rule, **kw):
    opts = dict(rule=rule, n_sample=200, n_elite=20, n_iter=12, lam=0.3)
    opts.update(kw)
    return Planner(H, A, lower=-1.0, upper=1.0, **opts)


@pytest.mark.parametrize("rule", RULES)
def test_each_rule_finds_the_known_optimum_in_n_iter_calls(rule):
    cost, calls = quadratic()
    p = _planner(rule)
    res = p.plan(cost, batch_shape=(3,), generator=torch.Generator().manual_seed(0))
    init_cost = float(cost(torch.zeros(3, 1, H, A)).mean())  # the initial mean (middle of the box)
    assert res.plan.shape == (3, H, A) and res.cost.shape == (3,) and res.best_plan.shape == (3, H, A)
    assert res.mean.shape == (3, H, A) and res.std.shape == (3, H, A) and res.z is None
    assert bool((res.cost < 0.02 * init_cost).all()), (rule, res.cost)
    torch.testing.assert_close(res.plan, TARGET.expand(3, H, A), atol=0.1, rtol=0)
    # exactly one batched objective call per iteration, candidates (B, M, H, A)
    assert res.n_evals == len(calls) - 1 == 12
    assert all(c[0] == 3 and c[2:] == (H, A) for c in calls[:-1])
    # the reported cost is the objective of the returned plan, the best cost never above it
    torch.testing.assert_close(res.cost, cost(res.plan.unsqueeze(1)).squeeze(1))
    assert bool((res.best_cost <= res.cost + 1e-6).all())


@pytest.mark.parametrize("rule", RULES)
def test_per_dimension_bounds_hold_for_every_candidate(rule):
    lo, hi = torch.tensor([-1.0, 0.0]), torch.tensor([1.0, 5.0])
    seen = []

    def cost(U):  # pushes u0 -> -inf and u1 -> +inf: the optimum is on the bounds
        seen.append(U)
        return (U[..., 0] - U[..., 1]).sum(-1)

    p = Planner(3, 2, lower=lo, upper=hi, rule=rule, n_sample=64, n_elite=8, n_iter=8, lam=0.3)
    res = p.plan(cost, batch_shape=(2,), generator=torch.Generator().manual_seed(0))
    allU = torch.cat([u.reshape(-1, 2) for u in seen])
    assert bool((allU >= lo).all() and (allU <= hi).all())
    assert bool((res.plan >= lo).all() and (res.plan <= hi).all())
    assert float(res.plan[..., 0].mean()) < -0.5 and float(res.plan[..., 1].mean()) > 3.5


def test_icem_population_decay_and_kept_elites_in_the_same_call():
    d = PlannerConfig("icem")  # the defaults chosen on held-out states (benchmarks/bench_planners.py)
    assert (d.noise_beta, d.keep_frac, d.pop_decay, d.momentum, d.std_scale) == (1.0, 0.3, 1.0, 0.0, 1.0)
    cfg = PlannerConfig("icem", n_sample=100, n_elite=10, n_iter=4, pop_decay=1.25)
    assert PlannerConfig("mppi").std_scale == 1.0 and PlannerConfig("mppi", std_scale=0.3).std_scale == 0.3
    assert [cfg.population(i) for i in range(4)] == [100, 80, 64, 51]
    assert PlannerConfig("icem", n_sample=30, n_elite=10, pop_decay=3.0).population(3) == 20
    cost, calls = quadratic()
    res = Planner(H, A, cfg, lower=-1.0, upper=1.0).plan(cost, generator=torch.Generator().manual_seed(0))
    # N_i samples + the mean, plus n_keep = 3 elites of the previous iteration
    assert [c[0] for c in calls] == [101, 84, 68, 55] and res.n_evals == 4


def test_select_modes_and_the_one_best_sample_rule():
    # candidate costs: -inf for any plan whose first action is below -0.9, NaN above 0.9
    def cost(U):
        c = (U - 0.5).pow(2).sum((-1, -2))
        c = torch.where(U[..., 0, 0] < -0.9, torch.full_like(c, -math.inf), c)
        return torch.where(U[..., 0, 0] > 0.9, torch.full_like(c, math.nan), c)

    p = Planner(2, 1, lower=-1.0, upper=1.0, rule="cem", n_sample=50, n_elite=5, n_iter=3, select="best")
    res = p.plan(cost, batch_shape=(4,), generator=torch.Generator().manual_seed(0))
    assert bool((res.best_cost == -math.inf).all()) and bool((res.best_plan[:, 0, 0] < -0.9).all())
    torch.testing.assert_close(res.plan, res.best_plan)
    # "mean": the mean of the last sampled Gaussian, its cost from the same call
    cost2, calls = quadratic(torch.full((2, 1), 0.5))
    for select in ("mean", "best", "min"):
        calls.clear()
        q = Planner(2, 1, lower=-1.0, upper=1.0, rule="cem", n_sample=30, n_elite=5, n_iter=2, select=select)
        r = q.plan(cost2, batch_shape=(3,), generator=torch.Generator().manual_seed(0))
        assert r.n_evals == 2 and len(calls) == 2
        if select == "best":
            torch.testing.assert_close(r.cost, r.best_cost)
        if select == "min":
            assert bool((r.cost <= r.best_cost).all())


def test_invalid_rows_raise_on_cpu_and_fail_where_values_cannot_be_read(sync_path, monkeypatch):
    # on CPU both paths raise (a path never changes what is valid input); where values cannot be
    # read for free (accelerators, torch.compile; simulated here) the sync-free path flags the row
    def cost(U):  # the second problem has no valid candidate
        c = U.pow(2).sum((-1, -2))
        return torch.stack((c[0], torch.full_like(c[1], math.nan)))

    p = Planner(2, 1, lower=-1.0, upper=1.0, rule="dcem", n_sample=10, n_elite=3, n_iter=2)
    with pytest.raises(ValueError, match="NaN or \\+inf"):
        p.plan(cost, batch_shape=(2,))
    if sync_path == "host":
        return
    from dcem.optim import weights

    monkeypatch.setattr(weights, "host_reads_free", lambda t: False)
    res = p.plan(cost, batch_shape=(2,), generator=torch.Generator().manual_seed(0))
    assert res.failed.tolist() == [False, True]
    assert math.isfinite(float(res.cost[0])) and float(res.best_cost[1]) == math.inf
    torch.testing.assert_close(res.mean[1], torch.zeros(2, 1))  # kept its distribution


@pytest.mark.parametrize("batch", [(), (1,), (3, 2)])
def test_leading_batch_shapes(batch):
    targets = torch.linspace(-0.5, 0.5, max(1, math.prod(batch))).view(*batch, 1, 1)

    def cost(U):
        assert U.shape[: len(batch)] == batch and U.shape[-2:] == (3, 1)
        return (U - targets.unsqueeze(-3)).pow(2).sum((-1, -2))

    p = Planner(3, 1, lower=-1.0, upper=1.0, rule="cem", n_sample=100, n_elite=10, n_iter=8)
    res = p.plan(cost, batch_shape=batch, generator=torch.Generator().manual_seed(0))
    assert res.plan.shape == (*batch, 3, 1) and res.cost.shape == batch and res.failed.shape == batch
    torch.testing.assert_close(res.plan, targets.expand(*batch, 3, 1), atol=0.05, rtol=0)


def test_dtype_follows_init_mean_and_warm_start_moves_little():
    cost, _ = quadratic()
    init = TARGET.double().expand(2, H, A).clone()
    before = init.clone()
    p = _planner("cem", n_iter=1)
    res = p.plan(cost, init_mean=init, init_std=1e-6, generator=torch.Generator().manual_seed(0))
    assert res.plan.dtype == torch.float64 and res.cost.dtype == torch.float64
    torch.testing.assert_close(res.plan, init, atol=1e-5, rtol=0)
    torch.testing.assert_close(init, before)  # the caller's tensor is untouched


def test_latent_decoder_path():
    W = torch.randn(3, H * A, generator=torch.Generator().manual_seed(0))

    def decoder(z):
        return torch.tanh(z @ W).unflatten(-1, (H, A))

    cost, calls = quadratic(0.3 * TARGET)
    p = Planner(H, A, decoder=decoder, n_latent=3, z_lower=-2.0, z_upper=2.0, rule="dcem", n_sample=100,
                n_elite=10, n_iter=6, temp=0.5)  # fmt: skip
    res = p.plan(cost, batch_shape=(2,), generator=torch.Generator().manual_seed(0))
    assert res.z.shape == (2, 3) and res.best_z.shape == (2, 3) and res.mean.shape == (2, 3)
    assert bool((res.z.abs() <= 2).all())
    torch.testing.assert_close(res.plan, decoder(res.z))
    torch.testing.assert_close(res.best_plan, decoder(res.best_z))
    torch.testing.assert_close(res.cost, cost(res.plan.unsqueeze(1)).squeeze(1))
    assert res.n_evals == len(calls) - 1 == 6
    z0 = torch.randn(2000, 3, generator=torch.Generator().manual_seed(1))
    assert float(res.cost.max()) < float(cost(decoder(z0).unsqueeze(0)).mean())


def test_rollout_objective_matches_a_loop_and_plans_with_dynamics():
    from dcem.control import PendulumDx

    dx = PendulumDx()
    x = dx.sample_state(2, torch.Generator().manual_seed(0))
    obj = rollout_objective(dx, x, discount=0.9)
    U = torch.rand(2, 4, 6, 1, generator=torch.Generator().manual_seed(1)) * 4 - 2
    ref = torch.zeros(2, 4)
    for n in range(4):
        xt = x
        for t in range(6):
            ref[:, n] += 0.9**t * dx.quadratic_cost(xt, U[:, n, t])
            xt = dx.step(xt, U[:, n, t])
    torch.testing.assert_close(obj(U), ref)
    with torch.no_grad():  # the vectorised path (one step-cost call on the stacked states)
        torch.testing.assert_close(obj(U), ref)
    # any leading batch shape of the initial states
    x2 = dx.sample_state(6, torch.Generator().manual_seed(2)).view(2, 3, 3)
    assert rollout_objective(dx, x2)(torch.zeros(2, 3, 4, 6, 1)).shape == (2, 3, 4)
    p = Planner(6, 1, lower=dx.u_lower, upper=dx.u_upper, rule="mppi", n_sample=100, n_iter=4, lam=0.1)
    res = p.plan(obj, batch_shape=(2,), generator=torch.Generator().manual_seed(0))
    assert bool((res.cost < obj(torch.zeros(2, 1, 6, 1)).squeeze(1)).all())


def test_mppi_weights_are_a_softmax_and_handle_invalid_values():
    f = torch.tensor([[1.0, 2.0, 3.0], [math.nan, 0.0, math.inf], [1.0, -math.inf, 2.0]])
    w = mppi_weights(f, lam=0.5, normalize=False)
    torch.testing.assert_close(w[0], torch.softmax(torch.tensor([1.0, 2.0, 3.0]) / -0.5, 0))
    torch.testing.assert_close(w[1], torch.tensor([0.0, 1.0, 0.0]))
    torch.testing.assert_close(w[2], torch.tensor([0.0, 1.0, 0.0]))
    assert mppi_weights(torch.full((1, 3), math.nan), 1.0, True).sum() == 0
    assert Rule("mppi") is Rule.MPPI


def test_converged_problems_freeze_and_the_host_path_stops_early(sync_path):
    cost, calls = quadratic()
    p = Planner(H, A, lower=-1.0, upper=1.0, rule="cem", n_sample=50, n_elite=5, n_iter=30, iter_eps=1e-3)
    res = p.plan(cost, init_mean=TARGET.expand(2, H, A).clone(), init_std=1e-5,
                 generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert res.n_evals == len(calls) == (1 if sync_path == "host" else 30)
    torch.testing.assert_close(res.mean, TARGET.expand(2, H, A))
    torch.testing.assert_close(res.std, torch.full((2, H, A), 1e-5))  # frozen on convergence
