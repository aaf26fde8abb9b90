"""PPO fine-tuning of the latent-DCEM controller (App. D, phase 3), with TorchRL's losses.

The controller is a differentiable policy: its mean is the first action of the decoded DCEM
solution, ``mu(h, x) = f_dec(z*(h, x))_1`` with ``z* = DCEM(C o f_dec)`` on the learned model, and
the policy is ``N(mu, sigma^2 I)`` with ``sigma`` fixed or learned. TorchRL's ``ClipPPOLoss`` and
``GAE`` supply the clipped surrogate objective, the critic loss and the advantages; gradients
of the surrogate flow through DCEM into whichever of the decoder, reward head, transition and
observation head are left trainable.

DCEM samples are random, so the policy mean is a random function of the state. Every action is
drawn with its own DCEM noise seed (``noise_seed`` of the transition, see :class:`DCEMPolicyNet`),
and the behaviour log-probability is stored at collection time; PPO's new log-probability of a
transition is evaluated with the same seed (common random numbers), so the ratio
``pi_new / pi_old`` is exactly 1 before the first step and measures only the parameter change.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from dcem.rl.planners import LatentDCEMPlanner
from dcem.rl.world_model import mlp

__all__ = ["PPO_PARTS", "DCEMPolicyNet", "PPOFineTuner", "ValueNet"]

#: the parts of the controller that PPO can fine-tune
PPO_PARTS = ("decoder", "reward", "transition", "obs")


class DCEMPolicyNet(nn.Module):
    """``(h, x) -> (loc, scale)`` of the Gaussian policy around the latent-DCEM controller.

    Args:
        planner: the latent-DCEM planner (shares the model and decoder).
        sigma: initial (or fixed) standard deviation of the actions.
        learn_sigma: make ``log sigma`` (one per action dimension) a trainable parameter.

    Shapes: ``h (B, D)``, ``x (B, O)``, optional ``noise_seed (B,)`` (int64) -> ``loc (B, A)``,
    ``scale (B, A)``. With ``noise_seed`` every row is solved alone with a generator seeded by its
    entry, so a row's mean does not depend on the other rows of the batch (collection, one state
    at a time, and the PPO minibatches see the same DCEM samples); without it the attribute
    :attr:`noise_seed` (one seed for the batch, or None: the global RNG) is used.
    """

    # a parameter or a buffer
    log_std: Tensor

    def __init__(self, planner: LatentDCEMPlanner, sigma: float = 0.1, learn_sigma: bool = False) -> None:
        super().__init__()
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma!r}")
        self.planner = planner
        A = planner.model.act_dim
        log_std = torch.full((A,), math.log(sigma))
        if learn_sigma:
            self.log_std = nn.Parameter(log_std)
        else:
            self.register_buffer("log_std", log_std)
        #: seed of the DCEM samples of the next forward call (None: global RNG)
        self.noise_seed: int | None = None

    def forward(self, h: Tensor, x: Tensor, noise_seed: Tensor | None = None) -> tuple[Tensor, Tensor]:
        squeeze = h.dim() == 1
        if squeeze:
            h, x = h.unsqueeze(0), x.unsqueeze(0)
            noise_seed = None if noise_seed is None else noise_seed.reshape(1)
        if noise_seed is not None:
            rows = [self.planner.solve(h[i : i + 1], x[i : i + 1], generator=_gen(h, int(s)))[1][:, 0]
                    for i, s in enumerate(noise_seed.reshape(-1).tolist())]  # fmt: skip
            loc = torch.cat(rows)
        else:
            gen = None if self.noise_seed is None else _gen(h, int(self.noise_seed))
            loc = self.planner.solve(h, x, generator=gen)[1][:, 0]
        scale = self.log_std.exp().expand_as(loc)
        if squeeze:
            loc, scale = loc.squeeze(0), scale.squeeze(0)
        return loc, scale


def _gen(like: Tensor, seed: int) -> torch.Generator:
    gen = torch.Generator(device=like.device)
    gen.manual_seed(seed)
    return gen


class ValueNet(nn.Module):
    """Critic ``V(h, x)``: an MLP on the deterministic state and the normalised observation -> ``(B, 1)``."""

    # registered buffers
    obs_mean: Tensor
    obs_std: Tensor

    def __init__(self, deter_size: int, obs_dim: int, obs_mean: Tensor, obs_std: Tensor, hidden: int = 200):
        super().__init__()
        self.net = mlp(deter_size + obs_dim, 1, hidden)
        self.register_buffer("obs_mean", obs_mean.detach().clone())
        self.register_buffer("obs_std", obs_std.detach().clone())

    def forward(self, h: Tensor, x: Tensor) -> Tensor:
        return self.net(torch.cat([h, (x - self.obs_mean) / self.obs_std], -1))


def trainable_parameters(planner: LatentDCEMPlanner, parts: Sequence[str]) -> list[nn.Parameter]:
    """Parameters of the named controller ``parts`` (subset of :data:`PPO_PARTS`)."""
    bad = [p for p in parts if p not in PPO_PARTS]
    if bad or not parts:
        raise ValueError(f"ppo parts must be a non-empty subset of {PPO_PARTS}, got {list(parts)}")
    m = planner.model
    groups: dict[str, Iterable[nn.Parameter]] = {
        "decoder": planner.decoder.parameters(),
        "reward": m.reward_head.parameters(),
        "transition": list(m.embed.parameters()) + list(m.cell.parameters()),
        "obs": list(m.obs_head.parameters()) + [m.obs_log_std],
    }
    out: list[nn.Parameter] = []
    for p in parts:
        out += list(groups[p])
    return out


class PPOFineTuner:
    """PPO on the latent-DCEM policy using TorchRL's ``ClipPPOLoss`` and ``GAE``.

    Args:
        planner: latent-DCEM planner whose decoder/model are fine-tuned in place.
        parts: which of :data:`PPO_PARTS` are trained (the rest are frozen).
        sigma, learn_sigma: policy standard deviation (fixed 0.1 in the default config).
        lr: Adam learning rate for the policy parts and the critic.
        clip_epsilon, gamma, lmbda, entropy_coeff, critic_coeff: PPO/GAE hyper-parameters.
        epochs, minibatch: optimisation passes over each collected batch and minibatch size.
        max_grad_norm: gradient clipping.
    """

    def __init__(
        self,
        planner: LatentDCEMPlanner,
        parts: Sequence[str] = ("decoder", "reward"),
        sigma: float = 0.1,
        learn_sigma: bool = False,
        lr: float = 1e-4,
        clip_epsilon: float = 0.2,
        gamma: float = 0.99,
        lmbda: float = 0.95,
        entropy_coeff: float = 0.0,
        critic_coeff: float = 0.5,
        epochs: int = 4,
        minibatch: int = 32,
        max_grad_norm: float = 0.5,
        critic_hidden: int = 200,
    ) -> None:
        from tensordict.nn import TensorDictModule
        from torchrl.modules import IndependentNormal, ProbabilisticActor, ValueOperator
        from torchrl.objectives import ClipPPOLoss
        from torchrl.objectives.value import GAE

        if epochs < 1 or minibatch < 1:
            raise ValueError(f"epochs and minibatch must be >= 1, got {epochs}, {minibatch}")
        self.planner = planner
        self.parts = list(parts)
        self.policy_params = trainable_parameters(planner, self.parts)
        self.policy_net = DCEMPolicyNet(planner, sigma=sigma, learn_sigma=learn_sigma)
        m = planner.model
        self.value_net = ValueNet(m.deter_size, m.obs_dim, m.obs_mean, m.obs_std, critic_hidden)
        self.value_net.to(m.obs_mean)

        def make_actor(net: nn.Module):
            return ProbabilisticActor(
                TensorDictModule(net, in_keys=["h", "x", "noise_seed"], out_keys=["loc", "scale"]),
                in_keys=["loc", "scale"],
                distribution_class=IndependentNormal,
                return_log_prob=True,
            )

        self.actor = make_actor(self.policy_net)
        self.critic = ValueOperator(self.value_net, in_keys=["h", "x"])
        self.loss = ClipPPOLoss(
            self.actor,
            self.critic,
            clip_epsilon=clip_epsilon,
            entropy_coeff=entropy_coeff,
            critic_coeff=critic_coeff,
            normalize_advantage=True,
            loss_critic_type="smooth_l1",
        )
        self.log_prob_key = self.loss.tensor_keys.sample_log_prob
        self.gae = GAE(gamma=gamma, lmbda=lmbda, value_network=self.critic)
        pi = self.policy_params + ([self.policy_net.log_std] if learn_sigma else [])
        groups: list[dict[str, Any]] = [{"params": pi}, {"params": self.value_net.parameters()}]
        self.optim = torch.optim.Adam(groups, lr=lr)
        self.epochs, self.minibatch, self.max_grad_norm = epochs, minibatch, max_grad_norm
        self._make_actor = make_actor

    def set_trainable(self) -> None:
        """Freeze every model/decoder parameter except the chosen parts."""
        keep = {id(p) for p in self.policy_params}
        for p in list(self.planner.model.parameters()) + list(self.planner.decoder.parameters()):
            p.requires_grad_(id(p) in keep)

    def act(self, h: Tensor, x: Tensor, seed: int | Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Sample an action for ``h (B, D)``, ``x (B, O)`` with DCEM noise seeds ``seed`` (an int for
        every row, or ``(B,)``; store them as the transitions' ``noise_seed``): returns ``action,
        log_prob, loc, scale`` (``log_prob``: the behaviour log-probability, for PPO's ratio)."""
        seeds = torch.as_tensor(seed, dtype=torch.int64).expand(h.shape[0]).clone()
        with torch.no_grad():
            loc, scale = self.policy_net(h, x, seeds)
            dist = torch.distributions.Independent(torch.distributions.Normal(loc, scale), 1)
            a = dist.sample()
            return a, dist.log_prob(a), loc, scale

    def update(self, td, seed: int) -> dict[str, float]:
        """PPO epochs over one batch of transitions (a TensorDict of shape ``[T]``).

        ``td`` holds ``h, x, action, noise_seed`` (the DCEM seed each action was drawn with), the
        behaviour log-probability under :attr:`log_prob_key` (from :meth:`act`) and
        ``("next", h/x/reward/done/terminated)``. Returns mean diagnostics over the epochs
        (``skipped``: the fraction of minibatches whose loss or gradient was not finite and which
        were skipped instead of applied).
        """
        self.set_trainable()
        with torch.no_grad():
            self.gae(td)
        T = td.shape[0]
        g = torch.Generator().manual_seed(int(seed))
        stats: dict[str, list[float]] = {}
        params = [p for grp in self.optim.param_groups for p in grp["params"]]
        for _ in range(self.epochs):
            perm = torch.randperm(T, generator=g)
            for start in range(0, T, self.minibatch):
                mb = td[perm[start : start + self.minibatch]].clone()
                out = self.loss(mb)
                total = out["loss_objective"] + out["loss_critic"] + out.get("loss_entropy", 0.0)
                self.optim.zero_grad()
                total.backward()
                norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
                # a non-finite minibatch is counted in "skipped" instead of writing NaN into the model
                finite = bool(torch.isfinite(norm)) and bool(torch.isfinite(total.detach()))
                stats.setdefault("skipped", []).append(0.0 if finite else 1.0)
                if finite:
                    self.optim.step()
                for key in ("loss_objective", "loss_critic", "clip_fraction", "kl_approx"):
                    if key in out.keys():
                        stats.setdefault(key, []).append(float(out[key].detach().mean()))
        for p in list(self.planner.model.parameters()) + list(self.planner.decoder.parameters()):
            p.requires_grad_(True)
        return {key: sum(v) / len(v) for key, v in stats.items()}

    def state_dict(self) -> dict:
        return {
            "value_net": self.value_net.state_dict(),
            "optim": self.optim.state_dict(),
            "log_std": self.policy_net.log_std.detach().clone(),
        }

    def load_state_dict(self, sd: dict) -> None:
        self.value_net.load_state_dict(sd["value_net"])
        self.optim.load_state_dict(sd["optim"])
        with torch.no_grad():
            self.policy_net.log_std.copy_(sd["log_std"])
