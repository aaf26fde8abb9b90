"""The model-based RL pipeline of sect. 5.2.2 / App. D, phase by phase, resumable.

Phases (each one resumable from the run folder's ``checkpoint.pt``):

1. ``model``: PlaNet-style online training of the world model with the full-CEM planner:
   ``seed_episodes`` random episodes, then alternately ``updates_per_episode`` model updates
   on batches of sequences and one episode with exploration noise.
2. ``decoder``: the action decoder is learned online through DCEM (loss of
   :meth:`~dcem.rl.planners.LatentDCEMPlanner.decoder_loss` on states from the replay buffer)
   while the model keeps training on the episodes the latent-DCEM controller collects.
3. ``ppo``: PPO fine-tuning of the chosen controller parts (:mod:`dcem.rl.ppo`).
4. ``eval``: ``N`` test episodes each of the random policy, full CEM, latent DCEM (and
   latent DCEM after PPO), mean and 95% confidence interval.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dcem.control import ActionDecoder
from dcem.rl.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from dcem.rl.envs import ENVS, DMCEnv, check_env_name
from dcem.rl.planners import FullCEMPlanner, LatentDCEMPlanner, check_planner_sizes
from dcem.rl.replay import SequenceReplay
from dcem.rl.world_model import WorldModel

__all__ = ["PHASES", "MBRLTrainer", "mean_ci95", "validate_config"]

log = logging.getLogger(__name__)

PHASES = ("model", "decoder", "ppo", "eval")

# two-sided 97.5% quantiles of Student's t for 1..30 degrees of freedom
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042]


def mean_ci95(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the Student-t 95% confidence interval (0 for one value)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("mean_ci95 needs at least one value")
    if v.size == 1:
        return float(v[0]), 0.0
    df = v.size - 1
    t = _T975[df - 1] if df <= len(_T975) else 1.96
    return float(v.mean()), float(t * v.std(ddof=1) / math.sqrt(v.size))


def _pos_int(cfg: dict, path: str, low: int = 1) -> None:
    node: Any = cfg
    for k in path.split("."):
        node = node[k]
    if isinstance(node, bool) or not isinstance(node, int) or node < low:
        raise ValueError(f"config {path} must be an integer >= {low}, got {node!r}")


def validate_config(cfg: dict) -> None:
    """Check names and sizes before any long work; ``ValueError`` naming the offending key."""
    check_env_name(cfg["env"]["name"])
    for p in ("model.deter_size", "model.hidden_size", "model.batch_size", "model.seq_len",
              "model.overshooting", "planner.horizon", "train.updates_per_episode", "eval.episodes",
              "decoder.batch_size", "decoder.n_latent", "decoder.context", "train.replay_capacity",
              "ppo.steps_per_iter", "ppo.epochs", "ppo.minibatch", "env.episode_steps",
              "eval.episodes_during_training"):
        _pos_int(cfg, p)
    for p in ("train.seed_episodes", "train.episodes", "decoder.episodes", "decoder.updates_per_episode",
              "decoder.model_updates_per_episode", "ppo.iterations", "eval.every"):
        _pos_int(cfg, p, 0)
    if cfg["train"]["seed_episodes"] < 1:
        raise ValueError("config train.seed_episodes must be >= 1 (the model needs data)")
    H = cfg["planner"]["horizon"]
    for name in ("cem", "dcem"):
        c = cfg["planner"][name]
        try:
            check_planner_sizes(H, c["n_sample"], c["n_elite"], c["n_iter"])
        except ValueError as err:
            raise ValueError(f"config planner.{name}: {err}") from err
    env = cfg["env"]
    ar = env.get("action_repeat") or ENVS[env["name"]]
    ep_len = env["episode_steps"] // ar
    if cfg["model"]["seq_len"] > ep_len:
        raise ValueError(f"config model.seq_len = {cfg['model']['seq_len']} exceeds the episode length "
                         f"{ep_len} (episode_steps / action_repeat)")
    if not cfg["planner"]["dcem"]["temp"] > 0:
        raise ValueError("config planner.dcem.temp must be > 0")
    from dcem.rl.ppo import PPO_PARTS

    parts = list(cfg["ppo"]["parts"])
    if not parts or any(p not in PPO_PARTS for p in parts):
        raise ValueError(f"config ppo.parts must be a non-empty subset of {list(PPO_PARTS)}, got {parts}")
    if cfg["phase"] not in (*PHASES, "all"):
        raise ValueError(f"phase must be one of {[*PHASES, 'all']}, got {cfg['phase']!r}")


class MBRLTrainer:
    """State and loops of one run; see the module docstring for the phases.

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
        self.device = torch.device("cuda" if dev == "auto" and torch.cuda.is_available() else
                                   ("cpu" if dev == "auto" else dev))
        seed = int(cfg["seed"])
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        e = cfg["env"]
        self.env = DMCEnv(e["name"], e.get("action_repeat"), seed=seed, episode_steps=e["episode_steps"])
        self.rng = np.random.default_rng(seed)
        self.gen = torch.Generator(device=self.device).manual_seed(seed)
        m = cfg["model"]
        self.model = WorldModel(self.env.obs_dim, self.env.act_dim, m["deter_size"], m["hidden_size"]).to(
            self.device)
        self.model_opt = torch.optim.Adam(self.model.parameters(), lr=m["lr"], eps=m["adam_eps"])
        p = cfg["planner"]
        lo = torch.as_tensor(self.env.u_lower, device=self.device)
        hi = torch.as_tensor(self.env.u_upper, device=self.device)
        self.cem = FullCEMPlanner(self.model, p["horizon"], p["cem"]["n_sample"], p["cem"]["n_elite"],
                                  p["cem"]["n_iter"], lo, hi)
        d = cfg["decoder"]
        self.decoder = ActionDecoder(d["n_latent"], p["horizon"], self.env.act_dim, lo.cpu(), hi.cpu(),
                                     hidden_sizes=tuple(d["hidden_sizes"])).to(self.device)
        self.dec_opt = torch.optim.Adam(self.decoder.parameters(), lr=d["lr"])
        pd = p["dcem"]
        self.latent = LatentDCEMPlanner(self.model, self.decoder, pd["n_sample"], pd["n_elite"], pd["n_iter"],
                                        pd["temp"], pd.get("latent_bound"))
        self.replay = SequenceReplay(self.env.obs_dim, self.env.act_dim, self.env.episode_len,
                                     cfg["train"]["replay_capacity"])
        self._ppo = None
        self.progress = {"model": 0, "decoder": 0, "ppo": 0, "env_steps": 0, "model_updates": 0,
                         "obs_stats_set": False}
        self.history: list[dict] = []  # one row per episode / PPO iteration
        self.eval_history: list[dict] = []
        self.ckpt_path = self.out / "checkpoint.pt"
        #: optional ``torch.utils.tensorboard.SummaryWriter`` receiving every logged row
        self.tb = None

    # -- PPO (built lazily: needs torchrl) --------------------------------------------------------
    @property
    def ppo(self):
        if self._ppo is None:
            from dcem.rl.ppo import PPOFineTuner

            c = self.cfg["ppo"]
            self._ppo = PPOFineTuner(
                self.latent, parts=c["parts"], sigma=c["sigma"], learn_sigma=c["learn_sigma"], lr=c["lr"],
                clip_epsilon=c["clip_epsilon"], gamma=c["gamma"], lmbda=c["lmbda"],
                entropy_coeff=c["entropy_coeff"], epochs=c["epochs"], minibatch=c["minibatch"],
                critic_hidden=self.cfg["model"]["hidden_size"],
            )
        return self._ppo

    # -- checkpoints ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        sd = {
            "config_sizes": self._sizes(), "model": self.model.state_dict(),
            "model_opt": self.model_opt.state_dict(),
            "decoder": self.decoder.state_dict(), "dec_opt": self.dec_opt.state_dict(),
            "replay": self.replay.state_dict(), "progress": dict(self.progress), "history": self.history,
            "eval_history": self.eval_history,
            "rng": {"numpy": self.rng.bit_generator.state, "torch_gen": self.gen.get_state(),
                    "torch": torch.get_rng_state(), "np_global": np.random.get_state(),
                    "python": random.getstate(), "env": self.env.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        }
        if self._ppo is not None:
            sd["ppo"] = self._ppo.state_dict()
        return sd

    def _sizes(self) -> dict:
        c = self.cfg
        return {"env": c["env"]["name"], "obs_dim": self.env.obs_dim, "act_dim": self.env.act_dim,
                "episode_len": self.env.episode_len, "deter_size": c["model"]["deter_size"],
                "hidden_size": c["model"]["hidden_size"], "horizon": c["planner"]["horizon"],
                "n_latent": c["decoder"]["n_latent"], "decoder_hidden": list(c["decoder"]["hidden_sizes"])}

    def save(self) -> None:
        save_checkpoint(self.ckpt_path, self.state_dict())

    def load(self, path: str | Path | None = None) -> None:
        """Restore everything from a checkpoint; :class:`CheckpointError` if it does not fit this config."""
        path = Path(path) if path is not None else self.ckpt_path
        # RNG states must stay CPU tensors; load_state_dict moves parameters/optimiser state
        sd = load_checkpoint(path, map_location="cpu")
        if sd.get("config_sizes") != self._sizes():
            raise CheckpointError(
                f"checkpoint {str(path)!r} was written for {sd.get('config_sizes')}, "
                f"incompatible with this config {self._sizes()}"
            )
        try:
            self.model.load_state_dict(sd["model"])
            self.model_opt.load_state_dict(sd["model_opt"])
            self.decoder.load_state_dict(sd["decoder"])
            self.dec_opt.load_state_dict(sd["dec_opt"])
            self.replay.load_state_dict(sd["replay"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise CheckpointError(f"checkpoint {str(path)!r} is incompatible: {err}") from err
        self.progress = dict(sd["progress"])
        self.history = list(sd["history"])
        self.eval_history = list(sd.get("eval_history", []))
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

    # -- acting ----------------------------------------------------------------------------------
    def run_episode(
        self, env: DMCEnv, policy: str, noise: float = 0.0, rng: np.random.Generator | None = None,
        gen: torch.Generator | None = None, frames: list | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One episode with ``policy`` in ``{"random", "cem", "dcem"}``; returns obs, actions, rewards."""
        rng = self.rng if rng is None else rng
        gen = self.gen if gen is None else gen
        planner = {"cem": self.cem, "dcem": self.latent}.get(policy)
        if policy != "random" and planner is None:
            raise ValueError(f"policy must be 'random', 'cem' or 'dcem', got {policy!r}")
        T, A = env.episode_len, env.act_dim
        obs = np.zeros((T + 1, env.obs_dim), np.float32)
        act = np.zeros((T, A), np.float32)
        rew = np.zeros(T, np.float32)
        obs[0] = env.reset()
        h = self.model.initial_state((1,), device=self.device)
        for t in range(T):
            if policy == "random":
                a = rng.uniform(env.u_lower, env.u_upper).astype(np.float32)
            else:
                x = torch.as_tensor(obs[t], device=self.device).unsqueeze(0)
                u = planner.plan(h, x, generator=gen)[0, 0]
                a = u.cpu().numpy()
                if noise > 0:
                    a = a + noise * rng.standard_normal(A).astype(np.float32)
                a = np.clip(a, env.u_lower, env.u_upper)
            if frames is not None:
                frames.append(env.render())
            o, r, _ = env.step(a)
            obs[t + 1], act[t], rew[t] = o, a, r
            if policy != "random":
                with torch.no_grad():
                    xn = self.model.normalize(x)
                    h = self.model.transition(h, xn, torch.as_tensor(a, device=self.device).unsqueeze(0))
        return obs, act, rew

    # -- learning steps --------------------------------------------------------------------------
    def model_update(self) -> dict[str, float]:
        m = self.cfg["model"]
        o, a, r = self.replay.sample(m["batch_size"], m["seq_len"], self.rng, self.device)
        loss, stats = self.model.loss(o, a, r, m["overshooting"], m["overshooting_scale"], m["reward_scale"])
        self.model_opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), m["grad_clip"])
        self.model_opt.step()
        self.progress["model_updates"] += 1
        return {k: float(v) for k, v in stats.items()}

    def sample_states(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` filtered states ``h (n, D)`` and raw observations ``x (n, O)`` from the replay buffer."""
        L = min(self.cfg["decoder"]["context"], self.env.episode_len)
        o, a, _ = self.replay.sample(n, L, self.rng, self.device)
        with torch.no_grad():
            h = self.model.filter(o, a)
        return h[:, -1], o[:, -1]

    def decoder_update(self) -> float:
        h, x = self.sample_states(self.cfg["decoder"]["batch_size"])
        for p in self.model.parameters():
            p.requires_grad_(False)
        try:
            loss = self.latent.decoder_loss(h, x, generator=self.gen)
            self.dec_opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.decoder.parameters(), self.cfg["decoder"]["grad_clip"])
            self.dec_opt.step()
        finally:
            for p in self.model.parameters():
                p.requires_grad_(True)
        return float(loss.detach())

    def _set_obs_stats(self) -> None:
        if not self.progress["obs_stats_set"]:
            mean, std = self.replay.obs_stats()
            self.model.set_obs_stats(torch.as_tensor(mean), torch.as_tensor(std))
            self.progress["obs_stats_set"] = True

    def _record(self, row: dict) -> None:
        self.history.append(row)
        new = not (self.out / "train.csv").exists()
        keys = ["phase", "episode", "env_steps", "return", "model_loss", "obs_mse", "reward_mse",
                "decoder_loss", "ppo_loss_objective", "ppo_loss_critic", "ppo_clip_fraction"]
        with open(self.out / "train.csv", "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k not in ("episode", "env_steps"):
                    self.tb.add_scalar(f"{row['phase']}/{k}", v, row["env_steps"])

    # -- phases ----------------------------------------------------------------------------------
    def phase_model(self, pbar_factory=None) -> None:
        c = self.cfg["train"]
        total = c["seed_episodes"] + c["episodes"]
        bar = None
        if pbar_factory:
            bar = pbar_factory(total=total, initial=self.progress["model"], desc="phase 1: model")
        while self.progress["model"] < total:
            i = self.progress["model"]
            stats: dict[str, float] = {}
            if i < c["seed_episodes"]:
                obs, act, rew = self.run_episode(self.env, "random")
            else:
                self._set_obs_stats()
                ups = [self.model_update() for _ in range(c["updates_per_episode"])]
                stats = {k: float(np.mean([u[k] for u in ups])) for k in ups[0]}
                obs, act, rew = self.run_episode(self.env, "cem", noise=c["expl_noise"])
            self.replay.add(obs, act, rew)
            self.progress["model"] += 1
            self.progress["env_steps"] += self.env.episode_len * self.env.action_repeat
            self._record({"phase": "model", "episode": i, "env_steps": self.progress["env_steps"],
                          "return": float(rew.sum()), "model_loss": stats.get("loss", float("nan")),
                          "obs_mse": stats.get("obs_mse", float("nan")),
                          "reward_mse": stats.get("reward_mse", float("nan"))})
            self._maybe_eval("model", "cem", i + 1 == total)
            self.save()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(ret=f"{rew.sum():.1f}", loss=f"{stats.get('loss', float('nan')):.3f}")
        if bar is not None:
            bar.close()

    def _require_model(self, phase: str) -> None:
        c = self.cfg["train"]
        if self.progress["model"] < c["seed_episodes"] + c["episodes"]:
            raise ValueError(
                f"phase {phase!r} needs the world model of phase 'model' "
                f"({self.progress['model']}/{c['seed_episodes'] + c['episodes']} episodes done): "
                "run phase=model first in this out_dir (or phase=all)"
            )

    def phase_decoder(self, pbar_factory=None) -> None:
        self._require_model("decoder")
        self._set_obs_stats()
        c = self.cfg["decoder"]
        bar = pbar_factory(total=c["episodes"], initial=self.progress["decoder"], desc="phase 2: decoder") \
            if pbar_factory else None
        while self.progress["decoder"] < c["episodes"]:
            i = self.progress["decoder"]
            ups = [self.model_update() for _ in range(c["model_updates_per_episode"])]
            dl = [self.decoder_update() for _ in range(c["updates_per_episode"])]
            obs, act, rew = self.run_episode(self.env, "dcem", noise=self.cfg["train"]["expl_noise"])
            self.replay.add(obs, act, rew)
            self.progress["decoder"] += 1
            self.progress["env_steps"] += self.env.episode_len * self.env.action_repeat
            self._record({"phase": "decoder", "episode": i, "env_steps": self.progress["env_steps"],
                          "return": float(rew.sum()),
                          "model_loss": float(np.mean([u["loss"] for u in ups])) if ups else float("nan"),
                          "decoder_loss": float(np.mean(dl)) if dl else float("nan")})
            self._maybe_eval("decoder", "dcem", i + 1 == c["episodes"])
            self.save()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(ret=f"{rew.sum():.1f}", dec=f"{np.mean(dl) if dl else float('nan'):.2f}")
        if bar is not None:
            bar.close()

    def collect_ppo_batch(self, n_steps: int):
        """Whole episodes of the stochastic DCEM policy, at least ``n_steps`` transitions.

        Returns a TensorDict ``[T]`` (``T`` a multiple of the episode length) with ``h, x, action``
        and ``("next", h/x/reward/done/terminated)``, and the episode returns. Collecting whole
        episodes keeps PPO iterations aligned with checkpoints, so a resumed run is exact.
        """
        from tensordict import TensorDict

        env, dev = self.env, self.device
        ppo = self.ppo
        hs, xs, acts, nh, nx, rews, dones = [], [], [], [], [], [], []
        ep_returns: list[float] = []
        n_episodes = max(1, math.ceil(n_steps / env.episode_len))
        for _ in range(n_episodes):
            o_np = env.reset()
            h = self.model.initial_state((1,), device=dev)
            ret, done = 0.0, False
            while not done:
                x = torch.as_tensor(o_np, device=dev).unsqueeze(0)
                a, _, _, _ = ppo.act(h, x, int(self.rng.integers(0, 2**31 - 1)))
                a_env = np.clip(a[0].cpu().numpy(), env.u_lower, env.u_upper)
                o_np, r, done = env.step(a_env)
                with torch.no_grad():
                    u = torch.as_tensor(a_env, device=dev)[None]
                    h2 = self.model.transition(h, self.model.normalize(x), u)
                hs.append(h[0]), xs.append(x[0]), acts.append(a[0])
                nx.append(torch.as_tensor(o_np, device=dev)), nh.append(h2[0])
                rews.append(r), dones.append(done)
                ret += r
                h = h2
            self.progress["env_steps"] += env.episode_len * env.action_repeat
            ep_returns.append(ret)
        T = len(rews)
        done_t = torch.tensor(dones, device=dev).unsqueeze(-1)
        td = TensorDict({
            "h": torch.stack(hs), "x": torch.stack(xs), "action": torch.stack(acts),
            "next": TensorDict({"h": torch.stack(nh), "x": torch.stack(nx),
                                "reward": torch.tensor(rews, device=dev, dtype=torch.float32).unsqueeze(-1),
                                "done": done_t, "terminated": torch.zeros_like(done_t)}, [T]),
        }, [T], device=dev)
        return td, ep_returns

    def phase_ppo(self, pbar_factory=None) -> None:
        self._require_model("ppo")
        self._set_obs_stats()
        c = self.cfg["ppo"]
        bar = pbar_factory(total=c["iterations"], initial=self.progress["ppo"], desc="phase 3: ppo") \
            if pbar_factory else None
        while self.progress["ppo"] < c["iterations"]:
            i = self.progress["ppo"]
            td, rets = self.collect_ppo_batch(c["steps_per_iter"])
            stats = self.ppo.update(td, seed=int(self.rng.integers(0, 2**31 - 1)))
            self.progress["ppo"] += 1
            self._record({"phase": "ppo", "episode": i, "env_steps": self.progress["env_steps"],
                          "return": float(np.mean(rets)) if rets else float("nan"),
                          **{f"ppo_{k}": v for k, v in stats.items()}})
            self._maybe_eval("ppo", "dcem", i + 1 == c["iterations"])
            self.save()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(obj=f"{stats.get('loss_objective', float('nan')):.3f}")
        if bar is not None:
            bar.close()

    # -- evaluation ------------------------------------------------------------------------------
    def evaluate(self, policy: str, n_episodes: int, seed_offset: int = 10_000,
                 video_path: str | Path | None = None) -> list[float]:
        """Returns of ``n_episodes`` noise-free test episodes.

        They use their own env seed and generators, so the training RNG streams are untouched.
        """
        e = self.cfg["env"]
        env = DMCEnv(e["name"], e.get("action_repeat"), seed=int(self.cfg["seed"]) + seed_offset,
                     episode_steps=e["episode_steps"])
        rng = np.random.default_rng(int(self.cfg["seed"]) + seed_offset)
        gen = torch.Generator(device=self.device).manual_seed(int(self.cfg["seed"]) + seed_offset)
        returns = []
        for k in range(n_episodes):
            frames: list | None = [] if (video_path is not None and k == 0) else None
            _, _, rew = self.run_episode(env, policy, noise=0.0, rng=rng, gen=gen, frames=frames)
            returns.append(float(rew.sum()))
            if frames:
                _write_gif(frames, Path(video_path))
        return returns

    def _maybe_eval(self, phase: str, policy: str, last: bool) -> None:
        every = self.cfg["eval"]["every"]
        n = self.progress[phase]
        if phase == "model" and n <= self.cfg["train"]["seed_episodes"]:
            return  # the model has not been trained yet
        if every and (n % every == 0 or last):
            rets = self.evaluate(policy, self.cfg["eval"]["episodes_during_training"])
            mean, ci = mean_ci95(rets)
            row = {"phase": phase, "policy": policy, "step": n, "env_steps": self.progress["env_steps"],
                   "mean": mean, "ci95": ci, "n": len(rets)}
            self.eval_history.append(row)
            log.info("eval %s/%s after %d: %.1f +- %.1f", phase, policy, n, mean, ci)
            new = not (self.out / "eval_curve.csv").exists()
            with open(self.out / "eval_curve.csv", "a", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(row))
                if new:
                    w.writeheader()
                w.writerow(row)

    def available_controllers(self) -> list[str]:
        """Names of the controllers this run can evaluate now (see :meth:`phase_eval`)."""
        names = ["random"]
        if self.progress["model"] > self.cfg["train"]["seed_episodes"]:
            names.append("full_cem")
        if self.progress["decoder"] > 0:
            names.append("latent_dcem_ppo" if self.progress["ppo"] > 0 else "latent_dcem")
        return names

    def phase_eval(self, controllers: list[str] | None = None, skip_done: bool = False) -> dict[str, dict]:
        """Final evaluation over ``eval.episodes`` test episodes, merged into ``eval.json``.

        Args:
            controllers: subset of ``random, full_cem, latent_dcem, latent_dcem_ppo``; default all
                that :meth:`available_controllers` lists.
            skip_done: leave out controllers already in ``eval.json`` (resume of ``phase=all``).
        """
        n = self.cfg["eval"]["episodes"]
        video = self.cfg["eval"]["video"]
        kinds = {"random": "random", "full_cem": "cem", "latent_dcem": "dcem", "latent_dcem_ppo": "dcem"}
        names = self.available_controllers() if controllers is None else list(controllers)
        bad = [c for c in names if c not in kinds]
        if bad:
            raise ValueError(f"controllers must be among {sorted(kinds)}, got {bad}")
        path = self.out / "eval.json"
        prev = json.loads(path.read_text()) if path.exists() else {}
        if skip_done:
            names = [c for c in names if c not in prev]
        if any(c != "random" for c in names):
            self._set_obs_stats()
        results = {}
        for name in names:
            vid = (self.out / f"video_{name}.gif") if video else None
            rets = self.evaluate(kinds[name], n, video_path=vid)
            mean, ci = mean_ci95(rets)
            results[name] = {"mean": mean, "ci95": ci, "n": n, "returns": rets,
                             "env_steps": self.progress["env_steps"]}
            log.info("final eval %s: %.1f +- %.1f over %d episodes", name, mean, ci, n)
        prev.update(results)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(prev, indent=2))
        tmp.replace(path)
        return results

    def plot(self) -> Path | None:
        """Learning curves (training returns and periodic evaluations) into ``curves.png``."""
        if not self.history:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for phase, color in (("model", "C0"), ("decoder", "C1"), ("ppo", "C2")):
            rows = [r for r in self.history if r["phase"] == phase and not math.isnan(r["return"])]
            if rows:
                ax.plot([r["env_steps"] for r in rows], [r["return"] for r in rows], ".", color=color,
                        alpha=0.5, label=f"train ({phase})")
            ev = [r for r in self.eval_history if r["phase"] == phase]
            if ev:
                xs = np.array([r["env_steps"] for r in ev])
                ys = np.array([r["mean"] for r in ev])
                cs = np.array([r["ci95"] for r in ev])
                ax.plot(xs, ys, "-o", color=color, label=f"eval ({phase})")
                ax.fill_between(xs, ys - cs, ys + cs, color=color, alpha=0.2)
        final = self.out / "eval.json"
        if final.exists():
            for k, (name, r) in enumerate(json.loads(final.read_text()).items()):
                if "env_steps" in r:
                    ax.errorbar([r["env_steps"]], [r["mean"]], yerr=[r["ci95"]], fmt="s", capsize=3,
                                color=f"C{3 + k}", label=f"final: {name} (n={r['n']})")
        ax.set_xlabel("environment steps")
        ax.set_ylabel("episode return")
        ax.set_title(self.cfg["env"]["name"])
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = self.out / "curves.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


def _write_gif(frames: list, path: Path) -> None:
    from PIL import Image

    imgs = [Image.fromarray(f) for f in frames]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.gif")
    imgs[0].save(tmp, save_all=True, append_images=imgs[1:], duration=40, loop=0)
    tmp.replace(path)
