"""Gymnasium tasks (e.g. the MuJoCo ``HalfCheetah-v5``) with the interface of :class:`dcem.rl.envs.DMCEnv`.

Names are ``"gym:<id>"`` with a registered Gymnasium id (``gym:HalfCheetah-v5``,
``gym:Hopper-v5``, ``gym:InvertedPendulum-v5``, ...). Like the dm_control tasks:

- observations are flattened into ``float32`` vectors (``gymnasium.spaces.flatten``);
- every agent step repeats its action ``action_repeat`` times and sums the rewards (default 1:
  the MuJoCo tasks already skip frames); rewards are Gymnasium's own, unscaled (HalfCheetah earns
  up to about 10 per step where dm_control's rewards lie in [0, 1]; ``model.reward_scale`` of the
  pipeline weights the reward term of the model's loss);
- ``reset(seed)`` re-seeds the task, so an episode's initial state depends on the seed alone
  (paired evaluation); ``reset()`` continues the task's stream;
- episodes have a fixed length, ``episode_steps // action_repeat`` agent steps: tasks that accept
  ``terminate_when_unhealthy`` are made with it off (Hopper, Walker2d, Ant, Humanoid), and after
  any other termination the episode stays in its last state with zero reward.

``gymnasium`` is imported lazily (extra ``gym``: ``pip install 'dcem[gym]'``, which brings
``gymnasium[mujoco]``).
"""

from __future__ import annotations

import inspect
import re

import numpy as np

__all__ = ["GYM_PREFIX", "GymEnv", "check_gym_name", "is_gym_name"]

GYM_PREFIX = "gym:"
_ID = re.compile(r"^[A-Za-z0-9_/\-.:]+-v\d+$")


def is_gym_name(name: object) -> bool:
    """Whether ``name`` has the form of a Gymnasium task name ``"gym:<id>"``."""
    return isinstance(name, str) and name.startswith(GYM_PREFIX)


def _gym():
    try:
        import gymnasium
    except ImportError:
        raise ImportError("Gymnasium tasks (env names gym:...) need gymnasium: "
                          "pip install 'dcem[gym]'") from None
    return gymnasium


def check_gym_name(name: str) -> str:
    """The Gymnasium id of ``"gym:<id>"`` after checking that it is registered; ``ValueError`` otherwise.

    Raises ``ImportError`` (naming the extra) when gymnasium is not installed.
    """
    env_id = name[len(GYM_PREFIX):] if is_gym_name(name) else ""
    if not _ID.match(env_id):
        raise ValueError(f"env must be 'gym:<Gymnasium id>' such as 'gym:HalfCheetah-v5', got {name!r}")
    gym = _gym()
    if env_id not in gym.registry:
        near = sorted(k for k in gym.registry if k.split("-v")[0] == env_id.split("-v")[0])
        hint = f"; registered versions: {near}" if near else ""
        raise ValueError(f"{env_id!r} is not a registered Gymnasium id{hint}")
    return env_id


def _make(env_id: str, episode_steps: int):
    """``gymnasium.make`` with fixed-length episodes and an RGB renderer where the task has one."""
    gym = _gym()
    spec = gym.spec(env_id)
    creator = spec.entry_point
    if isinstance(creator, str):
        from gymnasium.envs.registration import load_env_creator

        creator = load_env_creator(creator)
    kwargs: dict = {"disable_env_checker": True, "max_episode_steps": episode_steps}
    if "terminate_when_unhealthy" in inspect.signature(creator).parameters:
        kwargs["terminate_when_unhealthy"] = False
    if "rgb_array" in getattr(creator, "metadata", {}).get("render_modes", []):
        try:
            return gym.make(env_id, render_mode="rgb_array", width=320, height=240, **kwargs)
        except TypeError:  # a task without a configurable frame size
            return gym.make(env_id, render_mode="rgb_array", **kwargs)
    return gym.make(env_id, **kwargs)


class GymEnv:
    """A Gymnasium task with flat ``float32`` observations, action repeat and fixed-length episodes.

    Args:
        name: ``"gym:<id>"`` (see the module docstring).
        action_repeat: environment steps per agent step (rewards summed); ``None``: 1.
        seed: seed of the task's first reset (initial states of unseeded episodes follow from it).
        episode_steps: environment steps per episode.

    Attributes as :class:`dcem.rl.envs.DMCEnv`: ``obs_dim``, ``act_dim``, ``u_lower``,
    ``u_upper`` (``(act_dim,)`` float32), ``episode_len`` (agent steps), ``action_repeat``.
    """

    def __init__(
        self, name: str, action_repeat: int | None = None, seed: int = 0, episode_steps: int = 1000
    ) -> None:
        env_id = check_gym_name(name)
        action_repeat = 1 if action_repeat is None else action_repeat
        if isinstance(action_repeat, bool) or not isinstance(action_repeat, int) or action_repeat < 1:
            raise ValueError(f"action_repeat must be a positive integer, got {action_repeat!r}")
        bad_steps = isinstance(episode_steps, bool) or not isinstance(episode_steps, int)
        if bad_steps or episode_steps < action_repeat:
            raise ValueError(f"episode_steps must be an integer >= action_repeat, got {episode_steps!r}")
        gym = _gym()
        self.name, self.action_repeat = name, action_repeat
        self._env = _make(env_id, episode_steps)
        space = self._env.action_space
        if not isinstance(space, gym.spaces.Box):
            raise ValueError(f"env={name!r}: continuous (Box) actions needed, got {type(space).__name__}")
        self.act_dim = int(np.prod(space.shape))
        self.u_lower = np.asarray(space.low, dtype=np.float32).reshape(self.act_dim)
        self.u_upper = np.asarray(space.high, dtype=np.float32).reshape(self.act_dim)
        if not (np.isfinite(self.u_lower).all() and np.isfinite(self.u_upper).all()):
            raise ValueError(f"env={name!r}: the action space must be bounded, got low {space.low}, "
                             f"high {space.high}")
        self._obs_space = self._env.observation_space
        self.obs_dim = int(gym.spaces.flatdim(self._obs_space))
        self.episode_len = episode_steps // action_repeat
        self._t, self._ended = 0, False
        self._last = self._flat(self._env.reset(seed=_check_seed(seed))[0])  # seeds the task's stream

    def _flat(self, obs) -> np.ndarray:
        flat = _gym().spaces.flatten(self._obs_space, obs)
        return np.asarray(flat, dtype=np.float32).reshape(self.obs_dim)

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Start an episode; returns the first observation ``(obs_dim,)`` (``seed``: see the module)."""
        obs, _ = self._env.reset(seed=None if seed is None else _check_seed(seed))
        self._t, self._ended = 0, False
        self._last = self._flat(obs)
        return self._last

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool]:
        """Apply ``action`` ``(act_dim,)`` (clipped) ``action_repeat`` times.

        Returns the next observation, the summed reward and whether the episode (of fixed
        length) ended.
        """
        a = np.clip(np.asarray(action, dtype=np.float32).reshape(self.act_dim), self.u_lower, self.u_upper)
        a = a.reshape(self._env.action_space.shape)
        reward = 0.0
        for _ in range(self.action_repeat):
            if self._ended:
                break
            obs, r, terminated, truncated, _ = self._env.step(a)
            reward += float(r)
            self._last = self._flat(obs)
            self._ended = bool(terminated or truncated)
        self._t += 1
        return self._last, reward, self._t >= self.episode_len

    def render(self, height: int = 240, width: int = 320) -> np.ndarray:
        """RGB frame ``(H, W, 3)`` uint8 of the task's renderer (frame size fixed at 240 x 320)."""
        if (height, width) != (240, 320):
            raise ValueError(f"Gymnasium tasks render 240 x 320 frames, got height={height}, width={width}")
        frame = self._env.render()
        if frame is None:
            raise ValueError(f"env={self.name!r} has no rgb_array renderer")
        return np.asarray(frame)

    def get_rng_state(self) -> dict:
        """State of the task's random generator (initial states of later episodes)."""
        return self._env.unwrapped.np_random.bit_generator.state

    def set_rng_state(self, state: dict) -> None:
        self._env.unwrapped.np_random.bit_generator.state = state


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}")
    return int(seed)
