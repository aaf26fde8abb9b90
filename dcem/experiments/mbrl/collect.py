"""Parallel data collection of the MBRL trainer (``train.collect_workers > 1``): DeepMind Control
tasks stepped in worker processes (:class:`dcem.rl.env_pool.EnvPool`).

With ``collect_workers = 1`` (the default) every episode runs in the trainer's process exactly as
before. With more, the seed episodes come from the pool, ``collect_workers`` at a time, episode
``i`` seeded with :func:`~dcem.rl.env_pool.episode_seed` ``(seed, i)`` (so they do not depend on
the number of workers or on a resume), and :meth:`CollectMixin.planned_episodes` runs one
planner-driven episode per worker with one batched planning call per step.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from dcem.rl.env_pool import EnvPool, episode_seed, planned_episodes

__all__ = ["CollectMixin"]


class CollectMixin:
    """Needs the trainer's ``cfg``, ``env``, ``run_episode``, ``model``, ``cem``, ``latent``, ``rng``,
    ``gen`` and ``device``."""

    _pool: EnvPool | None = None
    _seed_cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]

    @property
    def n_collect(self) -> int:
        return int(self.cfg["train"].get("collect_workers", 1))

    def pool(self) -> EnvPool:
        """The worker pool (started on first use)."""
        if self._pool is None:
            e = self.cfg["env"]
            self._pool = EnvPool(e["name"], e.get("action_repeat"), e["episode_steps"], self.n_collect)
        return self._pool

    def close_pool(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def seed_episode(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Random seed episode ``i`` (``obs (T+1, O)``, ``act (T, A)``, ``rew (T,)``)."""
        if self.n_collect == 1:
            return self.run_episode(self.env, "random")
        cache = self.__dict__.setdefault("_seed_cache", {})
        if i not in cache:
            n = min(self.n_collect, int(self.cfg["train"]["seed_episodes"]) - i)
            idx = list(range(i, i + max(n, 1)))
            seeds = [episode_seed(int(self.cfg["seed"]), k) for k in idx]
            cache.clear()
            cache.update(zip(idx, self.pool().random_episodes(seeds)))
        out = cache.pop(i)
        return out

    def planned_episodes(
        self, policy: str, noise: float, first: int, on_step: Callable[[int], None] | None = None
    ) -> list[tuple[np.ndarray, ...]]:
        """Episodes ``first .. first + collect_workers - 1`` with ``policy`` (``"cem"``/``"dcem"``) and
        Gaussian exploration noise, one per worker, planned in one batch per step (``on_step(t)`` is
        called before planning step ``t``)."""
        planner = {"cem": self.cem, "dcem": self.latent}[policy]
        pool = self.pool()
        W, lo, hi = pool.n_workers, pool.u_lower, pool.u_upper
        h = self.model.initial_state((W,), device=self.device)

        def act(t: int, obs: np.ndarray) -> np.ndarray:
            nonlocal h
            if on_step is not None:
                on_step(t)
            a, h = self.policy_step(planner, h, obs, noise, self.rng, self.gen, lo, hi)
            return a.astype(np.float32)

        seeds = [episode_seed(int(self.cfg["seed"]), first + w) for w in range(W)]
        return planned_episodes(pool, seeds, act)
