"""Gymnasium tasks behind the DMCEnv interface: flattening, action repeat, seeding, fixed-length episodes."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from dcem.rl.envs import DMCEnv, check_env_name, default_action_repeat, make_env
from dcem.rl.gym_envs import GymEnv, check_gym_name, is_gym_name

gym = pytest.importorskip("gymnasium")
pytest.importorskip("mujoco")


def test_flat_observations_bounds_and_dispatch():
    env = make_env("gym:HalfCheetah-v5", seed=0, episode_steps=20)
    assert isinstance(env, GymEnv) and env.action_repeat == 1 and env.episode_len == 20
    assert (env.obs_dim, env.act_dim) == (17, 6)
    np.testing.assert_array_equal(env.u_lower, -np.ones(6, np.float32))
    o = env.reset(0)
    assert o.shape == (17,) and o.dtype == np.float32
    o2, r, done = env.step(np.zeros(6))
    assert o2.shape == (17,) and isinstance(r, float) and not done
    assert check_env_name("gym:Hopper-v5") == ("gym", "Hopper-v5")
    assert default_action_repeat("gym:Hopper-v5") == 1 and default_action_repeat("cheetah-run") == 4


def test_reset_seed_pairs_with_gymnasium_and_action_repeat_sums_rewards():
    env = GymEnv("gym:HalfCheetah-v5", action_repeat=3, seed=5, episode_steps=30)
    ref = gym.make("HalfCheetah-v5")
    o_ref, _ = ref.reset(seed=11)
    np.testing.assert_allclose(env.reset(11), o_ref.astype(np.float32))
    a = np.linspace(-1, 1, 6)
    o, r, _ = env.step(a)
    total = 0.0
    for _ in range(3):
        o_ref, r_ref, *_ = ref.step(a.astype(np.float32))
        total += r_ref
    np.testing.assert_allclose(o, o_ref.astype(np.float32), rtol=1e-5, atol=1e-6)
    assert r == pytest.approx(total, rel=1e-5)
    assert env.episode_len == 10


def test_unseeded_resets_follow_the_rng_state():
    env = GymEnv("gym:HalfCheetah-v5", seed=3, episode_steps=10)
    state = env.get_rng_state()
    a = env.reset()
    env.set_rng_state(state)
    np.testing.assert_array_equal(env.reset(), a)
    assert not np.array_equal(env.reset(), a)  # the stream moves on
    same, other = (GymEnv("gym:HalfCheetah-v5", seed=s, episode_steps=10) for s in (3, 4))
    fresh = GymEnv("gym:HalfCheetah-v5", seed=3, episode_steps=10)
    first = fresh.reset()
    np.testing.assert_array_equal(same.reset(), first)  # same seed, same stream of episodes
    assert not np.array_equal(other.reset(), first)


def test_episodes_have_a_fixed_length_after_termination():
    env = GymEnv("gym:InvertedPendulum-v5", seed=0, episode_steps=40)
    env.reset(0)
    rewards, obs, done, n = [], [], False, 0
    while not done:
        o, r, done = env.step(np.array([3.0]))  # full push: the pole falls within a few steps
        rewards.append(r), obs.append(o)
        n += 1
    assert n == 40
    first_zero = rewards.index(0.0)
    assert 0 < first_zero < 40 and all(r == 0.0 for r in rewards[first_zero:])
    np.testing.assert_array_equal(obs[-1], obs[first_zero])  # frozen in the terminal state (reward 0 there)
    hopper = GymEnv("gym:Hopper-v5", episode_steps=10)
    assert hopper._env.unwrapped._terminate_when_unhealthy is False


def test_errors_name_the_problem(monkeypatch):
    with pytest.raises(ValueError, match="gym:<Gymnasium id>"):
        check_gym_name("gym:HalfCheetah")
    with pytest.raises(ValueError, match=r"'HalfCheetah-v9' is not a registered.*HalfCheetah-v5"):
        GymEnv("gym:HalfCheetah-v9")
    with pytest.raises(ValueError, match="Box"):
        GymEnv("gym:CartPole-v1")
    with pytest.raises(ValueError, match="action_repeat"):
        GymEnv("gym:HalfCheetah-v5", action_repeat=0)
    with pytest.raises(ValueError, match="episode_steps"):
        GymEnv("gym:HalfCheetah-v5", action_repeat=4, episode_steps=3)
    with pytest.raises(ValueError, match="seed"):
        GymEnv("gym:HalfCheetah-v5", seed=-1)
    with pytest.raises(ValueError, match="Gymnasium task"):
        DMCEnv("gym:HalfCheetah-v5")
    with pytest.raises(ValueError, match="or 'gym:<Gymnasium id>'"):
        check_env_name("cheetah-fly")
    env = GymEnv("gym:InvertedPendulum-v5", episode_steps=5)
    with pytest.raises(ValueError, match="240 x 320"):
        env.render(64, 64)
    assert is_gym_name("gym:x") and not is_gym_name("cheetah-run") and not is_gym_name(3)
    monkeypatch.setitem(sys.modules, "gymnasium", None)
    with pytest.raises(ImportError, match=r"dcem\[gym\]"):
        make_env("gym:HalfCheetah-v5")
