"""``dcem-exp mbrl``: model-based RL with full CEM / latent DCEM / PPO (sect. 5.2.2, App. D).

Examples::

    dcem-exp mbrl env=cartpole-swingup scale=smoke                 # whole pipeline, ~20 min CPU
    dcem-exp mbrl env=cheetah-run scale=cpu phase=model out_dir=runs/cheetah
    dcem-exp mbrl env=cheetah-run scale=cpu phase=decoder out_dir=runs/cheetah
    dcem-exp mbrl env=cheetah-run scale=cpu phase=ppo out_dir=runs/cheetah
    dcem-exp mbrl env=cheetah-run scale=cpu phase=eval out_dir=runs/cheetah eval.video=true
    dcem-exp mbrl env=cheetah-run scale=paper device=cuda           # the paper's sizes

Every phase checkpoints ``out_dir/checkpoint.pt`` atomically after each episode / PPO iteration
and resumes from it (``resume=false`` starts over).
"""

from __future__ import annotations

import logging
import os
from datetime import datetime
from pathlib import Path

__all__ = ["compose", "main", "run"]

CONF_DIR = Path(__file__).parent / "conf"
log = logging.getLogger("dcem.experiments.mbrl")


def compose(argv: list[str]) -> dict:
    """Resolve the Hydra config with ``argv`` overrides into a plain dict (clear errors for bad names)."""
    from omegaconf import OmegaConf

    from dcem.experiments._config import compose_config

    return OmegaConf.to_container(compose_config(CONF_DIR, argv), resolve=True)


def run(cfg: dict):
    """Run ``cfg['phase']`` (or all phases) and return the trainer."""
    import torch
    from tqdm.auto import tqdm

    from dcem.rl.trainer import MBRLTrainer, validate_config

    validate_config(cfg)
    if cfg["eval"]["video"]:
        os.environ.setdefault("MUJOCO_GL", "egl")
    if cfg.get("threads"):  # 1 is much faster than 2 on a shared 2-core machine
        torch.set_num_threads(int(cfg["threads"]))
    out = cfg.get("out_dir") or os.path.join("runs", "mbrl", datetime.now().strftime("%Y%m%d-%H%M%S"))
    trainer = MBRLTrainer(cfg, out)
    if cfg["log"]["tensorboard"]:
        from torch.utils.tensorboard import SummaryWriter

        trainer.tb = SummaryWriter(str(Path(out) / "tb"))
    if cfg["resume"] and trainer.ckpt_path.exists():
        trainer.load()
        log.info("resumed from %s: %s", trainer.ckpt_path, trainer.progress)
    elif cfg["phase"] in ("decoder", "ppo"):
        raise ValueError(f"phase={cfg['phase']} needs the checkpoint of phase=model in out_dir={out!r}, "
                         "which does not exist")
    log.info("run folder %s, device %s", out, trainer.device)
    phases = ["model", "decoder", "ppo", "eval"] if cfg["phase"] == "all" else [cfg["phase"]]
    after = {"model": ["random", "full_cem"], "decoder": ["latent_dcem"], "ppo": ["latent_dcem_ppo"]}
    for ph in phases:
        if ph == "eval":  # in phase=all every controller has been evaluated right after its phase
            trainer.phase_eval(skip_done=cfg["phase"] == "all")
        else:
            getattr(trainer, f"phase_{ph}")(pbar_factory=tqdm)
            if cfg["phase"] == "all":  # evaluate each controller as soon as it is final
                trainer.phase_eval(after[ph], skip_done=True)
        trainer.plot()
    if trainer.tb is not None:
        trainer.tb.close()
    return trainer


def main(argv: list[str]) -> None:
    if any(a in ("-h", "--help") for a in argv):
        import sys

        from omegaconf import OmegaConf

        cfg = compose([a for a in argv if a not in ("-h", "--help")])
        sys.stdout.write((__doc__ or "") + "\nResolved config:\n" + OmegaConf.to_yaml(cfg))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = compose(argv)
    trainer = run(cfg)
    log.info("done: %s", trainer.out)
