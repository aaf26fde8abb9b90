"""Model-predictive control with CEM / DCEM over action sequences (eq. 7 of the paper).

Two entry points, both thin wrappers over the one planner :class:`dcem.planning.Planner`
(batch-major plans, costs minimised, one objective call per iteration):

- :func:`dcem_ctrl`: the functional controller with the keywords and return dictionary of the
  published reference (time-major plans ``(T, n_batch, n_ctrl)`` at its boundary, rewards
  maximised by minimising ``-reward``), optionally over a latent action space (``u_decode``).
- :class:`MPC`: a receding-horizon controller object: plan, apply the first action, shift the
  plan to warm-start the next step (:func:`dcem.planning.shift_plan`); per-dimension bounds, a
  batch of systems, any rule of the planner given as one :class:`dcem.planning.PlannerConfig`
  (CEM, DCEM -- differentiable --, MPPI, iCEM), and either a dynamics model with a per-step
  cost or a user-supplied rollout-cost function.

A plan whose cost is NaN/inf (a diverging rollout) is never returned when a valid candidate
exists (:func:`dcem.optim.best_sample`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, cast

import torch
from torch import Tensor, nn

from dcem._checks import check_choice, check_int
from dcem.control.ctrl import dcem_ctrl
from dcem.control.dynamics import Dynamics
from dcem.planning import Planner, PlannerConfig, check_initial_state, rollout, rollout_objective, shift_plan
from dcem.planning.config import ConfigView, resolve_config
from dcem.planning.shift import SHIFT_FILLS
from dcem.planning.timemajor import (
    rollout_cost,
    select_solution,
)

__all__ = ["dcem_ctrl", "MPC", "Plan", "rollout_cost", "select_solution", "StepCost", "RolloutCost"]

StepCost = Callable[[Tensor, Tensor], Tensor]
"""``cost(x, u) -> c``: states ``(..., n_state)``, controls ``(..., n_ctrl)`` -> costs ``(...)``."""
RolloutCost = Callable[[Tensor, Tensor], Tensor]
"""``rollout(x_init, u) -> c``: ``x_init (M, n_state)``, ``u (H, M, n_ctrl)`` -> total costs ``(M,)``."""


class Plan(NamedTuple):
    """Result of :meth:`MPC.plan`: ``u`` time-major ``(H, n_batch, n_ctrl)``, ``cost`` ``(n_batch,)``."""

    u: Tensor
    cost: Tensor


MPC_DEFAULTS = {"select": "min", "capture": "auto"}  # CUDA graph of no-grad plans on CUDA, else eager


def _model(
    dx: Dynamics | None, cost: StepCost | None, rollout: RolloutCost | None, n_state: int | None,
    n_ctrl: int | None, u_lower: float | Tensor | None, u_upper: float | Tensor | None,
) -> tuple[int, int, StepCost | None, float | Tensor, float | Tensor]:
    """``n_state, n_ctrl``, the step cost and the bounds of either ``dx`` (+ ``cost``) or ``rollout``."""
    if (dx is None) == (rollout is None):
        raise ValueError("give exactly one of dx (with an optional cost) or rollout")
    if dx is not None:
        if not isinstance(dx, Dynamics):
            raise TypeError(f"dx must be a dcem.control.Dynamics, got {type(dx).__name__}")
        lo = dx.u_lower if u_lower is None else u_lower
        hi = dx.u_upper if u_upper is None else u_upper
        return dx.n_state, dx.n_ctrl, cost if cost is not None else dx.quadratic_cost, lo, hi
    if not callable(rollout):
        raise TypeError("rollout must be callable")
    if u_lower is None or u_upper is None:
        raise ValueError("u_lower and u_upper are required with rollout")
    return check_int("n_state", n_state, 1), check_int("n_ctrl", n_ctrl, 1), cost, u_lower, u_upper


class MPC(ConfigView, nn.Module):
    """Receding-horizon controller solving ``min_u sum_t C(x_t, u_t)`` with the one planner.

    Give either a dynamics model ``dx`` and a per-step ``cost`` (default: ``dx.quadratic_cost``),
    or a ``rollout`` function ``(x_init (M, n_state), u (H, M, n_ctrl)) -> cost (M,)`` together
    with ``n_state``/``n_ctrl``/bounds. :meth:`act` plans, returns the first action and keeps
    the plan shifted by one step as the initial mean of the next call (warm start). The search
    itself is configured by one :class:`dcem.planning.PlannerConfig`.

    Args:
        horizon: planning horizon ``H >= 1``.
        dx: dynamics model (gives ``n_state``, ``n_ctrl`` and default bounds).
        cost: per-step cost ``(x, u) -> (...)`` used with ``dx``.
        config: the planner's rule, sizes and options; default
            ``PlannerConfig(capture="auto")`` (CEM, 100 samples, 10 elites, 10 iterations,
            ``select="min"``). ``config.std_scale`` gives the default initial std.
        terminal_cost: optional ``x_H -> (...)`` used with ``dx``.
        rollout: user rollout-cost function (instead of ``dx``/``cost``).
        n_state, n_ctrl: dimensions (required with ``rollout``).
        u_lower, u_upper: per-dimension bounds, floats or tensors of shape ``(n_ctrl,)``.
        init_sigma: initial std, float or ``(n_ctrl,)`` tensor; default
            ``config.std_scale * (u_upper - u_lower)``.
        warm_start: reuse the shifted previous plan as the initial mean.
        shift_fill: last action of a shifted plan: ``"last"`` (repeat), ``"zero"`` (clamped 0)
            or ``"mid"`` (middle of the bounds).
        generator: ``torch.Generator`` for reproducibility.
        capture_options: keyword arguments of :class:`dcem.optim.Captured`.
        legacy: the older keywords (``n_sample``, ``n_elite``, ``n_iter``, ``temp``,
            ``sigma_scale``, ``rule``, ``select``, any config field), translated by
            :func:`dcem.planning.config.resolve_config` with a ``DeprecationWarning``.

    Example:
        >>> import torch
        >>> from dcem.control import MPC, CartpoleDx, cartpole_swingup_cost
        >>> from dcem.planning import PlannerConfig
        >>> mpc = MPC(10, CartpoleDx(), cartpole_swingup_cost, PlannerConfig("cem", 50, 5, 3))
        >>> mpc.act(torch.zeros(2, 5)).shape
        torch.Size([2, 1])
    """

    # registered buffers
    u_lower: Tensor
    u_upper: Tensor
    init_sigma: Tensor

    def __init__(
        self,
        horizon: int,
        dx: Dynamics | None = None,
        cost: StepCost | None = None,
        config: PlannerConfig | None = None,
        *,
        terminal_cost: Callable[[Tensor], Tensor] | None = None,
        rollout: RolloutCost | None = None,
        n_state: int | None = None,
        n_ctrl: int | None = None,
        u_lower: float | Tensor | None = None,
        u_upper: float | Tensor | None = None,
        init_sigma: float | Tensor | None = None,
        warm_start: bool = True,
        shift_fill: str = "last",
        generator: torch.Generator | None = None,
        capture_options: dict[str, Any] | None = None,
        **legacy: Any,
    ) -> None:
        super().__init__()
        self.horizon = check_int("horizon", horizon, 1)
        self.config, _ = resolve_config("MPC", (config,), legacy, defaults=MPC_DEFAULTS)
        self.capture_options = capture_options
        self.shift_fill = check_choice("shift_fill", shift_fill, SHIFT_FILLS)
        model = _model(dx, cost, rollout, n_state, n_ctrl, u_lower, u_upper)
        self.n_state, self.n_ctrl, self.cost, lo, hi = model
        self.dx: Dynamics | None = dx
        self.terminal_cost, self.rollout_fn = terminal_cost, rollout
        lo_t, hi_t = self._bound("u_lower", lo), self._bound("u_upper", hi)
        if not bool((lo_t < hi_t).all()):
            raise ValueError("u_lower must be < u_upper in every control dimension")
        self.register_buffer("u_lower", lo_t)
        self.register_buffer("u_upper", hi_t)
        if init_sigma is None:
            sig = cast(float, self.config.std_scale) * (hi_t - lo_t)  # a float after __post_init__
        else:
            sig = self._bound("init_sigma", init_sigma)
            if not bool((sig > 0).all()):
                raise ValueError("init_sigma must be > 0")
        self.register_buffer("init_sigma", sig)
        self.warm_start, self.generator = warm_start, generator
        self._warm: Tensor | None = None  # batch-major (n_batch, H, n_ctrl)

    def _bound(self, name: str, v: float | Tensor) -> Tensor:
        t = torch.as_tensor(v, dtype=torch.get_default_dtype()) if not isinstance(v, Tensor) else v.detach()
        if t.dim() > 1 or (t.dim() == 1 and t.numel() not in (1, self.n_ctrl)):
            raise ValueError(
                f"{name} must be a float or have shape (n_ctrl,) = ({self.n_ctrl},), got {tuple(t.shape)}"
            )
        t = t.to(torch.get_default_dtype()).expand(self.n_ctrl).clone()
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} must be finite")
        return t

    @property
    def warm_plan(self) -> Tensor | None:
        """The shifted previous plan used as the next initial mean, ``(H, n_batch, n_ctrl)``, or None."""
        return None if self._warm is None else self._warm.transpose(0, 1)

    def reset(self) -> None:
        """Forget the warm-start plan (call at the start of an episode)."""
        self._warm = None

    def _objective(self, x: Tensor) -> Callable[[Tensor], Tensor]:
        """The planner objective ``(B, N, H, n_ctrl) -> (B, N)`` from states ``x (B, n_state)``."""
        if self.rollout_fn is None:
            dx, step_cost = cast(Dynamics, self.dx), cast(StepCost, self.cost)  # set when rollout_fn is not
            return rollout_objective(dx, x, step_cost, terminal_cost=self.terminal_cost, name="x")
        fn, B, n = self.rollout_fn, x.shape[0], self.n_state

        def cost(plans: Tensor) -> Tensor:
            N = plans.shape[1]
            c = fn(
                x.unsqueeze(1).expand(B, N, n).reshape(B * N, n),
                plans.reshape(B * N, *plans.shape[2:]).transpose(0, 1),
            )
            if not isinstance(c, Tensor) or c.shape != (B * N,):
                got = tuple(c.shape) if isinstance(c, Tensor) else type(c).__name__
                raise ValueError(f"the rollout cost must have shape (M,) = ({B * N},), got {got}")
            return c.view(B, N)

        return cost

    def _rollout_cost(self, plans: Tensor, x: Tensor) -> Tensor:
        """The objective as a function of the states too: ``(B, N, H, m)``, ``x (B, n) -> (B, N)``."""
        dx, step_cost = cast(Dynamics, self.dx), cast(StepCost, self.cost)  # only used without rollout_fn
        return rollout(dx, step_cost, x.unsqueeze(-2), plans, self.terminal_cost)

    def _stable_planner(self) -> Planner:
        """One planner kept across calls (its captured loops live in it), rebuilt if the bounds change."""
        p = getattr(self, "_kept_planner", None)
        if p is None or p.lower is not self.u_lower or p.upper is not self.u_upper:
            p = self._kept_planner = self.planner()
        return p

    def planner(self) -> Planner:
        """The :class:`dcem.planning.Planner` of this controller (bounds as currently stored)."""
        return Planner(self.horizon, self.n_ctrl, self.config, lower=self.u_lower, upper=self.u_upper,
                       capture_options=self.capture_options)  # fmt: skip

    def plan(
        self, x: Tensor, u_init: Tensor | None = None, iter_cb: Callable[..., None] | None = None
    ) -> Plan:
        """Solve the planning problem from states ``x (n_batch, n_state)`` (or ``(n_state,)``).

        Args:
            x: current states; must be finite.
            u_init: optional initial mean ``(H, n_batch, n_ctrl)``; default the warm start
                (if any and ``warm_start``), else the middle of the bounds.
            iter_cb: optional iteration callback (:data:`dcem.planning.IterCallback`; samples
                flattened to ``(n_batch, M, H * n_ctrl)``).

        Returns:
            :class:`Plan` with ``u (H, n_batch, n_ctrl)`` and ``cost (n_batch,)``.
        """
        check_initial_state(x, self.n_state, "x")
        squeeze = x.dim() == 1
        x = x.unsqueeze(0) if squeeze else x
        if x.dim() != 2:
            raise ValueError(f"x must have shape (n_batch, n_state) or (n_state,), got {tuple(x.shape)}")
        B, H, m = x.shape[0], self.horizon, self.n_ctrl
        if u_init is not None:
            if u_init.shape != (H, B, m):
                raise ValueError(
                    f"u_init must have shape (H, n_batch, n_ctrl) = ({H}, {B}, {m}), "
                    f"got {tuple(u_init.shape)}"
                )
            mean0: Tensor = u_init.to(x).transpose(0, 1)
        elif self.warm_start and self._warm is not None and self._warm.shape[0] == B:
            mean0 = self._warm.to(x)
        else:
            mean0 = (0.5 * (self.u_lower + self.u_upper)).to(x).expand(B, H, m)
        kw: dict[str, Any] = dict(init_mean=mean0, init_std=self.init_sigma.to(x), generator=self.generator)
        if self.rollout_fn is None and iter_cb is None:  # one objective for every state: capturable
            res = self._stable_planner().plan(self._rollout_cost, cost_args=(x,), **kw)
        else:
            res = self.planner().plan(self._objective(x), iter_cb=iter_cb, **kw)
        self._warm = shift_plan(res.plan.detach(), 1, self.shift_fill, self.u_lower.to(x), self.u_upper.to(x))
        u = res.plan.transpose(0, 1)
        return Plan(u.squeeze(1), res.cost.squeeze(0)) if squeeze else Plan(u, res.cost)

    def act(self, x: Tensor) -> Tensor:
        """Plan from ``x (n_batch, n_state)`` and return the first action ``(n_batch, n_ctrl)``."""
        return self.plan(x).u[0]

    forward = act

    @torch.no_grad()
    def run(
        self, x_init: Tensor, n_steps: int, env: Dynamics | None = None, progress: bool = False
    ) -> dict[str, Tensor]:
        """Closed-loop simulation for ``n_steps`` steps (no gradients).

        Args:
            x_init: initial states ``(n_batch, n_state)``.
            n_steps: number of control steps ``>= 1``.
            env: system to simulate (default: the planning model ``dx``).
            progress: show a tqdm progress bar.

        Returns:
            dict with ``x`` ``(n_steps + 1, n_batch, n_state)``, ``u`` ``(n_steps, n_batch, n_ctrl)``,
            ``plan_cost`` ``(n_steps, n_batch)`` and, when a per-step cost is known,
            ``cost`` ``(n_steps, n_batch)`` (the realised step costs).
        """
        n_steps = check_int("n_steps", n_steps, 1)
        env = env if env is not None else self.dx
        if env is None:
            raise ValueError("env is required when the controller was built from a rollout function")
        check_initial_state(x_init, self.n_state, "x_init")
        self.reset()
        xs, us, pcs, cs = [x_init], [], [], []
        it: Any = range(n_steps)
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, desc="mpc", leave=False)
        for _ in it:
            p = self.plan(xs[-1])
            u0 = p.u[0]
            if self.cost is not None:
                cs.append(self.cost(xs[-1], u0))
            us.append(u0)
            pcs.append(p.cost)
            xs.append(env.step(xs[-1], u0))
        out = {"x": torch.stack(xs), "u": torch.stack(us), "plan_cost": torch.stack(pcs)}
        if cs:
            out["cost"] = torch.stack(cs)
        return out
