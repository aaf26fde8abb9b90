"""The tau x latent-size x training-seed block of ``mode=report`` (App. C, figs. 5 and 6 analogues).

Several ablation folders (e.g. one per training seed, run as separate processes) are merged by
cell ``(tau, latent size, seed)``. A cell counts as a result only when its checkpoint has reached
the folder's ``ablation.n_train_iter``; others are listed as ``running (update N of T)`` and left
out of every number, interval and verdict. Used by the cartpole and the chain experiments.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from dcem.experiments.cartpole.baselines import latent_scores
from dcem.experiments.cartpole.run import _load, _load_decoder, make_controller, make_task, read_csv
from dcem.experiments.common.report import ci_cell, md_table
from dcem.experiments.common.runs import RunError, mean_ci95

log = logging.getLogger(__name__)

__all__ = ["Cell", "collect_cells", "ablation_block", "paired_verdict"]


@dataclass
class Cell:
    """One ablation sub-run: its settings, folder, the update reached and the target length."""

    temp: float
    n_latent: int
    seed: int
    path: Path
    cfg: DictConfig
    reached: int
    target: int
    wall_per_update: float | None = None

    @classmethod
    def read(cls, temp: float, n_latent: int, seed: int, path: Path, cfg: DictConfig, target: int) -> Cell:
        """The cell in ``path``: the update its checkpoint reached and the wall seconds per update
        of its ``log.csv`` (``None`` before its first checkpoint)."""
        reached = int(_load(path / "checkpoint.pt")["iter"]) if (path / "checkpoint.pt").is_file() else 0
        rows = (
            [r for r in read_csv(path / "log.csv") if r["iter"] > 0] if (path / "log.csv").is_file() else []
        )
        wall = float(rows[-1]["wall_s"]) / int(rows[-1]["iter"]) if rows else None
        return cls(temp, n_latent, seed, path, cfg, reached, target, wall)

    @property
    def finished(self) -> bool:
        return self.reached >= self.target

    @property
    def status(self) -> str:
        if self.finished:
            return "finished"
        return f"running (update {self.reached} of {self.target})" if self.reached else "not started"


def collect_cells(roots: list[Path]) -> list[Cell]:
    """The cells of every ablation folder in ``roots`` (duplicates refused), in the order of
    ``ablation_cells`` of each folder's own ``config.yaml``."""
    from dcem.experiments.cartpole import ablation_cells

    cells: dict[tuple[float, int, int], Cell] = {}
    for root in roots:
        if not (root / "config.yaml").is_file():
            raise RunError(f"report.ablation: {root} is not an ablation run folder (no config.yaml)")
        cfg = OmegaConf.load(root / "config.yaml")
        if "seeds" not in cfg.get("ablation", {}):
            raise RunError(
                f"report.ablation: {root} was made by an older version (no ablation.seeds); rerun it"
            )
        for tau, nz, seed, name in ablation_cells(cfg):
            if (tau, nz, seed) in cells:
                raise RunError(
                    f"report.ablation: cell {name} is in two folders ({cells[tau, nz, seed].path.parent}, "
                    f"{root}); give each training seed once"
                )
            d = root / name
            cell_cfg = OmegaConf.merge(cfg, {"seed": seed})
            cells[tau, nz, seed] = Cell.read(tau, nz, seed, d, cell_cfg, int(cfg.ablation.n_train_iter))
    return list(cells.values())


@torch.no_grad()
def _score(cell: Cell, x_test: torch.Tensor, seeds: list[int]) -> dict[str, Any]:
    dx = make_task(cell.cfg)[0]
    ctrl = make_controller(cell.cfg, dx, cell.n_latent, cell.temp)
    best = _load_decoder(ctrl, cell.path / "best.pt")
    sc = latent_scores(ctrl, x_test, seeds)
    return {"best_iter": int(best["iter"]), "mean": np.mean(sc["mean"], 0), "best": np.mean(sc["best"], 0)}


def paired_verdict(a: np.ndarray, b: np.ndarray, what_a: str, what_b: str) -> str:
    """One sentence comparing per-seed fractions ``a`` and ``b`` (paired by training seed): the mean
    difference with its 95% Student-t interval over seeds, and whether the interval excludes 0."""
    d = 100 * (np.asarray(a) - np.asarray(b))
    m, h = mean_ci95(d)
    if np.isnan(h):
        return f"{what_a} vs {what_b}: {m:+.1f} points (one seed, no interval: not tested)"
    lo, hi = m - h, m + h
    if lo > 0:
        word = f"{what_a} is better"
    elif hi < 0:
        word = f"{what_b} is better"
    else:
        word = "no difference shown"
    return f"{what_a} vs {what_b}: {m:+.1f} points [{lo:+.1f}, {hi:+.1f}] over {d.size} seeds: {word}"


def _rows(cells: list[Cell], scores: dict, ref: np.ndarray, zero: np.ndarray, temps, sizes) -> list[list]:
    rows = []
    gain = float(zero.mean() - ref.mean())
    for nz in sizes:
        for tau in temps:
            group = [c for c in cells if c.n_latent == nz and c.temp == tau]
            done = [c for c in group if c.finished]
            status = (
                "finished"
                if len(done) == len(group)
                else "; ".join(f"seed {c.seed}: {c.status}" for c in group if not c.finished)
            )
            if not done:
                rows.append(
                    [
                        f"{tau:g}" + (" (hard CEM)" if tau == 0 else ""),
                        nz,
                        f"{len(done)} of {len(group)}",
                        status,
                        "-",
                        "-",
                        "-",
                        "-",
                        "-",
                    ]
                )
                continue
            fr = {
                s: np.array([scores[c.path]["_" + s].mean() / ref.mean() for c in done])
                for s in ("mean", "best")
            }
            gn = {
                s: np.array([(zero.mean() - scores[c.path]["_" + s].mean()) / gain for c in done])
                for s in ("mean", "best")
            }
            rows.append(
                [
                    f"{tau:g}" + (" (hard CEM)" if tau == 0 else ""),
                    nz,
                    f"{len(done)} of {len(group)}",
                    status,
                    ci_cell(fr["mean"], pct=True),
                    ", ".join(f"{100 * v:.0f} %" for v in fr["mean"]),
                    ci_cell(fr["best"], pct=True),
                    f"{ci_cell(gn['mean'], pct=True)} / {ci_cell(gn['best'], pct=True)}",
                    f"{np.mean([scores[c.path]['best_iter'] for c in done]):.0f}",
                ]
            )
    return rows


def _verdicts(cells: list[Cell], scores: dict, ref: np.ndarray, temps, sizes, budget: dict) -> list[str]:
    """Per latent size: each tau > 0 against tau = 0 (paired by training seed), both selections, and
    the best cell against full-space CEM at the same budget; 'not tested' while cells run."""
    out = []
    for nz in sizes:
        group = [c for c in cells if c.n_latent == nz]
        if not group or not all(c.finished for c in group):
            n_run = sum(not c.finished for c in group)
            out.append(
                f"- **latent size {nz}: not tested (run in progress)**: {n_run} of {len(group)} cells have "
                "not reached their length."
            )
            continue
        parts = []
        for sel in ("mean", "best"):
            per = {
                t: np.array(
                    [
                        scores[c.path]["_" + sel].mean() / ref.mean()
                        for c in sorted(group, key=lambda c: c.seed)
                        if c.temp == t
                    ]
                )
                for t in temps
            }
            for t in temps:
                if t != 0 and 0.0 in per:
                    parts.append(
                        f"{sel} selection, " + paired_verdict(per[t], per[0.0], f"tau={t:g}", "tau=0")
                    )
            if sel in budget:
                b, bh = mean_ci95(budget[sel])
                bh = float(np.nan_to_num(bh))
                for t in temps:
                    m, h = mean_ci95(per[t])
                    h = float(np.nan_to_num(h))
                    rel = "above" if m - h > b + bh else ("below" if m + h < b - bh else "overlapping")
                    parts.append(
                        f"{sel} selection, tau={t:g} against full-space CEM at the same budget: "
                        f"{100 * m:.1f} ± {100 * h:.1f} % vs {100 * b:.1f} ± {100 * bh:.1f} %: "
                        f"intervals {rel}"
                    )
        out.append(
            f"- **latent size {nz}** (fractions of the converged return; 95% intervals over training seeds, "
            "for full-space CEM over its sampling seeds):\n" + "\n".join(f"  - {p}" for p in parts)
        )
    return out


HEADERS = [
    "tau",
    "latent size",
    "seeds finished",
    "status",
    "fraction of converged return, mean selection (95% CI over seeds)",
    "per seed",
    "best-sample selection",
    "fraction of the converged gain over u = 0 (mean / best sel.)",
    "mean best update",
]


def _timing(cells: list[Cell]) -> str:
    """Wall seconds per decoder update over the cells (from their ``log.csv``) and the resulting
    hours per cell and in total, on the machine and under the load the runs had."""
    w = [c.wall_per_update for c in cells if c.wall_per_update is not None]
    if not w:
        return ""
    target = max(c.target for c in cells)
    return (
        f" Wall time per update (log.csv, on the shared machine under its load at the time): {min(w):.2f}-"
        f"{max(w):.2f} s over {len(w)} cells, so about {np.median(w) * target / 3600:.1f} h per cell of "
        f"{target} updates and {np.median(w) * target * len(cells) / 3600:.0f} h for the {len(cells)} cells "
        "(an upper bound on their CPU-hours)."
    )


def _raw(c: Cell, score: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"status": c.status, "reached": c.reached, "target": c.target}
    if score is not None:
        out.update(
            best_iter=score["best_iter"],
            test_cost=score["_mean"].tolist(),
            test_cost_best=score["_best"].tolist(),
        )
    return out


def ablation_block(
    roots: list[Path],
    rep: DictConfig,
    x_test: torch.Tensor,
    ref: np.ndarray,
    zero: np.ndarray,
    img: Path,
    lines: dict[str, float],
    budget: dict[str, np.ndarray],
    prefix: str = "cartpole",
) -> tuple[str, dict[str, Any]]:
    """Score the finished cells of the ablation folders ``roots`` on the test states ``x_test``.

    Args:
        ref: per-state costs of the reference (converged full-space CEM, best sample) ``(n,)``.
        zero: per-state costs of the zero plan ``(n,)`` (the "gain over u = 0" column).
        lines: validation-set costs drawn as horizontal lines in the curves figure.
        budget: per-sampling-seed fractions of full-space CEM at the latent budget, by selection.
        prefix: file-name prefix of the figures in ``img``.

    Returns:
        the markdown block (table, verdicts, figures' names) and the raw scores.
    """
    cells = collect_cells(roots)
    seeds = [int(s) for s in rep.eval_seeds]
    scores = {}
    for c in cells:
        if c.finished:
            log.info("scoring %s", c.path)
            s = _score(c, x_test, seeds)
            scores[c.path] = {"best_iter": s["best_iter"], "_mean": s["mean"], "_best": s["best"]}
    temps = sorted({c.temp for c in cells}, reverse=True)
    sizes = sorted({c.n_latent for c in cells})
    rows = _rows(cells, scores, ref, zero, temps, sizes)
    verdicts = _verdicts(cells, scores, ref, temps, sizes, budget)
    _figures(cells, scores, ref, lines, budget, img, prefix, temps, sizes)
    n_done = sum(c.finished for c in cells)
    targets = sorted({c.target for c in cells})
    head = (
        f"{', '.join(f'`{r}`' for r in roots)}: temps {temps} x latent sizes {sizes} x training seeds "
        f"{sorted({c.seed for c in cells})}, {'/'.join(map(str, targets))} decoder updates each; {n_done} of "
        f"{len(cells)} cells finished (only those are scored); best-validation checkpoint, test states, DCEM "
        f"sampling seeds {seeds}.{_timing(cells)}\n\n"
    )
    table = md_table(HEADERS, rows)
    raw = {str(c.path): _raw(c, scores.get(c.path)) for c in cells}
    figs = (
        f"\n\nFigures: `img/{prefix}_fig5.png` (validation cost per update, mean and 95% band over the "
        f"training seeds, one panel per latent size; cells still running dashed) and `img/{prefix}_fig6.png` "
        "(fraction of the converged return per finished cell, both selections, mean and 95% interval over "
        "training "
        "seeds, dots = seeds; lines: full-space CEM baselines)."
    )
    return head + table + "\n\nVerdicts:\n\n" + "\n".join(verdicts) + figs, raw


def _figures(cells, scores, ref, lines, budget, img: Path, prefix: str, temps, sizes) -> None:
    from dcem.experiments.cartpole.plots import plot_fig5, plot_fig6
    from dcem.experiments.common import plots

    curves = {c.path: read_csv(c.path / "log.csv") if (c.path / "log.csv").is_file() else [] for c in cells}
    with plots.style():
        plot_fig5(cells, curves, lines, img / f"{prefix}_fig5.png", temps, sizes)
        fr = {
            (c.n_latent, c.temp, c.seed): {
                s: float(scores[c.path]["_" + s].mean() / ref.mean()) for s in ("mean", "best")
            }
            for c in cells
            if c.path in scores
        }
        plot_fig6(
            fr, {k: float(np.mean(v)) for k, v in budget.items()}, img / f"{prefix}_fig6.png", temps, sizes
        )
