"""One planner for trajectory optimisation: CEM, DCEM, MPPI and iCEM over batch-major plans.

- :class:`Planner` (:mod:`dcem.planning.planner`), :class:`PlanResult` (:mod:`dcem.planning.result`): minimise
  ``cost(plans (*B, N, H, A)) -> (*B, N)`` inside per-dimension action bounds, optionally over
  the latent space of a decoder; exactly one objective call per iteration;
- :class:`PlannerConfig`, :class:`Rule` (:mod:`dcem.planning.config`): the update rule
  (``"cem"``, ``"dcem"``, ``"mppi"``, ``"icem"``) and its options;
- :func:`rollout`, :func:`rollout_objective` (:mod:`dcem.planning.rollout`): objectives from a
  dynamics model (:class:`Dynamics`, :mod:`dcem.planning.dynamics`) and a per-step cost;
- :func:`shift_plan` (:mod:`dcem.planning.shift`): warm-start shifting;
- :func:`colored_noise` (:mod:`dcem.planning.noise`): iCEM's time-correlated noise.

Costs are minimised; reward maximisers pass ``-reward``.
"""

from dcem.planning.config import RULE_DEFAULTS, PlannerConfig, Rule
from dcem.planning.dynamics import Dynamics, check_state
from dcem.planning.noise import colored_noise
from dcem.planning.planner import IterCallback, Planner, PlanResult
from dcem.planning.rollout import Objective, StepCost, check_initial_state, rollout, rollout_objective
from dcem.planning.shift import shift_plan

__all__ = [
    "RULE_DEFAULTS",
    "Dynamics",
    "IterCallback",
    "Objective",
    "PlanResult",
    "Planner",
    "PlannerConfig",
    "Rule",
    "StepCost",
    "check_initial_state",
    "check_state",
    "colored_noise",
    "rollout",
    "rollout_objective",
    "shift_plan",
]
