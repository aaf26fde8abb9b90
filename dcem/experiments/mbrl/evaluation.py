"""Evaluations during training and plots of the model-based RL pipeline (a mixin of ``MBRLTrainer``)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import torch

from dcem.experiments.common import plots
from dcem.experiments.common.runs import CsvLog, mean_ci95
from dcem.rl.envs import make_env

__all__ = ["EvalMixin"]

log = logging.getLogger("dcem.experiments.mbrl.trainer")


def _pm(mean: float, ci: float, n: int) -> str:
    return f"{mean:.1f} +- {ci:.1f}" if n > 1 else f"{mean:.1f} (1 episode)"


class EvalMixin:
    """Evaluations during training and the learning-curve plot (the final one: :mod:`.paired`)."""

    def evaluate(
        self, policy: str, n_episodes: int, seed_offset: int = 10_000, video_path: str | Path | None = None
    ) -> list[float]:
        """Returns of ``n_episodes`` noise-free test episodes.

        They use their own env seed and generators, so the training RNG streams are untouched.
        """
        e = self.cfg["env"]
        env = make_env(
            e["name"],
            e.get("action_repeat"),
            seed=int(self.cfg["seed"]) + seed_offset,
            episode_steps=e["episode_steps"],
        )
        rng = np.random.default_rng(int(self.cfg["seed"]) + seed_offset)
        gen = torch.Generator(device=self.device).manual_seed(int(self.cfg["seed"]) + seed_offset)
        returns = []
        for k in range(n_episodes):
            frames: list | None = [] if (video_path is not None and k == 0) else None
            _, _, rew = self.run_episode(env, policy, noise=0.0, rng=rng, gen=gen, frames=frames)
            returns.append(float(rew.sum()))
            if frames:
                plots.write_gif(Path(video_path), frames, fps=25)
        return returns

    def _maybe_eval(self, phase: str, policy: str, last: bool) -> None:
        every = self.cfg["eval"]["every"]
        n = self.progress[phase]
        if phase == "model" and n <= self.cfg["train"]["seed_episodes"]:
            return  # the model has not been trained yet
        if every and (n % every == 0 or last):
            rets = self.evaluate(policy, self.cfg["eval"]["episodes_during_training"])
            mean, ci = mean_ci95(rets)
            row = {
                "phase": phase,
                "policy": policy,
                "step": n,
                "env_steps": self.progress["env_steps"],
                "mean": mean,
                "ci95": ci,
                "n": len(rets),
            }
            self.eval_history.append(row)
            log.info("eval %s/%s after %d: %s", phase, policy, n, _pm(mean, ci, len(rets)))
            CsvLog(self.out / "eval_curve.csv", list(row)).append([row])

    def plot(self) -> Path | None:
        """Learning curves (training returns and periodic evaluations) into ``curves.png``."""
        if not self.history:
            return None
        with plots.style():
            return self._plot()

    def _plot(self) -> Path:
        fig = plots.figure(figsize=(7.2, 4.4), layout="constrained")
        ax = fig.subplots()
        for phase, color in (("model", "C0"), ("decoder", "C1"), ("ppo", "C2")):
            rows = [r for r in self.history if r["phase"] == phase and not math.isnan(r["return"])]
            if rows:
                ax.plot(
                    [r["env_steps"] for r in rows],
                    [r["return"] for r in rows],
                    ".",
                    color=color,
                    alpha=0.5,
                    label=f"train ({phase})",
                )
            ev = [r for r in self.eval_history if r["phase"] == phase]
            if ev:
                xs = np.array([r["env_steps"] for r in ev])
                ys = np.array([r["mean"] for r in ev])
                cs = np.array([r["ci95"] for r in ev])
                ax.plot(xs, ys, "-o", color=color, label=f"eval ({phase})")
                ax.fill_between(xs, ys - cs, ys + cs, color=color, alpha=0.2)
        final = self.out / "eval.json"
        if final.exists():
            res = json.loads(final.read_text())
            snaps = res.get("snapshots", {})
            for k, (name, r) in enumerate(res.get("controllers", {}).items()):
                x = snaps.get(r["snapshot"], {}).get("progress", {}).get("env_steps")
                if x is not None:
                    ax.errorbar(
                        [x],
                        [r["mean"]],
                        yerr=[r["ci95"]],
                        fmt="s",
                        capsize=3,
                        color=f"C{(3 + k) % 10}",
                        label=f"paired: {name} (n={r['n']})",
                    )
        ax.set_xlabel("environment steps")
        ax.set_ylabel("episode return")
        ax.set_title(self.cfg["env"]["name"])
        ax.legend()
        return plots.save(fig, self.out / "curves.png", dpi=100)
