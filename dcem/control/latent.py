"""Control over a learned latent action space (sect. 4.2, eq. 8 and Alg. 2 of the paper).

A decoder ``f_dec: Z -> U^H`` (:class:`dcem.control.ActionDecoder`) maps a box-bounded latent
``z`` to an action sequence; :class:`LatentDCEMController` solves
``z* = argmin_z C(f_dec(z); x_init)`` with DCEM over ``Z`` and returns the decoded plan. Because
the DCEM solution is differentiable, the decoder is trained by gradient descent on the cost of
the plan it produces (:func:`train_step`, Alg. 2), and the controller is a differentiable policy
``pi(x_init) = u_1`` that can be fine-tuned with extra losses such as imitation of an expert
(:func:`imitation_loss`).

With hard CEM (``rule="cem"``) the latent solution does not depend on the decoder; the training
loss is then the cost of the best of {final mean, best sample} differentiated through the
decoder only ("min-differentiation"), the ``tau = 0`` ablation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, cast

import torch
from torch import Tensor, nn

from dcem._checks import check_real
from dcem.control.decoder import ActionDecoder
from dcem.control.dynamics import Dynamics
from dcem.control.mpc import StepCost
from dcem.planning import Planner, PlannerConfig, check_initial_state, rollout_objective
from dcem.planning.config import ConfigView, resolve_config

__all__ = ["LatentDCEMController", "LatentSolution", "train_step", "imitation_loss"]

LATENT_DEFAULTS = {"temp": 1.0, "select": None}  # DCEM at tau = 1; select "mean" ("min" for hard rules)


class LatentSolution(NamedTuple):
    """Result of :meth:`LatentDCEMController.solve`.

    Attributes:
        z: latent solutions ``(n_batch, n_latent)``.
        u: decoded plans, time-major ``(H, n_batch, n_ctrl)``.
        cost: costs of the plans ``(n_batch,)`` (differentiable w.r.t. the decoder).
    """

    z: Tensor
    u: Tensor
    cost: Tensor


class LatentDCEMController(ConfigView, nn.Module):
    """DCEM over a box-bounded latent action space ``Z = [z_lower, z_upper]^n_latent``.

    A thin wrapper over :class:`dcem.planning.Planner` with the decoder as its latent path.

    Args:
        decoder: maps ``z (..., n_latent)`` to ``u (..., H, n_ctrl)`` inside the control bounds.
        dx: dynamics model.
        cost: per-step cost ``(x, u) -> (...)``; default ``dx.quadratic_cost``.
        config: the planner's rule, sizes and options; default the paper's DCEM,
            ``PlannerConfig("dcem", 100, 10, 10, temp=1.0, select="mean")``. With a hard rule
            (``"cem"``) the latent solution does not depend on the decoder and training uses
            min-differentiation (see the module docstring).
        terminal_cost: optional ``x_H -> (...)``.
        init_sigma: initial std in the latent space (reference: 0.5).
        z_lower, z_upper: latent box (reference: ``[-1, 1]``).
        legacy: the older keywords (``n_sample``, ``n_elite``, ``n_iter``, ``temp`` with
            ``0``/``None`` for hard CEM, ``normalize``, ``iter_eps``, ``select`` -- default
            ``"min"`` for the hard rules, ``"mean"`` otherwise --, ``rule``, any config field),
            translated by :func:`dcem.planning.config.resolve_config` with a ``DeprecationWarning``.

    Example:
        >>> import torch
        >>> from dcem.control import ActionDecoder, CartpoleDx, LatentDCEMController, cartpole_swingup_cost
        >>> dx = CartpoleDx()
        >>> dec = ActionDecoder(2, 20, 1, dx.u_lower, dx.u_upper)
        >>> ctrl = LatentDCEMController(dec, dx, cartpole_swingup_cost)
        >>> ctrl(dx.sample_state(3)).shape
        torch.Size([3, 1])
    """

    def __init__(
        self,
        decoder: ActionDecoder,
        dx: Dynamics,
        cost: StepCost | None = None,
        config: PlannerConfig | None = None,
        *,
        terminal_cost: Callable[[Tensor], Tensor] | None = None,
        init_sigma: float = 0.5,
        z_lower: float = -1.0,
        z_upper: float = 1.0,
        **legacy: object,
    ) -> None:
        super().__init__()
        if not isinstance(decoder, nn.Module) or not hasattr(decoder, "n_latent"):
            raise TypeError("decoder must be an ActionDecoder-like nn.Module with n_latent/horizon/n_ctrl")
        if not isinstance(dx, Dynamics):
            raise TypeError(f"dx must be a dcem.control.Dynamics, got {type(dx).__name__}")
        if decoder.n_ctrl != dx.n_ctrl:
            raise ValueError(f"decoder.n_ctrl = {decoder.n_ctrl} does not match dx.n_ctrl = {dx.n_ctrl}")
        self.config, _ = resolve_config("LatentDCEMController", (config,), legacy, defaults=LATENT_DEFAULTS)
        self.init_sigma = float(check_real("init_sigma", init_sigma, 0.0, strict=True))
        zl, zu = check_real("z_lower", z_lower), check_real("z_upper", z_upper)
        if not zl < zu:
            raise ValueError(f"need z_lower < z_upper, got {z_lower!r}, {z_upper!r}")
        self.decoder, self.dx = decoder, dx
        self.cost = cost if cost is not None else dx.quadratic_cost
        self.terminal_cost = terminal_cost
        self.z_lower, self.z_upper = float(zl), float(zu)

    @property
    def n_latent(self) -> int:
        """Size of the decoder's latent space (the dimension DCEM searches)."""
        return int(self.decoder.n_latent)

    @property
    def horizon(self) -> int:
        """Planning horizon ``H``: the length of the decoded action sequences."""
        return int(self.decoder.horizon)

    def decode(self, z: Tensor) -> Tensor:
        """Decode latents ``(..., n_latent)`` into time-major plans ``(H, ..., n_ctrl)``."""
        return self.decoder(z).movedim(-2, 0)

    def planner(self) -> Planner:
        """The :class:`dcem.planning.Planner` of this controller (latent path over the decoder)."""
        return Planner(self.horizon, self.dx.n_ctrl, self.config, decoder=self.decoder,
                       z_lower=self.z_lower, z_upper=self.z_upper)  # fmt: skip

    def latent_cost(self, x_init: Tensor) -> Callable[[Tensor], Tensor]:
        """The objective ``C(z)`` of eq. (8) for states ``x_init (n_batch, n_state)``.

        Returns a function mapping latents ``(n_batch, N, n_latent)`` to costs ``(n_batch, N)``;
        the rollout is batched over the batch and the samples.
        """
        B = x_init.shape[0]
        obj = rollout_objective(self.dx, x_init, self.cost, terminal_cost=self.terminal_cost)

        def f(z: Tensor) -> Tensor:
            if z.dim() != 3 or z.shape[0] != B or z.shape[-1] != self.n_latent:
                raise ValueError(
                    f"z must have shape (n_batch, N, n_latent) = ({B}, N, {self.n_latent}), "
                    f"got {tuple(z.shape)}"
                )
            return obj(self.decoder(z))

        return f

    def solve(
        self,
        x_init: Tensor,
        generator: torch.Generator | None = None,
        iter_cb: Callable[..., None] | None = None,
    ) -> LatentSolution:
        """Solve the embedded control problem from ``x_init (n_batch, n_state)`` (or ``(n_state,)``).

        Args:
            x_init: finite initial states.
            generator: ``torch.Generator`` for the DCEM samples.
            iter_cb: iteration callback (:data:`dcem.planning.IterCallback`, e.g. for plots).

        Returns:
            :class:`LatentSolution`; ``u`` and ``cost`` are differentiable w.r.t. the decoder
            (and ``x_init``, the dynamics parameters) for ``temp > 0``.
        """
        check_initial_state(x_init, self.dx.n_state, "x_init")
        squeeze = x_init.dim() == 1
        x_init = x_init.unsqueeze(0) if squeeze else x_init
        if x_init.dim() != 2:
            raise ValueError(f"x_init must have shape (n_batch, n_state), got {tuple(x_init.shape)}")
        obj = rollout_objective(self.dx, x_init, self.cost, terminal_cost=self.terminal_cost)
        res = self.planner().plan(obj, batch_shape=(x_init.shape[0],), init_std=self.init_sigma,
                                  generator=generator, iter_cb=iter_cb, dtype=x_init.dtype,
                                  device=x_init.device)  # fmt: skip
        u = res.plan.movedim(-2, 0)
        z = cast(Tensor, res.z)  # a latent planner's result has its latents
        if squeeze:
            return LatentSolution(z.squeeze(0), u.squeeze(1), res.cost.squeeze(0))
        return LatentSolution(z, u, res.cost)

    def forward(self, x_init: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The policy ``pi(x_init)``: first action ``(n_batch, n_ctrl)`` of the latent plan."""
        return self.solve(x_init, generator=generator).u[0]


def imitation_loss(u_policy: Tensor, u_expert: Tensor, u_lower: Tensor, u_upper: Tensor) -> Tensor:
    """Mean squared error between actions, each dimension scaled by its control range.

    Args:
        u_policy, u_expert: actions ``(n_batch, n_ctrl)``.
        u_lower, u_upper: bounds ``(n_ctrl,)``.

    Returns:
        scalar ``mean(((u_policy - u_expert) / (u_upper - u_lower))^2)``.
    """
    if u_policy.shape != u_expert.shape:
        raise ValueError(f"u_policy {tuple(u_policy.shape)} and u_expert {tuple(u_expert.shape)} must match")
    scale = (u_upper - u_lower).to(u_policy)
    return ((u_policy - u_expert.to(u_policy)) / scale).pow(2).mean()


def train_step(
    ctrl: LatentDCEMController,
    opt: torch.optim.Optimizer,
    x_init: Tensor,
    *,
    generator: torch.Generator | None = None,
    clip_grad: float | None = 1.0,
    cost_weight: float = 1.0,
    extra_loss: Callable[[LatentSolution, Tensor], Tensor] | None = None,
    grad_hook: Callable[[list[Tensor]], None] | None = None,
) -> dict[str, Tensor]:
    """One step of Alg. 2: solve the embedded problems, step the decoder on their cost.

    Args:
        ctrl: latent controller whose decoder (and any other parameters in ``opt``) is trained.
        opt: optimiser over the trainable parameters.
        x_init: sampled initial states ``(n_batch, n_state)``.
        generator: ``torch.Generator`` for the DCEM samples.
        clip_grad: max gradient 2-norm (reference: 1.0); ``None`` disables clipping.
        cost_weight: weight of the control cost in the loss (0 for pure imitation).
        extra_loss: optional ``(solution, x_init) -> scalar`` added to the loss, e.g. an
            imitation loss on ``solution.u[0]`` (fine-tuning the policy ``pi``).
        grad_hook: optional ``(params) -> None`` called after ``backward`` and before clipping
            on the parameters that have a gradient, e.g. to average them over data-parallel
            processes.

    Returns:
        detached tensors: ``loss`` (scalar), ``cost`` (mean plan cost), ``extra`` (extra loss or 0)
        and ``grad_norm`` (before clipping).
    """
    sol = ctrl.solve(x_init, generator=generator)
    cost = sol.cost.mean()
    loss = cost_weight * cost
    extra = torch.zeros((), dtype=cost.dtype)
    if extra_loss is not None:
        extra = extra_loss(sol, x_init)
        loss = loss + extra
    opt.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
    if grad_hook is not None:
        grad_hook(params)
    if clip_grad is not None and params:
        gn = nn.utils.clip_grad_norm_(params, clip_grad)
    elif params:
        gn = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
    else:
        gn = torch.zeros(())
    opt.step()
    return {
        "loss": loss.detach(),
        "cost": cost.detach(),
        "extra": extra.detach(),
        "grad_norm": gn.detach(),
    }
