"""Cartpole with a latent action space learned through DCEM (sect. 5.2.1, App. C, Alg. 2, fig. 3).

``dcem-exp cartpole [scale=short|tiny] [mode=train|ablation|vis|eval] [key=value ...]`` (or
``python -m dcem.experiments cartpole ...``) with the Hydra config ``conf/config.yaml`` next to
this file; ``scale=tiny`` is a seconds-long smoke run. Modes:

- ``mode=train``: Alg. 2 (sample an initial state, solve the embedded problem with DCEM over
  the 2-D latent box, step the decoder on the plan's cost), validation on 100 fixed initial
  states against the full-space CEM expert, then the plots (``curves.png``, ``fig3.png``,
  ``surface.png``) and ``summary.json`` (expert cost, latent cost, improvement factor, random
  decoder cost), ``log.csv``. Interrupted runs resume from ``out_dir/checkpoint.pt`` when the
  configuration is the same (``resume=false`` moves the old run aside and starts over).
- ``mode=ablation``: the same for every ``tau`` in ``ablation.temps`` and latent size in
  ``ablation.latent_sizes`` (sub-runs under ``out_dir/tau<..>_nz<..>``), ``ablation.csv`` and
  ``ablation.png``.
- ``mode=vis``: redo the plots of the run in ``out_dir`` from its best checkpoint.
- ``mode=eval``: recompute ``summary.json`` of the run in ``out_dir`` and of its sub-runs.
- ``mode=report``: score the train runs ``report.runs=[DIR,...]`` (one per training seed) and
  the ablation folders ``report.ablation=[DIR,...]`` (merged by cell; unfinished cells are listed
  as running) on the test states against full-space CEM (converged, the 1000 x 10 expert, the
  published code's 100 x 10 x 30 expert, the latent budget; each with several sampling seeds)
  and the untrained decoder, and rewrite the generated blocks of ``report.page``
  (:mod:`dcem.experiments.cartpole.report`).

A finished run (or ablation) resumed with a larger ``n_train_iter`` (``ablation.n_train_iter``)
continues to the new length and equals a run started with it, bit for bit.

The checkpoint kept (``best.pt``) is the one with the lowest validation cost; ``summary.json``
also reports a held-out test set of 100 other initial states (``*_test_*``).

The improvement factor is ``latent cost / expert cost``: both costs are negative (rewards of
an upright pole), so it equals the ratio of returns, and > 1 means the latent controller with
10x fewer samples beats the expert.
"""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path

from omegaconf import DictConfig

from dcem.experiments.cartpole.schema import CartpoleConfig
from dcem.experiments.common.config import Experiment, load

__all__ = ["EXPERIMENT", "main", "load_config"]

log = logging.getLogger(__name__)
CONF_DIR = Path(__file__).resolve().parent / "conf"
#: keys added after run folders existed, with the value an older run used (see common.rundir.open_run):
#: runs made before decoder.init existed used PyTorch's default initialisation
LEGACY = {"decoder.init": "default"}
EXPERIMENT = Experiment(
    "cartpole", CONF_DIR, CartpoleConfig, __doc__ or "",
    free_keys=("out_dir", "progress", "num_threads", "resume", "mode", "plots", "vis.n_states", "vis.grid",
               "vis.n_lines", "report."),
)  # fmt: skip


def load_config(argv: list[str]) -> DictConfig:
    """The typed, validated configuration for Hydra overrides ``key=value``."""
    cfg = load(EXPERIMENT, argv)
    if cfg is None:
        raise ValueError("load_config does not take --help")
    return cfg


def _plots(cfg: DictConfig, run_dir: Path) -> dict:
    from dcem.experiments.cartpole.plots import plot_curves, plot_fig3, plot_surface
    from dcem.experiments.cartpole.run import (
        _load,
        _load_decoder,
        expert_costs,
        expert_spec,
        make_controller,
        make_task,
        read_csv,
        validation_states,
    )
    from dcem.experiments.common import plots

    dx = make_task(cfg)[0]
    ck = _load(run_dir / "checkpoint.pt")
    ctrl = make_controller(cfg, dx, ck.get("n_latent"), ck.get("temp") or 0.0)
    _load_decoder(ctrl, run_dir / "best.pt")
    x_val = validation_states(cfg, dx)
    expert_mean = float(expert_costs(cfg, dx, x_val, run_dir / "expert.json").mean())
    with plots.style():
        plot_curves(read_csv(run_dir / "log.csv"), expert_mean, ck.get("random_cost"), run_dir / "curves.png")
        if "task" in cfg:  # fig. 3 and the cost surface draw the cartpole's one force and angle
            return {}
        plot_surface(ctrl, x_val[: int(cfg.vis.n_states)], run_dir / "surface.png", grid=int(cfg.vis.grid))
        spec = expert_spec(cfg.expert)
        rows = [(f"CEM, full space ({int(spec['n_sample'])} x {int(spec['n_iter'])})", spec)]
        return plot_fig3(ctrl, rows, x_val[0], run_dir / "fig3.png", n_lines=int(cfg.vis.n_lines))


def _ablation(cfg: DictConfig, run_dir: Path) -> None:
    from omegaconf import OmegaConf

    from dcem.experiments.cartpole.plots import plot_ablation
    from dcem.experiments.cartpole.run import (
        expert_costs,
        make_task,
        read_csv,
        test_states,
        train,
        validation_states,
    )
    from dcem.experiments.common import plots
    from dcem.experiments.common.runs import CsvLog

    dx = make_task(cfg)[0]
    expert = expert_costs(cfg, dx, validation_states(cfg, dx), run_dir / "expert.json")
    expert_test = expert_costs(cfg, dx, test_states(cfg, dx), run_dir / "expert_test.json", tag="test")
    results, curves = [], {}
    for tau, nz, seed, name in ablation_cells(cfg):
        cfg_s = OmegaConf.merge(cfg, {"seed": seed})
        s = train(cfg_s, run_dir / name, n_latent=nz, temp=tau, n_train_iter=int(cfg.ablation.n_train_iter),
                  expert=expert, expert_test=expert_test)  # fmt: skip
        s.update(name=name, seed=seed)
        results.append(s)
        curves[name] = read_csv(run_dir / name / "log.csv")
        log.info("%s: latent %.3f expert %.3f factor %.3f", name, s["latent_cost"], s["expert_cost"],
                 s["improvement_factor"])  # fmt: skip
    CsvLog(run_dir / "ablation.csv", list(results[0].keys())).rewrite(results)
    if cfg.plots:
        with plots.style():
            plot_ablation(results, curves, float(expert.mean()), run_dir / "ablation.png")


def ablation_cells(cfg: DictConfig) -> list[tuple[float, int, int, str]]:
    """The cells of ``mode=ablation`` in training order: ``(tau, n_latent, seed, sub-run folder
    name)`` for every seed x latent size x temperature; folders are ``tau<tau>_nz<n>_seed<seed>``."""
    return [(float(tau), int(nz), int(seed), f"tau{float(tau):g}_nz{int(nz)}_seed{int(seed)}")
            for seed in cfg.ablation.seeds for nz in cfg.ablation.latent_sizes
            for tau in cfg.ablation.temps]  # fmt: skip


#: training lengths that may grow when a finished run is resumed (it then continues, and equals a
#: run started with the longer length bit for bit); shrinking them is another configuration
GROWABLE = ("n_train_iter", "ablation.n_train_iter")


def _grown(cfg: DictConfig) -> tuple[str, ...]:
    """The keys of :data:`GROWABLE` that are larger now than in ``out_dir/config.yaml``."""
    from omegaconf import OmegaConf

    path = Path(cfg.out_dir) / "config.yaml" if cfg.out_dir is not None else None
    if path is None or not path.is_file():
        return ()
    old = OmegaConf.load(path)
    return tuple(k for k in GROWABLE if isinstance(OmegaConf.select(old, k), int)
                 and int(OmegaConf.select(cfg, k)) > int(OmegaConf.select(old, k)))  # fmt: skip


def run_main(exp: Experiment, argv: list[str], legacy: dict | None = None) -> None:
    """The command line of ``dcem-exp cartpole`` and of the experiments that reuse its training
    loop on another task (``exp`` names the experiment, its schema and its run-time keys)."""
    from omegaconf import OmegaConf

    from dcem.experiments.common.distributed import is_main, launch_info
    from dcem.experiments.common.runs import RunError, atomic_write_text, open_run, set_threads, setup_logging

    cfg = load(exp, argv)
    if cfg is None:
        return
    existing = cfg.out_dir is not None and (Path(cfg.out_dir) / "config.yaml").exists()
    if cfg.mode in ("vis", "eval") and not existing:
        raise RunError(f"mode={cfg.mode} needs out_dir=... pointing at an existing {exp.name} run folder")
    setup_logging()
    set_threads(cfg.num_threads)
    if cfg.mode == "report":
        report = importlib.import_module(f"dcem.experiments.{exp.name}.report").report
        report(cfg)
        log.info("rewrote the generated blocks of %s", cfg.report.page)
        return
    resume = bool(cfg.resume) or cfg.mode in ("vis", "eval")
    grown = _grown(cfg) if resume else ()
    run_dir = open_run(exp.name, cfg, exp.free_keys + grown, resume=resume,
                       launch=launch_info({"n_batch": int(cfg.n_batch)}), legacy=legacy)  # fmt: skip
    if grown:  # record the longer length (the launch section and every other key are kept)
        old = OmegaConf.load(run_dir / "config.yaml")
        for k in grown:
            was, now = OmegaConf.select(old, k), OmegaConf.select(cfg, k)
            log.info("%s: %s grows from %s to %s", run_dir, k, was, now)
            OmegaConf.update(old, k, OmegaConf.select(cfg, k))
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(old))
    log.info("run folder %s", run_dir)
    if cfg.mode == "vis":
        _plots(cfg, run_dir)
    elif cfg.mode == "eval":
        from dcem.experiments.cartpole.run import summarize

        for d in [run_dir, *sorted(p for p in run_dir.iterdir() if p.is_dir())]:
            if (d / "checkpoint.pt").exists():
                log.info("%s: %s", d.name, json.dumps(summarize(cfg, d)))
    elif cfg.mode == "train":
        from dcem.experiments.cartpole.run import train

        summary = train(cfg, run_dir)
        if cfg.plots and is_main():  # under torchrun rank 0 plots
            summary.update(_plots(cfg, run_dir))
        log.info("summary: %s", json.dumps(summary))
    else:
        _ablation(cfg, run_dir)


def main(argv: list[str]) -> None:
    """Entry point of ``dcem-exp cartpole``; see the module docstring (``--help`` lists every key)."""
    run_main(EXPERIMENT, argv, LEGACY)
