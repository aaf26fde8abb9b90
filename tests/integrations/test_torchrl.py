"""The TorchRL planner module: contract, plans against TorchRL's own planners, warm start, errors."""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import pytest
import torch

pytest.importorskip("torchrl")
pytest.importorskip("tensordict")

from tensordict import TensorDict  # noqa: E402
from tensordict.nn import TensorDictModule  # noqa: E402
from torchrl.data import Bounded, Composite, Unbounded  # noqa: E402
from torchrl.envs import EnvBase  # noqa: E402
from torchrl.envs.utils import check_env_specs  # noqa: E402
from torchrl.modules.planners import CEMPlanner, MPCPlannerBase, MPPIPlanner  # noqa: E402
from torchrl.objectives.value import TDLambdaEstimator  # noqa: E402

import dcem.integrations.torchrl as dtrl  # noqa: E402
from dcem.control import CartpoleDx, cartpole_swingup_cost  # noqa: E402
from dcem.integrations.torchrl import DynamicsEnv, PlannerModule  # noqa: E402
from dcem.planning import shift_plan  # noqa: E402

pytestmark = pytest.mark.rl


def cartpole(batch=()):
    return DynamicsEnv(CartpoleDx(), cartpole_swingup_cost, batch_size=batch)


class LineEnv(EnvBase):
    """``x' = x + u`` in 1-D, reward ``x'``, ``done`` once ``x' > 1``; knobs for the error cases."""

    def __init__(self, bounded=True, batch_locked=False, done_at=1.0):
        super().__init__(batch_size=())
        self._locked, self.done_at = batch_locked, done_at
        self.observation_spec = Composite(observation=Unbounded((1,)))
        self.action_spec = Bounded(-1.0, 1.0, (1,)) if bounded else Unbounded((1,))
        self.reward_spec = Unbounded((1,))

    @property
    def batch_locked(self):
        return self._locked

    @batch_locked.setter
    def batch_locked(self, value):
        self._locked = value

    def _step(self, td):
        x = td["observation"] + td["action"]
        done = x > self.done_at
        return TensorDict({"observation": x, "reward": x.clone(), "done": done, "terminated": done.clone()},
                          td.batch_size)

    def _reset(self, td, **kw):
        shape = self.batch_size if td is None else td.batch_size
        z = torch.zeros(*shape, 1, dtype=torch.bool)
        return TensorDict({"observation": torch.zeros(*shape, 1), "done": z, "terminated": z.clone()}, shape)

    def _set_seed(self, seed):
        pass


def torchrl_mppi(env, H, N, iters, k):
    value = TensorDictModule(lambda obs: torch.zeros(*obs.shape[:-1], 1), in_keys=["observation"],
                             out_keys=["state_value"])
    adv = TDLambdaEstimator(gamma=1.0, lmbda=1.0, value_network=value)
    return MPPIPlanner(env, adv, temperature=1.0, planning_horizon=H, optim_steps=iters, num_candidates=N,
                       top_k=k)


def closed_loop_return(world, policy, steps, seed):
    if isinstance(policy, PlannerModule):
        policy.reset()
        policy.generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    world.set_seed(seed)
    with torch.no_grad():
        return world.rollout(steps, policy)["next", "reward"].sum(-2).squeeze(-1)


def test_dynamics_env_specs_and_transition():
    env = cartpole((3,))
    check_env_specs(env)
    td = env.reset()
    td["action"] = torch.full((3, 1), 0.5)
    nxt = env.step(td)["next"]
    dx = CartpoleDx()
    u = torch.full((3, 1), 50.0)  # 0.5 of [-1, 1] onto [-100, 100]
    torch.testing.assert_close(nxt["observation"], dx(td["observation"], u))
    torch.testing.assert_close(nxt["reward"], -cartpole_swingup_cost(td["observation"], u).unsqueeze(-1))


def test_same_interface_as_torchrl_planners():
    plan_env = cartpole()
    ours = PlannerModule(plan_env, 5, n_sample=20, n_elite=4, n_iter=2)
    theirs = CEMPlanner(plan_env, planning_horizon=5, optim_steps=2, num_candidates=20, top_k=4)
    assert isinstance(ours, MPCPlannerBase)
    assert ours.in_keys == theirs.in_keys and ours.out_keys == theirs.out_keys
    world = cartpole((3,))
    for policy in (ours, theirs):
        traj = world.rollout(4, policy)
        assert traj.batch_size == torch.Size([3, 4])
        assert traj["action"].shape == (3, 4, 1) and bool(traj["action"].abs().max() <= 1)
    out = ours(world.reset())  # one call: the TensorDict comes back with the action
    assert out["action"].shape == (3, 1)


@pytest.mark.parametrize("rule", ["cem", "dcem", "mppi", "icem"])
def test_every_rule_plans_inside_the_bounds(rule):
    dx = CartpoleDx()
    plan_env = DynamicsEnv(dx, cartpole_swingup_cost, unit_actions=False)  # bounds [-100, 100]
    opts = {"lam": 0.3} if rule == "mppi" else {}
    p = PlannerModule(plan_env, 6, rule=rule, n_sample=30, n_elite=5, n_iter=3,
                      generator=torch.Generator().manual_seed(0), **opts)
    world = DynamicsEnv(dx, cartpole_swingup_cost, batch_size=(2,), unit_actions=False)
    a = world.rollout(3, p)["action"]
    assert torch.isfinite(a).all() and bool(a.abs().max() <= 100) and bool(a.abs().max() > 1)


class Toward(torch.nn.Module):
    def forward(self, h, a):
        return h + 0.5 * a


class Penalty(torch.nn.Module):
    def forward(self, h):
        return -h.pow(2).sum(-1, keepdim=True)


def test_plans_through_a_torchrl_world_model_env():
    from torchrl.envs.model_based import ModelBasedEnvBase
    from torchrl.modules import WorldModelWrapper

    class ModelEnv(ModelBasedEnvBase):
        def __init__(self, world_model):
            super().__init__(world_model)
            self.state_spec = Composite(hidden=Unbounded((2,)))
            self.observation_spec = Composite(hidden=Unbounded((2,)))
            self.action_spec = Bounded(-1.0, 1.0, (2,))
            self.reward_spec = Unbounded((1,))

        def _reset(self, td):
            shape = self.batch_size if td is None else td.batch_size
            return TensorDict({"hidden": torch.tensor([2.0, -2.0]).expand(*shape, 2).clone()}, shape)

    wm = WorldModelWrapper(TensorDictModule(Toward(), in_keys=["hidden", "action"], out_keys=["hidden"]),
                           TensorDictModule(Penalty(), in_keys=["hidden"], out_keys=["reward"]))
    env = ModelEnv(wm)
    p = PlannerModule(env, 3, n_sample=64, n_elite=8, n_iter=4, generator=torch.Generator().manual_seed(0))
    td = TensorDict({"hidden": torch.tensor([[2.0, -2.0], [-1.0, 0.0]])}, [2])
    a = p(td)["action"]
    assert a.shape == (2, 2)
    assert a[0, 0] < -0.5 and a[0, 1] > 0.5 and a[1, 0] > 0.5  # towards the origin, where the reward is


def test_objective_is_the_rollout_return_masked_after_done():
    env = LineEnv(done_at=1.0)
    p = PlannerModule(env, 3, n_sample=4, n_elite=2, n_iter=1)
    start = TensorDict({"observation": torch.tensor([[0.0], [0.5]])}, [2])
    plans = torch.tensor([[0.6, 0.6, -1.0], [0.1, 0.1, 0.1]]).view(1, 2, 3, 1).expand(2, 2, 3, 1)
    cost = p._objective(start)(plans)
    # brute force: x_t, reward x_{t+1}; a done step's reward counts, later ones do not
    for b, x0 in enumerate((0.0, 0.5)):
        for m in range(2):
            x, total, alive = x0, 0.0, True
            for t in range(3):
                x += plans[b, m, t, 0].item()
                total += x if alive else 0.0
                alive = alive and not x > 1.0
            assert cost[b, m].item() == pytest.approx(-total)
    p_checked = PlannerModule(env, 3, n_sample=4, n_elite=2, n_iter=1, checked_step=True)
    torch.testing.assert_close(p_checked._objective(start)(plans), cost)


def test_same_budget_as_torchrl_cem():
    """Both make n_iter batched rollouts of H steps over the candidates (ours adds the mean)."""
    counts = {}

    class Counting(LineEnv):
        def _step(self, td):
            counts[self.tag] = counts.get(self.tag, 0) + td.numel()
            return super()._step(td)

    env_a, env_b = Counting(done_at=1e9), Counting(done_at=1e9)
    env_a.tag, env_b.tag = "ours", "torchrl"
    td = TensorDict({"observation": torch.zeros(1)}, [])
    PlannerModule(env_a, 4, n_sample=10, n_elite=3, n_iter=5)(td.clone())
    CEMPlanner(env_b, planning_horizon=4, optim_steps=5, num_candidates=10, top_k=3)(td.clone())
    assert counts["torchrl"] == 5 * 4 * 10
    assert counts["ours"] == 5 * 4 * 11


@pytest.mark.parametrize("seed", [0, *(pytest.param(s, marks=pytest.mark.slow) for s in (1, 2))])
def test_better_plans_than_torchrl_cem_and_mppi(seed):
    """Closed-loop swing-up return, same env, same budget (H 15, 200 x 5, top-k 20), 4 states x 30 steps."""
    H, N, iters, k, steps = 15, 200, 5, 20, 30
    plan_env, world = cartpole(), cartpole((4,))
    rows = {
        "torchrl cem": CEMPlanner(plan_env, planning_horizon=H, optim_steps=iters, num_candidates=N, top_k=k),
        "torchrl mppi": torchrl_mppi(plan_env, H, N, iters, k),
        "cem": PlannerModule(plan_env, H, rule="cem", n_sample=N, n_elite=k, n_iter=iters),
        "mppi": PlannerModule(plan_env, H, rule="mppi", n_sample=N, n_iter=iters, lam=0.3),
    }
    ret = {name: closed_loop_return(world, p, steps, seed).mean().item() for name, p in rows.items()}
    for ours in ("cem", "mppi"):
        for theirs in ("torchrl cem", "torchrl mppi"):
            assert ret[ours] > ret[theirs], (ours, theirs, ret)


def test_warm_start_shifts_the_last_plan_and_resets_cold_rows(monkeypatch):
    p = PlannerModule(cartpole(), 5, n_sample=10, n_elite=2, n_iter=1)
    seen = []
    plan = p.planner.plan
    monkeypatch.setattr(p.planner, "plan", lambda *a, **kw: seen.append(kw["init_mean"]) or plan(*a, **kw))
    td = cartpole((3,)).reset()
    p(td.clone())
    first = p._plan.clone()
    assert seen[0] is None and first.shape == (3, 5, 1)
    td["is_init"] = torch.tensor([[False], [True], [False]])
    p(td.clone())
    want = shift_plan(first, 1)
    want[1] = 0.0  # the middle of [-1, 1]
    torch.testing.assert_close(seen[1], want)
    p(cartpole((2,)).reset())  # another batch size: cold
    assert seen[2] is None
    p.reset()
    p(td.clone())
    assert seen[3] is None
    q = PlannerModule(cartpole(), 5, n_sample=10, n_elite=2, n_iter=1, warm_start=False)
    q(td.clone())
    assert q._start(td) is None


def test_error_messages():
    with pytest.raises(ValueError, match="Bounded"):
        PlannerModule(LineEnv(bounded=False), 3)
    with pytest.raises(ValueError, match="batch_locked=True"):
        PlannerModule(LineEnv(batch_locked=True), 3)
    with pytest.raises(ValueError, match=re.escape("batch_size=[3]")):
        PlannerModule(cartpole((3,)), 3)
    with pytest.raises(ValueError, match="reward_key=.*not a reward of the env"):
        PlannerModule(cartpole(), 3, reward_key=("next", "rwd"))
    with pytest.raises(ValueError, match="action_key=.*action keys are"):
        PlannerModule(cartpole(), 3, action_key="act")
    with pytest.raises(TypeError, match="env must be a torchrl EnvBase"):
        PlannerModule(CartpoleDx(), 3)
    with pytest.raises(ValueError, match="horizon"):
        PlannerModule(cartpole(), 0)
    with pytest.raises(ValueError, match="rule"):
        PlannerModule(cartpole(), 3, rule="adam")
    p = PlannerModule(cartpole(), 3, n_sample=10, n_elite=2, n_iter=1)
    with pytest.raises(ValueError, match="lacks the env's observation key.*'observation'"):
        p(TensorDict({"obs": torch.zeros(5)}, []))
    with pytest.raises(TypeError, match="dcem.control.Dynamics"):
        DynamicsEnv(object(), cartpole_swingup_cost)


def test_missing_torchrl_names_the_extra(monkeypatch):
    import importlib
    import sys

    for name in [m for m in sys.modules if m == "torchrl" or m.startswith("torchrl.")]:
        monkeypatch.setitem(sys.modules, name, None)  # as if torchrl were not installed
    monkeypatch.delitem(sys.modules, "dcem.integrations.torchrl")
    with pytest.raises(ImportError, match=re.escape("pip install 'dcem[torchrl]'")):
        importlib.import_module("dcem.integrations.torchrl")


def test_module_docstring_example():
    result = doctest.testmod(dtrl, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_readme_torchrl_example_runs():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### TorchRL", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README.md#TorchRL", "exec"), scope)  # noqa: S102 - the README's own example
    assert scope["traj"]["action"].shape[:2] == (4, 50)
