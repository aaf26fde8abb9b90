"""Parallel collection: :class:`dcem.rl.env_pool.EnvPool` against tasks stepped in this process."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("dm_control")

from dcem.rl.env_pool import EnvPool, episode_seed, planned_episodes  # noqa: E402
from dcem.rl.envs import DMCEnv  # noqa: E402

pytestmark = pytest.mark.rl
TASK = ("cartpole-swingup", 8, 80)  # 10 agent steps per episode


def _reference(seed: int, actions=None):
    """The episode stepped here: task state and random actions both seeded with ``seed``."""
    env = DMCEnv(TASK[0], action_repeat=TASK[1], seed=seed, episode_steps=TASK[2])  # task seeded directly
    rng = np.random.default_rng(seed)
    obs = [env.reset()]
    acts, rews = [], []
    for t in range(env.episode_len):
        a = (
            rng.uniform(env.u_lower, env.u_upper, size=env.act_dim)
            if actions is None
            else actions(t, obs[-1])
        )
        o, r, _ = env.step(np.clip(a, env.u_lower, env.u_upper))
        obs.append(o)
        acts.append(np.clip(a, env.u_lower, env.u_upper))
        rews.append(r)
    return np.stack(obs), np.stack(acts).astype(np.float32), np.array(rews, np.float32)


@pytest.fixture(scope="module")
def pools():
    kw = {"action_repeat": TASK[1], "episode_steps": TASK[2], "start_method": "fork"}  # fork: fast start
    with EnvPool(TASK[0], n_workers=1, **kw) as one, EnvPool(TASK[0], n_workers=2, **kw) as two:
        yield one, two


def test_random_episodes_do_not_depend_on_the_number_of_workers(pools):
    one, two = pools
    seeds = [episode_seed(7, k) for k in range(3)]
    a, b = one.random_episodes(seeds), two.random_episodes(seeds)
    assert len(a) == len(b) == 3 and a[0][0].shape == (11, 5) and a[0][1].shape == (10, 1)
    for ea, eb, s in zip(a, b, seeds):
        ref = _reference(s)
        for x, y, z in zip(ea, eb, ref):
            np.testing.assert_array_equal(x, y)
            np.testing.assert_allclose(x, z, rtol=1e-6, atol=1e-6)
    assert not np.array_equal(a[0][0][0], a[1][0][0])  # distinct seeds: distinct initial states
    assert len({episode_seed(0, 1), episode_seed(1, 0), episode_seed(0, 0)}) == 3


def test_lockstep_episodes_match_sequential_ones(pools):
    _, two = pools

    def policy(t, obs):  # deterministic feedback on the observation, batched or not
        return np.tanh(obs[..., :1] * 3.0 - 0.1 * t)

    seeds = [11, 12]
    eps = planned_episodes(two, seeds, policy)
    for ep, s in zip(eps, seeds):
        for x, y in zip(ep, _reference(s, policy)):
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="actions must have shape"):
        two.step(np.zeros((3, 1)))
    with pytest.raises(ValueError, match="n_workers must be an integer >= 1"):
        EnvPool("cartpole-swingup", n_workers=0)


def test_trainer_seed_episodes_from_the_pool_and_batched_planning(tmp_path, monkeypatch, pools):
    import functools

    import dcem.experiments.mbrl.collect as collect
    from dcem.experiments.mbrl import compose
    from dcem.experiments.mbrl.trainer import MBRLTrainer

    monkeypatch.setattr(collect, "EnvPool", functools.partial(EnvPool, start_method="fork"))
    cfg = compose(["scale=test", "train.collect_workers=2", "train.seed_episodes=3", f"out_dir={tmp_path}"])
    tr = MBRLTrainer(cfg, tmp_path)
    try:
        got = [tr.seed_episode(i) for i in range(3)]
        ref = pools[0].random_episodes([episode_seed(cfg["seed"], i) for i in range(3)])
        for g, r in zip(got, ref):
            for x, y in zip(g, r):
                np.testing.assert_array_equal(x, y)
        eps = tr.planned_episodes("cem", 0.3, first=3)
        assert len(eps) == 2 and eps[0][1].shape == (tr.env.episode_len, tr.env.act_dim)
        assert all(np.isfinite(e[2]).all() for e in eps) and not np.array_equal(eps[0][0], eps[1][0])
        lo, hi = tr.env.u_lower, tr.env.u_upper
        assert all(((e[1] >= lo) & (e[1] <= hi)).all() for e in eps)
    finally:
        tr.close_pool()
