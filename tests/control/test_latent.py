import pytest
import torch

from dcem.control import (
    ActionDecoder,
    CartpoleDx,
    LatentDCEMController,
    PendulumDx,
    cartpole_swingup_cost,
    imitation_loss,
    rollout_cost,
    train_step,
)
from dcem.planning import PlannerConfig

pytestmark = pytest.mark.usefixtures("sync_path")


def _small(dx, temp=1.0, n_latent=2, H=6, dtype=torch.float32, seed=0, cost=None, z_lower=-1.0, z_upper=1.0,
           **config):  # fmt: skip
    """A small controller; ``temp`` 0 is hard CEM (the controller's "min" selection), ``config``
    overrides fields of its PlannerConfig."""
    torch.manual_seed(seed)
    dec = ActionDecoder(n_latent, H, dx.n_ctrl, dx.u_lower, dx.u_upper, hidden_sizes=(16,), activation="elu")
    hard = not temp
    opts = {"n_sample": 20, "n_elite": 4, "n_iter": 3, "temp": 1.0 if hard else temp,
            "select": "min" if hard else "mean", **config}  # fmt: skip
    cfg = PlannerConfig("cem" if hard else "dcem", **opts)
    return LatentDCEMController(dec.to(dtype), dx.to(dtype), cost, cfg, z_lower=z_lower, z_upper=z_upper)


def test_solve_shapes_bounds_and_cost():
    dx = CartpoleDx()
    ctrl = _small(dx, cost=cartpole_swingup_cost)
    x = dx.sample_state(3, torch.Generator().manual_seed(0))
    sol = ctrl.solve(x, generator=torch.Generator().manual_seed(0))
    assert sol.z.shape == (3, 2) and sol.u.shape == (6, 3, 1) and sol.cost.shape == (3,)
    assert bool((sol.z.abs() <= 1).all()) and bool((sol.u.abs() <= 100).all())
    torch.testing.assert_close(sol.u, ctrl.decoder(sol.z).movedim(-2, 0))
    # cost is the independent sum of per-step costs along dx.rollout
    xs = dx.rollout(x, sol.u)
    torch.testing.assert_close(sol.cost, cartpole_swingup_cost(xs[:-1], sol.u).sum(0))
    # the latent objective C(z) agrees with a per-sample rollout
    z = torch.rand(3, 5, 2) * 2 - 1
    C = ctrl.latent_cost(x)(z)
    ref = torch.stack([rollout_cost(dx, cartpole_swingup_cost, x, ctrl.decode(z[:, j])) for j in range(5)], 1)
    torch.testing.assert_close(C, ref)
    # 1-D state and the policy
    assert ctrl.solve(x[0]).u.shape == (6, 1)
    assert ctrl(x).shape == (3, 1)


def test_policy_gradient_matches_finite_differences():
    """pi(x) = first latent action is a smooth function of the decoder weights for a fixed seed."""
    dx = PendulumDx()
    ctrl = _small(dx, dtype=torch.float64)
    x = dx.sample_state(2, torch.Generator().manual_seed(1)).double()
    w = ctrl.decoder.net[0].weight

    def loss():
        return ctrl.solve(x, generator=torch.Generator().manual_seed(0)).cost.sum()

    (g,) = torch.autograd.grad(loss(), w)
    d = torch.randn(w.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    eps = 1e-6
    with torch.no_grad():
        w += eps * d
        fp = loss()
        w -= 2 * eps * d
        fm = loss()
        w += eps * d
    assert float((g * d).sum()) == pytest.approx(float((fp - fm) / (2 * eps)), rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("temp", [1.0, 0.1, 0.0])
def test_gradients_reach_decoder(temp):
    dx = CartpoleDx()
    ctrl = _small(dx, temp=temp, cost=cartpole_swingup_cost)
    assert ctrl.select == ("min" if temp == 0 else "mean")
    sol = ctrl.solve(
        dx.sample_state(2, torch.Generator().manual_seed(0)), generator=torch.Generator().manual_seed(0)
    )
    sol.cost.sum().backward()
    grads = [p.grad for p in ctrl.decoder.parameters()]
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_alg2_training_improves_on_random_decoder():
    dx = CartpoleDx()
    torch.manual_seed(0)
    dec = ActionDecoder(2, 10, 1, dx.u_lower, dx.u_upper, hidden_sizes=(64, 64), activation="elu")
    ctrl = LatentDCEMController(
        dec, dx, cartpole_swingup_cost, PlannerConfig("dcem", 50, 5, 5, temp=1.0, select="mean")
    )
    x_val = dx.sample_state(16, torch.Generator().manual_seed(123))

    def val():
        with torch.no_grad():
            return float(ctrl.solve(x_val, generator=torch.Generator().manual_seed(7)).cost.mean())

    before = val()
    opt = torch.optim.Adam(dec.parameters(), lr=3e-3)
    g, gi = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    for _ in range(25):
        out = train_step(ctrl, opt, dx.sample_state(4, gi), generator=g)
        assert set(out) == {"loss", "cost", "extra", "grad_norm"}
    after = val()
    print(before, after)
    assert after < before - 1.0, (before, after)


def test_imitation_finetuning_of_the_policy():
    dx = PendulumDx()
    ctrl = _small(dx, H=5)
    x = dx.sample_state(8, torch.Generator().manual_seed(0))
    expert_u0 = torch.full((8, 1), 1.5)

    def extra(sol, x_init):
        return imitation_loss(sol.u[0], expert_u0, dx.u_lower, dx.u_upper)

    opt = torch.optim.Adam(ctrl.decoder.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    first = None
    for _ in range(30):
        out = train_step(ctrl, opt, x, generator=g, cost_weight=0.0, extra_loss=extra, clip_grad=None)
        first = float(out["extra"]) if first is None else first
    assert float(out["extra"]) < 0.2 * first
    assert float(out["loss"]) == pytest.approx(float(out["extra"]))


def test_imitation_loss_hand_computed():
    lo, hi = torch.tensor([-2.0]), torch.tensor([2.0])
    assert float(
        imitation_loss(torch.tensor([[1.0], [0.0]]), torch.tensor([[-1.0], [0.0]]), lo, hi)
    ) == pytest.approx(0.125)
    with pytest.raises(ValueError, match="must match"):
        imitation_loss(torch.zeros(2, 1), torch.zeros(3, 1), lo, hi)


def test_bad_inputs():
    dx = CartpoleDx()
    dec = ActionDecoder(2, 5, 2, -1.0, 1.0)
    with pytest.raises(ValueError, match="n_ctrl"):
        LatentDCEMController(dec, dx)
    ctrl = _small(dx)
    with pytest.raises(ValueError, match="finite"):
        ctrl.solve(torch.tensor([0.0, float("nan"), 1.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="x_init must have shape"):
        ctrl.solve(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="n_elite"):
        _small(dx, n_elite=50)
    with pytest.raises(ValueError, match="temp"):
        _small(dx, temp=-1.0)
    with pytest.raises(ValueError, match="z_lower"):
        _small(dx, z_lower=1.0, z_upper=-1.0)
    with pytest.raises(TypeError, match="dx"):
        LatentDCEMController(dec, "cartpole")


def test_checkpointed_latent_solve_gives_the_same_decoder_gradients():
    dx = PendulumDx().double()
    x = dx.sample_state(2, torch.Generator().manual_seed(0)).double()
    grads = []
    for ckpt in (False, True):
        ctrl = _small(dx, dtype=torch.float64, checkpoint=ckpt)
        sol = ctrl.solve(x, generator=torch.Generator().manual_seed(0))
        grads.append(torch.autograd.grad(sol.cost.sum(), list(ctrl.decoder.parameters())))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
