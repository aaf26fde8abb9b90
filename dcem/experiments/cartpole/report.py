"""``dcem-exp cartpole mode=report``: the numbers and figures of ``docs/results/cartpole.md``.

Reads the train run folders of ``report.runs`` (one per training seed, each with its own
``config.yaml`` and ``best.pt``) and optionally the ablation folder ``report.ablation``, scores
everything on the held-out test states and rewrites the generated blocks of ``report.page``
(:mod:`dcem.experiments.common.report`); figures go to ``report.img_dir``.

Scores are **fractions of the converged expert's return** (return = -cost; both negative for a
swing-up, so the fraction is ``cost / expert cost`` and 1 means "as good as the converged
expert"), with two 95% Student-t intervals: over training seeds (per-seed ratio of mean returns)
and over test states (per-state ratio averaged over seeds). Each trained decoder is scored with
every DCEM sampling seed of ``report.eval_seeds`` (averaged; their spread is reported).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from dcem.control import CartpoleDx, cartpole_swingup_cost
from dcem.experiments.cartpole.baselines import cached, cem_baseline, latent_scores
from dcem.experiments.cartpole.run import (
    _load,
    _load_decoder,
    expert_spec,
    make_controller,
    read_csv,
    test_states,
    validation_states,
)
from dcem.experiments.common.report import ci_cell, md_table, update_page
from dcem.experiments.common.runs import RunError, atomic_write_text, bootstrap_ratio

log = logging.getLogger(__name__)

__all__ = ["report", "fractions"]


def fractions(costs: np.ndarray, expert: np.ndarray, n_boot: int = 2000) -> dict[str, Any]:
    """Fractions of the expert's return for ``costs (n_seeds, n_states)`` and ``expert (n_states,)``.

    Returns ``ratio`` (seed-averaged mean return over the expert's), ``per_seed (n_seeds,)`` (each
    seed's ratio of mean returns) and ``state_ci`` ``(lo, hi)``: the 95% percentile-bootstrap
    interval of ``ratio`` over test states (states resampled with a fixed seed; a ratio of means,
    so states whose expert return is near 0 cannot blow it up).
    """
    costs = np.atleast_2d(np.asarray(costs, dtype=np.float64))
    expert = np.asarray(expert, dtype=np.float64)
    c = costs.mean(0)
    lo, hi = bootstrap_ratio([c], [expert], np.random.default_rng(0), n_boot)
    return {"ratio": float(c.mean() / expert.mean()), "per_seed": costs.mean(1) / expert.mean(),
            "state_ci": (float(lo), float(hi))}  # fmt: skip


def _run_cfg(run: Path) -> DictConfig:
    path = run / "config.yaml"
    if not path.is_file() or not (run / "best.pt").is_file():
        raise RunError(
            f"report.runs: {run} is not a finished cartpole train run (needs config.yaml and best.pt)"
        )
    return OmegaConf.load(path)


def _baseline(cfg: DictConfig, spec: dict[str, Any], x: torch.Tensor, tag: str, cache: Path) -> dict:
    key = dict(spec, horizon=int(cfg.horizon), n_val=int(cfg.n_val), val_seed=int(cfg.val_seed), set=tag)
    log.info("full-space CEM %s on the %s set", spec, tag)
    return cached(cache, key, lambda: cem_baseline(CartpoleDx(), x, int(cfg.horizon), **spec))


def _baselines(cfg: DictConfig, rep: DictConfig, x: torch.Tensor, tag: str) -> dict[str, dict]:
    cache = Path(rep.cache_dir)
    lat = cfg.dcem
    specs = {
        "converged": expert_spec(rep.converged),
        "paper_expert": expert_spec(cfg.expert),
        "same_budget": {
            "n_sample": lat.n_sample,
            "n_elite": lat.n_elite,
            "n_iter": lat.n_iter,
            "sigma_scale": cfg.expert.sigma_scale,
        },
    }
    out = {}
    for name, spec in specs.items():
        spec = {k: (float(v) if k == "sigma_scale" else int(v)) for k, v in spec.items()}
        spec["seed"] = int(rep.baseline_seed)
        out[name] = dict(_baseline(cfg, spec, x, tag, cache), spec=spec)
    return out


def _score_run(run: Path, rep: DictConfig, x_test: torch.Tensor) -> dict[str, Any]:
    cfg = _run_cfg(run)
    dx = CartpoleDx()
    ck = _load(run / "checkpoint.pt")
    nz, tau = int(ck.get("n_latent", cfg.decoder.n_latent)), float(ck.get("temp") or 0.0)
    ctrl = make_controller(cfg, dx, nz, tau)
    best = _load_decoder(ctrl, run / "best.pt")
    seeds = [int(s) for s in rep.eval_seeds]
    trained = latent_scores(ctrl, x_test, seeds)
    torch.manual_seed(int(cfg.seed))  # the decoder this run started from (same draws as training)
    rand = latent_scores(make_controller(cfg, dx, nz, tau), x_test, seeds)
    val = [r for r in read_csv(run / "log.csv") if r["mode"] == "val"]
    return {
        "run": str(run),
        "seed": int(cfg.seed),
        "n_latent": nz,
        "temp": tau,
        "best_iter": int(best["iter"]),
        "best_val": float(best["val"]),
        "n_train_iter": int(ck["iter"]),
        "trained": trained,
        "random_decoder": rand,
        "val_curve": [(int(r["iter"]), float(r["cost"])) for r in val],
        "init": str(cfg.decoder.get("init", "default")),
    }


def _zero_plan(cfg: DictConfig, x: torch.Tensor) -> list[float]:
    from dcem.planning import rollout_objective

    u = torch.zeros(x.shape[0], 1, int(cfg.horizon), 1)
    return rollout_objective(CartpoleDx(), x, cartpole_swingup_cost)(u)[:, 0].tolist()


def _budget(n_sample: int, n_iter: int) -> str:
    return f"{n_sample} x {n_iter} = {n_sample * n_iter:,}"


def _rows(scores: list[dict], base: dict[str, dict], zero: list[float]) -> list[list[str]]:
    """Table rows: controller, trajectories per plan, test cost, fractions (over seeds, over states),
    share of states at least as good as the converged expert."""
    exp = np.asarray(base["converged"]["best"])
    rows = []

    def add(name: str, traj: str, costs: np.ndarray) -> None:
        fr, per_state = fractions(costs, exp), costs.mean(0)
        lo, hi = fr["state_ci"]
        rows.append(
            [
                name,
                traj,
                ci_cell(per_state),
                ci_cell(fr["per_seed"], pct=True),
                f"{100 * fr['ratio']:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}]",
                f"{100 * float((per_state <= exp).mean()):.0f} %",
            ]
        )

    for name, sels in (
        ("converged", ("best", "mean")),
        ("paper_expert", ("mean",)),
        ("same_budget", ("best", "mean")),
    ):
        b = base[name]
        label = {
            "converged": "converged",
            "paper_expert": "paper's expert",
            "same_budget": "latent's budget",
        }[name]
        for sel in sels:
            add(
                f"full-space CEM, {label} ({sel})",
                _budget(b["spec"]["n_sample"], b["spec"]["n_iter"]),
                np.asarray([b[sel]]),
            )
    n_lat = _budget(scores[0]["n_sample"], scores[0]["n_iter"])
    for sel in ("best", "mean"):
        add(
            f"**latent DCEM, trained ({sel})**",
            n_lat,
            np.asarray([np.mean(s["trained"][sel], 0) for s in scores]),
        )
    rand = np.asarray([np.mean(s["random_decoder"]["mean"], 0) for s in scores])
    add(f"latent DCEM, untrained decoder ({scores[0]['init']} init, mean)", n_lat, rand)
    add("u = 0 (do nothing)", "0", np.asarray([zero]))
    return rows


def report(cfg: DictConfig) -> dict[str, Any]:
    """Score ``cfg.report.runs`` (and ``cfg.report.ablation``), write figures and the page blocks."""
    rep = cfg.report
    runs = [Path(r) for r in rep.runs]
    if not runs:
        raise RunError(
            "mode=report needs report.runs=[RUN_DIR,...] (cartpole train run folders, one per seed)"
        )
    cfg0 = _run_cfg(runs[0])
    dx = CartpoleDx()
    x_test, x_val = test_states(cfg0, dx), validation_states(cfg0, dx)
    base = _baselines(cfg0, rep, x_test, "test")
    base_val = _baselines(cfg0, rep, x_val, "val")
    scores = []
    for r in runs:
        log.info("scoring %s", r)
        s = _score_run(r, rep, x_test)
        s.update(n_sample=int(cfg0.dcem.n_sample), n_iter=int(cfg0.dcem.n_iter))
        scores.append(s)
    out = {
        "baselines": base,
        "baselines_val": base_val,
        "runs": scores,
        "zero_plan": _zero_plan(cfg0, x_test),
    }
    blocks = {
        "setup": _setup_block(cfg0, rep, runs),
        "baselines": _convergence_block(base),
        "main": md_table(
            [
                "controller",
                "trajectories per plan",
                "test cost (mean ± 95% CI, states)",
                "fraction of converged return, 95% CI over seeds",
                "95% bootstrap CI over states",
                "states <= converged",
            ],
            _rows(scores, base, out["zero_plan"]),
        )
        + "\n\n"
        + _per_seed_block(scores),
    }
    img = Path(rep.img_dir)
    _figures(cfg0, rep, runs, scores, base_val, img)
    if rep.ablation:
        from dcem.experiments.cartpole.report_ablation import ablation_block

        val_expert = float(np.mean(base_val["converged"]["best"]))
        blocks["ablation"], out["ablation"] = ablation_block(
            Path(rep.ablation), rep, x_test, base, img, val_expert
        )
    atomic_write_text(Path(rep.out) / "report.json", json.dumps(out, indent=1))
    command = "dcem-exp cartpole mode=report " + " ".join(
        [f"report.runs=[{','.join(map(str, runs))}]"]
        + ([f"report.ablation={rep.ablation}"] if rep.ablation else [])
    )
    update_page(rep.page, blocks, command)
    return out


def _setup_block(cfg: DictConfig, rep: DictConfig, runs: list[Path]) -> str:
    c = rep.converged
    return (
        f"- runs: {', '.join(f'`{r}`' for r in runs)} ({len(runs)} training seeds, "
        f"{int(cfg.n_train_iter)} decoder updates each, `n_batch={int(cfg.n_batch)}`, decoder init "
        f"`{cfg.decoder.get('init', 'default')}`)\n"
        f"- converged expert: full-space CEM, {int(c.n_sample)} samples, {int(c.n_elite)} elites, "
        f"{int(c.n_iter)} iterations, best sample (seed {int(rep.baseline_seed)})\n"
        f"- latent controller scored with DCEM sampling seeds {list(rep.eval_seeds)} (averaged) on the "
        f"{int(cfg.n_val)} held-out test states (`val_seed + 1`), never used for selection"
    )


def _convergence_block(base: dict[str, dict]) -> str:
    rows = []
    for name, b in base.items():
        s, sig, tr = b["spec"], b["sigma"], b["best_trace"]
        q = max(1, len(tr) // 4)
        rows.append(
            [
                name.replace("_", " "),
                f"{s['n_sample']} x {s['n_elite']} x {s['n_iter']}",
                f"{np.mean(b['mean']):.3f}",
                f"{np.mean(b['best']):.3f}",
                f"{sig[0]:.3g} -> {sig[-1]:.3g}",
                f"{tr[-1 - q] - tr[-1]:.3f}",
            ]
        )
    return md_table(
        [
            "full-space CEM",
            "samples x elites x iterations",
            "test cost (mean)",
            "test cost (best)",
            "mean std, first -> last iteration",
            "best-cost gain in the last quarter of iterations",
        ],
        rows,
    )


def _per_seed_block(scores: list[dict]) -> str:
    rows = []
    for s in scores:
        per_eval = np.asarray(s["trained"]["mean"]).mean(1)
        rows.append(
            [
                s["seed"],
                s["best_iter"],
                f"{s['best_val']:.3f}",
                f"{per_eval.mean():.3f}",
                f"{per_eval.std(ddof=1) if per_eval.size > 1 else float('nan'):.3f}",
                f"{np.asarray(s['trained']['best']).mean():.3f}",
            ]
        )
    return md_table(
        [
            "training seed",
            "best checkpoint (update)",
            "validation cost there",
            "test cost (mean sel.)",
            "std over DCEM sampling seeds",
            "test cost (best sel.)",
        ],
        rows,
    )


def _figures(
    cfg: DictConfig, rep: DictConfig, runs: list[Path], scores: list[dict], base_val: dict, img: Path
) -> None:
    from dcem.experiments.cartpole.plots import plot_fig3, plot_seed_curves, plot_surface
    from dcem.experiments.common import plots

    dx = CartpoleDx()
    ctrl = make_controller(cfg, dx, scores[0]["n_latent"], scores[0]["temp"])
    _load_decoder(ctrl, runs[0] / "best.pt")
    with plots.style():
        lines = {
            "converged expert": float(np.mean(base_val["converged"]["best"])),
            "paper's expert": float(np.mean(base_val["paper_expert"]["mean"])),
        }
        plot_seed_curves(scores, lines, img / "cartpole_curves.png")
        rows = [
            (f"full-space CEM, latent's budget ({b['spec']['n_sample']} x {b['spec']['n_iter']})", b["spec"])
            for b in (base_val["same_budget"],)
        ] + [
            (f"full-space CEM, converged ({b['spec']['n_sample']} x {b['spec']['n_iter']})", b["spec"])
            for b in (base_val["converged"],)
        ]
        x_val = validation_states(cfg, dx)
        plot_fig3(ctrl, rows, x_val[0], img / "cartpole_fig3.png", n_lines=int(cfg.vis.n_lines))
        plot_surface(
            ctrl, x_val[: int(cfg.vis.n_states)], img / "cartpole_surface.png", grid=int(cfg.vis.grid)
        )
