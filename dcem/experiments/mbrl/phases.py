"""Phases 1-3 of the model-based RL pipeline (a mixin of ``MBRLTrainer``)."""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["PhasesMixin"]


class PhasesMixin:
    """``phase_model``, ``phase_decoder`` and ``phase_ppo`` (each resumable after every episode)."""

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
                eps = [self.seed_episode(i)]  # in worker processes if train.collect_workers > 1
            else:
                self._set_obs_stats()
                eps, ups = self.collect("cem", c["expl_noise"], i, total - i, lambda: [self.model_update()],
                                        c["updates_per_episode"])  # fmt: skip
                stats = {k: float(np.mean([u[k] for u in ups])) for k in ups[0]} if ups else {}
            for obs, act, rew in eps:
                self.replay.add(obs, act, rew)
                self.progress["model"] += 1
                self.progress["env_steps"] += self.env.episode_len * self.env.action_repeat
                self._record(
                    {
                        "phase": "model",
                        "episode": self.progress["model"] - 1,
                        "env_steps": self.progress["env_steps"],
                        "return": float(rew.sum()),
                        "model_loss": stats.get("loss", float("nan")),
                        "obs_mse": stats.get("obs_mse", float("nan")),
                        "reward_mse": stats.get("reward_mse", float("nan")),
                    }
                )
            self._maybe_eval("model", "cem", self.progress["model"] == total)
            self.save()
            if bar is not None:
                bar.update(len(eps))
                post = {"ret": f"{rew.sum():.1f}"}
                if "loss" in stats:  # no model update yet during the seed episodes
                    post["loss"] = f"{stats['loss']:.3f}"
                bar.set_postfix(post)
        if bar is not None:
            bar.close()
        self._snapshot("model")

    def _snapshot(self, name: str) -> None:
        """Copy the finished phase's checkpoint to its snapshot file (paired evaluation)."""
        import shutil

        from dcem.experiments.mbrl.paired import SNAPSHOT_FILES

        dst = self.out / SNAPSHOT_FILES[name]
        if not dst.exists():
            if not self.ckpt_path.exists():
                self.save()
            shutil.copyfile(self.ckpt_path, dst)

    def _phase2_updates(self) -> list[dict[str, float]]:
        """The phase-2 learning steps of one update slot (:meth:`LearnMixin.collect` calls it
        ``per_episode`` = 1 times per episode in the block schedule, once per interval otherwise):
        block: ``decoder.model_updates_per_episode`` model then ``decoder.updates_per_episode``
        decoder steps; interleaved: one model step (none with ``decoder.freeze_model``) then one
        decoder step. Returns one dict per step (``loss``... or ``decoder_loss``)."""
        c = self.cfg["decoder"]
        frozen = bool(c.get("freeze_model", False))
        if self.cfg["train"].get("schedule", "block") == "interleaved":
            n_model, n_dec = (0 if frozen else 1), 1
        else:
            n_model, n_dec = (0 if frozen else c["model_updates_per_episode"]), c["updates_per_episode"]
        out = [self.model_update() for _ in range(n_model)]
        return out + [{"decoder_loss": self.decoder_update()} for _ in range(n_dec)]

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
        bar = (
            pbar_factory(total=c["episodes"], initial=self.progress["decoder"], desc="phase 2: decoder")
            if pbar_factory
            else None
        )
        if c.get("val_every", 0) and self.progress["decoder"] == 0 and not self.decoder_curve:
            self.validate_decoder(0)  # the untrained decoder: the curve's first point
        while self.progress["decoder"] < c["episodes"]:
            i = self.progress["decoder"]
            eps, ups = self.collect("dcem", self.cfg["train"]["expl_noise"], i, c["episodes"] - i,
                                    self._phase2_updates, 1)  # fmt: skip
            for obs, act, rew in eps:
                self.replay.add(obs, act, rew)
                self.progress["decoder"] += 1
                self.progress["env_steps"] += self.env.episode_len * self.env.action_repeat
                ml = [u["loss"] for u in ups if "loss" in u]
                dl = [u["decoder_loss"] for u in ups if "decoder_loss" in u]
                self._record(
                    {
                        "phase": "decoder",
                        "episode": self.progress["decoder"] - 1,
                        "env_steps": self.progress["env_steps"],
                        "return": float(rew.sum()),
                        "model_loss": float(np.mean(ml)) if ml else float("nan"),
                        "decoder_loss": float(np.mean(dl)) if dl else float("nan"),
                    }
                )
            n = self.progress["decoder"]
            if c.get("val_every", 0) and (n % c["val_every"] == 0 or n == c["episodes"]):
                self.validate_decoder(n)
            self._maybe_eval("decoder", "dcem", n == c["episodes"])
            self.save()
            if bar is not None:
                bar.update(len(eps))
                bar.set_postfix(ret=f"{rew.sum():.1f}", dec=f"{np.mean(dl) if dl else float('nan'):.2f}")
        if bar is not None:
            bar.close()
        self._snapshot("decoder")

    def collect_ppo_batch(self, n_steps: int):
        """Whole episodes of the stochastic DCEM policy, at least ``n_steps`` transitions.

        Returns a TensorDict ``[T]`` (``T`` a multiple of the episode length) with ``h, x, action``,
        the DCEM ``noise_seed`` of each action, its behaviour log-probability (the PPO loss's
        ``sample_log_prob`` key) and ``("next", h/x/reward/done/terminated)``, and the episode
        returns. Collecting whole episodes keeps PPO iterations aligned with checkpoints, so a
        resumed run is exact.
        """
        from tensordict import TensorDict

        env, dev = self.env, self.device
        ppo = self.ppo
        hs, xs, acts, nh, nx, rews, dones, seeds, logps = [], [], [], [], [], [], [], [], []
        ep_returns: list[float] = []
        n_episodes = max(1, math.ceil(n_steps / env.episode_len))
        for _ in range(n_episodes):
            o_np = env.reset()
            h = self.model.initial_state((1,), device=dev)
            ret, done = 0.0, False
            while not done:
                x = torch.as_tensor(o_np, device=dev).unsqueeze(0)
                s = int(self.rng.integers(0, 2**31 - 1))
                a, logp, _, _ = ppo.act(h, x, s)
                a_env = np.clip(a[0].cpu().numpy(), env.u_lower, env.u_upper)
                o_np, r, done = env.step(a_env)
                with torch.no_grad():
                    u = torch.as_tensor(a_env, device=dev)[None]
                    h2 = self.model.transition(h, self.model.normalize(x), u)
                hs.append(h[0]), xs.append(x[0]), acts.append(a[0])
                nx.append(torch.as_tensor(o_np, device=dev)), nh.append(h2[0])
                rews.append(r), dones.append(done), seeds.append(s), logps.append(logp[0])
                ret += r
                h = h2
            self.progress["env_steps"] += env.episode_len * env.action_repeat
            ep_returns.append(ret)
        T = len(rews)
        done_t = torch.tensor(dones, device=dev).unsqueeze(-1)
        td = TensorDict(
            {
                "h": torch.stack(hs),
                "x": torch.stack(xs),
                "action": torch.stack(acts),
                "noise_seed": torch.tensor(seeds, device=dev, dtype=torch.int64),
                ppo.log_prob_key: torch.stack(logps),
                "next": TensorDict(
                    {
                        "h": torch.stack(nh),
                        "x": torch.stack(nx),
                        "reward": torch.tensor(rews, device=dev, dtype=torch.float32).unsqueeze(-1),
                        "done": done_t,
                        "terminated": torch.zeros_like(done_t),
                    },
                    [T],
                ),
            },
            [T],
            device=dev,
        )
        return td, ep_returns

    def phase_ppo(self, pbar_factory=None) -> None:
        self._require_model("ppo")
        self._set_obs_stats()
        c = self.cfg["ppo"]
        bar = (
            pbar_factory(total=c["iterations"], initial=self.progress["ppo"], desc="phase 3: ppo")
            if pbar_factory
            else None
        )
        while self.progress["ppo"] < c["iterations"]:
            i = self.progress["ppo"]
            td, rets = self.collect_ppo_batch(c["steps_per_iter"])
            stats = self.ppo.update(td, seed=int(self.rng.integers(0, 2**31 - 1)))
            self.progress["ppo"] += 1
            self._record(
                {
                    "phase": "ppo",
                    "episode": i,
                    "env_steps": self.progress["env_steps"],
                    "return": float(np.mean(rets)) if rets else float("nan"),
                    **{f"ppo_{k}": v for k, v in stats.items()},
                }
            )
            self._maybe_eval("ppo", "dcem", i + 1 == c["iterations"])
            self.save()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(obj=f"{stats.get('loss_objective', float('nan')):.3f}")
        if bar is not None:
            bar.close()
