"""Run-folder readers of the MBRL report beyond the paired returns: run groups, unfinished runs,
PPO's skipped minibatches, the planning model's open-loop error, the decoder-training curves and the
calibration probe."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from dcem.experiments.common.report import md_table
from dcem.experiments.common.runs import CsvLog
from dcem.experiments.mbrl.paired import CONTROLLERS

__all__ = ["by_replan", "curve_block", "curve_figure", "curves", "group_of", "model_error_block",
           "ppo_skipped", "probe_block", "probes", "replan_block", "unfinished"]


def group_of(root: Path, run_dir: Path, env: str) -> str:
    """The run's group label: its folder's parent relative to ``root`` (``env`` when that is empty)."""
    try:
        rel = run_dir.parent.relative_to(root).as_posix()
    except ValueError:
        rel = "."
    return env if rel in (".", "") else rel


def unfinished(root: str | Path) -> list[list]:
    """Rows ``[group, seed, folder, progress, "running / unfinished", "–"]`` of run folders under ``root``
    with a ``config.yaml`` but no ``eval.json`` yet (their last ``train.csv`` row as progress)."""
    root, rows = Path(root), []
    for cfg in sorted(root.rglob("config.yaml")):
        d = cfg.parent
        if (d / "eval.json").exists() or ".old-" in d.as_posix():
            continue
        hist = CsvLog(d / "train.csv", []).rows() if (d / "train.csv").exists() else []
        last = "not started"
        if hist:
            last = f"{hist[-1]['phase']} episode {hist[-1]['episode']}, env steps {hist[-1]['env_steps']}"
        seed = d.name.removeprefix("seed") if d.name.startswith("seed") else "?"
        rows.append([group_of(root, d, "?"), seed, str(d), last, "running / unfinished", "–"])
    return rows


def ppo_skipped(run_dir: str | Path) -> float:
    """Fraction of phase-3 PPO minibatches skipped as non-finite (mean over PPO steps; NaN: none run)."""
    p = Path(run_dir) / "train.csv"
    vals = [float(r["ppo_skipped"]) for r in (CsvLog(p, []).rows() if p.exists() else [])
            if r.get("phase") == "ppo" and r.get("ppo_skipped") not in (None, "")]  # fmt: skip
    return float(np.mean(vals)) if vals else math.nan


def model_error_block(runs: dict[str, list[dict]]) -> str | None:
    """Open-loop prediction error of the planning model on each controller's held-out test
    episodes (normalised observation MSE and reward MSE at distances 1, 3, 6, H; mean over seeds)."""
    rows = []
    for env, rs in sorted(runs.items()):
        for name in CONTROLLERS:
            if not all(name in r["controllers"] and "obs_mse_by_d" in r["controllers"][name] for r in rs):
                continue
            om = np.mean([r["controllers"][name]["obs_mse_by_d"] for r in rs], 0)
            rm = np.mean([r["controllers"][name]["reward_mse_by_d"] for r in rs], 0)
            ds = sorted({d for d in (1, 3, 6, len(om)) if d <= len(om)})
            rows.append([env, name, len(rs), ", ".join(f"{om[d - 1]:.3g} @ {d}" for d in ds),
                         ", ".join(f"{rm[d - 1]:.3g} @ {d}" for d in ds)])  # fmt: skip
    if not rows:
        return None
    head = ["task", "episodes of", "seeds", "observation MSE (normalised) @ distance",
            "reward MSE @ distance"]  # fmt: skip
    return md_table(head, rows)


def curves(root: Path) -> dict[tuple[str, str], list[dict]]:
    """``{(group, seed): decoder_curve.csv rows}`` of every run folder under ``root`` that wrote one
    (finished or still running: the curve is the evidence of phase 2 while it trains)."""
    out = {}
    for p in sorted(root.rglob("decoder_curve.csv")):
        if ".old-" in p.as_posix():
            continue
        rows = CsvLog(p, []).rows()
        if rows:
            seed = p.parent.name.removeprefix("seed") if p.parent.name.startswith("seed") else "?"
            out[(group_of(root, p.parent, "?"), seed)] = rows
    return out


def by_replan(rows: list[dict]) -> dict[int, list[dict]]:
    """The rows of one ``decoder_curve.csv`` split by ``replan_every`` (``k``; curves written before
    the column existed were measured at ``k = 1``), in increasing ``k``."""
    out: dict[int, list[dict]] = {}
    for r in rows:
        k = r.get("replan_every")
        out.setdefault(1 if k in (None, "") else int(k), []).append(r)
    return dict(sorted(out.items()))


def curve_block(curves: dict[tuple[str, str], list[dict]]) -> str:
    """Per run and re-planning interval ``k``: the validation return of the untrained decoder, the
    last points, the best, and at the last point the predicted vs received H-step return of the
    executed plans and the saturated share."""
    rows = []
    for (env, seed), all_rows in curves.items():
        for k, cs in by_replan(all_rows).items():
            last, end = cs[-3:], cs[-1]
            pr = f"{float(end['pred_return']):.3g} / {float(end['real_return']):.3g}"
            rows.append([env, seed, k, f"{cs[0]['val_return']:.3g}",
                         ", ".join(f"{c['val_return']:.3g} @ {c['decoder_updates']}" for c in last),
                         f"{max(c['val_return'] for c in cs):.3g}", pr,
                         f"{100 * float(end['saturated']):.1f}%"])  # fmt: skip
    head = ["task", "seed", "re-plan every", "val. return, untrained decoder",
            "last three points (return @ decoder updates)", "best",
            "predicted / received H-step return, last point", "saturated actions, last point"]  # fmt: skip
    return md_table(head, rows)


def curve_figure(curves: dict[tuple[str, str], list[dict]], path: Path) -> Path:
    from dcem.experiments.common import plots

    groups = sorted({g for g, _ in curves})
    with plots.style():
        fig = plots.figure(figsize=(3.2 * len(groups) + 1, 3.2), layout="constrained")
        axes = np.atleast_1d(fig.subplots(1, len(groups), squeeze=False)[0])
        for ax, g in zip(axes, groups):
            runs = [(seed, rows) for (env, seed), rows in sorted(curves.items()) if env == g]
            for i, (seed, all_rows) in enumerate(runs):  # a colour per seed, a line style per k
                for j, (k, cs) in enumerate(by_replan(all_rows).items()):
                    ax.plot([c["decoder_updates"] for c in cs], [c["val_return"] for c in cs],
                            ("o-", "s--", "^:", "d-.")[j % 4], color=f"C{i % 10}", ms=3,
                            label=f"seed {seed}" + (f", k = {k}" if k != 1 else ""))  # fmt: skip
            ax.set_title(g, fontsize=8)
            ax.set_xlabel("decoder updates")
            ax.legend(fontsize=7)
        axes[0].set_ylabel("latent DCEM validation return")
        return plots.save(fig, path, dpi=100)


def probes(root: Path) -> list[tuple[str, str, dict]]:
    """``(task group, run folder name, probe.json contents)`` of every run folder under ``root`` that has
    a ``phase=probe`` result, read once for both of its blocks."""
    root = Path(root)
    return [(group_of(root, p.parent, p.parent.parent.name), p.parent.name, json.loads(p.read_text()))
            for p in sorted(root.rglob("probe.json"))]  # fmt: skip


def probe_block(found: list[tuple[str, str, dict]]) -> str | None:
    """Per kind of open-loop action sequence of the probes ``found`` (:func:`probes`), the model's
    predicted and the received ``H``-step return."""
    from dcem.experiments.mbrl.probe import KINDS

    rows = []
    for task, run, res in found:
        for kind in KINDS:
            k = res["kinds"].get(kind)
            if k is not None:
                rows.append([task, run, len(k["real_all"]), kind, f"{k['pred']:.3g}",
                             f"{k['real']:.3g}", f"{k['ratio']:.3g}", f"{100 * k['saturated']:.1f}%",
                             f"{k['corr']:.2f}"])  # fmt: skip
    if not rows:
        return None
    head = ["task", "run", "start states", "open-loop sequence", "predicted H-step return", "received",
            "predicted / received", "saturated entries", "corr. over states"]  # fmt: skip
    return md_table(head, rows)


def replan_block(found: list[tuple[str, str, dict]]) -> str | None:
    """The re-planning sweeps of the probes ``found`` (:func:`probes`): each planning controller's mean
    return (± 95% interval over validation episodes) when it executes ``k`` actions of each plan."""
    rows, ks = [], None
    for task, run, res in found:
        for name, by_k in res.get("replan", {}).items():
            ks = ks or list(by_k)
            best = max(by_k, key=lambda k: by_k[k]["mean"])
            cells = [f"{v['mean']:.1f} ± {v['ci95']:.1f}" for v in by_k.values()]
            cells = [f"**{c}**" if k == best else c for k, c in zip(by_k, cells)]
            rows.append([task, run, name, len(res["validation_seeds"]), *cells])
    if not rows:
        return None
    head = ["task", "run", "controller", "validation episodes", *(f"re-plan every {k}" for k in ks or [])]
    note = "bold: the best k of the row (on validation episodes, not the test episodes)"
    return md_table(head, rows) + "\n\n" + note
