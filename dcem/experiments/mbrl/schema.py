"""Typed configuration of ``dcem-exp mbrl`` (defaults in ``conf/``; ranges and rules here)."""

from __future__ import annotations

from dataclasses import dataclass, field

from dcem.experiments.common.config import ConfigError, footprint, opt
from dcem.experiments.common.planner import PlannerSection, check_planner_sections
from dcem.experiments.mbrl.paired import CONTROLLERS
from dcem.rl.envs import ENVS, check_env_name, default_action_repeat
from dcem.rl.ppo import PPO_PARTS

PHASES = ("model", "decoder", "ppo", "eval")


def expand_env(argv: list[str]) -> list[str]:
    """``env=gym:<id>`` (a Gymnasium task) -> ``env=gym env.name=gym:<id>``; other overrides unchanged."""
    out = []
    for arg in argv:
        if arg.startswith("env=gym:"):
            out += ["env=gym", f"env.name={arg[len('env='):]}"]
        else:
            out.append(arg)
    return out


@dataclass
class Env:
    name: str = opt(doc="|".join(sorted(ENVS)) + " or gym:<Gymnasium id> (e.g. gym:HalfCheetah-v5)")
    action_repeat: int | None = opt(ge=1, doc="null: PlaNet's repeat of the task (1 for gym:)")
    episode_steps: int = opt(ge=1)


@dataclass
class Log:
    tensorboard: bool = opt()


@dataclass
class Model:
    deter_size: int = opt(ge=1)
    hidden_size: int = opt(ge=1)
    lr: float = opt(gt=0)
    adam_eps: float = opt(gt=0)
    grad_clip: float = opt(gt=0)
    batch_size: int = opt(ge=1)
    seq_len: int = opt(ge=1, doc="<= episode length (env.episode_steps / action_repeat)")
    overshooting: int = opt(ge=1)
    overshooting_scale: float = opt(ge=0)
    reward_scale: float = opt(ge=0)


@dataclass
class Train:
    seed_episodes: int = opt(ge=1)
    episodes: int = opt(ge=0)
    updates_per_episode: int = opt(ge=1)
    expl_noise: float = opt(ge=0)
    replay_capacity: int = opt(ge=1)
    collect_workers: int = opt(ge=1, doc="worker processes stepping the environments (lockstep planning)")
    schedule: str = opt(choices=("block", "interleaved"),
                        doc="block: updates before each episode; interleaved: App. D's Alg. 3")
    update_interval: int = opt(ge=1, doc="interleaved: one model update every this many env steps")


@dataclass
class CEM(PlannerSection):
    """Full-space CEM (:class:`dcem.rl.FullCEMPlanner`)."""


@dataclass
class DCEM(PlannerSection):
    """Latent DCEM (:class:`dcem.rl.LatentDCEMPlanner`)."""

    temp: float = opt(gt=0)
    latent_bound: float | None = opt(gt=0)


@dataclass
class Planner:
    horizon: int = opt(ge=1)
    cem: CEM = field(default_factory=CEM)
    dcem: DCEM = field(default_factory=DCEM)


@dataclass
class Decoder:
    n_latent: int = opt(ge=1)
    hidden_sizes: list[int] = opt(ge=1, each=True)
    lr: float = opt(gt=0)
    grad_clip: float = opt(gt=0)
    batch_size: int = opt(ge=1)
    context: int = opt(ge=1)
    episodes: int = opt(ge=0)
    updates_per_episode: int = opt(ge=0)
    model_updates_per_episode: int = opt(ge=0)
    init: str = opt(choices=("default", "reference"), doc="reference: App. C's initialisation")
    states: str = opt(choices=("last", "all"), doc="states of each replay chunk in the loss")
    freeze_model: bool = opt(doc="true: no model updates in phase 2 (phase 1's model, frozen)")
    action_prior: float = opt(ge=0, doc="beyond the paper: weight of the replay-action penalty (0: off)")
    val_every: int = opt(ge=0, doc="validation episodes every this many phase-2 episodes (0: never)")
    val_episodes: int = opt(ge=1)
    val_replan_every: list[int] = opt(
        ge=1, le=1000, each=True, nonempty=True,
        doc="the curve is measured at each k (actions executed per plan before re-planning)",
    )


@dataclass
class PPO:
    iterations: int = opt(ge=0)
    steps_per_iter: int = opt(ge=1)
    parts: list[str] = opt(choices=PPO_PARTS, each=True, nonempty=True)
    sigma: float = opt(gt=0)
    learn_sigma: bool = opt()
    lr: float = opt(gt=0)
    clip_epsilon: float = opt(gt=0)
    gamma: float = opt(ge=0, le=1)
    lmbda: float = opt(ge=0, le=1)
    entropy_coeff: float = opt(ge=0)
    epochs: int = opt(ge=1)
    minibatch: int = opt(ge=1)


@dataclass
class Eval:
    episodes: int = opt(ge=1)
    every: int = opt(ge=0, doc="0: never")
    episodes_during_training: int = opt(ge=1)
    video: bool = opt()
    controllers: list[str] = opt(
        choices=tuple(CONTROLLERS),
        each=True,
        doc="paired evaluation (phase=eval); []: every one whose snapshot exists",
    )
    replan_every: int = opt(
        ge=1, le=1000, doc="phase=eval: actions executed from each plan before re-planning (1: every step)"
    )


@dataclass
class Report:
    root: str = opt(doc="folder searched (recursively) for the run folders' eval.json")
    page: str = opt(doc="results page whose generated blocks phase=report rewrites")


@dataclass
class MBRLConfig:
    phase: str = opt(
        choices=(*PHASES, "all", "report", "probe"),
        doc="report: regenerate report.page from report.root; probe: model calibration by kind of action "
        "sequence on the decoder snapshot (probe.json)",
    )
    seed: int = opt(ge=0)
    device: str = opt(device=True, choices=("auto",), doc="auto: cuda if available")
    out_dir: str | None = opt(doc="null: runs/mbrl/<timestamp>")
    resume: bool = opt(doc="false: move a previous run in out_dir aside and start over")
    num_threads: int | None = opt(ge=1, doc="null: torch's default")
    progress: bool = opt()
    env: Env = field(default_factory=Env)
    log: Log = field(default_factory=Log)
    model: Model = field(default_factory=Model)
    train: Train = field(default_factory=Train)
    planner: Planner = field(default_factory=Planner)
    decoder: Decoder = field(default_factory=Decoder)
    ppo: PPO = field(default_factory=PPO)
    eval: Eval = field(default_factory=Eval)
    report: Report = field(default_factory=Report)

    def memory_bytes(self) -> list[tuple[str, float]]:
        """Lower bounds of the largest tensors (float32), checked before the run folder exists."""
        return [footprint(self, ("planner.cem.n_sample", "planner.horizon"), 4,
                          "the full-CEM plans of one step"),
                footprint(self, ("planner.cem.n_sample", "model.deter_size"), 4 * 2,
                          "the model states of one full-CEM rollout step"),
                footprint(self, ("decoder.batch_size", "planner.dcem.n_sample", "planner.dcem.n_iter",
                                 "planner.horizon", "model.deter_size"), 4,
                          "the unrolled latent-DCEM graph of one decoder update"),
                footprint(self, ("model.batch_size", "model.seq_len", "model.deter_size"), 4,
                          "the model states of one world-model update")]  # fmt: skip

    def validate(self) -> None:
        try:
            check_env_name(self.env.name)
        except (ValueError, ImportError) as err:
            raise ConfigError(f"env.name={self.env.name!r}: {err}") from None
        check_planner_sections(self, ("planner.cem", "planner.dcem"))
        ar = self.env.action_repeat or default_action_repeat(self.env.name)
        ep_len = self.env.episode_steps // ar
        if self.model.seq_len > ep_len:
            raise ConfigError(f"model.seq_len={self.model.seq_len}: must be <= the episode length {ep_len} "
                              f"(env.episode_steps / action_repeat)")  # fmt: skip
