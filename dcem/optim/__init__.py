"""The optimiser layer: CEM/DCEM as a configuration, a state and a step (ask/tell).

- :class:`CEMConfig`, :class:`CEMState`, :func:`init_state`, :func:`ask`, :func:`tell`,
  :func:`step`, :func:`solve` (:mod:`dcem.optim.cem`);
- :class:`Solver`, which compiles or captures the loop once per shape (:mod:`dcem.optim.solver`),
  on the generic :class:`Captured` (:mod:`dcem.optim.capture`), which the planners use too;
- the sample weights and refits shared by every update rule (:mod:`dcem.optim.weights`).
"""

from dcem.optim.capture import Captured, resolve_capture
from dcem.optim.cem import CEMConfig, CEMState, ask, clamp_to_bounds, init_state, solve, step, tell
from dcem.optim.solver import CAPTURE_MODES, Solver
from dcem.optim.weights import (
    best_sample,
    gather_rows,
    hard_elites,
    invalid_mask,
    safe_sqrt,
    settle_refit,
    soft_elite_weights,
    standardize,
    weighted_moments,
)

__all__ = [
    "CAPTURE_MODES",
    "Solver",
    "Captured",
    "CEMConfig",
    "CEMState",
    "ask",
    "best_sample",
    "clamp_to_bounds",
    "gather_rows",
    "settle_refit",
    "hard_elites",
    "init_state",
    "invalid_mask",
    "resolve_capture",
    "safe_sqrt",
    "soft_elite_weights",
    "solve",
    "standardize",
    "step",
    "tell",
    "weighted_moments",
]
