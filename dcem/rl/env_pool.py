"""Several :class:`~dcem.rl.envs.DMCEnv` stepped in worker processes (parallel data collection).

:class:`EnvPool` keeps ``n_workers`` processes, each with its own task, and offers two ways to
collect:

- :meth:`EnvPool.random_episodes`: whole episodes of uniform random actions, computed entirely
  in the workers (the seed episodes of model-based RL);
- :meth:`EnvPool.reset` / :meth:`EnvPool.step`: every worker's task advanced in lockstep by one
  batch of actions ``(n_workers, act_dim)``, so a planner can choose the actions of all the
  tasks in one batched call (:func:`planned_episodes`).

Every episode is determined by its seed alone: the task's random state (initial state) and the
random actions are seeded with it at the start of the episode, so the results do not depend on
the number of workers, on which worker runs an episode, or on a resumed run. :func:`episode_seed`
derives distinct seeds from a run's seed and the episode's index.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["EnvPool", "episode_seed", "planned_episodes"]

Episode = tuple[np.ndarray, np.ndarray, np.ndarray]


def episode_seed(run_seed: int, index: int) -> int:
    """A 32-bit seed for episode ``index`` of the run seeded ``run_seed`` (distinct pairs, distinct
    streams: :class:`numpy.random.SeedSequence`)."""
    return int(np.random.SeedSequence([int(run_seed), int(index)]).generate_state(1)[0])


def _random_episode(env: Any, seed: int) -> Episode:
    rng = np.random.default_rng(seed)
    T = env.episode_len
    obs = np.zeros((T + 1, env.obs_dim), np.float32)
    act = rng.uniform(env.u_lower, env.u_upper, size=(T, env.act_dim)).astype(np.float32)
    rew = np.zeros(T, np.float32)
    obs[0] = env.reset(seed)
    for t in range(T):
        obs[t + 1], rew[t], _ = env.step(act[t])
    return obs, act, rew


def _worker(conn: Any, name: str, action_repeat: int | None, episode_steps: int) -> None:
    from dcem.rl.envs import make_env

    env = make_env(name, action_repeat, seed=0, episode_steps=episode_steps)
    conn.send((env.obs_dim, env.act_dim, env.episode_len, env.u_lower, env.u_upper))
    while True:
        try:
            cmd, arg = conn.recv()
        except EOFError:  # the parent exited without close()
            return
        if cmd == "close":
            conn.close()
            return
        try:
            if cmd == "episode":
                out: Any = _random_episode(env, arg)
            elif cmd == "reset":
                out = env.reset(arg)
            else:  # step
                out = env.step(arg)
        except Exception as err:  # noqa: BLE001 - sent back and raised in the parent
            out = err
        conn.send(out)


class EnvPool:
    """``n_workers`` processes, each stepping its own DeepMind Control task.

    Args:
        name, action_repeat, episode_steps: the task (:class:`~dcem.rl.envs.DMCEnv`).
        n_workers: number of worker processes (>= 1).
        start_method: ``multiprocessing`` start method; ``"spawn"`` (default) is safe with
            threads and CUDA in the parent, ``"fork"`` starts faster on Linux.
    """

    def __init__(
        self, name: str, action_repeat: int | None = None, episode_steps: int = 1000, n_workers: int = 2,
        start_method: str = "spawn",
    ) -> None:  # fmt: skip
        from dcem.rl.envs import check_env_name

        check_env_name(name)
        if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
            raise ValueError(f"n_workers must be an integer >= 1, got {n_workers!r}")
        if start_method not in mp.get_all_start_methods():
            raise ValueError(
                f"start_method must be one of {mp.get_all_start_methods()}, got {start_method!r}"
            )
        ctx: Any = mp.get_context(start_method)  # a concrete context (typeshed's BaseContext has no Process)
        self._conns, self._procs = [], []
        for _ in range(n_workers):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker, args=(child, name, action_repeat, episode_steps), daemon=True)
            p.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(p)
        self.obs_dim, self.act_dim, self.episode_len, self.u_lower, self.u_upper = self._conns[0].recv()
        for c in self._conns[1:]:
            c.recv()
        self.n_workers = n_workers

    def _call(self, conns: Sequence[Any], cmd: str, args: Sequence[Any]) -> list[Any]:
        for c, a in zip(conns, args):
            c.send((cmd, a))
        out = [c.recv() for c in conns]
        for o in out:
            if isinstance(o, Exception):
                raise o
        return out

    def random_episodes(self, seeds: Sequence[int]) -> list[Episode]:
        """One random-action episode per seed: ``(obs (T+1, O), act (T, A), rew (T,))`` each, in the
        order of ``seeds``; the workers run ``n_workers`` episodes at a time."""
        out: list[Episode] = []
        for i in range(0, len(seeds), self.n_workers):
            chunk = list(seeds[i : i + self.n_workers])
            out += self._call(self._conns[: len(chunk)], "episode", chunk)
        return out

    def reset(self, seeds: Sequence[int]) -> np.ndarray:
        """Start one episode per worker (``len(seeds) == n_workers``); first observations ``(W, O)``."""
        if len(seeds) != self.n_workers:
            raise ValueError(f"reset needs one seed per worker ({self.n_workers}), got {len(seeds)}")
        return np.stack(self._call(self._conns, "reset", list(seeds)))

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Step every worker's task: ``actions (W, A)`` -> obs ``(W, O)``, rewards ``(W,)``, done ``(W,)``."""
        actions = np.asarray(actions, dtype=np.float32)
        if actions.shape != (self.n_workers, self.act_dim):
            raise ValueError(
                f"actions must have shape ({self.n_workers}, {self.act_dim}), got {actions.shape}"
            )
        out = self._call(self._conns, "step", list(actions))
        return (np.stack([o[0] for o in out]), np.array([o[1] for o in out], np.float32),
                np.array([o[2] for o in out]))  # fmt: skip

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        for c, p in zip(self._conns, self._procs):
            if p.is_alive():
                try:
                    c.send(("close", None))
                except (BrokenPipeError, OSError):
                    pass
            p.join(5)
            if p.is_alive():
                p.kill()
        self._conns, self._procs = [], []

    def __enter__(self) -> EnvPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def planned_episodes(
    pool: EnvPool, seeds: Sequence[int], act: Callable[[int, np.ndarray], np.ndarray]
) -> list[Episode]:
    """One episode per worker, all advanced in lockstep with the actions of ``act(t, obs)``.

    Args:
        pool: the workers.
        seeds: one episode seed per worker.
        act: ``(t, obs (W, O)) -> actions (W, A)``, e.g. one batched planner call (it keeps its own
            state, such as the world model's filtered states, between calls).

    Returns:
        ``(obs (T+1, O), act (T, A), rew (T,))`` per worker, in the order of ``seeds``.
    """
    T, W = pool.episode_len, pool.n_workers
    obs = np.zeros((W, T + 1, pool.obs_dim), np.float32)
    acts = np.zeros((W, T, pool.act_dim), np.float32)
    rew = np.zeros((W, T), np.float32)
    obs[:, 0] = pool.reset(seeds)
    for t in range(T):
        a = np.clip(np.asarray(act(t, obs[:, t]), np.float32), pool.u_lower, pool.u_upper)
        obs[:, t + 1], rew[:, t], _ = pool.step(a)
        acts[:, t] = a
    return [(obs[w], acts[w], rew[w]) for w in range(W)]
