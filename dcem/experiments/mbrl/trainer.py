"""The model-based RL pipeline of sect. 5.2.2 / App. D, phase by phase, resumable (``dcem-exp mbrl``).

Phases (each one resumable from the run folder's ``checkpoint.pt``):

1. ``model``: PlaNet-style online training of the world model with the full-CEM planner:
   ``seed_episodes`` random episodes, then alternately ``updates_per_episode`` model updates
   on batches of sequences and one episode with exploration noise.
2. ``decoder``: the action decoder is learned online through DCEM (loss of
   :meth:`~dcem.rl.planners.LatentDCEMPlanner.decoder_loss` on states from the replay buffer)
   while the model keeps training on the episodes the latent-DCEM controller collects.
3. ``ppo``: PPO fine-tuning of the chosen controller parts (:mod:`dcem.rl.ppo`).
4. ``eval``: the paired evaluation of :mod:`dcem.experiments.mbrl.paired`: every controller
   on a saved snapshot (after phase 1, 2 or 3), all on the same ``eval.episodes`` test episodes.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dcem.control import ActionDecoder
from dcem.experiments.common.distributed import Shard
from dcem.experiments.common.planner import planner_config
from dcem.experiments.common.runs import (
    CsvLog,
    describe_differences,
    incompatible,
    load_torch,
    mean_ci95,
    note_progress,
    save_torch,
)
from dcem.experiments.mbrl.collect import CollectMixin
from dcem.experiments.mbrl.evaluation import EvalMixin
from dcem.experiments.mbrl.learning import CURVE_FIELDS, LearnMixin
from dcem.experiments.mbrl.paired import PairedEvalMixin
from dcem.experiments.mbrl.phases import PhasesMixin
from dcem.experiments.mbrl.schema import PHASES
from dcem.rl.envs import DMCEnv, make_env
from dcem.rl.planners import FULL_DEFAULTS, LATENT_DEFAULTS, FullCEMPlanner, LatentDCEMPlanner
from dcem.rl.replay import SequenceReplay
from dcem.rl.world_model import WorldModel

__all__ = ["FORMAT", "PHASES", "MBRLTrainer", "mean_ci95", "seed_everything", "validate_config"]

log = logging.getLogger(__name__)

FORMAT = "dcem-mbrl-v1"

TRAIN_FIELDS = [
    "phase",
    "episode",
    "env_steps",
    "return",
    "model_loss",
    "obs_mse",
    "reward_mse",
    "decoder_loss",
    "ppo_loss_objective",
    "ppo_loss_critic",
    "ppo_clip_fraction",
    "ppo_skipped",
]
EVAL_FIELDS = ["phase", "policy", "step", "env_steps", "mean", "ci95", "n"]


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (the entry point's job, not the trainer's)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def validate_config(cfg: dict) -> None:
    """Check a plain config dict against the typed schema; :class:`ConfigError` naming the key."""
    from omegaconf import OmegaConf

    from dcem.experiments.common.config import _check_tree
    from dcem.experiments.mbrl.schema import MBRLConfig

    try:
        obj = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(MBRLConfig), cfg))
    except Exception as err:  # noqa: BLE001 - OmegaConf's type errors
        from dcem.experiments.common.config import ConfigError

        raise ConfigError(str(err).splitlines()[0]) from None
    _check_tree(obj)
    obj.validate()


class MBRLTrainer(PhasesMixin, LearnMixin, PairedEvalMixin, EvalMixin, CollectMixin):
    """State and loops of one run; see the module docstring for the phases.

    The global RNGs are not seeded here (see :func:`seed_everything`); the checkpoint saves and
    restores them so that a resumed run continues exactly.

    Args:
        cfg: plain nested dict (the Hydra config resolved to containers).
        out_dir: run folder (checkpoint, CSV logs, plots, eval results).
    """

    def __init__(self, cfg: dict, out_dir: str | Path) -> None:
        validate_config(cfg)
        self.cfg = cfg
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        dev = cfg.get("device", "auto")
        self.device = torch.device(
            "cuda" if dev == "auto" and torch.cuda.is_available() else ("cpu" if dev == "auto" else dev)
        )
        seed = int(cfg["seed"])
        e = cfg["env"]
        self.env = make_env(e["name"], e.get("action_repeat"), seed=seed, episode_steps=e["episode_steps"])
        self.rng = np.random.default_rng(seed)
        self.gen = torch.Generator(device=self.device).manual_seed(seed)
        m = cfg["model"]
        self.model = WorldModel(self.env.obs_dim, self.env.act_dim, m["deter_size"], m["hidden_size"]).to(
            self.device
        )
        self.model_opt = torch.optim.Adam(self.model.parameters(), lr=m["lr"], eps=m["adam_eps"])
        self._build_control(cfg)
        self.replay = SequenceReplay(
            self.env.obs_dim, self.env.act_dim, self.env.episode_len, cfg["train"]["replay_capacity"]
        )
        self._ppo = None
        # data parallel (torchrun): every process samples the global batch and keeps its rows
        self.shards = {k: Shard.of(f"{k}.batch_size", cfg[k]["batch_size"]) for k in ("model", "decoder")}
        self.progress = {
            "model": 0,
            "decoder": 0,
            "ppo": 0,
            "env_steps": 0,
            "model_updates": 0,
            "decoder_updates": 0,
            "obs_stats_set": False,
        }
        self.history: list[dict] = []  # one row per episode / PPO iteration
        self.eval_history: list[dict] = []
        self.decoder_curve: list[dict] = []  # rows of decoder_curve.csv (validation during phase 2)
        self.ckpt_path = self.out / "checkpoint.pt"
        self._cem_budget: FullCEMPlanner | None = None
        #: optional ``torch.utils.tensorboard.SummaryWriter`` receiving every logged row
        self.tb = None

    def _build_control(self, cfg: dict) -> None:
        """The full-CEM planner, the action decoder (its own seeded generator), its optimiser and
        the latent-DCEM planner, from the ``planner`` and ``decoder`` sections."""
        p, d = cfg["planner"], cfg["decoder"]
        lo = torch.as_tensor(self.env.u_lower, device=self.device)
        hi = torch.as_tensor(self.env.u_upper, device=self.device)
        self.cem = FullCEMPlanner(self.model, p["horizon"], planner_config(p["cem"], defaults=FULL_DEFAULTS),
                                  u_lower=lo, u_upper=hi)  # fmt: skip
        self.decoder = ActionDecoder(
            d["n_latent"],
            p["horizon"],
            self.env.act_dim,
            lo.cpu(),
            hi.cpu(),
            hidden_sizes=tuple(d["hidden_sizes"]),
            init=d.get("init", "default"),
            generator=torch.Generator().manual_seed(int(cfg["seed"])),
        ).to(self.device)
        self.dec_opt = torch.optim.Adam(self.decoder.parameters(), lr=d["lr"])
        pd = p["dcem"]
        latent = planner_config(pd, defaults=LATENT_DEFAULTS)
        self.latent = LatentDCEMPlanner(self.model, self.decoder, latent, latent_bound=pd.get("latent_bound"))

    FORMAT = FORMAT

    @property
    def cem_budget(self) -> FullCEMPlanner:
        """Full-space CEM with latent DCEM's sizes (same trajectories per planning step)."""
        if self._cem_budget is None:
            d = self.cfg["planner"]["dcem"]
            sizes = {k: d[k] for k in ("n_sample", "n_elite", "n_iter")}
            self._cem_budget = FullCEMPlanner(self.model, self.cfg["planner"]["horizon"],
                                              dataclasses.replace(self.cem.config, **sizes),
                                              u_lower=self.cem.u_lower, u_upper=self.cem.u_upper)  # fmt: skip
        return self._cem_budget

    # -- PPO (built lazily: needs torchrl) --------------------------------------------------------
    @property
    def ppo(self):
        if self._ppo is None:
            from dcem.rl.ppo import PPOFineTuner

            c = self.cfg["ppo"]
            self._ppo = PPOFineTuner(
                self.latent,
                parts=c["parts"],
                sigma=c["sigma"],
                learn_sigma=c["learn_sigma"],
                lr=c["lr"],
                clip_epsilon=c["clip_epsilon"],
                gamma=c["gamma"],
                lmbda=c["lmbda"],
                entropy_coeff=c["entropy_coeff"],
                epochs=c["epochs"],
                minibatch=c["minibatch"],
                critic_hidden=self.cfg["model"]["hidden_size"],
            )
        return self._ppo

    # -- checkpoints ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        sd = {
            "config_sizes": self._sizes(),
            "model": self.model.state_dict(),
            "model_opt": self.model_opt.state_dict(),
            "decoder": self.decoder.state_dict(),
            "dec_opt": self.dec_opt.state_dict(),
            "replay": self.replay.state_dict(),
            "progress": dict(self.progress),
            "history": self.history,
            "eval_history": self.eval_history,
            "decoder_curve": self.decoder_curve,
            "rng": {
                "numpy": self.rng.bit_generator.state,
                "torch_gen": self.gen.get_state(),
                "torch": torch.get_rng_state(),
                "np_global": np.random.get_state(),
                "python": random.getstate(),
                "env": self.env.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            },
        }
        if self._ppo is not None:
            sd["ppo"] = self._ppo.state_dict()
        return sd

    def _sizes(self) -> dict:
        c = self.cfg
        return {
            "env": c["env"]["name"],
            "obs_dim": self.env.obs_dim,
            "act_dim": self.env.act_dim,
            "episode_len": self.env.episode_len,
            "deter_size": c["model"]["deter_size"],
            "hidden_size": c["model"]["hidden_size"],
            "horizon": c["planner"]["horizon"],
            "n_latent": c["decoder"]["n_latent"],
            "decoder_hidden": list(c["decoder"]["hidden_sizes"]),
        }

    def save(self) -> None:
        save_torch({"format": FORMAT, **self.state_dict()}, self.ckpt_path)

    def load(self, path: str | Path | None = None) -> None:
        """Restore everything from a checkpoint; :class:`CheckpointError` if it does not fit this config."""
        path = Path(path) if path is not None else self.ckpt_path
        # RNG states must stay CPU tensors; load_state_dict moves parameters/optimiser state
        sd = load_torch(path, map_location="cpu", fmt=FORMAT)
        if sd.get("config_sizes") != self._sizes():
            raise incompatible(path, describe_differences(sd.get("config_sizes"), self._sizes()))
        try:
            self.model.load_state_dict(sd["model"])
            self.model_opt.load_state_dict(sd["model_opt"])
            self.decoder.load_state_dict(sd["decoder"])
            self.dec_opt.load_state_dict(sd["dec_opt"])
            self.replay.load_state_dict(sd["replay"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise incompatible(path, str(err).splitlines()[0][:120]) from None
        self.progress = dict(sd["progress"])
        self.history = list(sd["history"])
        self.eval_history = list(sd.get("eval_history", []))
        self.decoder_curve = list(sd.get("decoder_curve", []))
        r = sd["rng"]
        self.rng.bit_generator.state = r["numpy"]
        self.gen.set_state(r["torch_gen"])
        torch.set_rng_state(r["torch"])
        np.random.set_state(r["np_global"])
        random.setstate(r["python"])
        self.env.set_rng_state(r["env"])
        if r.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(r["cuda"])
        if "ppo" in sd:
            self.ppo.load_state_dict(sd["ppo"])
        # the logs are rewritten from the checkpoint: rows of an interrupted episode are dropped
        CsvLog(self.out / "train.csv", TRAIN_FIELDS).rewrite(self.history)
        CsvLog(self.out / "eval_curve.csv", EVAL_FIELDS).rewrite(self.eval_history)
        if self.decoder_curve:
            CsvLog(self.out / "decoder_curve.csv", CURVE_FIELDS).rewrite(self.decoder_curve)

    # -- acting ----------------------------------------------------------------------------------
    def run_episode(
        self,
        env: DMCEnv,
        policy: str,
        noise: float = 0.0,
        rng: np.random.Generator | None = None,
        gen: torch.Generator | None = None,
        frames: list | None = None,
        env_seed: int | None = None,
        on_step: Callable[[int], None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One episode with ``policy`` in ``{"random", "cem", "cem_budget", "dcem"}``.

        ``env_seed`` re-seeds the task first (:meth:`DMCEnv.reset`); ``on_step(t)`` is called before
        planning step ``t`` (the interleaved schedule's learning steps). Returns observations
        ``(T+1, O)``, actions ``(T, A)`` and rewards ``(T,)``.
        """
        rng = self.rng if rng is None else rng
        gen = self.gen if gen is None else gen
        planners = {
            "cem": lambda: self.cem,
            "cem_budget": lambda: self.cem_budget,
            "dcem": lambda: self.latent,
        }
        if policy != "random" and policy not in planners:
            raise ValueError(f"policy must be 'random', 'cem', 'cem_budget' or 'dcem', got {policy!r}")
        planner = planners[policy]() if policy != "random" else None
        T, A = env.episode_len, env.act_dim
        obs = np.zeros((T + 1, env.obs_dim), np.float32)
        act = np.zeros((T, A), np.float32)
        rew = np.zeros(T, np.float32)
        obs[0] = env.reset(env_seed)
        h = self.model.initial_state((1,), device=self.device)
        for t in range(T):
            if on_step is not None:
                on_step(t)
            if policy == "random":
                a = rng.uniform(env.u_lower, env.u_upper).astype(np.float32)
            else:
                a, h = self.policy_step(planner, h, obs[t][None], noise, rng, gen, env.u_lower, env.u_upper)
                a = a[0]
            if frames is not None:
                frames.append(env.render())
            o, r, _ = env.step(a)
            obs[t + 1], act[t], rew[t] = o, a, r
        return obs, act, rew

    def policy_step(
        self,
        planner: Any,
        h: torch.Tensor,
        obs: np.ndarray,
        noise: float,
        rng: np.random.Generator,
        gen: torch.Generator | None,
        u_lower: np.ndarray,
        u_upper: np.ndarray,
    ) -> tuple[np.ndarray, torch.Tensor]:
        """One planner-driven step for a batch of tasks: actions ``(B, A)`` (first planned action, plus
        Gaussian exploration ``noise`` from ``rng``, clipped into the bounds) for observations
        ``obs (B, O)`` and hidden states ``h (B, D)``, and the hidden states after the transition."""
        x = torch.tensor(obs, device=self.device)  # a copy: callers may reuse their observation buffer
        a = planner.plan(h, x, generator=gen)[:, 0].cpu().numpy()
        if noise > 0:
            a = a + noise * rng.standard_normal(a.shape).astype(np.float32)
        a = np.clip(a, u_lower, u_upper)
        with torch.no_grad():
            h = self.model.transition(h, self.model.normalize(x), torch.as_tensor(a, device=self.device))
        return a, h

    # -- bookkeeping -----------------------------------------------------------------------------
    def _set_obs_stats(self) -> None:
        if not self.progress["obs_stats_set"]:
            mean, std = self.replay.obs_stats()
            self.model.set_obs_stats(torch.as_tensor(mean), torch.as_tensor(std))
            self.progress["obs_stats_set"] = True

    def _record(self, row: dict) -> None:
        self.history.append(row)
        CsvLog(self.out / "train.csv", TRAIN_FIELDS).append([row])
        note_progress(int(row["episode"]), f"{row['phase']} episode")
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k not in ("episode", "env_steps"):
                    self.tb.add_scalar(f"{row['phase']}/{k}", v, row["env_steps"])
