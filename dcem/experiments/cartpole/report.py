"""``dcem-exp cartpole mode=report``: the numbers and figures of ``docs/results/cartpole.md``.

Reads the train run folders of ``report.runs`` (one per training seed: a train run folder, or an
ablation cell ``.../tau1_nz2_seed<k>``, whose settings are those of a train run) and the ablation
folders ``report.ablation`` (merged by cell), scores everything on the held-out test states and
rewrites the generated blocks of ``report.page`` (:mod:`dcem.experiments.common.report`); figures
go to ``report.img_dir``. Either list may be empty (its blocks are then left as they are).

Scores are **fractions of the converged expert's return** (return = -cost; both negative for a
swing-up, so the fraction is ``cost / expert cost`` and 1 means "as good as the converged
expert"), with 95% Student-t intervals over training seeds (latent controllers) or over sampling
seeds (every full-space CEM runs with each seed of ``report.baseline_seeds``,
:mod:`~dcem.experiments.cartpole.report_baselines`), and a bootstrap interval over test states.
Each trained decoder is scored with every DCEM sampling seed of ``report.eval_seeds`` (averaged).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from dcem.experiments.cartpole.baselines import latent_scores
from dcem.experiments.cartpole.report_baselines import (
    BASELINE_HEADERS,
    baseline_rows,
    baselines,
    convergence_block,
    reference,
    run_cfg,
    seed_fractions,
    zero_plan,
)
from dcem.experiments.cartpole.run import (
    _load,
    _load_decoder,
    make_controller,
    make_task,
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
    return {
        "ratio": float(c.mean() / expert.mean()),
        "per_seed": costs.mean(1) / expert.mean(),
        "state_ci": (float(lo), float(hi)),
    }


def _score_run(run: Path, rep: DictConfig, x_test: torch.Tensor) -> dict[str, Any]:
    cfg = run_cfg(run)
    dx = make_task(cfg)[0]
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


def _budget(n_sample: int, n_iter: int) -> str:
    return f"{n_sample} x {n_iter} = {n_sample * n_iter:,}"


def _rows(scores: list[dict], base: dict[str, dict], ref: np.ndarray, zero: np.ndarray) -> list[list[str]]:
    """Table rows of the latent controllers next to full-space CEM at their budget: controller,
    trajectories per plan, test cost, fraction (95% CI over training or sampling seeds), bootstrap
    interval over states, share of states at least as good as the converged expert."""
    rows = []

    def add(name: str, traj: str, costs: np.ndarray, per_seed: np.ndarray, over: str) -> None:
        fr, per_state = fractions(costs, ref), costs.mean(0)
        lo, hi = fr["state_ci"]
        rows.append(
            [
                name,
                traj,
                ci_cell(per_state),
                f"{ci_cell(per_seed, pct=True)} ({over})",
                f"{100 * fr['ratio']:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}]",
                f"{100 * float((per_state <= ref).mean()):.0f} %",
            ]
        )

    b = base["same_budget"]
    for sel in ("best", "mean"):
        costs = np.asarray([r[sel] for r in b["runs"]])
        add(
            f"full-space CEM at the latent budget ({sel})",
            _budget(b["spec"]["n_sample"], b["spec"]["n_iter"]),
            costs,
            seed_fractions(b, sel, ref),
            f"{len(b['runs'])} sampling seeds",
        )
    n_lat = _budget(scores[0]["n_sample"], scores[0]["n_iter"])
    for sel in ("best", "mean"):
        costs = np.asarray([np.mean(s["trained"][sel], 0) for s in scores])
        add(
            f"**latent DCEM, trained ({sel})**",
            n_lat,
            costs,
            costs.mean(1) / ref.mean(),
            f"{len(scores)} training seeds",
        )
    rand = np.asarray([np.mean(s["random_decoder"]["mean"], 0) for s in scores])
    add(
        f"latent DCEM, untrained decoder ({scores[0]['init']} init, mean)",
        n_lat,
        rand,
        rand.mean(1) / ref.mean(),
        f"{len(scores)} training seeds",
    )
    return rows


def report(cfg: DictConfig) -> dict[str, Any]:
    """Score ``cfg.report.runs`` and ``cfg.report.ablation``, write figures and the page blocks."""
    rep = cfg.report
    runs, roots = [Path(r) for r in rep.runs], [Path(r) for r in rep.ablation]
    if not runs and not roots:
        raise RunError(
            "mode=report needs report.runs=[RUN_DIR,...] (train runs, one per seed) and/or "
            "report.ablation=[DIR,...] (ablation folders)"
        )
    if runs:
        cfg0 = run_cfg(runs[0])
    elif (roots[0] / "config.yaml").is_file():
        cfg0 = OmegaConf.load(roots[0] / "config.yaml")
    else:
        raise RunError(f"report.ablation: {roots[0]} is not an ablation run folder (no config.yaml)")
    dx, task = make_task(cfg0)[0], str(cfg0.get("task", "cartpole"))
    x_test, x_val = test_states(cfg0, dx), validation_states(cfg0, dx)
    base = baselines(cfg0, rep, x_test, "test")
    base_val = baselines(cfg0, rep, x_val, "val", names=("expert",), seeds=list(rep.baseline_seeds)[:1])
    ref, zero = reference(base), zero_plan(cfg0, x_test)
    lines = {"1000 x 10 full-space CEM (val., mean)": float(np.mean(base_val["expert"]["runs"][0]["mean"]))}
    out: dict[str, Any] = {"baselines": base, "baselines_val": base_val, "zero_plan": zero.tolist()}
    blocks = {
        "baselines": convergence_block(base)
        + "\n\n"
        + md_table(BASELINE_HEADERS, baseline_rows(base, ref, zero))
    }
    img = Path(rep.img_dir)
    if runs:
        out["runs"], blocks["setup"], blocks["main"] = _main_block(cfg0, rep, runs, x_test, base, ref, zero)
        _figures(cfg0, runs, out["runs"], base, lines, img)
    else:
        blocks["setup"] = _task_block(cfg0, rep, roots)
    if roots:
        from dcem.experiments.cartpole.report_ablation import ablation_block

        budget = {sel: seed_fractions(base["same_budget"], sel, ref) for sel in ("mean", "best")}
        blocks["ablation"], out["ablation"] = ablation_block(
            roots, rep, x_test, ref, zero, img, lines, budget, prefix=task
        )
    atomic_write_text(Path(rep.out) / "report.json", json.dumps(out, indent=1, default=_plain))
    command = f"dcem-exp {task} mode=report " + " ".join(
        ([f"report.runs=[{','.join(map(str, runs))}]"] if runs else [])
        + ([f"report.ablation=[{','.join(map(str, roots))}]"] if roots else [])
    )
    made_from = {"setup": [*runs, *roots], "main": list(runs), "ablation": list(roots)}
    update_page(rep.page, blocks, command, runs={k: v for k, v in made_from.items() if v}, allow_mixed=True)
    return out


def _main_block(
    cfg0: DictConfig,
    rep: DictConfig,
    runs: list[Path],
    x_test: torch.Tensor,
    base: dict,
    ref: np.ndarray,
    zero: np.ndarray,
) -> tuple[list[dict], str, str]:
    """Scores of the train runs, the setup block and the main table (latent vs full-space CEM)."""
    scores = []
    for r in runs:
        log.info("scoring %s", r)
        s = _score_run(r, rep, x_test)
        s.update(n_sample=int(cfg0.dcem.n_sample), n_iter=int(cfg0.dcem.n_iter))
        scores.append(s)
    headers = [
        "controller",
        "trajectories per plan",
        "test cost (mean ± 95% CI, states)",
        "fraction of converged return, 95% CI",
        "95% bootstrap CI over states",
        "states <= converged",
    ]
    main = md_table(headers, _rows(scores, base, ref, zero)) + "\n\n" + _per_seed_block(scores)
    return scores, _setup_block(cfg0, rep, runs), main


def _plain(v: Any) -> Any:
    """JSON for NumPy values."""
    return v.tolist() if hasattr(v, "tolist") else str(v)


def _task_block(cfg: DictConfig, rep: DictConfig, roots: list[Path]) -> str:
    """The set-up of an ablation-only report: task, horizon, budgets, states."""
    task = str(cfg.get("task", "cartpole"))
    extra = ""
    if "chain" in cfg:
        c = cfg.chain
        extra = (
            f" ({int(c.n_links)} pendulums = control dimensions, torque bound {float(c.max_torque):g}, "
            f"coupling {float(c.coupling):g}, dt {float(c.dt):g})"
        )
    d, c = cfg.dcem, rep.converged
    return (
        f"- task `{task}`{extra}, horizon {int(cfg.horizon)}: a plan has {int(cfg.horizon)} x "
        f"{make_task(cfg)[0].n_ctrl} numbers\n"
        f"- ablation folders: {', '.join(f'`{r}`' for r in roots)}; decoder {list(cfg.decoder.hidden_sizes)} "
        f"{cfg.decoder.activation}, init `{cfg.decoder.init}`, `n_batch={int(cfg.n_batch)}`, "
        f"lr {float(cfg.lr):g}\n"
        f"- latent controller: {int(d.n_sample)} samples x {int(d.n_elite)} elites x {int(d.n_iter)} "
        "iterations, "
        f"scored with DCEM sampling seeds {list(rep.eval_seeds)} (averaged)\n"
        f"- converged reference: full-space CEM {int(c.n_sample)} x {int(c.n_elite)} x {int(c.n_iter)}, best "
        f"sample, averaged over sampling seeds {list(rep.baseline_seeds)}\n"
        f"- {int(cfg.n_val)} validation states (`val_seed={int(cfg.val_seed)}`, checkpoint selection only) "
        "and "
        f"{int(cfg.n_val)} held-out test states (`val_seed + 1`) for every number"
    )


def _setup_block(cfg: DictConfig, rep: DictConfig, runs: list[Path]) -> str:
    c = rep.converged
    return (
        f"- runs: {', '.join(f'`{r}`' for r in runs)} ({len(runs)} training seeds, "
        f"{int(cfg.n_train_iter)} decoder updates each, `n_batch={int(cfg.n_batch)}`, decoder init "
        f"`{cfg.decoder.get('init', 'default')}`)\n"
        f"- converged expert: full-space CEM, {int(c.n_sample)} samples, {int(c.n_elite)} elites, "
        f"{int(c.n_iter)} iterations, best sample, averaged over sampling seeds {list(rep.baseline_seeds)}\n"
        f"- latent controller scored with DCEM sampling seeds {list(rep.eval_seeds)} (averaged) on the "
        f"{int(cfg.n_val)} held-out test states (`val_seed + 1`), never used for selection"
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
    cfg: DictConfig, runs: list[Path], scores: list[dict], base: dict, lines: dict, img: Path
) -> None:
    from dcem.experiments.cartpole.plots import plot_fig3, plot_seed_curves, plot_surface
    from dcem.experiments.common import plots

    dx = make_task(cfg)[0]
    ctrl = make_controller(cfg, dx, scores[0]["n_latent"], scores[0]["temp"])
    _load_decoder(ctrl, runs[0] / "best.pt")
    with plots.style():
        plot_seed_curves(scores, lines, img / "cartpole_curves.png")
        same = {
            "n_sample": int(cfg.dcem.n_sample),
            "n_elite": int(cfg.dcem.n_elite),
            "n_iter": int(cfg.dcem.n_iter),
            "sigma_scale": float(cfg.expert.sigma_scale),
        }
        conv = base["converged"]["spec"]
        rows = [
            (f"full-space CEM, latent's budget ({same['n_sample']} x {same['n_iter']})", same),
            (f"full-space CEM, converged ({conv['n_sample']} x {conv['n_iter']})", conv),
        ]
        x_val = validation_states(cfg, dx)
        plot_fig3(ctrl, rows, x_val[0], img / "cartpole_fig3.png", n_lines=int(cfg.vis.n_lines))
        plot_surface(
            ctrl, x_val[: int(cfg.vis.n_states)], img / "cartpole_surface.png", grid=int(cfg.vis.grid)
        )
