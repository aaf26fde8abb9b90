"""Typed configuration of ``dcem-exp regression`` (defaults in ``conf/``; ranges and rules here)."""

from __future__ import annotations

from dataclasses import dataclass, field

from dcem.experiments.common.config import ConfigError, footprint, opt


@dataclass
class GD:
    n_iter: int = opt(ge=1)
    inner_lr: float = opt(gt=0)
    y0: float = opt()


@dataclass
class DCEM:
    n_iter: int = opt(ge=1)
    n_sample: int = opt(ge=2)
    n_elite: int = opt(ge=1, doc="<= dcem.n_sample")
    temp: float | None = opt(ge=0, doc="null or 0: hard CEM")
    init_sigma: float = opt(gt=0)
    y0: float = opt()
    normalize: bool = opt()
    iter_eps: float | None = opt(ge=0)


@dataclass
class Train:
    n_updates: int = opt(ge=1)
    batch_size: int | None = opt(ge=1, doc="<= n_points; null: all points")
    n_repeat: int = opt(ge=1)
    lr: float = opt(gt=0)
    clip_norm: float = opt(gt=0)
    plateau_factor: float = opt(gt=0, le=1)
    plateau_patience: int = opt(ge=0)
    min_lr: float = opt(ge=0)
    eval_every: int = opt(ge=1)
    ckpt_every: int = opt(ge=1)


@dataclass
class Ablation:
    max_iter: int = opt(ge=1)
    show_iters: list[int] = opt(ge=1, each=True, nonempty=True, doc="each <= ablation.max_iter")


@dataclass
class Plot:
    y_range: list[float] = opt(doc="[low, high]")
    grid: int = opt(ge=2)


@dataclass
class Report:
    last_evals: int = opt(ge=1, doc="evaluations averaged into the reported final MSE")
    page: str = opt(doc="results page whose generated blocks mode=report rewrites")
    img_dir: str = opt(doc="folder for the page's figures")


@dataclass
class RegressionConfig:
    mode: str = opt(choices=("run", "report"), doc="report: rewrite report.page from the run in out_dir")
    out_dir: str | None = opt(doc="null: runs/regression/<timestamp>; an existing run is resumed")
    resume: bool = opt(doc="false: move a previous run in out_dir aside and start over")
    methods: list[str] = opt(choices=("gd", "dcem"), each=True, nonempty=True)
    seeds: list[int] = opt(ge=0, each=True, nonempty=True)
    device: str = opt(device=True)
    num_threads: int | None = opt(ge=1, doc="null: torch's default")
    progress: bool = opt()
    analyse: bool = opt()
    eval_seed: int = opt(ge=0)
    n_points: int = opt(ge=2)
    n_hidden: int = opt(ge=1)
    n_layers: int = opt(ge=1)
    gd: GD = field(default_factory=GD)
    dcem: DCEM = field(default_factory=DCEM)
    train: Train = field(default_factory=Train)
    ablation: Ablation = field(default_factory=Ablation)
    plot: Plot = field(default_factory=Plot)
    report: Report = field(default_factory=Report)

    def validate(self) -> None:
        if self.dcem.n_elite > self.dcem.n_sample:
            raise ConfigError(f"dcem.n_elite={self.dcem.n_elite}: must be <= dcem.n_sample "
                              f"({self.dcem.n_sample})")  # fmt: skip
        bs = self.train.batch_size
        if bs is not None and bs > self.n_points:
            raise ConfigError(f"train.batch_size={bs}: must be <= n_points ({self.n_points}) or null")
        if max(self.ablation.show_iters) > self.ablation.max_iter:
            raise ConfigError(f"ablation.show_iters={self.ablation.show_iters}: every value must be "
                              f"<= ablation.max_iter ({self.ablation.max_iter})")  # fmt: skip
        if len(self.plot.y_range) != 2 or not self.plot.y_range[0] < self.plot.y_range[1]:
            raise ConfigError(f"plot.y_range={self.plot.y_range}: must be [low, high] with low < high")
        if len(set(self.seeds)) != len(self.seeds) or len(set(self.methods)) != len(self.methods):
            raise ConfigError("seeds and methods must not repeat a value")

    def memory_bytes(self) -> list[tuple[str, float]]:
        """Lower bounds of the largest tensors (float32 activations kept for the backward pass of one
        update), checked before the run folder exists."""
        rows = "train.batch_size" if self.train.batch_size is not None else "n_points"
        return [footprint(self, (rows, "dcem.n_sample", "dcem.n_iter", "n_hidden", "n_layers"), 4 * 2,
                          "the unrolled DCEM graph of one update"),
                footprint(self, (rows, "gd.n_iter", "n_hidden", "n_layers"), 4 * 4,
                          "the unrolled gradient-descent graph of one update")]  # fmt: skip
