"""Paired, same-snapshot evaluation of the model-based RL controllers (a mixin of ``MBRLTrainer``).

Every controller of a comparison plans on the *same* world-model snapshot and plays the *same*
test episodes: episode ``k`` of run seed ``s`` starts from the task state seeded with
:func:`episode_seeds` ``(s, n)[k]`` for every controller, so paired differences compare the
controllers on identical initial states (the episodes run as one batch; the planners' noise
comes from one generator per controller seeded with the first episode seed).

Snapshots (files in the run folder, written at the end of their phase):

- ``model``: after phase 1 (``snapshot_model.pt``), the model full CEM was trained with;
- ``decoder``: after phase 2 (``snapshot_decoder.pt``), the model and decoder of latent DCEM;
- ``ppo``: after phase 3 (``checkpoint.pt`` of a finished phase 3), decoder and reward head
  fine-tuned by PPO (no likelihood fitting in phase 3, so the rest of the model is ``decoder``'s).

Controllers (``name: (snapshot, policy)``) are listed in :data:`CONTROLLERS`; the random
policy uses no snapshot (``"none"``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from dcem.experiments.common.runs import CsvLog, RunError, atomic_write_text, load_torch, mean_ci95

__all__ = ["CONTROLLERS", "SNAPSHOT_FILES", "PairedEvalMixin", "episode_seeds", "plan_diagnostics"]

log = logging.getLogger("dcem.experiments.mbrl.trainer")

#: snapshot name -> file in the run folder
SNAPSHOT_FILES = {"model": "snapshot_model.pt", "decoder": "snapshot_decoder.pt", "ppo": "checkpoint.pt"}
#: controller name -> (snapshot, policy of ``MBRLTrainer.run_episode``)
CONTROLLERS = {
    "random": ("none", "random"),  # plans nothing: no snapshot
    "full_cem_phase1": ("model", "cem"),
    "full_cem": ("decoder", "cem"),
    "full_cem_budget": ("decoder", "cem_budget"),
    "latent_dcem": ("decoder", "dcem"),
    "latent_dcem_ppo": ("ppo", "dcem"),
    "full_cem_ppo": ("ppo", "cem"),
}
EVAL_SEED_BASE = 10_000
PAIRED_FIELDS = ["controller", "snapshot", "episode", "env_seed", "return"]


def episode_seeds(seed: int, n: int) -> list[int]:
    """Env/noise seeds of the ``n`` test episodes of run seed ``seed`` (disjoint from training's ``seed``)."""
    if n < 1:
        raise ValueError(f"eval.episodes must be >= 1, got {n}")
    return [EVAL_SEED_BASE + 1000 * int(seed) + k for k in range(n)]


def plan_diagnostics(
    pred: np.ndarray, rews: np.ndarray, acts: np.ndarray, lo: np.ndarray, hi: np.ndarray, horizon: int
) -> dict[str, float]:
    """Is the controller exploiting the model? From one batch of episodes:

    - ``pred_return``: the model's predicted ``H``-step return of the executed plans (``pred (T, n)``,
      NaN for the random policy and at steps without a new plan), averaged over the steps
      ``t <= T - H`` at which plans were made, and episodes;
    - ``real_return``: the rewards actually received over the same ``H`` steps (``rews (T, n)``;
      closed loop: the controller re-plans every step and executes only the first action);
    - ``saturated``: the fraction of executed action entries (``acts (T, n, A)``) within 1% of the
      range from a bound ``lo / hi (A,)``.
    """
    T = rews.shape[0]
    H = min(horizon, T)
    csum = np.concatenate([np.zeros((1, rews.shape[1])), np.cumsum(rews, 0)])
    real = csum[H:] - csum[:-H]  # (T - H + 1, n): rewards of steps t .. t + H - 1
    tol = 0.01 * (hi - lo)
    sat = (acts <= lo + tol) | (acts >= hi - tol)
    p = pred[: T - H + 1]
    made = np.isfinite(p).all(1)  # the steps at which plans were made (all when re-planning every step)
    p, real = p[made], real[made] if made.any() else real
    return {"pred_return": float(np.mean(p)) if made.any() else float("nan"),
            "real_return": float(real.mean()), "saturated": float(sat.mean())}  # fmt: skip


class PairedEvalMixin:
    """:meth:`phase_eval`: every available controller on its snapshot, on the same test episodes."""

    def trajectories_per_step(self, policy: str) -> int:
        """Sampled trajectories per planning step of ``policy`` (``n_sample * n_iter``; 0 for random)."""
        p = self.cfg["planner"]
        key = {"cem": "cem", "cem_budget": "dcem", "dcem": "dcem"}.get(policy)
        return 0 if key is None else int(p[key]["n_sample"] * p[key]["n_iter"])

    def snapshot_ready(self, snap: str) -> bool:
        """Whether the run folder holds the finished snapshot ``snap`` (see the module docstring)."""
        if snap == "none":
            return True
        if snap == "ppo":
            n = self.cfg["ppo"]["iterations"]
            return n > 0 and self.progress["ppo"] >= n and self.ckpt_path.exists()
        return (self.out / SNAPSHOT_FILES[snap]).exists()

    def _load_weights(self, snap: str) -> dict:
        """Model and decoder parameters (and observation statistics) of snapshot ``snap``."""
        sd = load_torch(self.out / SNAPSHOT_FILES[snap], map_location="cpu", fmt=self.FORMAT)
        self.model.load_state_dict(sd["model"])
        self.decoder.load_state_dict(sd["decoder"])
        return {"file": SNAPSHOT_FILES[snap], "progress": dict(sd["progress"])}

    def paired_returns(
        self, policy: str, seeds: list[int], video_path: str | Path | None = None, diag: dict | None = None,
        replan_every: int = 1,
    ) -> list[float]:  # fmt: skip
        """Returns of noise-free test episodes, episode ``k`` started from the task seeded ``seeds[k]``.

        All episodes run as one batch (one planner call plans for every episode's state, a batch
        ``(n, D)``), so the planner's noise comes from one generator seeded with ``seeds[0]``;
        the random policy draws episode ``k``'s actions from a generator seeded ``seeds[k]``.
        ``diag`` (a dict) receives the model-exploitation diagnostics of :func:`plan_diagnostics`.
        A planning policy executes ``replan_every`` actions of each plan before it plans again (the
        predicted return is then that of the plans made, at the steps they were made).
        """
        from dcem.experiments.common import plots
        from dcem.rl.envs import make_env

        e, dev, n = self.cfg["env"], self.device, len(seeds)
        envs = [make_env(e["name"], e.get("action_repeat"), seed=s, episode_steps=e["episode_steps"])
                for s in seeds]  # fmt: skip
        obs = np.stack([env.reset(s) for env, s in zip(envs, seeds)])
        lo, hi = envs[0].u_lower, envs[0].u_upper
        rngs = [np.random.default_rng(s) for s in seeds]
        gen = torch.Generator(device=dev).manual_seed(seeds[0])
        planner = None if policy == "random" else {"cem": self.cem, "dcem": self.latent}.get(policy)
        if policy == "cem_budget":
            planner = self.cem_budget
        if policy != "random" and planner is None:
            raise ValueError(f"policy must be 'random', 'cem', 'cem_budget' or 'dcem', got {policy!r}")
        frames: list | None = [] if video_path is not None else None
        h = self.model.initial_state((n,), device=dev)
        T = envs[0].episode_len
        rets, rews, traj = np.zeros(n), np.zeros((T, n)), [obs.copy()]
        pred, acts = np.full((T, n), np.nan), np.zeros((T, n, len(lo)))
        every = min(int(replan_every), planner.horizon) if planner is not None else 1
        for t in range(T):
            if planner is None:
                a = np.stack([r.uniform(lo, hi) for r in rngs]).astype(np.float32)
            else:
                x = torch.tensor(obs, device=dev)  # a copy: env.step below writes obs in place
                if t % every == 0:
                    with torch.no_grad():
                        U = planner.plan(h, x, generator=gen)
                        if diag is not None:
                            pred[t] = self.model.returns(h, x, U).cpu().numpy()
                a = np.clip(U[:, t % every].cpu().numpy(), lo, hi)
            if frames is not None:
                frames.append(envs[0].render())
            acts[t] = a
            for k, env in enumerate(envs):
                obs[k], r, _ = env.step(a[k])
                rets[k] += r
                rews[t, k] = r
            traj.append(obs.copy())
            if planner is not None:
                with torch.no_grad():
                    h = self.model.transition(h, self.model.normalize(x), torch.as_tensor(a, device=dev))
        if frames:
            plots.write_gif(Path(video_path), frames, fps=25)
        if diag is not None:
            H = int(self.cfg["planner"]["horizon"])
            diag.update(plan_diagnostics(pred, rews, acts, lo, hi, H))
            if planner is not None:  # the planning model on these held-out episodes
                f32 = {"device": dev, "dtype": torch.float32}
                o_t, a_t = np.stack(traj, 1), acts.transpose(1, 0, 2)  # (n, T + 1, O), (n, T, A)
                om, rm = self.model.open_loop_error(torch.as_tensor(o_t, **f32), torch.as_tensor(a_t, **f32),
                                                    torch.as_tensor(rews.T, **f32), H)  # fmt: skip
                diag.update(obs_mse_by_d=om.tolist(), reward_mse_by_d=rm.tolist())
        return [float(r) for r in rets]

    def available_controllers(self) -> list[str]:
        """Controllers whose snapshot this run folder holds, in :data:`CONTROLLERS` order."""
        return [c for c, (snap, _) in CONTROLLERS.items() if self.snapshot_ready(snap)]

    def phase_eval(self, controllers: list[str] | None = None) -> dict[str, dict]:
        """Paired evaluation over ``eval.episodes`` episodes into ``eval.json`` and ``paired.csv``
        (``eval_replan<k>.json`` and ``paired_replan<k>.csv`` for ``eval.replan_every = k > 1``).

        Args:
            controllers: subset of :data:`CONTROLLERS`; default ``eval.controllers`` (every
                available one when that is empty). Snapshots are loaded in turn; afterwards the
                weights of ``checkpoint.pt`` are back in place.

        Returns:
            ``{name: {"snapshot", "trajectories_per_step", "returns", "mean", "ci95", "n"}}``.
        """
        if controllers is None:  # the configured ones whose snapshot exists (a warning for the others)
            names = list(self.cfg["eval"].get("controllers") or self.available_controllers())
            skip = [c for c in names if c in CONTROLLERS and not self.snapshot_ready(CONTROLLERS[c][0])]
            if skip:
                log.warning("eval.controllers %s skipped: their snapshots are not in %s yet", skip, self.out)
            names = [c for c in names if c not in skip]
        else:
            names = list(controllers)
        bad = [c for c in names if c not in CONTROLLERS]
        if bad:
            raise ValueError(f"eval.controllers must be among {sorted(CONTROLLERS)}, got {bad}")
        missing = sorted({CONTROLLERS[c][0] for c in names if not self.snapshot_ready(CONTROLLERS[c][0])})
        if missing:
            raise RunError(f"eval.controllers {names}: snapshot(s) {missing} not in {self.out} "
                           f"(finish their phases first; ready: {self.available_controllers()})")  # fmt: skip
        seeds = episode_seeds(int(self.cfg["seed"]), int(self.cfg["eval"]["episodes"]))
        results, snaps = {}, {}
        try:
            for snap in ("none", *SNAPSHOT_FILES):
                todo = [c for c in names if CONTROLLERS[c][0] == snap]
                if not todo:
                    continue
                if snap != "none":
                    snaps[snap] = self._load_weights(snap)
                for name in todo:
                    results[name] = self._eval_one(name, snap, seeds)
        finally:
            if self.ckpt_path.exists():
                sd = load_torch(self.ckpt_path, map_location="cpu", fmt=self.FORMAT)
                self.model.load_state_dict(sd["model"])
                self.decoder.load_state_dict(sd["decoder"])
        self._write_paired(results, snaps, seeds)
        return results

    def _eval_one(self, name: str, snap: str, seeds: list[int]) -> dict:
        policy = CONTROLLERS[name][1]
        vid = (self.out / f"video_{name}.gif") if self.cfg["eval"]["video"] else None
        diag: dict[str, float] = {}
        k = int(self.cfg["eval"].get("replan_every", 1))
        rets = self.paired_returns(policy, seeds, video_path=vid, diag=diag, replan_every=k)
        mean, ci = mean_ci95(rets)
        log.info(
            "paired eval %s (snapshot %s): %.1f +- %.1f over %d episodes", name, snap, mean, ci, len(rets)
        )
        traj = self.trajectories_per_step(policy)
        return {"snapshot": snap, "policy": policy, "trajectories_per_step": traj, "replan_every": k,
                "returns": rets, "mean": mean, "ci95": ci, "n": len(rets), **diag}  # fmt: skip

    def _write_paired(self, results: dict, snaps: dict, seeds: list[int]) -> None:
        k = int(self.cfg["eval"].get("replan_every", 1))
        suffix = "" if k == 1 else f"_replan{k}"
        path = self.out / f"eval{suffix}.json"
        prev = json.loads(path.read_text()) if path.exists() else {}
        if prev.get("format") != "paired-v1" or prev.get("episode_seeds") != seeds:
            prev = {"format": "paired-v1", "episode_seeds": seeds, "snapshots": {}, "controllers": {}}
        prev["replan_every"] = k
        prev["snapshots"].update(snaps)
        prev["controllers"].update(results)
        prev["env"] = self.cfg["env"]["name"]
        prev["seed"] = int(self.cfg["seed"])
        atomic_write_text(path, json.dumps(prev, indent=2))
        rows = [
            {"controller": c, "snapshot": r["snapshot"], "episode": k, "env_seed": s, "return": x}
            for c, r in prev["controllers"].items()
            for k, (s, x) in enumerate(zip(seeds, r["returns"]))
        ]
        CsvLog(self.out / f"paired{suffix}.csv", PAIRED_FIELDS).rewrite(rows)
