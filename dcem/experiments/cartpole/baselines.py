"""Baselines a reviewer accepts for the cartpole latent space (sect. 5.2.1, App. C).

- full-space CEM run to convergence (its per-iteration spread and best cost are recorded, so its
  convergence is reported, not assumed);
- full-space CEM with the latent controller's own budget (same samples x iterations);
- the paper's "expert" (10x the latent samples, 10 iterations), kept for continuity;
- the latent controller itself, scored with both selections (decoded final mean, best sample)
  and several DCEM sampling seeds, so the sampling noise is averaged and measured.

Every planner here is the one :class:`dcem.planning.Planner`; one run gives both selections
(``PlanResult.cost`` is the last sampled mean, ``PlanResult.best_cost`` the best sample).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dcem.control import CartpoleDx, LatentDCEMController, cartpole_swingup_cost
from dcem.experiments.common.runs import cached_json
from dcem.planning import Planner, PlannerConfig, rollout_objective

__all__ = ["full_space_cem", "cem_baseline", "latent_scores", "cached"]


def full_space_cem(
    dx: CartpoleDx, horizon: int, n_sample: int, n_elite: int, n_iter: int, sigma_scale: float
) -> tuple[Planner, Tensor]:
    """Hard CEM over the full action sequences ``U^horizon`` in the force bounds (selection: the
    last sampled mean; ``PlanResult.best_cost`` gives the best sample) and its initial std
    ``sigma_scale * (u_upper - u_lower)`` ``(n_ctrl,)``."""
    cfg = PlannerConfig("cem", int(n_sample), int(n_elite), int(n_iter), select="mean")
    planner = Planner(horizon, dx.n_ctrl, cfg, lower=dx.u_lower, upper=dx.u_upper)
    return planner, float(sigma_scale) * (dx.u_upper - dx.u_lower)


@torch.no_grad()
def cem_baseline(
    dx: CartpoleDx,
    x: Tensor,
    horizon: int,
    n_sample: int,
    n_elite: int,
    n_iter: int,
    sigma_scale: float,
    seed: int,
    chunk: int = 25,
) -> dict[str, list[float]]:
    """Full-space CEM from the states ``x (n, 5)``.

    Returns lists: ``mean`` and ``best`` plan costs ``(n,)`` (final sampled mean / best sample),
    and, averaged over the states, the per-iteration ``sigma`` (mean std of the sampling
    distribution, in force units) and ``best_trace`` (best cost seen so far) ``(n_iter,)``.
    """
    g = torch.Generator().manual_seed(int(seed))
    planner, init_std = full_space_cem(dx, horizon, n_sample, n_elite, n_iter, sigma_scale)
    mean, best, sig, trace = [], [], torch.zeros(n_iter), torch.zeros(n_iter)
    for xb in x.split(chunk):
        seen = torch.full((xb.shape[0],), float("inf"))

        def record(i: int, X: Tensor, fX: Tensor, I: Tensor, XI: Tensor, mu: Tensor, sigma: Tensor) -> None:
            nonlocal seen
            seen = torch.minimum(seen, fX.min(-1).values)
            sig[i] += sigma.mean(-1).sum()
            trace[i] += seen.sum()

        obj = rollout_objective(dx, xb, cartpole_swingup_cost)
        res = planner.plan(
            obj, batch_shape=(xb.shape[0],), init_std=init_std, generator=g, iter_cb=record, dtype=xb.dtype
        )
        mean.append(res.cost)
        best.append(res.best_cost)
    n = x.shape[0]
    return {
        "mean": torch.cat(mean).tolist(),
        "best": torch.cat(best).tolist(),
        "sigma": (sig / n).tolist(),
        "best_trace": (trace / n).tolist(),
    }


@torch.no_grad()
def latent_scores(
    ctrl: LatentDCEMController, x: Tensor, seeds: Sequence[int]
) -> dict[str, list[list[float]]]:
    """Latent-controller plan costs from ``x (n, 5)`` for each DCEM sampling seed.

    Returns ``mean`` and ``best``: ``(len(seeds), n)`` nested lists (decoded last sampled mean /
    best decoded sample of the same run), whatever the controller's own ``select``.
    """
    obj = rollout_objective(ctrl.dx, x, ctrl.cost)
    # the last sampled mean whatever the controller's own selection (hard CEM defaults to "min")
    planner = Planner(ctrl.horizon, ctrl.dx.n_ctrl, dataclasses.replace(ctrl.config, select="mean"),
                      decoder=ctrl.decoder, z_lower=ctrl.z_lower, z_upper=ctrl.z_upper)  # fmt: skip
    out: dict[str, list[list[float]]] = {"mean": [], "best": []}
    for s in seeds:
        res = planner.plan(
            obj,
            batch_shape=(x.shape[0],),
            init_std=ctrl.init_sigma,
            generator=torch.Generator().manual_seed(int(s)),
            dtype=x.dtype,
        )
        out["mean"].append(res.cost.tolist())
        out["best"].append(res.best_cost.tolist())
    return out


def cached(cache_dir: Path | None, key: Mapping[str, Any], compute: Any) -> Any:
    """``compute()`` memoised as JSON in ``cache_dir/<hash of key>.json`` (no cache for ``None``)."""
    if cache_dir is None:
        return compute()
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16] + ".json"
    return cached_json(Path(cache_dir) / name, key, compute)
