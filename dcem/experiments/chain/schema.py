"""Typed configuration of ``dcem-exp chain``: the cartpole schema (the same training loop, latent
controller, baselines and report) plus the task and its dynamics."""

from __future__ import annotations

from dataclasses import dataclass, field

from dcem.experiments.cartpole.schema import CartpoleConfig
from dcem.experiments.common.config import opt


@dataclass
class Chain:
    n_links: int = opt(ge=2, doc="pendulums = control dimensions")
    max_torque: float = opt(gt=0, doc="torque bound per link")
    coupling: float = opt(ge=0, doc="spring stiffness k between neighbours")
    dt: float = opt(gt=0)


@dataclass
class ChainConfig(CartpoleConfig):
    task: str = opt(choices=("chain",), doc="the dynamics and cost (dcem.experiments.chain.make_task)")
    chain: Chain = field(default_factory=Chain)
