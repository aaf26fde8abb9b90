"""Baselines a reviewer accepts for the latent action space (sect. 5.2.1, App. C).

- full-space CEM run to convergence (its per-iteration spread and best cost are recorded, so its
  convergence is reported, not assumed);
- full-space CEM with the latent controller's own budget (same samples x iterations);
- the 1000 x 10 full-space CEM of the paper's text (10x the latent samples) and the published
  code's configured one (100 samples, 10 elites, 30 iterations);
- the latent controller itself, scored with both selections (decoded final mean, best sample)
  and several DCEM sampling seeds, so the sampling noise is averaged and measured.

Every full-space baseline is scored with several sampling seeds (:func:`baseline_seeds`) and is
cached with the version of the code it depends on (:func:`code_version`). Every planner here is
the one :class:`dcem.planning.Planner`; one run gives both selections (``PlanResult.cost`` is the
last sampled mean, ``PlanResult.best_cost`` the best sample).
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dcem.control import Dynamics, LatentDCEMController, cartpole_swingup_cost
from dcem.control.mpc import StepCost
from dcem.experiments.common.runs import cached_json
from dcem.planning import Planner, PlannerConfig, rollout_objective

__all__ = ["full_space_cem", "cem_baseline", "baseline_seeds", "latent_scores", "cached", "code_version"]


def full_space_cem(
    dx: Dynamics, horizon: int, n_sample: int, n_elite: int, n_iter: int, sigma_scale: float
) -> tuple[Planner, Tensor]:
    """Hard CEM over the full action sequences ``U^horizon`` in the force bounds (selection: the
    last sampled mean; ``PlanResult.best_cost`` gives the best sample) and its initial std
    ``sigma_scale * (u_upper - u_lower)`` ``(n_ctrl,)``."""
    cfg = PlannerConfig("cem", int(n_sample), int(n_elite), int(n_iter), select="mean")
    planner = Planner(horizon, dx.n_ctrl, cfg, lower=dx.u_lower, upper=dx.u_upper)
    return planner, float(sigma_scale) * (dx.u_upper - dx.u_lower)


@torch.no_grad()
def cem_baseline(
    dx: Dynamics,
    x: Tensor,
    horizon: int,
    n_sample: int,
    n_elite: int,
    n_iter: int,
    sigma_scale: float,
    seed: int,
    chunk: int = 25,
    cost: StepCost = cartpole_swingup_cost,
) -> dict[str, list[float]]:
    """Full-space CEM from the states ``x (n, n_state)`` on the per-step ``cost``.

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

        obj = rollout_objective(dx, xb, cost)
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


def baseline_seeds(
    dx: Dynamics,
    x: Tensor,
    horizon: int,
    spec: Mapping[str, Any],
    seeds: Sequence[int],
    cost: StepCost,
    key: Mapping[str, Any],
    cache_dir: str | Path | None,
) -> dict[str, Any]:
    """:func:`cem_baseline` of ``spec`` (``n_sample, n_elite, n_iter, sigma_scale``) once per sampling
    seed, each cached under ``key`` + spec + seed + the code version of the dynamics, the cost and
    the planner. Returns ``spec``, ``seeds`` and ``runs`` (one :func:`cem_baseline` dict per seed)."""
    spec = {k: (float(v) if k == "sigma_scale" else int(v)) for k, v in spec.items()}
    code = code_version(type(dx), cost, cem_baseline, full_space_cem, "dcem.planning", "dcem.soft_topk")
    runs = []
    for seed in seeds:
        k = dict(key, **spec, seed=int(seed), horizon=int(horizon), code=code)
        runs.append(
            cached(cache_dir, k, lambda s=int(seed): cem_baseline(dx, x, horizon, **spec, seed=s, cost=cost))
        )
    return {"spec": spec, "seeds": [int(s) for s in seeds], "runs": runs}


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


def _source(obj: Any) -> str:
    """The source text of a function, class, module or module name (a package: all its files)."""
    if isinstance(obj, str):
        import importlib

        obj = importlib.import_module(obj)
    if inspect.ismodule(obj) and hasattr(obj, "__path__"):  # a package: every module file in it
        return "".join(p.read_text() for d in obj.__path__ for p in sorted(Path(d).rglob("*.py")))
    if inspect.isclass(obj) or inspect.isfunction(obj):
        obj = sys.modules[obj.__module__]  # the whole module: helpers it calls count too
    return inspect.getsource(obj)


def code_version(*objs: Any) -> str:
    """A short hash of the source of ``objs`` (functions and classes count by their whole module,
    packages by all their files) and of the torch version: what a cached number depends on, so an
    unrelated commit keeps the cache and a change to that code invalidates it."""
    h = hashlib.sha256(torch.__version__.encode())
    for name in sorted({_source(o) for o in objs}):
        h.update(name.encode())
    return h.hexdigest()[:16]


def cached(cache_dir: str | Path | None, key: Mapping[str, Any], compute: Callable[[], Any]) -> Any:
    """``compute()`` memoised as JSON in ``cache_dir/<hash of key>.json`` (no cache for ``None``);
    put the :func:`code_version` of what ``compute`` runs into ``key``."""
    if cache_dir is None:
        return compute()
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16] + ".json"
    return cached_json(Path(cache_dir) / name, key, compute)
