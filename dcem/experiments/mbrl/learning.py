"""Learning steps and their schedule in the model-based RL pipeline (a mixin of ``MBRLTrainer``).

- :meth:`LearnMixin.model_update`, :meth:`LearnMixin.decoder_update`: one gradient step of the
  world model / of the action decoder through DCEM (App. D's phase-2 loss on replay states:
  ``decoder.states=last`` the last state of each sampled chunk, ``all`` every state of it, as the
  sum over the sampled trajectories of App. D's Alg. 3; ``decoder.action_prior > 0`` adds a
  penalty on decoded actions far from the replay's actions, an option *beyond the paper*);
- :meth:`LearnMixin.collect`: the episodes of one phase iteration under ``train.schedule``:
  ``block`` (PlaNet: every update before the episode) or ``interleaved`` (App. D's Alg. 3: one
  model update every ``train.update_interval`` env steps during the episode, in phase 2 followed
  by one decoder update), one episode in this process or ``train.collect_workers`` episodes in
  lockstep over :class:`~dcem.rl.env_pool.EnvPool` workers (one batched planning call per step);
- :meth:`LearnMixin.validate_decoder`: the latent controller's return on validation episodes
  (the decoder-training curve, ``decoder_curve.csv``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from dcem.experiments.common.runs import CsvLog, mean_ci95

__all__ = ["CURVE_FIELDS", "VAL_SEED_BASE", "LearnMixin"]

#: validation episodes of run seed ``s`` start from task states seeded ``VAL_SEED_BASE + 1000 s + k``
#: (disjoint from training and from the paired test episodes, ``paired.EVAL_SEED_BASE = 10000``)
VAL_SEED_BASE = 500_000
CURVE_FIELDS = ["decoder_episode", "decoder_updates", "env_steps", "val_return", "val_ci95", "n",
                "pred_return", "real_return", "saturated", "replan_every"]  # fmt: skip
Updates = Callable[[], list[dict[str, float]]]


class LearnMixin:
    """Needs the trainer's ``cfg``, ``model``, ``latent``, ``replay``, ``rng``, ``gen``, ``shards``,
    ``progress``, ``env``, ``run_episode``, ``planned_episodes`` and ``paired_returns``."""

    def model_update(self) -> dict[str, float]:
        """One world-model step on a replay batch; the model's loss statistics."""
        m = self.cfg["model"]
        sh = self.shards["model"]
        batch = self.replay.sample(m["batch_size"], m["seq_len"], self.rng, self.device)
        o, a, r = (sh.rows(t) for t in batch)
        loss, stats = self.model.loss(o, a, r, m["overshooting"], m["overshooting_scale"], m["reward_scale"])
        self.model_opt.zero_grad()
        loss.backward()
        stats = dict(zip(stats, sh.average(list(self.model.parameters()), *stats.values())))
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), m["grad_clip"])
        self.model_opt.step()
        self.progress["model_updates"] += 1
        return {k: float(v) for k, v in stats.items()}

    def sample_states(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Filtered states ``h (N, D)`` and raw observations ``x (N, O)`` of ``n`` replay chunks of
        ``decoder.context`` steps: ``N = n`` (the last state of each, ``decoder.states=last``) or
        ``N = n * context`` (every state after the first, ``all``)."""
        d = self.cfg["decoder"]
        L = min(d["context"], self.env.episode_len)
        o, a, _ = self.replay.sample(n, L, self.rng, self.device)
        with torch.no_grad():
            h = self.model.filter(o, a)
        if d.get("states", "last") == "all":
            return h[:, 1:].reshape(-1, h.shape[-1]), o[:, 1:].reshape(-1, o.shape[-1])
        return h[:, -1], o[:, -1]

    def action_prior_penalty(self, u: torch.Tensor) -> torch.Tensor:
        """Mean squared standardised distance of decoded actions ``u (N, H, A)`` from the replay's
        actions (a diagonal Gaussian fitted to every stored action): a behaviour prior, beyond the paper."""
        acts = self.replay.act[: len(self.replay)].reshape(-1, self.replay.act_dim)
        mu = torch.as_tensor(acts.mean(0), device=u.device, dtype=u.dtype)
        sd = torch.as_tensor(np.maximum(acts.std(0), 1e-2), device=u.device, dtype=u.dtype)
        return ((u - mu) / sd).pow(2).mean()

    def decoder_update(self) -> float:
        """One decoder step on replay states (the model is held fixed for this loss); the loss."""
        sh = self.shards["decoder"]
        d = self.cfg["decoder"]
        h, x = (sh.rows(t) for t in self.sample_states(d["batch_size"]))
        prior = float(d.get("action_prior", 0.0))
        for p in self.model.parameters():
            p.requires_grad_(False)
        try:
            with sh.draws(self.gen):
                if prior > 0:
                    _, u = self.latent.solve(h, x, generator=self.gen)
                    loss = -self.model.returns(h, x, u).mean() + prior * self.action_prior_penalty(u)
                else:
                    loss = self.latent.decoder_loss(h, x, generator=self.gen)
            self.dec_opt.zero_grad()
            loss.backward()
            (loss,) = sh.average(list(self.decoder.parameters()), loss)
            torch.nn.utils.clip_grad_norm_(self.decoder.parameters(), d["grad_clip"])
            self.dec_opt.step()
        finally:
            for p in self.model.parameters():
                p.requires_grad_(True)
        self.progress["decoder_updates"] = self.progress.get("decoder_updates", 0) + 1
        return float(loss.detach())

    # -- schedule --------------------------------------------------------------------------------
    def collect(
        self, policy: str, noise: float, first: int, n: int, updates: Updates, per_episode: int
    ) -> tuple[list[tuple[np.ndarray, ...]], list[dict[str, float]]]:
        """Episodes ``first .. first + n' - 1`` with ``policy`` and the learning steps ``updates``
        scheduled around them (``updates()`` does one slot of learning steps and returns their statistics:
        one model step in phase 1, see ``PhasesMixin._phase2_updates`` for phase 2).

        ``n' = min(n, train.collect_workers)`` episodes (lockstep when ``collect_workers > 1``).
        ``block``: ``per_episode * n'`` update calls, then the episodes; ``interleaved``: ``n'`` calls
        every ``train.update_interval`` agent steps (none before the first step). Returns the
        episodes ``(obs, act, rew)`` and the update statistics.
        """
        tr = self.cfg["train"]
        W = min(n, self.n_collect)
        stats: list[dict[str, float]] = []
        interleaved = tr.get("schedule", "block") == "interleaved"
        if not interleaved:
            for _ in range(per_episode * W):
                stats += updates()

        def on_step(t: int) -> None:  # before planning step t
            if interleaved and t > 0 and t % int(tr["update_interval"]) == 0:
                for _ in range(W):
                    stats.extend(updates())

        if self.n_collect == 1:
            eps = [self.run_episode(self.env, policy, noise=noise, on_step=on_step)]
        else:
            eps = self.planned_episodes(policy, noise, first, on_step=on_step)[:W]
        return eps, stats

    # -- the decoder-training curve --------------------------------------------------------------
    def validate_decoder(self, episode: int) -> list[dict]:
        """Latent DCEM (noise-free) on ``decoder.val_episodes`` validation episodes, executing ``k``
        actions of each plan for each ``k`` of ``decoder.val_replan_every``; one row of
        ``decoder_curve.csv`` per ``k`` (return, predicted vs real return of the plans, saturated
        fraction)."""
        c = self.cfg["decoder"]
        n = int(c["val_episodes"])
        seeds = [VAL_SEED_BASE + 1000 * int(self.cfg["seed"]) + k for k in range(n)]
        rows, ups = [], self.progress.get("decoder_updates", 0)
        for every in c.get("val_replan_every", [1]):
            diag: dict[str, float] = {}
            rets = self.paired_returns("dcem", seeds, diag=diag, replan_every=int(every))
            mean, ci = mean_ci95(rets)
            rows.append({"decoder_episode": episode, "decoder_updates": ups,
                         "env_steps": self.progress["env_steps"], "val_return": mean, "val_ci95": ci,
                         "n": n, **{k: v for k, v in diag.items() if k in CURVE_FIELDS},
                         "replan_every": int(every)})  # fmt: skip
        self.__dict__.setdefault("decoder_curve", []).extend(rows)
        CsvLog(self.out / "decoder_curve.csv", CURVE_FIELDS).rewrite(self.decoder_curve)
        return rows
