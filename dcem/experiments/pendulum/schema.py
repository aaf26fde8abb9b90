"""Typed configuration of ``dcem-exp pendulum`` (defaults in ``conf/``; ranges and rules here)."""

from __future__ import annotations

from dataclasses import dataclass, field

from dcem.experiments.common.config import footprint, opt
from dcem.experiments.common.planner import PlannerSection, check_planner_sections


@dataclass
class MPCConfig(PlannerSection):
    temp: float | None = opt(gt=0, doc="null: CEM")
    sigma_scale: float = opt(gt=0)
    shift_fill: str = opt(choices=("last", "zero", "mid"))


@dataclass
class PendulumConfig:
    out_dir: str | None = opt(doc="null: runs/pendulum/<timestamp>")
    resume: bool = opt(doc="false: move a previous run in out_dir aside and start over")
    seed: int = opt(ge=0)
    num_threads: int | None = opt(ge=1, doc="null: torch's default")
    progress: bool = opt()
    n_systems: int = opt(ge=1)
    n_steps: int = opt(ge=1)
    horizon: int = opt(ge=1)
    ckpt_every: int = opt(ge=1)
    mpc: MPCConfig = field(default_factory=MPCConfig)
    animate: bool = opt()
    n_animate: int = opt(ge=1)

    def validate(self) -> None:
        check_planner_sections(self, ("mpc",))

    def memory_bytes(self) -> list[tuple[str, float]]:
        """Lower bounds of the largest tensors (float32), checked before the run folder exists."""
        return [footprint(self, ("n_systems", "mpc.n_sample", "horizon"), 4 * 8,
                          "the planner's samples and rollouts"),
                footprint(self, ("n_systems", "n_steps"), 4 * 8, "the recorded trajectories")]  # fmt: skip
