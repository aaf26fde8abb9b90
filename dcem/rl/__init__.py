"""Model-based RL with full-space CEM and latent DCEM planners (sect. 5.2.2 and App. D).

- :mod:`dcem.rl.envs`: DeepMind Control Suite tasks (flat proprioceptive observations, action repeat).
- :mod:`dcem.rl.replay`: episode replay buffer sampling sequence chunks.
- :mod:`dcem.rl.world_model`: deterministic-GRU state-space model, Gaussian observations, reward head.
- :mod:`dcem.rl.planners`: full-space CEM and latent DCEM (with the phase-2 decoder loss).
- :mod:`dcem.rl.ppo`: PPO fine-tuning through the DCEM controller with TorchRL (needs ``torchrl``).

The resumable training pipeline is application code: :mod:`dcem.experiments.mbrl.trainer`.
"""

from dcem.rl.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from dcem.rl.planners import FullCEMPlanner, LatentDCEMPlanner
from dcem.rl.replay import SequenceReplay
from dcem.rl.world_model import WorldModel

__all__ = ["CheckpointError", "FullCEMPlanner", "LatentDCEMPlanner", "SequenceReplay", "WorldModel",
           "load_checkpoint", "save_checkpoint"]
