"""Adapters to the libraries users already plan and train with (optional extras).

- :mod:`dcem.integrations.torchrl`: a TorchRL planner module (``MPCPlannerBase`` contract)
  running :class:`dcem.planning.Planner` with any rule, and a TorchRL env around a
  :class:`dcem.control.Dynamics` model (needs ``pip install dcem[torchrl]``).

Gymnasium MuJoCo tasks for the model-based RL pipeline live in :mod:`dcem.rl.gym_envs`.
"""

__all__: list[str] = []  # the adapters are imported from their submodules (optional dependencies)
