"""Model-predictive planners on a learned :class:`~dcem.rl.world_model.WorldModel`.

- :class:`FullCEMPlanner`: vanilla CEM over the full action-sequence space ``U^H``
  (paper: H = 12, 10 iterations, 1000 samples, 100 elites).
- :class:`LatentDCEMPlanner`: DCEM over the latent space of an
  :class:`dcem.control.ActionDecoder` (paper: 100 samples, 10 elites, tau = 1), whose output is
  differentiable w.r.t. the decoder and the reward model; :meth:`LatentDCEMPlanner.decoder_loss`
  is App. D's phase-2 objective.

Both evaluate all samples of all batch elements in one batched model rollout.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

import dcem
from dcem.control import ActionDecoder
from dcem.rl.world_model import WorldModel

__all__ = ["FullCEMPlanner", "LatentDCEMPlanner", "check_planner_sizes"]


def check_planner_sizes(horizon: int, n_sample: int, n_elite: int, n_iter: int) -> None:
    """``ValueError`` unless ``horizon, n_iter >= 1`` and ``1 <= n_elite <= n_sample``."""
    for name, v in (("horizon", horizon), ("n_iter", n_iter), ("n_sample", n_sample)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if isinstance(n_elite, bool) or not isinstance(n_elite, int) or not 1 <= n_elite <= n_sample:
        raise ValueError(f"n_elite must be an integer in [1, n_sample = {n_sample}], got {n_elite!r}")


def _expand(t: Tensor, n: int) -> Tensor:
    """``(B, d) -> (B, n, d)`` without copying."""
    return t.unsqueeze(1).expand(t.shape[0], n, t.shape[-1])


class FullCEMPlanner:
    """CEM over action sequences ``(H, A)`` flattened, on the model's predicted returns.

    Args:
        model: the world model (its predicted returns are maximised).
        horizon, n_sample, n_elite, n_iter: CEM sizes.
        u_lower, u_upper: action bounds, tensors ``(A,)``.
    """

    def __init__(
        self, model: WorldModel, horizon: int = 12, n_sample: int = 1000, n_elite: int = 100,
        n_iter: int = 10, u_lower: Tensor | float = -1.0, u_upper: Tensor | float = 1.0,
    ) -> None:
        check_planner_sizes(horizon, n_sample, n_elite, n_iter)
        self.model, self.horizon, self.n_sample, self.n_elite, self.n_iter = (
            model, horizon, n_sample, n_elite, n_iter)
        A = model.act_dim
        self.u_lower = torch.as_tensor(u_lower, dtype=torch.float32).expand(A).clone()
        self.u_upper = torch.as_tensor(u_upper, dtype=torch.float32).expand(A).clone()

    @torch.no_grad()
    def plan(self, h: Tensor, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Action sequences ``(B, H, A)`` for states ``h (B, D)`` and raw observations ``x (B, O)``."""
        B, A, H = h.shape[0], self.model.act_dim, self.horizon
        lo = self.u_lower.to(h).repeat(H)
        hi = self.u_upper.to(h).repeat(H)
        xn = self.model.normalize(x)

        def cost(U: Tensor) -> Tensor:
            n = U.shape[1]
            r, _ = self.model.imagine(_expand(h, n), _expand(xn, n), U.view(B, n, H, A))
            return -r.sum(-1)

        mu = dcem.dcem(
            cost, nx=H * A, n_batch=B, n_sample=self.n_sample, n_elite=self.n_elite, n_iter=self.n_iter,
            temp=None, lb=lo, ub=hi, init_mu=(lo + hi) / 2, init_sigma=(hi - lo) / 2, iter_eps=None,
            generator=generator, device=h.device, dtype=h.dtype,
        )
        return mu.view(B, H, A)


class LatentDCEMPlanner(nn.Module):
    """DCEM over the latent space ``Z`` of an action decoder (eq. 8 of the paper).

    Args:
        model: the world model.
        decoder: :class:`dcem.control.ActionDecoder` with ``n_ctrl = model.act_dim``.
        n_sample, n_elite, n_iter, temp: DCEM sizes and temperature ``tau``.
        latent_bound: ``z`` samples are clamped into ``[-latent_bound, latent_bound]`` (None: no bound).
    """

    def __init__(
        self, model: WorldModel, decoder: ActionDecoder, n_sample: int = 100, n_elite: int = 10,
        n_iter: int = 10, temp: float = 1.0, latent_bound: float | None = None,
    ) -> None:
        super().__init__()
        check_planner_sizes(decoder.horizon, n_sample, n_elite, n_iter)
        if decoder.n_ctrl != model.act_dim:
            raise ValueError(
                f"decoder.n_ctrl = {decoder.n_ctrl} must equal the model's act_dim = {model.act_dim}"
            )
        if not temp > 0:
            raise ValueError(f"temp must be > 0 for differentiable latent planning, got {temp!r}")
        self.model, self.decoder = model, decoder
        self.n_sample, self.n_elite, self.n_iter, self.temp = n_sample, n_elite, n_iter, float(temp)
        self.latent_bound = latent_bound

    @property
    def horizon(self) -> int:
        return self.decoder.horizon

    def solve(self, h: Tensor, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Latent solution ``z (B, n_latent)`` and its decoded actions ``(B, H, A)``.

        Differentiable w.r.t. the decoder and the model's parameters (call under
        ``torch.no_grad()`` to act).
        """
        B = h.shape[0]
        xn = self.model.normalize(x)

        def cost(Z: Tensor) -> Tensor:
            n = Z.shape[1]
            r, _ = self.model.imagine(_expand(h, n), _expand(xn, n), self.decoder(Z))
            return -r.sum(-1)

        lb = None if self.latent_bound is None else -float(self.latent_bound)
        ub = None if self.latent_bound is None else float(self.latent_bound)
        z = dcem.dcem(
            cost, nx=self.decoder.n_latent, n_batch=B, n_sample=self.n_sample, n_elite=self.n_elite,
            n_iter=self.n_iter, temp=self.temp, lb=lb, ub=ub, iter_eps=None, generator=generator,
            device=h.device, dtype=h.dtype,
        )
        return z, self.decoder(z)

    def forward(
        self, h: Tensor, x: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Same as :meth:`solve` (lets ``torch.func.functional_call`` substitute parameters)."""
        return self.solve(h, x, generator)

    def plan(self, h: Tensor, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Action sequences ``(B, H, A)`` (no gradient)."""
        with torch.no_grad():
            return self.solve(h, x, generator)[1]

    def decoder_loss(self, h: Tensor, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Phase-2 loss: minus the model's predicted return of the decoded DCEM solution, averaged.

        ``h (B, D)`` and ``x (B, O)`` are states sampled from the replay buffer.
        """
        _, u = self.solve(h, x, generator)
        return -self.model.returns(h, x, u).mean()
