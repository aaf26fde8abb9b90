"""World model of App. D: PlaNet's recurrent state-space model on proprioceptive observations.

The deterministic path is a GRU, ``h_{t+1} = f_trans(h_t, x_t, u_t)``; the stochastic state is
the observation itself, modelled as an isotropic Gaussian ``x_t ~ N(f_odec(h_t), sigma^2 I)``;
rewards are ``r_t = f_rew(h_{t+1}, x_{t+1})`` (the reward of the transition that reaches
``(h_{t+1}, x_{t+1})``). Every other function is an MLP with two ReLU hidden layers.

Because the stochastic state is observed, the multi-step variational bound of PlaNet reduces to
the log-likelihood of open-loop ("overshooting") predictions: from every filtered state
``(h_s, x_s)`` the model is rolled forward ``d = 1..D`` steps on its own mean predictions and
the true actions, and the Gaussian negative log-likelihood of ``x_{s+d}`` and ``r_{s+d-1}`` is
averaged, with the one-step term weighted 1 and the ``d >= 2`` terms sharing
``overshooting_scale``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["GRUCell", "WorldModel", "mlp"]


class GRUCell(nn.Module):
    """A GRU cell (Cho et al., 2014) on arbitrary leading dimensions.

    Same equations as :class:`torch.nn.GRUCell` but written with two linear maps, which is
    faster on CPU for the large batches of planning and accepts inputs ``(..., n_in)`` and
    states ``(..., n_hidden)``.
    """

    def __init__(self, n_in: int, n_hidden: int) -> None:
        super().__init__()
        self.n_hidden = n_hidden
        self.lin_x = nn.Linear(n_in, 3 * n_hidden)
        self.lin_h = nn.Linear(n_hidden, 3 * n_hidden)

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        rx, zx, nx = self.lin_x(x).chunk(3, -1)
        rh, zh, nh = self.lin_h(h).chunk(3, -1)
        r = torch.sigmoid(rx + rh)
        z = torch.sigmoid(zx + zh)
        n = torch.tanh(nx + r * nh)
        return torch.lerp(n, h, z)


def mlp(n_in: int, n_out: int, hidden: int = 200, layers: int = 2) -> nn.Sequential:
    """``layers`` fully connected ReLU layers of width ``hidden`` followed by a linear output."""
    mods: list[nn.Module] = []
    w = n_in
    for _ in range(layers):
        mods += [nn.Linear(w, hidden), nn.ReLU()]
        w = hidden
    mods.append(nn.Linear(w, n_out))
    return nn.Sequential(*mods)


class WorldModel(nn.Module):
    """Deterministic-GRU state-space model with Gaussian observations and a reward head.

    Args:
        obs_dim, act_dim: observation and action sizes.
        deter_size: GRU units (paper: 200).
        hidden_size: width of the two ReLU layers of every MLP (paper: 200).
        min_std: lower bound of the learned observation standard deviation.

    Observations are standardised with buffers ``obs_mean``/``obs_std`` (set with
    :meth:`set_obs_stats`); every method takes and returns *raw* observations except where noted.
    """

    # registered buffers
    obs_mean: Tensor
    obs_std: Tensor

    def __init__(
        self, obs_dim: int, act_dim: int, deter_size: int = 200, hidden_size: int = 200, min_std: float = 0.05
    ) -> None:
        super().__init__()
        for name, v in (("obs_dim", obs_dim), ("act_dim", act_dim), ("deter_size", deter_size),
                        ("hidden_size", hidden_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        self.obs_dim, self.act_dim, self.deter_size = obs_dim, act_dim, deter_size
        self.min_std = float(min_std)
        self.embed = nn.Sequential(
            nn.Linear(obs_dim + act_dim, hidden_size), nn.ReLU(),
            nn.Linear(hidden_size, hidden_size), nn.ReLU(),
        )
        self.cell = GRUCell(hidden_size, deter_size)
        self.obs_head = mlp(deter_size, obs_dim, hidden_size)
        self.reward_head = mlp(deter_size + obs_dim, 1, hidden_size)
        self.obs_log_std = nn.Parameter(torch.zeros(()))
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_std", torch.ones(obs_dim))

    # -- normalisation -------------------------------------------------------------------------
    def set_obs_stats(self, mean: Tensor, std: Tensor) -> None:
        """Set the observation standardisation (shapes ``(obs_dim,)``, ``std > 0``)."""
        mean = torch.as_tensor(mean, dtype=self.obs_mean.dtype, device=self.obs_mean.device)
        std = torch.as_tensor(std, dtype=self.obs_std.dtype, device=self.obs_std.device)
        if mean.shape != (self.obs_dim,) or std.shape != (self.obs_dim,) or not bool((std > 0).all()):
            raise ValueError(f"mean and std must have shape ({self.obs_dim},) and std > 0")
        self.obs_mean.copy_(mean)
        self.obs_std.copy_(std)

    def normalize(self, x: Tensor) -> Tensor:
        """Observations ``(..., obs_dim)`` standardised with the statistics of :meth:`set_obs_stats`."""
        return (x - self.obs_mean) / self.obs_std

    # -- one step in normalised space ----------------------------------------------------------
    def initial_state(self, batch_shape: tuple[int, ...] | torch.Size, device=None, dtype=None) -> Tensor:
        """Zero deterministic state ``(*batch_shape, deter_size)``."""
        p = self.obs_mean
        return torch.zeros(*batch_shape, self.deter_size, device=device or p.device, dtype=dtype or p.dtype)

    def transition(self, h: Tensor, xn: Tensor, u: Tensor) -> Tensor:
        """``h' = f_trans(h, x, u)``; ``h (..., D)``, normalised ``xn (..., O)``, ``u (..., A)``."""
        return self.cell(self.embed(torch.cat([xn, u], -1)), h)

    def predict_obs(self, h: Tensor) -> Tensor:
        """Mean of the normalised observation given ``h``, ``(..., O)``."""
        return self.obs_head(h)

    def reward(self, h: Tensor, xn: Tensor) -> Tensor:
        """Predicted reward ``(...,)`` of reaching ``(h, xn)``."""
        return self.reward_head(torch.cat([h, xn], -1)).squeeze(-1)

    def imagine(self, h: Tensor, xn: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """Open-loop rollout on mean predictions.

        Args:
            h: ``(..., D)``; xn: normalised observation ``(..., O)``; u: actions ``(..., H, A)``.

        Returns:
            predicted rewards ``(..., H)`` and normalised observations ``(..., H, O)``.
        """
        rewards, obs = [], []
        for k in range(u.shape[-2]):
            h = self.transition(h, xn, u[..., k, :])
            xn = self.predict_obs(h)
            rewards.append(self.reward(h, xn))
            obs.append(xn)
        return torch.stack(rewards, -1), torch.stack(obs, -2)

    def returns(self, h: Tensor, x: Tensor, u: Tensor) -> Tensor:
        """Predicted sum of rewards ``(...,)`` of the action sequences ``u (..., H, A)`` from raw ``x``."""
        return self.imagine(h, self.normalize(x), u)[0].sum(-1)

    # -- filtering and the training loss -------------------------------------------------------
    def filter(self, obs: Tensor, act: Tensor, h0: Tensor | None = None) -> Tensor:
        """Deterministic states along observed sequences.

        Args:
            obs: raw observations ``(B, L + 1, O)``; act: ``(B, L, A)``; h0: ``(B, D)`` or zeros.

        Returns:
            ``h`` of shape ``(B, L + 1, D)`` with ``h[:, t]`` summarising ``x_{<t}, u_{<t}``.
        """
        xn = self.normalize(obs)
        h = self.initial_state(obs.shape[:1]) if h0 is None else h0
        hs = [h]
        for t in range(act.shape[1]):
            h = self.transition(h, xn[:, t], act[:, t])
            hs.append(h)
        return torch.stack(hs, 1)

    @torch.no_grad()
    def open_loop_error(self, obs: Tensor, act: Tensor, rew: Tensor, horizon: int) -> tuple[Tensor, Tensor]:
        """Open-loop prediction error against distance on recorded episodes (held-out evidence).

        From every filtered state ``h_s`` of ``obs (B, L + 1, O)``, ``act (B, L, A)``, ``rew (B, L)``
        the model predicts ``d = 1 .. horizon`` steps ahead with the recorded actions only.

        Returns:
            ``obs_mse (D,)``: mean squared error of the normalised observation at distance ``d``
            (1.0 = the error of predicting the mean observation), and ``reward_mse (D,)``,
            ``D = min(horizon, L)``.
        """
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        L = act.shape[1]
        xn = self.normalize(obs)
        h, x = self.filter(obs, act)[:, :-1], xn[:, :-1]
        obs_mse, rew_mse = [], []
        for d in range(1, min(horizon, L) + 1):
            n = L - d + 1
            h = self.transition(h[:, :n], x[:, :n], act[:, d - 1 : d - 1 + n])
            x = self.predict_obs(h)
            obs_mse.append((x - xn[:, d : d + n]).pow(2).mean())
            rew_mse.append((self.reward(h, x) - rew[:, d - 1 : d - 1 + n]).pow(2).mean())
        return torch.stack(obs_mse), torch.stack(rew_mse)

    def loss(
        self, obs: Tensor, act: Tensor, rew: Tensor, overshooting: int = 1, overshooting_scale: float = 1.0,
        reward_scale: float = 1.0,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Multi-step negative log-likelihood on a batch of sequences.

        Args:
            obs: raw observations ``(B, L + 1, O)``; act ``(B, L, A)``; rew ``(B, L)``.
            overshooting: maximal prediction distance ``D >= 1``.
            overshooting_scale: weight of the mean of the ``d >= 2`` terms.
            reward_scale: weight of the reward log-likelihood.

        Returns:
            the scalar loss and a dict of detached diagnostics (``obs_nll``, ``reward_mse``,
            ``obs_mse``, per-distance ``obs_mse_d{d}`` for the first and last distance).
        """
        if overshooting < 1:
            raise ValueError(f"overshooting must be >= 1, got {overshooting}")
        B, L = act.shape[:2]
        D = min(overshooting, L)
        xn = self.normalize(obs)
        hs = self.filter(obs, act)  # (B, L+1, Dh)
        std = self.obs_log_std.exp().clamp_min(self.min_std)
        log_std = std.log()
        # open-loop from every filtered (h_s, x_s), s = 0..L-1
        h = hs[:, :-1]
        x = xn[:, :-1]
        total = obs.new_zeros(())
        stats: dict[str, Tensor] = {}
        for d in range(1, D + 1):
            n = L - d + 1  # starts with a target at distance d
            h = self.transition(h[:, :n], x[:, :n], act[:, d - 1: d - 1 + n])
            x = self.predict_obs(h)
            r = self.reward(h, x)
            target_x = xn[:, d: d + n]
            target_r = rew[:, d - 1: d - 1 + n]
            sq = (x - target_x).pow(2).mean(-1)
            obs_nll = 0.5 * sq / std.pow(2) + log_std + 0.5 * math.log(2 * math.pi)
            rew_nll = 0.5 * (r - target_r).pow(2)
            term = obs_nll.mean() + reward_scale * rew_nll.mean()
            if d == 1:
                total = total + term
                stats.update(obs_nll=obs_nll.mean().detach(), obs_mse=sq.mean().detach(),
                             reward_mse=(2 * rew_nll.mean()).detach())
            else:
                total = total + overshooting_scale * term / (D - 1)
            if d == 1 or d == D:
                stats[f"obs_mse_d{d}"] = sq.mean().detach()
                stats[f"reward_mse_d{d}"] = (2 * rew_nll.mean()).detach()
        stats["loss"] = total.detach()
        return total, stats
