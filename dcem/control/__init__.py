"""Control with CEM/DCEM: dynamics, model-predictive control and learned latent action spaces.

``dcem_ctrl``, :class:`MPC` and :class:`LatentDCEMController` are thin wrappers over the one
planner :class:`dcem.planning.Planner` (CEM, DCEM, MPPI, iCEM).
"""

from dcem.control.chain import PendulumChainDx, chain_upright_cost
from dcem.control.decoder import ActionDecoder
from dcem.control.dynamics import CartpoleDx, Dynamics, PendulumDx, cartpole_swingup_cost, check_state
from dcem.control.latent import LatentDCEMController, LatentSolution, imitation_loss, train_step
from dcem.control.mpc import MPC, Plan, dcem_ctrl, rollout_cost

__all__ = [
    "ActionDecoder",
    "CartpoleDx",
    "Dynamics",
    "LatentDCEMController",
    "LatentSolution",
    "MPC",
    "PendulumDx",
    "Plan",
    "cartpole_swingup_cost",
    "check_state",
    "dcem_ctrl",
    "PendulumChainDx", "chain_upright_cost",
    "imitation_loss",
    "rollout_cost",
    "train_step",
]
