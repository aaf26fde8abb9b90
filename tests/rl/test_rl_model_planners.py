"""World model, replay buffer and planners (no dm_control / torchrl needed)."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from dcem.control import ActionDecoder
from dcem.experiments.common.runs import mean_ci95
from dcem.planning import PlannerConfig
from dcem.rl import FullCEMPlanner, LatentDCEMPlanner, SequenceReplay, WorldModel
from dcem.rl.planners import check_planner_sizes


def _batch(B=8, L=10, O=3, A=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(B, L + 1, O, generator=g)
    act = torch.rand(B, L, A, generator=g) * 2 - 1
    rew = torch.randn(B, L, generator=g)
    return obs, act, rew


@pytest.mark.parametrize("overshooting", [1, 3])
def test_model_loss_decreases_on_fixed_batch(overshooting):
    torch.manual_seed(0)
    m = WorldModel(3, 2, deter_size=32, hidden_size=32)
    obs, act, rew = _batch()
    opt = torch.optim.Adam(m.parameters(), lr=5e-3)
    first = float(m.loss(obs, act, rew, overshooting=overshooting)[0].detach())
    for _ in range(100):
        loss, stats = m.loss(obs, act, rew, overshooting=overshooting)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.isfinite(loss)
    assert float(loss.detach()) < first - 1.0
    assert float(stats["obs_mse"]) < 0.5 and float(stats["reward_mse"]) < 0.5


def test_model_loss_matches_hand_computed_one_step_nll():
    """With D = 1 the loss is the Gaussian NLL of teacher-forced one-step predictions + reward MSE / 2."""
    torch.manual_seed(1)
    m = WorldModel(3, 2, deter_size=8, hidden_size=8).double()
    obs, act, rew = (t.double() for t in _batch(B=2, L=4))
    with torch.no_grad():
        m.obs_log_std.fill_(math.log(0.7))
        loss, _ = m.loss(obs, act, rew, overshooting=1)
        h = torch.zeros(2, 8, dtype=torch.float64)
        nll, rse = [], []
        for t in range(4):
            h = m.transition(h, obs[:, t], act[:, t])
            mu = m.predict_obs(h)
            sq = ((mu - obs[:, t + 1]) ** 2).mean(-1)
            nll.append(0.5 * sq / 0.49 + math.log(0.7) + 0.5 * math.log(2 * math.pi))
            rse.append(0.5 * (m.reward(h, mu) - rew[:, t]) ** 2)
        ref = torch.stack(nll).mean() + torch.stack(rse).mean()
    torch.testing.assert_close(loss, ref)


def test_imagine_consistent_with_filter_on_own_predictions():
    m = WorldModel(3, 2, deter_size=8, hidden_size=8)
    h = torch.randn(4, 8)
    x = torch.randn(4, 3)
    u = torch.rand(4, 5, 2)
    r, xs = m.imagine(h, x, u)
    assert r.shape == (4, 5) and xs.shape == (4, 5, 3)
    # the first predicted reward is the reward head at the first transition
    h1 = m.transition(h, x, u[:, 0])
    torch.testing.assert_close(r[:, 0], m.reward(h1, m.predict_obs(h1)))


class QuadraticModel(nn.Module):
    """A known 'world model': reward -||u_k - target_k||^2 at each step (state-independent)."""

    def __init__(self, target):
        super().__init__()
        self.act_dim = target.shape[-1]
        self.register_buffer("target", target)  # (H, A)

    def normalize(self, x):
        return x

    def imagine(self, h, xn, u):
        r = -(u - self.target).pow(2).sum(-1)
        return r, xn.unsqueeze(-2).expand(*u.shape[:-1], xn.shape[-1])

    def returns(self, h, x, u):
        return -(u - self.target).pow(2).sum((-1, -2))


def test_full_cem_improves_and_finds_known_optimum():
    H, A = 4, 2
    target = torch.linspace(-0.8, 0.8, H * A).view(H, A)
    model = QuadraticModel(target)
    p = FullCEMPlanner(model, H, PlannerConfig("cem", 200, 20, 8, select="mean"), u_lower=-1.0, u_upper=1.0)
    h, x = torch.zeros(3, 1), torch.zeros(3, 2)
    u = p.plan(h, x, generator=torch.Generator().manual_seed(0))
    assert u.shape == (3, H, A)
    g = torch.Generator().manual_seed(1)
    init = (torch.randn(1000, H, A, generator=g)).clamp(-1, 1)  # the initial N(0, 1) clipped to the box
    init_cost = -model.returns(None, None, init).mean()
    cost = -model.returns(None, None, u)
    assert bool((cost < 0.1 * init_cost).all())
    torch.testing.assert_close(u, target.expand(3, H, A), atol=0.1, rtol=0)


def test_latent_dcem_improves_over_initial_distribution_and_is_differentiable():
    torch.manual_seed(0)
    H, A = 4, 2
    target = torch.full((H, A), 0.5)
    model = QuadraticModel(target)
    dec = ActionDecoder(3, H, A, -1.0, 1.0, hidden_sizes=(16,))
    p = LatentDCEMPlanner(model, dec, PlannerConfig("dcem", 100, 10, 8, temp=1.0, select="mean"))
    h, x = torch.zeros(2, 1), torch.zeros(2, 2)
    z, u = p.solve(h, x, generator=torch.Generator().manual_seed(0))
    z0 = torch.randn(2000, 3, generator=torch.Generator().manual_seed(2))
    init_cost = -model.returns(None, None, dec(z0)).mean()
    cost = -model.returns(None, None, u)
    assert bool((cost < init_cost).all())
    # brute force over the latent space: DCEM is close to the best of many random latents
    best = (-model.returns(None, None, dec(torch.randn(20000, 3) * 2))).min()
    assert bool((cost < best + 0.5 * (init_cost - best)).all())
    loss = p.decoder_loss(h, x, generator=torch.Generator().manual_seed(0))
    loss.backward()
    grads = [q.grad for q in dec.parameters()]
    assert all(gr is not None and torch.isfinite(gr).all() for gr in grads)
    assert sum(float(gr.abs().sum()) for gr in grads) > 0


def test_decoder_training_through_dcem_lowers_cost():
    torch.manual_seed(0)
    H, A = 3, 1
    model = QuadraticModel(torch.full((H, A), 0.9))
    dec = ActionDecoder(2, H, A, -1.0, 1.0, hidden_sizes=(16,))
    p = LatentDCEMPlanner(model, dec, PlannerConfig("dcem", 20, 4, 3, temp=1.0, select="mean"))
    opt = torch.optim.Adam(dec.parameters(), lr=1e-2)
    h, x = torch.zeros(4, 1), torch.zeros(4, 1)
    g = torch.Generator().manual_seed(0)
    first = float(p.decoder_loss(h, x, generator=g).detach())
    for _ in range(60):
        loss = p.decoder_loss(h, x, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.3 * first


def test_latent_dcem_gradcheck_float64():
    """d(first action)/d(decoder output bias) through DCEM agrees with finite differences."""
    torch.manual_seed(0)
    m = WorldModel(2, 1, deter_size=6, hidden_size=6).double()
    dec = ActionDecoder(2, 3, 1, -1.0, 1.0, hidden_sizes=(5,)).double()
    p = LatentDCEMPlanner(m, dec, PlannerConfig("dcem", 8, 3, 2, temp=1.0, select="mean"))
    h = torch.randn(2, 6, dtype=torch.float64)
    x = torch.randn(2, 2, dtype=torch.float64)
    name = f"decoder.net.{len(dec.net) - 1}.bias"

    def f(b):
        gen = torch.Generator().manual_seed(0)
        _, u = torch.func.functional_call(p, {name: b}, (h, x), {"generator": gen})
        return u[:, 0]

    bias = dict(p.named_parameters())[name]
    b0 = bias.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(f, (b0,), eps=1e-6, atol=1e-5)
    assert float(torch.autograd.functional.jacobian(f, b0).abs().sum()) > 0


def test_planner_size_validation():
    with pytest.raises(ValueError, match="n_elite"):
        check_planner_sizes(12, 10, 11, 10)
    with pytest.raises(ValueError, match="horizon"):
        check_planner_sizes(0, 10, 1, 10)
    model = WorldModel(2, 1, 4, 4)
    with pytest.raises(ValueError, match="n_elite"):
        FullCEMPlanner(model, 12, PlannerConfig("cem", 10, 100, 10, select="mean"))
    with pytest.raises(ValueError, match="n_ctrl"):
        LatentDCEMPlanner(model, ActionDecoder(2, 3, 2, -1.0, 1.0))


def test_replay_sample_alignment():
    T, O, A = 7, 2, 1
    rb = SequenceReplay(O, A, T, capacity=3)
    for e in range(4):  # one more than capacity: the first is overwritten
        t = np.arange(T + 1, dtype=np.float32)
        obs = np.stack([t + 100 * e, -t], -1)
        rb.add(obs, t[:-1, None] + 0.5 + 100 * e, t[:-1] + 0.25 + 100 * e)
    assert len(rb) == 3 and rb.n_steps == 21
    o, a, r = rb.sample(16, 4, np.random.default_rng(0))
    assert o.shape == (16, 5, 2) and a.shape == (16, 4, 1) and r.shape == (16, 4)
    # act[t] and rew[t] belong to obs[t]
    torch.testing.assert_close(a[..., 0], o[:, :-1, 0] + 0.5)
    torch.testing.assert_close(r, o[:, :-1, 0] + 0.25)
    assert float(o[..., 0].min()) >= 100  # episode 0 was overwritten
    with pytest.raises(ValueError, match="seq_len"):
        rb.sample(2, 8, np.random.default_rng(0))
    with pytest.raises(ValueError, match="episode"):
        rb.add(np.zeros((T, O)), np.zeros((T, A)), np.zeros(T))


def test_mean_ci95_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    v = [1.0, 4.0, 2.5, 3.0, 7.0]
    mean, ci = mean_ci95(v)
    ref = stats.t.ppf(0.975, 4) * np.std(v, ddof=1) / np.sqrt(5)
    assert mean == pytest.approx(np.mean(v))
    assert ci == pytest.approx(ref, rel=1e-3)
    one = mean_ci95([3.0])
    assert one[0] == 3.0 and math.isnan(one[1])  # no interval from one value


@pytest.mark.parametrize("rule", ["mppi", "icem"])
def test_full_planner_with_other_rules_finds_known_optimum(rule):
    H, A = 4, 2
    target = torch.linspace(-0.8, 0.8, H * A).view(H, A)
    model = QuadraticModel(target)
    p = FullCEMPlanner(model, H, PlannerConfig(rule, 200, 20, 8, lam=0.3, select="mean"))
    u = p.plan(torch.zeros(3, 1), torch.zeros(3, 2), generator=torch.Generator().manual_seed(0))
    assert u.shape == (3, H, A)
    torch.testing.assert_close(u, target.expand(3, H, A), atol=0.15, rtol=0)


def test_latent_mppi_planner_is_differentiable():
    torch.manual_seed(0)
    model = QuadraticModel(torch.full((3, 1), 0.5))
    dec = ActionDecoder(2, 3, 1, -1.0, 1.0, hidden_sizes=(8,))
    p = LatentDCEMPlanner(model, dec, PlannerConfig("mppi", 20, 4, 3, lam=0.5, select="mean"))
    p.decoder_loss(
        torch.zeros(2, 1), torch.zeros(2, 1), generator=torch.Generator().manual_seed(0)
    ).backward()
    assert all(q.grad is not None and bool(torch.isfinite(q.grad).all()) for q in dec.parameters())


@pytest.mark.parametrize("which", ["full", "latent"])
def test_captured_rl_planning_equals_the_eager_sync_free_plan(which):
    # the acting path records its loop once per batch shape; the CPU replay backend runs the
    # same static-buffer handling as the CUDA graph, and must give the eager sync-free plan
    import dcem

    H, A = 4, 2
    model = QuadraticModel(torch.linspace(-0.8, 0.8, H * A).view(H, A))
    opts = {"graph_backend": "replay"}
    if which == "full":
        make = lambda c: FullCEMPlanner(  # noqa: E731
            model, H, PlannerConfig("cem", 50, 5, 4, select="mean", capture=c), capture_options=opts
        )
    else:
        dec = ActionDecoder(3, H, A, -1.0, 1.0, hidden_sizes=(16,))
        make = lambda c: LatentDCEMPlanner(  # noqa: E731
            model, dec, PlannerConfig("dcem", 30, 5, 4, select="mean", capture=c), capture_options=opts
        )
    eager, cap = make("none"), make("graph")
    for seed in (0, 1):
        h, x = torch.zeros(3, 1), torch.full((3, 2), 0.1 * seed)
        with dcem.sync_mode("free"):
            a = eager.plan(h, x, generator=torch.Generator().manual_seed(seed))
            b = cap.plan(h, x, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(a, b, rtol=0, atol=0)
