"""Replay buffer of whole episodes from which fixed-length sub-sequences are sampled."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["SequenceReplay"]


class SequenceReplay:
    """Stores fixed-length episodes and samples random chunks of them.

    Episode ``e`` holds observations ``obs[e]`` of shape ``(T + 1, obs_dim)``, actions
    ``act[e]`` ``(T, act_dim)`` and rewards ``rew[e]`` ``(T,)``, where ``rew[e, t]`` is the
    reward received for taking ``act[e, t]`` in ``obs[e, t]``.

    Args:
        obs_dim, act_dim: sizes of one observation / action.
        episode_len: agent steps ``T`` per episode.
        capacity: maximum number of episodes (oldest overwritten first).
    """

    def __init__(self, obs_dim: int, act_dim: int, episode_len: int, capacity: int = 1000) -> None:
        for name, v in (("obs_dim", obs_dim), ("act_dim", act_dim), ("episode_len", episode_len),
                        ("capacity", capacity)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        self.obs_dim, self.act_dim, self.episode_len, self.capacity = obs_dim, act_dim, episode_len, capacity
        self.obs = np.zeros((capacity, episode_len + 1, obs_dim), np.float32)
        self.act = np.zeros((capacity, episode_len, act_dim), np.float32)
        self.rew = np.zeros((capacity, episode_len), np.float32)
        self.n_added = 0  # episodes ever added

    def __len__(self) -> int:
        return min(self.n_added, self.capacity)

    @property
    def n_steps(self) -> int:
        """Agent steps stored."""
        return len(self) * self.episode_len

    def add(self, obs: np.ndarray, act: np.ndarray, rew: np.ndarray) -> None:
        """Append one episode (shapes as in the class docstring)."""
        T = self.episode_len
        if obs.shape != (T + 1, self.obs_dim) or act.shape != (T, self.act_dim) or rew.shape != (T,):
            raise ValueError(
                f"episode must have obs {(T + 1, self.obs_dim)}, act {(T, self.act_dim)}, rew {(T,)}; "
                f"got {obs.shape}, {act.shape}, {rew.shape}"
            )
        i = self.n_added % self.capacity
        self.obs[i], self.act[i], self.rew[i] = obs, act, rew
        self.n_added += 1

    def sample(
        self, batch_size: int, seq_len: int, rng: np.random.Generator, device: torch.device | str = "cpu"
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Random chunks: obs ``(B, L + 1, obs_dim)``, act ``(B, L, act_dim)``, rew ``(B, L)``."""
        if len(self) == 0:
            raise ValueError("the replay buffer is empty")
        if not 1 <= seq_len <= self.episode_len:
            raise ValueError(f"seq_len must be in [1, episode_len = {self.episode_len}], got {seq_len}")
        ep = rng.integers(0, len(self), size=batch_size)
        start = rng.integers(0, self.episode_len - seq_len + 1, size=batch_size)
        idx = start[:, None] + np.arange(seq_len + 1)[None]
        obs = self.obs[ep[:, None], idx]
        act = self.act[ep[:, None], idx[:, :-1]]
        rew = self.rew[ep[:, None], idx[:, :-1]]
        return (torch.as_tensor(obs, device=device), torch.as_tensor(act, device=device),
                torch.as_tensor(rew, device=device))

    def obs_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation (floored at 1e-2) of the stored observations."""
        o = self.obs[: len(self)].reshape(-1, self.obs_dim)
        return o.mean(0), np.maximum(o.std(0), 1e-2)

    def state_dict(self) -> dict[str, Any]:
        n = len(self)
        return {"obs": self.obs[:n].copy(), "act": self.act[:n].copy(), "rew": self.rew[:n].copy(),
                "n_added": self.n_added, "capacity": self.capacity}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        n = sd["obs"].shape[0]
        if sd["obs"].shape[1:] != self.obs.shape[1:] or sd["act"].shape[1:] != self.act.shape[1:]:
            raise ValueError(
                f"replay buffer shapes {sd['obs'].shape[1:]}/{sd['act'].shape[1:]} do not match "
                f"{self.obs.shape[1:]}/{self.act.shape[1:]}"
            )
        if sd["capacity"] != self.capacity:
            raise ValueError(f"replay capacity {sd['capacity']} != {self.capacity}")
        self.obs[:n], self.act[:n], self.rew[:n] = sd["obs"], sd["act"], sd["rew"]
        self.n_added = int(sd["n_added"])
