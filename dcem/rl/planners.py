"""Model-predictive planners on a learned :class:`~dcem.rl.world_model.WorldModel`.

Thin wrappers over :class:`dcem.planning.Planner` (which minimises costs: the objective is
minus the model's predicted return):

- :class:`FullCEMPlanner`: vanilla CEM over the full action-sequence space ``U^H``
  (paper: H = 12, 10 iterations, 1000 samples, 100 elites); ``rule=`` picks another rule.
- :class:`LatentDCEMPlanner`: DCEM over the latent space of an
  :class:`dcem.control.ActionDecoder` (paper: 100 samples, 10 elites, tau = 1), whose output is
  differentiable w.r.t. the decoder and the reward model; :meth:`LatentDCEMPlanner.decoder_loss`
  is App. D's phase-2 objective.

Both evaluate all candidates of all batch elements in one batched model rollout per iteration.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from dcem._checks import check_int, check_real
from dcem.control import ActionDecoder
from dcem.planning import Planner, PlannerConfig
from dcem.planning.config import ConfigView, resolve_config
from dcem.rl.world_model import WorldModel

__all__ = ["FullCEMPlanner", "LatentDCEMPlanner", "NegativeReturn", "check_planner_sizes", "negative_return"]


def check_planner_sizes(horizon: int, n_sample: int, n_elite: int, n_iter: int) -> None:
    """``ValueError`` unless ``horizon, n_iter >= 1`` and ``1 <= n_elite <= n_sample``."""
    check_int("horizon", horizon, 1)
    check_int("n_iter", n_iter, 1)
    check_int("n_sample", n_sample, 1)
    check_int("n_elite", n_elite, 1, n_sample)


class NegativeReturn:
    """Planner objective: minus the predicted return, ``cost(U (B, N, H, A), h (B, D), xn (B, O)) -> (B, N)``.

    ``h`` is the model state and ``xn`` the normalised observation; they are passed as the
    planner's ``cost_args``, so one objective object serves every state (and a captured
    planning loop is recorded once).
    """

    def __init__(self, model: WorldModel) -> None:
        self.model = model

    def __call__(self, U: Tensor, h: Tensor, xn: Tensor) -> Tensor:
        n = U.shape[1]
        hs = h.unsqueeze(1).expand(h.shape[0], n, h.shape[-1])
        r, _ = self.model.imagine(hs, xn.unsqueeze(1).expand(xn.shape[0], n, xn.shape[-1]), U)
        return -r.sum(-1)


def negative_return(model: WorldModel, h: Tensor, x: Tensor) -> Callable[[Tensor], Tensor]:
    """Planner objective: minus the predicted return of plans ``(B, N, H, A) -> (B, N)``.

    ``h (B, D)`` is the model state, ``x (B, O)`` the raw observation.
    """
    xn, cost = model.normalize(x), NegativeReturn(model)
    return lambda U: cost(U, h, xn)


_ACT = {"select": "mean", "capture": "auto"}
FULL_DEFAULTS = {"rule": "cem", "n_sample": 1000, "n_elite": 100, "n_iter": 10, **_ACT}
LATENT_DEFAULTS = {"rule": "dcem", "n_sample": 100, "n_elite": 10, "n_iter": 10, "temp": 1.0, **_ACT}


class FullCEMPlanner(ConfigView):
    """CEM over action sequences ``(H, A)`` on the model's predicted returns.

    Args:
        model: the world model (its predicted returns are maximised).
        horizon: planning horizon ``H``.
        config: the planner's rule, sizes and options; default the paper's CEM,
            ``PlannerConfig("cem", 1000, 100, 10, select="mean", capture="auto")`` (``"auto"``:
            the planning loop as a CUDA graph on CUDA, recorded once per batch shape).
        u_lower, u_upper: action bounds, floats or tensors ``(A,)``.
        capture_options: keyword arguments of :class:`dcem.optim.Captured`.
        legacy: the older positional ``n_sample, n_elite, n_iter, u_lower, u_upper`` and
            keywords (``rule``, any config field), translated by
            :func:`dcem.planning.config.resolve_config` with a ``DeprecationWarning``.
    """

    def __init__(
        self, model: WorldModel, horizon: int = 12, config: PlannerConfig | None = None, *args: Any,
        u_lower: Tensor | float = -1.0, u_upper: Tensor | float = 1.0,
        capture_options: dict[str, Any] | None = None, **legacy: Any,
    ) -> None:  # fmt: skip
        self.config, old = resolve_config("FullCEMPlanner", (config, *args), legacy, defaults=FULL_DEFAULTS,
                                          positional=("n_sample", "n_elite", "n_iter", "u_lower", "u_upper"))
        u_lower, u_upper = old.get("u_lower", u_lower), old.get("u_upper", u_upper)
        self.model, self.horizon = model, check_int("horizon", horizon, 1)
        A = model.act_dim
        self.u_lower = torch.as_tensor(u_lower, dtype=torch.float32).expand(A).clone()
        self.u_upper = torch.as_tensor(u_upper, dtype=torch.float32).expand(A).clone()
        self._planner = Planner(horizon, A, self.config, lower=self.u_lower, upper=self.u_upper,
                                capture_options=capture_options)  # fmt: skip
        self._cost = NegativeReturn(model)

    @torch.no_grad()
    def plan(self, h: Tensor, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Action sequences ``(B, H, A)`` for states ``h (B, D)`` and raw observations ``x (B, O)``."""
        res = self._planner.plan(self._cost, batch_shape=(h.shape[0],), generator=generator, dtype=h.dtype,
                                 device=h.device, cost_args=(h, self.model.normalize(x)))  # fmt: skip
        return res.plan


class LatentDCEMPlanner(ConfigView, nn.Module):
    """DCEM over the latent space ``Z`` of an action decoder (eq. 8 of the paper).

    Args:
        model: the world model.
        decoder: :class:`dcem.control.ActionDecoder` with ``n_ctrl = model.act_dim``.
        config: the planner's rule, sizes and options; default the paper's DCEM,
            ``PlannerConfig("dcem", 100, 10, 10, temp=1.0, select="mean", capture="auto")``
            (``capture`` applies to :meth:`plan` only; ``"mppi"`` is differentiable too).
        latent_bound: ``z`` samples are clamped into ``[-latent_bound, latent_bound]`` (None: no bound).
        capture_options: keyword arguments of :class:`dcem.optim.Captured`.
        legacy: the older positional ``n_sample, n_elite, n_iter, temp, latent_bound`` and
            keywords (``rule``, any config field), translated by
            :func:`dcem.planning.config.resolve_config` with a ``DeprecationWarning``.
    """

    def __init__(
        self, model: WorldModel, decoder: ActionDecoder, config: PlannerConfig | None = None, *args: Any,
        latent_bound: float | None = None, capture_options: dict[str, Any] | None = None, **legacy: Any,
    ) -> None:  # fmt: skip
        super().__init__()
        self.config, old = resolve_config(
            "LatentDCEMPlanner", (config, *args), legacy, defaults=LATENT_DEFAULTS,
            positional=("n_sample", "n_elite", "n_iter", "temp", "latent_bound"),
        )  # fmt: skip
        latent_bound = old.get("latent_bound", latent_bound)
        check_int("horizon", decoder.horizon, 1)
        if decoder.n_ctrl != model.act_dim:
            raise ValueError(
                f"decoder.n_ctrl = {decoder.n_ctrl} must equal the model's act_dim = {model.act_dim}"
            )
        self.model, self.decoder = model, decoder
        self._cost = NegativeReturn(model)
        self._act_planner: Planner | None = None
        self.capture_options = capture_options
        self.latent_bound = (
            None if latent_bound is None else check_real("latent_bound", latent_bound, 0.0, strict=True)
        )

    @property
    def horizon(self) -> int:
        """Planning horizon ``H``: the length of the decoded action sequences."""
        return self.decoder.horizon

    def _make_planner(self, capture: str) -> Planner:
        b = self.latent_bound
        cfg = dataclasses.replace(self.config, capture=capture)
        lo = None if b is None else -b
        return Planner(self.horizon, self.model.act_dim, cfg, decoder=self.decoder, z_lower=lo, z_upper=b,
                       capture_options=self.capture_options)  # fmt: skip

    def _solve(self, planner: Planner, h: Tensor, x: Tensor, generator: torch.Generator | None) -> Any:
        xn = self.model.normalize(x)
        return planner.plan(self._cost, batch_shape=(h.shape[0],), init_std=1.0, generator=generator,
                            dtype=h.dtype, device=h.device, cost_args=(h, xn))  # fmt: skip

    def solve(self, h: Tensor, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Latent solution ``z (B, n_latent)`` and its decoded actions ``(B, H, A)``.

        Differentiable w.r.t. the decoder and the model's parameters (call under
        ``torch.no_grad()`` to act). Always eager: ``torch.func.functional_call`` may
        substitute the parameters, which a captured graph would not see.
        """
        res = self._solve(self._make_planner("none"), h, x, generator)
        return res.z, res.plan

    def forward(
        self, h: Tensor, x: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Same as :meth:`solve` (lets ``torch.func.functional_call`` substitute parameters)."""
        return self.solve(h, x, generator)

    def plan(self, h: Tensor, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Action sequences ``(B, H, A)`` (no gradient), with the configured ``capture`` (default
        ``"auto"``: a CUDA graph of the planning loop on CUDA, recorded once per batch shape)."""
        act = self._act_planner
        if act is None or act.decoder is not self.decoder:
            act = self._act_planner = self._make_planner(self.config.capture)
        with torch.no_grad():
            return self._solve(act, h, x, generator).plan

    def decoder_loss(self, h: Tensor, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Phase-2 loss: minus the model's predicted return of the decoded DCEM solution, averaged.

        ``h (B, D)`` and ``x (B, O)`` are states sampled from the replay buffer.
        """
        _, u = self.solve(h, x, generator)
        return -self.model.returns(h, x, u).mean()
