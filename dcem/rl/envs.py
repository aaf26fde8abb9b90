"""DeepMind Control Suite tasks with flattened proprioceptive observations and action repeat.

:func:`make_env` also builds Gymnasium tasks, named ``"gym:<id>"`` (:mod:`dcem.rl.gym_envs`).
``dm_control`` is imported lazily so that the rest of :mod:`dcem.rl` works without it. For
headless rendering set ``MUJOCO_GL=egl`` *before* the first import of ``dm_control``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["ENVS", "DMCEnv", "check_env_name", "default_action_repeat", "make_env"]

#: supported ``domain-task`` names and PlaNet's action repeat for each.
ENVS: dict[str, int] = {
    "cartpole-swingup": 8,
    "cartpole-balance": 8,
    "pendulum-swingup": 4,
    "cheetah-run": 4,
    "walker-walk": 2,
    "reacher-easy": 4,
    "finger-spin": 2,
}


def check_env_name(name: str) -> tuple[str, str]:
    """Split ``"domain-task"`` after checking it is a supported name; ``ValueError`` otherwise.

    A Gymnasium name ``"gym:<id>"`` gives ``("gym", id)`` once the id is registered
    (``ImportError`` naming the extra without gymnasium).
    """
    from dcem.rl.gym_envs import check_gym_name, is_gym_name

    if is_gym_name(name):
        return "gym", check_gym_name(name)
    if not isinstance(name, str) or name not in ENVS:
        raise ValueError(f"env must be one of {sorted(ENVS)} or 'gym:<Gymnasium id>', got {name!r}")
    domain, task = name.split("-", 1)
    return domain, task


class DMCEnv:
    """A ``dm_control`` task with flat ``float32`` observations and action repeat.

    Args:
        name: ``"domain-task"``, one of :data:`ENVS`.
        action_repeat: number of physics control steps per agent step (rewards are summed);
            ``None`` uses PlaNet's value from :data:`ENVS`.
        seed: seed of the task's random state (initial states).
        episode_steps: environment (not agent) steps per episode, default the task's 1000.

    Observations are the task's observation dict flattened in key order into a vector of
    size :attr:`obs_dim`; actions are vectors of size :attr:`act_dim` within
    ``[u_lower, u_upper]`` (clipped).
    """

    def __init__(
        self, name: str, action_repeat: int | None = None, seed: int = 0, episode_steps: int = 1000
    ) -> None:
        domain, task = check_env_name(name)
        if domain == "gym":
            raise ValueError(f"{name!r} is a Gymnasium task: build it with make_env or "
                             f"dcem.rl.gym_envs.GymEnv")
        if action_repeat is None:
            action_repeat = ENVS[name]
        if isinstance(action_repeat, bool) or not isinstance(action_repeat, int) or action_repeat < 1:
            raise ValueError(f"action_repeat must be a positive integer, got {action_repeat!r}")
        if not isinstance(episode_steps, int) or episode_steps < action_repeat:
            raise ValueError(f"episode_steps must be an integer >= action_repeat, got {episode_steps!r}")
        from dm_control import suite

        self.name = name
        self.action_repeat = action_repeat
        self._env = suite.load(domain, task, task_kwargs={"random": int(seed), "time_limit": float("inf")})
        self._episode_env_steps = episode_steps
        spec = self._env.action_spec()
        self.act_dim = int(spec.shape[0])
        self.u_lower = np.asarray(spec.minimum, dtype=np.float32).reshape(self.act_dim)
        self.u_upper = np.asarray(spec.maximum, dtype=np.float32).reshape(self.act_dim)
        self.obs_dim = int(sum(int(np.prod(v.shape)) for v in self._env.observation_spec().values()))
        #: agent steps per episode
        self.episode_len = episode_steps // action_repeat
        self._t = 0

    @staticmethod
    def _flat(obs: dict[str, Any]) -> np.ndarray:
        return np.concatenate([np.asarray(v, dtype=np.float32).reshape(-1) for v in obs.values()])

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Start an episode; returns the first observation, shape ``(obs_dim,)``.

        ``seed`` re-seeds the task's random state first, so the episode's initial state depends
        on ``seed`` alone (paired test episodes); ``None`` continues the task's stream.
        """
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
                raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}")
            self._env.task.random.seed(int(seed))
        self._t = 0
        return self._flat(self._env.reset().observation)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool]:
        """Apply ``action`` (shape ``(act_dim,)``) ``action_repeat`` times.

        Returns the next observation, the summed reward and whether the episode ended.
        """
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(self.act_dim), self.u_lower, self.u_upper)
        reward = 0.0
        ts: Any = None
        for _ in range(self.action_repeat):
            ts = self._env.step(a)
            reward += float(ts.reward or 0.0)
        self._t += 1
        done = self._t >= self.episode_len
        return self._flat(ts.observation), reward, done

    def render(self, height: int = 240, width: int = 320) -> np.ndarray:
        """RGB frame ``(height, width, 3)`` uint8 (needs a MuJoCo GL backend, e.g. ``MUJOCO_GL=egl``)."""
        return self._env.physics.render(height=height, width=width, camera_id=0)

    def get_rng_state(self) -> tuple:
        """State of the task's random generator (initial states of later episodes)."""
        return self._env.task.random.get_state()

    def set_rng_state(self, state: tuple) -> None:
        """Restore a state of :meth:`get_rng_state` (the next episodes start as they did then)."""
        self._env.task.random.set_state(state)


def default_action_repeat(name: str) -> int:
    """Action repeat used when none is given: PlaNet's for dm_control (:data:`ENVS`), 1 for Gymnasium."""
    from dcem.rl.gym_envs import is_gym_name

    if is_gym_name(name):
        return 1
    check_env_name(name)
    return ENVS[name]


def make_env(name: str, action_repeat: int | None = None, seed: int = 0, episode_steps: int = 1000) -> Any:
    """A :class:`DMCEnv`, or a :class:`dcem.rl.gym_envs.GymEnv` for ``"gym:<id>"`` (same interface)."""
    from dcem.rl.gym_envs import GymEnv, is_gym_name

    env_type = GymEnv if is_gym_name(name) else DMCEnv
    return env_type(name, action_repeat=action_repeat, seed=seed, episode_steps=episode_steps)
