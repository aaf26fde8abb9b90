"""Typed configuration of ``dcem-exp cartpole`` (defaults in ``conf/``; ranges and rules here)."""

from __future__ import annotations

from dataclasses import dataclass, field

from dcem.control.decoder import INITS
from dcem.experiments.common.config import ConfigError, footprint, opt
from dcem.experiments.common.planner import PlannerSection, check_planner_sections


@dataclass
class Decoder:
    n_latent: int = opt(ge=1)
    hidden_sizes: list[int] = opt(ge=1, each=True)
    activation: str = opt(choices=("relu", "elu", "tanh", "softplus"))
    init: str = opt(choices=INITS, doc="reference: App. C's N(0, 4/(fan_in+fan_out)) weights, zero biases")


@dataclass
class Latent(PlannerSection):
    """The latent controller: a planner section plus its latent box and initial std."""

    temp: float = opt(ge=0, doc="0: hard CEM")
    init_sigma: float = opt(gt=0)
    z_bound: float = opt(gt=0)
    normalize: bool = opt()


@dataclass
class Expert(PlannerSection):
    """A full-space CEM (the paper's expert, and the converged baseline of mode=report)."""

    sigma_scale: float = opt(gt=0)


@dataclass
class Vis:
    n_states: int = opt(ge=1, doc="<= n_val")
    grid: int = opt(ge=2)
    n_lines: int = opt(ge=1)


@dataclass
class Ablation:
    temps: list[float] = opt(ge=0, each=True, nonempty=True)
    latent_sizes: list[int] = opt(ge=1, each=True, nonempty=True)
    seeds: list[int] = opt(ge=0, each=True, nonempty=True, doc="training seeds of each cell")
    n_train_iter: int = opt(ge=1)


@dataclass
class Report:
    runs: list[str] = opt(doc="train run folders, one per training seed (mode=report)")
    ablation: list[str] = opt(doc="ablation run folders, merged by cell (e.g. one per seed)")
    page: str = opt(doc="the results page whose generated blocks are rewritten")
    img_dir: str = opt(doc="folder for the page's figures")
    out: str = opt(doc="folder for report.json")
    cache_dir: str = opt(doc="cache of the full-space CEM baselines")
    eval_seeds: list[int] = opt(ge=0, each=True, nonempty=True, doc="DCEM sampling seeds per trained decoder")
    baseline_seeds: list[int] = opt(ge=0, each=True, nonempty=True, doc="sampling seeds, full-space CEM")
    converged: Expert = field(default_factory=Expert)
    published: Expert = field(default_factory=Expert)


@dataclass
class CartpoleConfig:
    mode: str = opt(choices=("train", "ablation", "vis", "eval", "report"))
    out_dir: str | None = opt(doc="null: runs/cartpole/<timestamp>")
    resume: bool = opt(doc="false: move a previous run in out_dir aside and start over")
    seed: int = opt(ge=0)
    num_threads: int | None = opt(ge=1, doc="null: torch's default")
    progress: bool = opt()
    plots: bool = opt()
    horizon: int = opt(ge=1)
    n_train_iter: int = opt(ge=1)
    n_batch: int = opt(ge=1)
    lr: float = opt(gt=0)
    clip_grad: float | None = opt(gt=0)
    lr_patience: int = opt(ge=0)
    lr_factor: float = opt(gt=0, le=1)
    decoder: Decoder = field(default_factory=Decoder)
    dcem: Latent = field(default_factory=Latent)
    expert: Expert = field(default_factory=Expert)
    n_val: int = opt(ge=2)
    val_seed: int = opt(ge=0)
    val_interval: int = opt(ge=1)
    ckpt_interval: int = opt(ge=1)
    vis: Vis = field(default_factory=Vis)
    ablation: Ablation = field(default_factory=Ablation)
    report: Report = field(default_factory=Report)

    def validate(self) -> None:
        check_planner_sections(self, ("dcem", "expert", "report.converged", "report.published"))
        if self.vis.n_states > self.n_val:
            raise ConfigError(f"vis.n_states={self.vis.n_states}: must be <= n_val ({self.n_val})")

    def memory_bytes(self) -> list[tuple[str, float]]:
        """Lower bounds of the largest tensors (float32), checked before the run folder exists."""
        return [footprint(self, ("n_batch", "dcem.n_sample", "dcem.n_iter", "horizon"), 4 * 16,
                          "the unrolled DCEM graph of one update"),
                footprint(self, ("n_val", "dcem.n_sample", "horizon"), 4 * 8, "the validation plans"),
                footprint(self, ("expert.n_sample", "horizon"), 4 * 8 * 25,
                          "the expert's plans, 25 states at a time")]  # fmt: skip
