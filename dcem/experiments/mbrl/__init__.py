"""``dcem-exp mbrl``: model-based RL with full CEM / latent DCEM / PPO (sect. 5.2.2, App. D).

Examples::

    dcem-exp mbrl scale=test                                        # whole pipeline, seconds
    dcem-exp mbrl env=cartpole-swingup scale=smoke                 # whole pipeline, 7.6 min measured
                                                                   # on an idle 2-core CPU
    dcem-exp mbrl env=cheetah-run scale=cpu phase=model out_dir=runs/cheetah
    dcem-exp mbrl env=cheetah-run scale=cpu phase=decoder out_dir=runs/cheetah
    dcem-exp mbrl env=cheetah-run scale=cpu phase=ppo out_dir=runs/cheetah
    dcem-exp mbrl env=cheetah-run scale=cpu phase=eval out_dir=runs/cheetah eval.video=true
    dcem-exp mbrl env=cheetah-run scale=paper device=cuda           # the paper's sizes (needs a GPU)
    dcem-exp mbrl env=gym:HalfCheetah-v5 scale=test                 # a Gymnasium MuJoCo task (extra gym)
    dcem-exp mbrl env=cheetah-run scale=fig4 seed=1 out_dir=runs/mbrl/fig4/cheetah-run/seed1  # issue 17
    dcem-exp mbrl env=cheetah-run scale=fig4 decoder.freeze_model=true train.schedule=interleaved ...
    dcem-exp mbrl phase=report report.root=runs/mbrl/fig4 report.page=docs/results/mbrl.md

Every phase checkpoints ``out_dir/checkpoint.pt`` atomically after each episode / PPO iteration
and resumes from it when the configuration is the same (``resume=false`` moves the old run
aside and starts over). Phases, ``eval.*`` and ``device`` may differ between calls on one run.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from dcem.experiments.common.config import Experiment, load
from dcem.experiments.mbrl.schema import MBRLConfig, expand_env

__all__ = ["EXPERIMENT", "compose", "main", "run"]

CONF_DIR = Path(__file__).parent / "conf"
log = logging.getLogger("dcem.experiments.mbrl")
#: keys added after run folders existed, with the value an older run used (see common.rundir.open_run)
LEGACY = {"train.collect_workers": 1, "train.schedule": "block", "train.update_interval": 10,
          "decoder.init": "default", "decoder.states": "last", "decoder.freeze_model": False,
          "decoder.action_prior": 0.0, "eval.replan_every": 1,
          "decoder.val_replan_every": [1]}
EXPERIMENT = Experiment(
    "mbrl", CONF_DIR, MBRLConfig, __doc__ or "",
    free_keys=("out_dir", "progress", "num_threads", "resume", "phase", "device", "log.tensorboard",
               "eval.episodes", "eval.video", "eval.controllers", "eval.replan_every", "report.root",
               "report.page", "decoder.val_every", "decoder.val_episodes", "decoder.val_replan_every"),
)  # fmt: skip


def compose(argv: list[str]) -> dict:
    """The typed, validated config for ``argv`` as a plain dict (:class:`ConfigError` for bad keys)."""
    from omegaconf import OmegaConf

    cfg = load(EXPERIMENT, expand_env(argv))
    if cfg is None:
        raise ValueError("compose does not take --help")
    return OmegaConf.to_container(cfg, resolve=True)


def run(cfg: dict):
    """Run ``cfg['phase']`` (or all phases) and return the trainer (``phase=report``: the page's path)."""
    from omegaconf import OmegaConf
    from tqdm.auto import tqdm

    from dcem.experiments.common import distributed
    from dcem.experiments.common.distributed import launch_info
    from dcem.experiments.common.runs import RunError, open_run, require_scipy, set_threads
    from dcem.experiments.mbrl.trainer import MBRLTrainer, seed_everything, validate_config

    validate_config(cfg)
    require_scipy("dcem-exp mbrl")
    if cfg["phase"] == "report":
        from dcem.experiments.mbrl.report import report

        return report(cfg)
    has_ckpt = bool(cfg.get("out_dir")) and (Path(cfg["out_dir"]) / "checkpoint.pt").exists()
    if cfg["phase"] in ("decoder", "ppo") and not (cfg["resume"] and has_ckpt):
        raise RunError(f"phase={cfg['phase']} needs the checkpoint of phase=model in out_dir="
                       f"{cfg.get('out_dir')!r}, which does not exist")  # fmt: skip
    set_threads(cfg["num_threads"])
    launch = launch_info({f"{k}.batch_size": cfg[k]["batch_size"] for k in ("model", "decoder")})
    out = open_run("mbrl", OmegaConf.create(cfg), EXPERIMENT.free_keys, resume=bool(cfg["resume"]),
                   launch=launch, legacy=LEGACY)  # fmt: skip
    seed_everything(int(cfg["seed"]))
    trainer = MBRLTrainer(cfg, out)
    if cfg["log"]["tensorboard"] and distributed.is_main():  # under torchrun rank 0 writes
        from torch.utils.tensorboard import SummaryWriter

        trainer.tb = SummaryWriter(str(Path(out) / "tb"))
    if cfg["resume"] and trainer.ckpt_path.exists():
        trainer.load()
        log.info("resumed from %s: %s", trainer.ckpt_path, trainer.progress)
    log.info("run folder %s, device %s", out, trainer.device)
    phases = ["model", "decoder", "ppo", "eval"] if cfg["phase"] == "all" else [cfg["phase"]]
    try:
        for ph in phases:  # eval: every controller on its snapshot, all on the same test episodes
            if ph == "eval":
                trainer.phase_eval()
            elif ph == "probe":
                from dcem.experiments.mbrl.probe import phase_probe

                phase_probe(trainer)
            else:
                getattr(trainer, f"phase_{ph}")(pbar_factory=tqdm if cfg["progress"] else None)
            trainer.plot()
    finally:
        trainer.close_pool()
    if trainer.tb is not None:
        trainer.tb.close()
    return trainer


def main(argv: list[str]) -> None:
    """Entry point of ``dcem-exp mbrl`` (``--help`` lists every key)."""
    from dcem.experiments.common.runs import setup_logging

    cfg = load(EXPERIMENT, expand_env(argv))
    if cfg is None:
        return
    # rendering is needed only for eval.video; otherwise keep dm_control from probing GLFW/EGL
    os.environ.setdefault("MUJOCO_GL", "egl" if cfg.eval.video else "disable")
    setup_logging()
    from omegaconf import OmegaConf

    result = run(OmegaConf.to_container(cfg, resolve=True))
    log.info("done: %s", result if isinstance(result, Path) else result.out)
