"""Model calibration by kind of action sequence (``dcem-exp mbrl phase=probe``): why a controller
can exploit the world model.

The paired evaluation's diagnostics (:func:`dcem.experiments.mbrl.paired.plan_diagnostics`) compare a
controller's predicted and received return closed loop. This probe separates the two suspects, the
*actions* a controller produces and the *search* that chose them: from the same held-out states (a
random-length random-action prefix of each test episode), the model predicts the ``H``-step return of
several kinds of open-loop action sequences, which are then executed in the real environment from that
very state (replaying the episode's seed and prefix; MuJoCo is deterministic):

- ``uniform``: actions drawn uniformly in the bounds (the replay's first episodes are of this kind);
- ``bang-bang``: every entry at a bound, sign at random (saturated, never seen in the replay);
- ``decoder, random z``: the decoder's output at a random latent point (the actions the latent space
  can express, before any search);
- the planners' plans (``full_cem``, ``full_cem_budget``, ``latent_dcem``), found by searching the model.

A model that over-rates ``bang-bang`` or ``decoder, random z`` is miscalibrated on those actions before
any controller searches it; a plan kind over-rated only after search is exploitation by the search.
Second, how often to re-plan: each planning controller on validation episodes (seeds disjoint from the
paired test episodes), executing ``k`` actions of each plan before it plans again, for ``k`` in
:data:`REPLAN_KS` (``k = 1`` is the paper's MPC). The paired evaluation then runs at the chosen ``k``
with ``phase=eval eval.replan_every=k``: the choice is made on episodes it is not scored on.

Results go to ``probe.json`` in the run folder; ``phase=report`` turns them into tables.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import torch

from dcem.experiments.common.runs import mean_ci95
from dcem.experiments.mbrl.paired import EVAL_SEED_BASE, episode_seeds

__all__ = ["KINDS", "REPLAN_KS", "phase_probe", "probe_starts", "replan_sweep", "validation_seeds"]

log = logging.getLogger("dcem.experiments.mbrl.trainer")

#: the kinds of sequences, in the order of the table
KINDS = ("uniform", "bang-bang", "decoder, random z", "full_cem", "full_cem_budget", "latent_dcem")
PROBE_SEED = 777  # offsets the probe's generators from every other stream of the run
#: actions executed from each plan before re-planning, swept on validation episodes
REPLAN_KS = (1, 2, 3, 4, 6, 12)
REPLAN_CONTROLLERS = {"full_cem": "cem", "full_cem_budget": "cem_budget", "latent_dcem": "dcem"}


def validation_seeds(seed: int, n: int) -> list[int]:
    """Env seeds of ``n`` validation episodes of run seed ``seed``: disjoint from the paired test
    episodes of :func:`~dcem.experiments.mbrl.paired.episode_seeds` (``n`` and those below 500)."""
    return [EVAL_SEED_BASE + 1000 * int(seed) + 500 + k for k in range(n)]


def replan_sweep(tr: Any, n: int, ks: tuple[int, ...] = REPLAN_KS) -> dict[str, dict[str, dict]]:
    """``{controller: {str(k): {"mean", "ci95", "returns"}}}``: returns of the planning controllers of
    the loaded snapshot on ``n`` validation episodes, re-planning every ``k`` steps."""
    seeds = validation_seeds(int(tr.cfg["seed"]), n)
    out: dict[str, dict[str, dict]] = {}
    for name, policy in REPLAN_CONTROLLERS.items():
        out[name] = {}
        for k in ks:
            rets = tr.paired_returns(policy, seeds, replan_every=k)
            mean, ci = mean_ci95(rets)
            out[name][str(k)] = {"mean": mean, "ci95": ci, "returns": rets}
            log.info("probe re-plan every %d, %s: %.1f +- %.1f over %d validation episodes", k, name, mean,
                     ci, len(rets))  # fmt: skip
    return out


def probe_starts(env: Any, seeds: list[int], horizon: int, rng: np.random.Generator) -> list[dict]:
    """One start state per episode seed: ``{"seed", "obs" (t0 + 1, O), "act" (t0, A)}`` after a random
    prefix of ``t0 ~ U{0, T - H}`` uniform random actions (``T`` = the episode's agent steps)."""
    starts = []
    for s in seeds:
        t0 = int(rng.integers(0, env.episode_len - horizon + 1))
        obs = [env.reset(s)]
        act = rng.uniform(env.u_lower, env.u_upper, size=(t0, env.act_dim)).astype(np.float32)
        for a in act:
            obs.append(env.step(a)[0])
        starts.append({"seed": s, "obs": np.stack(obs), "act": act})
    return starts


def _execute(env: Any, start: dict, u: np.ndarray) -> float:
    """Reward received by the open-loop sequence ``u (H, A)`` from ``start``'s state (replayed)."""
    env.reset(start["seed"])
    for a in start["act"]:
        env.step(a)
    return float(sum(env.step(a)[1] for a in u))


def _sequences(tr: Any, h: torch.Tensor, x: torch.Tensor, H: int, rng: np.random.Generator) -> dict:
    """``{kind: (n, H, A) float32 array}`` for the states ``h (n, D)``, raw observations ``x (n, O)``."""
    lo, hi = tr.env.u_lower, tr.env.u_upper
    n, A = h.shape[0], tr.env.act_dim
    gen = torch.Generator(device=tr.device).manual_seed(PROBE_SEED)
    b = tr.latent.latent_bound
    z = torch.empty(n, tr.decoder.n_latent, device=tr.device)
    z = z.uniform_(-b, b, generator=gen) if b is not None else z.normal_(generator=gen)
    with torch.no_grad():
        seqs = {
            "uniform": rng.uniform(lo, hi, size=(n, H, A)),
            "bang-bang": np.where(rng.random((n, H, A)) < 0.5, lo, hi),
            "decoder, random z": tr.decoder(z).cpu().numpy(),
            "full_cem": tr.cem.plan(h, x, generator=gen).cpu().numpy(),
            "full_cem_budget": tr.cem_budget.plan(h, x, generator=gen).cpu().numpy(),
            "latent_dcem": tr.latent.plan(h, x, generator=gen).cpu().numpy(),
        }
    return {k: np.clip(v, lo, hi).astype(np.float32) for k, v in seqs.items()}


def phase_probe(tr: Any, snapshot: str = "decoder") -> dict[str, dict]:
    """Run the probe on snapshot ``snapshot`` of the trainer ``tr``'s run folder; writes ``probe.json``.

    Returns ``{kind: {"pred", "real", "ratio", "saturated", "corr", "pred_all", "real_all"}}``: the mean
    predicted and received ``H``-step returns over the ``eval.episodes`` start states, their ratio,
    the fraction of entries within 1 % of the range from a bound, and the correlation over states.
    ``probe.json`` also holds the re-planning sweep of :func:`replan_sweep` over ``eval.episodes // 2``
    validation episodes.
    """
    from dcem.experiments.common.runs import RunError
    from dcem.rl.envs import make_env

    if not tr.snapshot_ready(snapshot):
        raise RunError(f"phase=probe needs the {snapshot} snapshot in {tr.out}; finish phase=decoder first")
    info = tr._load_weights(snapshot)
    e, H = tr.cfg["env"], int(tr.cfg["planner"]["horizon"])
    seeds = episode_seeds(int(tr.cfg["seed"]), int(tr.cfg["eval"]["episodes"]))
    env = make_env(e["name"], e.get("action_repeat"), seed=seeds[0], episode_steps=e["episode_steps"])
    rng = np.random.default_rng(PROBE_SEED + int(tr.cfg["seed"]))
    starts = probe_starts(env, seeds, H, rng)
    f32 = {"device": tr.device, "dtype": torch.float32}
    with torch.no_grad():
        h = torch.cat([tr.model.filter(torch.as_tensor(s["obs"][None], **f32),
                                       torch.as_tensor(s["act"][None], **f32))[:, -1] for s in starts])
    x = torch.as_tensor(np.stack([s["obs"][-1] for s in starts]), **f32)
    tol = 0.01 * (env.u_upper - env.u_lower)
    out = {}
    for kind, u in _sequences(tr, h, x, H, rng).items():
        with torch.no_grad():
            pred = tr.model.returns(h, x, torch.as_tensor(u, **f32)).cpu().numpy().astype(float)
        real = np.array([_execute(env, s, u[k]) for k, s in enumerate(starts)])
        sat = float(((u <= env.u_lower + tol) | (u >= env.u_upper - tol)).mean())
        corr = float(np.corrcoef(pred, real)[0, 1]) if len(real) > 2 and real.std() > 0 else float("nan")
        ratio = float(pred.mean() / real.mean()) if real.mean() != 0 else float("nan")
        out[kind] = {"pred": float(pred.mean()), "real": float(real.mean()), "ratio": ratio, "saturated": sat,
                     "corr": corr, "pred_all": pred.tolist(), "real_all": real.tolist()}  # fmt: skip
        log.info("probe %s: predicted %.3f received %.3f (%.1f%% saturated)", kind, out[kind]["pred"],
                 out[kind]["real"], 100 * sat)  # fmt: skip
    n_val = max(2, int(tr.cfg["eval"]["episodes"]) // 2)
    res = {"snapshot": snapshot, "snapshot_progress": info["progress"], "horizon": H, "episode_seeds": seeds,
           "prefix_lengths": [len(s["act"]) for s in starts], "kinds": out,
           "validation_seeds": validation_seeds(int(tr.cfg["seed"]), n_val),
           "replan": replan_sweep(tr, n_val)}  # fmt: skip
    (tr.out / "probe.json").write_text(json.dumps(res, indent=1))
    return out
