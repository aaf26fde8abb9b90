"""A TorchRL planner module running :class:`dcem.planning.Planner`, and a TorchRL env of a dynamics model.

:class:`PlannerModule` follows the contract of TorchRL's MPC planners
(``torchrl.modules.planners.MPCPlannerBase``, a subclass of it): called on a TensorDict of
current observations with batch size ``*B`` it plans by rolling out a TorchRL env (a simulator
or a world-model env) from those states and writes the first action of the plan under
``action_key``, so it serves as the policy of ``env.rollout``. Underneath, any rule of the
planner (``"cem"``, ``"dcem"``, ``"mppi"``, ``"icem"``) searches action sequences inside the
bounds of the env's action spec, every problem of the batch at once; the plan of one call,
shifted by one step, starts the next (warm start; rows flagged by ``is_init`` and calls with
another batch size start cold).

:class:`DynamicsEnv` wraps a :class:`dcem.control.Dynamics` model and a per-step cost as a
stateless (batch-unlocked) TorchRL env, e.g. the cartpole swing-up of the paper.

Needs ``torchrl`` (``pip install dcem[torchrl]``).

Example:
    >>> import torch
    >>> from dcem.control import CartpoleDx, cartpole_swingup_cost
    >>> from dcem.integrations.torchrl import DynamicsEnv, PlannerModule
    >>> env = DynamicsEnv(CartpoleDx(), cartpole_swingup_cost)
    >>> planner = PlannerModule(env, horizon=10, rule="cem", n_sample=100, n_elite=10, n_iter=3,
    ...                         generator=torch.Generator().manual_seed(0))
    >>> _ = env.set_seed(0)
    >>> traj = env.rollout(5, planner)      # the planner is the policy
    >>> traj["action"].shape, bool(traj["action"].abs().max() <= 1)
    (torch.Size([5, 1]), True)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch import Tensor

try:
    from tensordict import NestedKey, TensorDict, TensorDictBase, unravel_key
    from torchrl.data import Bounded, Composite, Unbounded
    from torchrl.envs import EnvBase
    from torchrl.modules.planners import MPCPlannerBase
except ImportError as err:
    raise ImportError("dcem.integrations.torchrl needs torchrl and tensordict: "
                      "pip install 'dcem[torchrl]'") from err

from dcem._checks import check_bool, check_int
from dcem.control.dynamics import Dynamics
from dcem.planning import Planner, PlannerConfig, shift_plan

__all__ = ["DynamicsEnv", "PlannerModule"]


def _action_bounds(env: EnvBase, action_key: NestedKey) -> tuple[Tensor, Tensor]:
    """Per-dimension bounds ``(A,)`` of the env's continuous, bounded action spec."""
    keys = [unravel_key(k) for k in env.action_keys]
    if unravel_key(action_key) not in keys:
        raise ValueError(f"action_key={action_key!r} is not an action of the env; its action keys are {keys}")
    spec = env.full_action_spec[action_key]
    if not isinstance(spec, Bounded) or not spec.dtype.is_floating_point:
        raise ValueError(f"the env's action spec {action_key!r} must be a continuous Bounded spec (the "
                         f"planner searches inside its low/high), got {type(spec).__name__} with dtype "
                         f"{spec.dtype}")
    A = spec.shape[-1] if len(spec.shape) else 1
    low, high = (t.reshape(-1, A) for t in (spec.space.low, spec.space.high))
    if not (torch.isfinite(low).all() and torch.isfinite(high).all()):
        raise ValueError(f"the env's action spec {action_key!r} has infinite bounds; the planner needs "
                         f"finite low and high (a Bounded spec)")
    if not ((low == low[0]).all() and (high == high[0]).all()):
        raise ValueError("the env's action bounds differ along its batch dimensions; give one bound per "
                         "action dimension")
    return low[0], high[0]


class PlannerModule(MPCPlannerBase):
    """TorchRL MPC planner (``MPCPlannerBase``) backed by :class:`dcem.planning.Planner`.

    Args:
        env: the env rolled out to score plans (a simulator or a TorchRL world-model env such as
            ``ModelBasedEnvBase``); it must accept any batch size (``batch_locked=False``), since
            it is stepped with the batch ``(*B, M)`` of ``M`` candidates per problem: TorchRL then
            wants ``batch_size=[]`` too (the env acting in the world may have a batch size ``B``).
        horizon: plan length ``H >= 1``.
        config: a :class:`dcem.planning.PlannerConfig`; or give its fields as keyword
            ``options`` (``rule``, ``n_sample``, ``n_elite``, ``n_iter``, ...).
        reward_key: the reward in the stepped TensorDict (TorchRL's default ``("next", "reward")``);
            plans maximise the sum of rewards over the horizon, rewards after the first ``done``,
            ``terminated`` or ``truncated`` flag of a rollout not counted.
        action_key: the action written (and searched): a continuous ``Bounded`` spec of the env.
        warm_start: start each call from the previous call's plan shifted by one step.
        generator: ``torch.Generator`` for the sampling noise (on the env's device).
        checked_step: step the env with ``env.step`` (spec checks and key bookkeeping on every
            step) instead of its transition ``env._step`` alone, which has less overhead per
            step (transforms of a ``TransformedEnv`` apply either way).

    Input: a TensorDict of batch size ``*B`` holding the env's observation keys (and its state
    keys, for a stateful world model). Output: the same TensorDict with ``action_key`` set to
    the first action of each plan, ``(*B, A)``, projected into the action spec. Gradients flow
    to the env's parameters under the caller's grad mode (differentiable rules).
    """

    def __init__(
        self,
        env: EnvBase,
        horizon: int,
        config: PlannerConfig | None = None,
        *,
        reward_key: NestedKey = ("next", "reward"),
        action_key: NestedKey = "action",
        warm_start: bool = True,
        generator: torch.Generator | None = None,
        checked_step: bool = False,
        **options: Any,
    ) -> None:
        if not isinstance(env, EnvBase):
            raise TypeError(f"env must be a torchrl EnvBase, got {type(env).__name__}")
        if env.batch_locked or env.batch_size != ():
            raise ValueError(f"env must accept any batch size (batch_locked=False and batch_size=[]), got "
                             f"batch_locked={env.batch_locked}, batch_size={list(env.batch_size)}: the "
                             f"planner steps it with the batch (*tensordict batch, candidates); pass a "
                             f"planning copy of the env without a batch size (e.g. a stateless simulator or "
                             f"a world-model env)")
        reward_key = unravel_key(reward_key)
        rewards = [unravel_key(("next", k)) for k in env.reward_keys]
        if reward_key not in rewards:
            raise ValueError(f"reward_key={reward_key!r} is not a reward of the env; use one of {rewards}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        low, high = _action_bounds(env, action_key)
        super().__init__(env=env, action_key=action_key)
        self.planner = Planner(check_int("horizon", horizon, 1), low.numel(), config, lower=low, upper=high,
                               **options)  # fmt: skip
        self.reward_key, self.action_key = reward_key, unravel_key(action_key)
        self.done_keys = [unravel_key(("next", k)) for k in env.done_keys]
        self.checked_step = check_bool("checked_step", checked_step)
        self.state_keys = list(dict.fromkeys([*self.in_keys, *env.state_spec.keys(True, True)]))
        self.warm_start = check_bool("warm_start", warm_start)
        self.generator = generator
        self.register_buffer("low", low.clone(), persistent=False)
        self.register_buffer("high", high.clone(), persistent=False)
        self._plan: Tensor | None = None  # last plan (*B, H, A), detached

    @property
    def horizon(self) -> int:
        """Planning horizon ``H``: the length of the plans searched."""
        return self.planner.horizon

    def reset(self) -> None:
        """Forget the warm-start plan (the next call starts cold)."""
        self._plan = None

    def _start(self, td: TensorDictBase) -> Tensor | None:
        """Warm-start mean ``(*B, H, A)``: the last plan shifted, cold rows at the middle of the bounds."""
        prev = self._plan
        if not self.warm_start or prev is None or prev.shape[:-2] != td.batch_size:
            return None
        mean = shift_plan(prev, 1, fill="last")
        if "is_init" in td.keys():
            cold = (0.5 * (self.low + self.high)).to(mean).expand_as(mean)
            init = td.get("is_init").reshape(*td.batch_size, 1, 1)
            mean = torch.where(init, cold, mean)
        return mean

    def _objective(self, td: TensorDictBase) -> Callable[[Tensor], Tensor]:
        """Cost of plans ``(*B, M, H, A) -> (*B, M)``: minus the rewards of the env rollouts."""
        start = td.select(*self.state_keys, strict=False)

        def cost(plans: Tensor) -> Tensor:
            M = plans.shape[-3]
            s = start.unsqueeze(-1).expand(*start.batch_size, M)
            total, alive = None, None
            for t in range(plans.shape[-2]):
                s.set(self.action_key, plans[..., t, :])
                if self.checked_step:
                    nxt = self.env.step(s).get("next")
                else:  # the env's transition alone (transforms included), without step()'s bookkeeping
                    nxt = self.env._step(s)
                r = nxt.get(self.reward_key[1:]).reshape(*s.batch_size, -1).sum(-1)
                total = r if total is None else total + r * alive
                done = torch.zeros_like(r, dtype=torch.bool)
                for k in self.done_keys:
                    flag = nxt.get(k[1:], None)
                    if flag is not None:
                        done = done | flag.reshape(*s.batch_size, -1).any(-1)
                alive = ~done if alive is None else alive & ~done
                s = nxt.select(*self.state_keys, strict=False)
            return -cast(Tensor, total)  # set in the loop: the horizon is >= 1

        return cost

    def planning(self, tensordict: TensorDictBase) -> Tensor:
        """First actions ``(*B, A)`` of the plans made from the states in ``tensordict``."""
        if not isinstance(tensordict, TensorDictBase):
            raise TypeError(f"tensordict must be a TensorDict, got {type(tensordict).__name__}")
        missing = [k for k in self.in_keys if unravel_key(k) not in tensordict.keys(True, True)]
        if missing:
            raise ValueError(f"tensordict lacks the env's observation key(s) {missing}; it has "
                             f"{sorted(map(str, tensordict.keys(True, True)))}")  # fmt: skip
        res = self.planner.plan(self._objective(tensordict), batch_shape=tuple(tensordict.batch_size),
                                init_mean=self._start(tensordict), generator=self.generator,
                                dtype=self.low.dtype, device=self.low.device)  # fmt: skip
        self._plan = res.plan.detach()
        return res.plan[..., 0, :]


class DynamicsEnv(EnvBase):
    """A :class:`dcem.control.Dynamics` model and a per-step cost as a stateless TorchRL env.

    Args:
        dynamics: the model ``x' = f(x, u)``; its state is the observation ``"observation"``
            ``(*batch, n_state)``.
        cost: per-step cost ``(x (..., n_state), u (..., n_ctrl)) -> (...)`` of the state before
            the action; the reward is its negative.
        batch_size: the env's batch size; ``[]`` (the default) accepts TensorDicts of any batch
            size (``batch_locked=False``), as a planner's env must.
        unit_actions: actions live in ``[-1, 1]^A`` and are mapped affinely onto the model's
            ``[u_lower, u_upper]`` (the usual RL convention); ``False``: the model's bounds.

    Resets draw initial states with ``dynamics.sample_state`` (zeros if the model has none)
    from the env's generator (:meth:`set_seed`); episodes never end by themselves.
    """

    batch_locked = False

    def __init__(
        self,
        dynamics: Dynamics,
        cost: Callable[[Tensor, Tensor], Tensor],
        batch_size: torch.Size | tuple[int, ...] = (),
        unit_actions: bool = True,
    ) -> None:
        if not isinstance(dynamics, Dynamics):
            raise TypeError(f"dynamics must be a dcem.control.Dynamics, got {type(dynamics).__name__}")
        if not callable(cost):
            raise TypeError(f"cost must be callable, got {type(cost).__name__}")
        super().__init__(device=dynamics.u_lower.device, batch_size=torch.Size(batch_size))
        self.dynamics, self.cost = dynamics, cost
        self.unit_actions = check_bool("unit_actions", unit_actions)
        lo, hi = dynamics.u_lower, dynamics.u_upper
        bs, n, dt = self.batch_size, dynamics.n_state, lo.dtype
        a_lo, a_hi = (-torch.ones_like(lo), torch.ones_like(hi)) if unit_actions else (lo, hi)
        self.observation_spec = Composite(observation=Unbounded((*bs, n), dtype=dt), shape=bs)
        shape = (*bs, dynamics.n_ctrl)
        self.action_spec = Bounded(a_lo.expand(shape), a_hi.expand(shape), shape, dtype=dt)
        self.reward_spec = Unbounded((*bs, 1), dtype=dt)
        self.rng = torch.Generator(device=self.device)

    def _control(self, a: Tensor) -> Tensor:
        if not self.unit_actions:
            return a
        lo, hi = self.dynamics.u_lower.to(a), self.dynamics.u_upper.to(a)
        return lo + 0.5 * (a.clamp(-1, 1) + 1) * (hi - lo)

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        x, a = tensordict.get("observation"), tensordict.get("action")
        u = self._control(a)
        reward = -self.cost(x, u).unsqueeze(-1)
        done = torch.zeros(reward.shape, dtype=torch.bool, device=reward.device)
        return TensorDict({"observation": self.dynamics(x, u), "reward": reward, "done": done,
                           "terminated": done.clone()}, tensordict.batch_size)  # fmt: skip

    def _reset(self, tensordict: TensorDictBase | None, **kwargs: Any) -> TensorDictBase:
        shape = self.batch_size if tensordict is None else tensordict.batch_size
        n, lo = int(torch.Size(shape).numel()), self.dynamics.u_lower
        sample = getattr(self.dynamics, "sample_state", None)
        if sample is not None:
            gen = self.rng if self.rng.device.type == lo.device.type else None
            x = sample(n, generator=gen).reshape(*shape, self.dynamics.n_state)
        else:
            x = torch.zeros(*shape, self.dynamics.n_state, dtype=lo.dtype, device=lo.device)
        done = torch.zeros(*shape, 1, dtype=torch.bool, device=lo.device)
        return TensorDict({"observation": x, "done": done, "terminated": done.clone()}, shape)

    def _set_seed(self, seed: int | None) -> None:
        self.rng = torch.Generator(device=self.device)
        if seed is not None:
            self.rng.manual_seed(int(seed))
