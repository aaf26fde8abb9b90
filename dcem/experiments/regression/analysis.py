"""Post-training analysis of the regression experiment: summary tables, the test-time-iterations
ablation (App. B), energy surfaces (fig. 2) and the figures written to the run folder."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dcem.experiments.common import plots
from dcem.experiments.common.runs import atomic_write_text, load_torch, t_quantile
from dcem.experiments.common.runs import mean_ci95 as _mean_ci95
from dcem.experiments.regression.model import make_data, target_fn
from dcem.experiments.regression.train import build, predict, read_log

__all__ = ["analyse", "mean_ci", "energy_grid", "grid_argmin"]

log = logging.getLogger(__name__)

_COLORS = {"gd": "tab:blue", "dcem": "tab:red"}
_NAMES = {"gd": "unrolled GD", "dcem": "DCEM"}


def mean_ci(values: Sequence[float] | Tensor) -> tuple[float, float]:
    """Mean and half-width of the two-sided 95% Student-t interval (``nan`` for one value)."""
    return _mean_ci95(torch.as_tensor(values, dtype=torch.float64).flatten().tolist())


def _band(arr: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-column mean and 95% CI bounds of ``arr`` of shape ``(n_seeds, n_points)``."""
    n = arr.shape[0]
    m = arr.mean(0)
    if n < 2:
        return m, m, m
    h = t_quantile(n - 1) * arr.std(0, unbiased=True) / math.sqrt(n)
    return m, m - h, m + h


def energy_grid(energy: nn.Module, xs: Tensor, ys: Tensor) -> Tensor:
    """``E(x_i, y_j)`` on the grid; ``xs`` ``(nx,)``, ``ys`` ``(ny,)`` -> ``(ny, nx)``."""
    with torch.no_grad():
        X = xs.view(1, -1, 1).expand(ys.numel(), -1, 1)
        Y = ys.view(-1, 1, 1).expand(-1, xs.numel(), 1)
        return energy(X, Y)


def grid_argmin(energy: nn.Module, x: Tensor, y_lo: float, y_hi: float, n: int = 2001) -> Tensor:
    """The global minimiser of ``E(x, .)`` over a uniform grid of ``[y_lo, y_hi]``; ``x`` ``(m, 1)``
    -> ``(m, 1)``."""
    ys = torch.linspace(y_lo, y_hi, n, dtype=x.dtype, device=x.device)
    E = energy_grid(energy, x.view(-1), ys)
    return ys[E.argmin(0)].unsqueeze(-1)


def _normalised_log_energy(E: Tensor) -> Tensor:
    """Per-column (per-x) min-max normalisation, then ``log`` (the paper's fig. 2 display)."""
    lo = E.amin(0, keepdim=True)
    hi = E.amax(0, keepdim=True)
    return torch.log((E - lo) / (hi - lo).clamp_min(1e-12) + 1e-3)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _metrics(cfg: Mapping[str, Any], models: dict, energies: dict,
             runs: list[dict[str, Any]], out_dir: Path) -> tuple[list, list]:  # fmt: skip
    """Final metrics per run (``summary.csv``) and the test-time-iterations ablation (``ablation.csv``)."""
    device = torch.device(cfg["device"])
    eval_seed = int(cfg["eval_seed"])
    x, y, xt, yt = make_data(int(cfg["n_points"]), device=device)
    y_lo, y_hi = (float(v) for v in cfg["plot"]["y_range"])
    max_iter = int(cfg["ablation"]["max_iter"])
    summary_rows, abl_rows = [], []
    wall = {(r["method"], r["seed"]): r for r in runs}
    for (m, s), pred in models.items():
        with torch.no_grad():
            tr = float((predict(pred, x, seed=eval_seed) - y).pow(2).mean())
            te = float((predict(pred, xt, seed=eval_seed) - yt).pow(2).mean())
            am = float((grid_argmin(energies[(m, s)], x, y_lo, y_hi) - y).pow(2).mean())
            for k in range(1, max_iter + 1):
                abl_rows.append({
                    "method": m, "seed": s, "n_iter": k,
                    "train_mse": float((predict(pred, x, k, eval_seed) - y).pow(2).mean()),
                    "test_mse": float((predict(pred, xt, k, eval_seed) - yt).pow(2).mean()),
                })  # fmt: skip
        r = wall.get((m, s), {})
        last = last_evals(cfg, out_dir / m / f"seed{s}" / "log.csv")
        summary_rows.append({"method": m, "seed": s, "updates": r.get("steps", math.nan),
                             "wall_s": r.get("wall_s", math.nan), "train_mse": tr, "test_mse": te,
                             "argmin_mse": am, **last})  # fmt: skip
    return summary_rows, abl_rows


def last_evals(cfg: Mapping[str, Any], log_csv: Path) -> dict[str, float]:
    """The robust final metric: mean train / held-out MSE over the last ``report.last_evals``
    evaluations in the run's ``log.csv`` (``train_mse_last``, ``test_mse_last``), so one noisy
    last evaluation does not decide the result."""
    k = int(cfg["report"]["last_evals"])
    rows = read_log(log_csv)[-k:]
    if not rows:
        return {"train_mse_last": math.nan, "test_mse_last": math.nan}
    return {f"{key}_last": sum(r[key] for r in rows) / len(rows) for key in ("train_mse", "test_mse")}


def analyse(cfg: Mapping[str, Any], out_dir: Path, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Evaluate the trained runs and write tables and figures into ``out_dir``.

    Writes ``summary.csv`` (final metrics per run), ``ablation.csv`` (MSE for 1..max_iter
    test-time iterations), ``results.json`` (aggregates with 95% CIs), ``summary.md`` and the
    PNGs ``loss_curves.png``, ``energy_surfaces.png`` (fig. 2, first seed),
    ``energy_surfaces_all_seeds.png``, ``ablation_mse.png`` and ``ablation_predictions.png``.

    Returns:
        the aggregates written to ``results.json``.
    """
    device = torch.device(cfg["device"])
    methods = list(cfg["methods"])
    seeds = [int(s) for s in cfg["seeds"]]
    max_iter = int(cfg["ablation"]["max_iter"])
    show = [int(k) for k in cfg["ablation"]["show_iters"]]

    models: dict[tuple[str, int], nn.Module] = {}
    energies: dict[tuple[str, int], nn.Module] = {}
    for m in methods:
        for s in seeds:
            energy, pred = build(m, cfg, device)
            energy.load_state_dict(load_torch(out_dir / m / f"seed{s}" / "model.pt", map_location=device))
            energy.eval()
            models[(m, s)], energies[(m, s)] = pred, energy

    summary_rows, abl_rows = _metrics(cfg, models, energies, runs, out_dir)
    _write_csv(out_dir / "summary.csv", summary_rows)
    _write_csv(out_dir / "ablation.csv", abl_rows)

    results: dict[str, Any] = {"seeds": seeds, "ablation_iters": list(range(1, max_iter + 1)), "methods": {}}
    for m in methods:
        rs = [r for r in summary_rows if r["method"] == m]
        agg: dict[str, Any] = {}
        for key in ("train_mse", "test_mse", "argmin_mse", "wall_s", "train_mse_last", "test_mse_last"):
            agg[key] = dict(zip(("mean", "ci95"), mean_ci([r[key] for r in rs])))
        abl = torch.tensor([[r["train_mse"] for r in abl_rows if r["method"] == m and r["seed"] == s]
                            for s in seeds], dtype=torch.float64)  # fmt: skip
        mean, lo, hi = _band(abl)
        agg["ablation_train_mse"] = {"mean": mean.tolist(), "lo": lo.tolist(), "hi": hi.tolist()}
        results["methods"][m] = agg
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=2))
    _write_markdown(out_dir / "summary.md", cfg, results, show, runs)
    with plots.style():
        _figures(cfg, out_dir, models, energies, abl_rows)
    return results


def _figures(cfg: Mapping[str, Any], out_dir: Path, models: dict, energies: dict, abl_rows: list) -> None:
    """The PNGs of :func:`analyse` (call inside :func:`plots.style`)."""
    methods = list(cfg["methods"])
    seeds = [int(s) for s in cfg["seeds"]]
    _plot_loss_curves(out_dir, methods, seeds)
    _plot_surfaces(cfg, out_dir, models, energies)
    _plot_ablation_mse(cfg, out_dir, abl_rows)
    _plot_ablation_predictions(cfg, out_dir, models)


def _plot_loss_curves(out_dir: Path, methods: list[str], seeds: list[int]) -> None:
    """Training and held-out MSE per update, geometric mean over seeds with 95% bands."""
    fig = plots.figure(figsize=(10, 3.8), layout="constrained")
    axes = fig.subplots(1, 2)
    for m in methods:
        logs = [read_log(out_dir / m / f"seed{s}" / "log.csv") for s in seeds]
        n = min(len(lg) for lg in logs)
        if n == 0:
            continue
        steps = torch.tensor([r["step"] for r in logs[0][:n]])
        for ax, key in zip(axes, ("train_mse", "test_mse")):
            arr = torch.tensor([[r[key] for r in lg[:n]] for lg in logs], dtype=torch.float64)
            mu, lo, hi = _band(arr.log10())
            ax.plot(steps, 10**mu, color=_COLORS.get(m), label=_NAMES.get(m, m))
            ax.fill_between(steps, 10**lo, 10**hi, color=_COLORS.get(m), alpha=0.25, lw=0)
    for ax, title in zip(axes, ("training MSE", "held-out MSE (midpoints)")):
        ax.set_yscale("log")
        ax.set_xlabel("update")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"mean over {len(seeds)} seeds (geometric), 95% t-interval bands")
    plots.save(fig, out_dir / "loss_curves.png", dpi=110)


def _grids(cfg: Mapping[str, Any]) -> tuple[Tensor, Tensor, float, float]:
    device = torch.device(cfg["device"])
    y_lo, y_hi = (float(v) for v in cfg["plot"]["y_range"])
    n_grid = int(cfg["plot"]["grid"])
    xs = torch.linspace(0.0, 2.0 * math.pi, n_grid, device=device)
    return xs, torch.linspace(y_lo, y_hi, n_grid, device=device), y_lo, y_hi


def _plot_surfaces(cfg: Mapping[str, Any], out_dir: Path, models: dict, energies: dict) -> None:
    """Fig. 2: normalised log-energy surfaces with target, prediction and grid argmin."""
    methods, seeds = list(cfg["methods"]), [int(s) for s in cfg["seeds"]]
    xs, ys, y_lo, y_hi = _grids(cfg)
    xd = xs.view(-1, 1)

    def surface(ax: Any, m: str, s: int, title: str) -> Any:
        Z = _normalised_log_energy(energy_grid(energies[(m, s)], xs, ys)).cpu()
        cs = ax.contourf(xs.cpu(), ys.cpu(), Z, levels=30, cmap="magma_r")
        ax.plot(xs.cpu(), target_fn(xs).cpu(), color="black", lw=2, label="target $x\\sin x$")
        with torch.no_grad():
            yp = predict(models[(m, s)], xd, seed=int(cfg["eval_seed"])).view(-1).cpu()
        ax.plot(xs.cpu(), yp, ls="--", color="tab:cyan", lw=1.5, label="prediction")
        am = grid_argmin(energies[(m, s)], xd, y_lo, y_hi).view(-1).cpu()
        ax.plot(xs.cpu(), am, ls="", marker=".", ms=3, color="tab:green", label="grid argmin$_y E$")
        ax.set_ylim(y_lo, y_hi)
        ax.set_title(title)
        ax.set_xlabel("x")
        return cs

    label = "log of min-max normalised $E(x, \\cdot)$ (light = low)"
    fig = plots.figure(figsize=(5.2 * len(methods) + 1, 4.2), layout="constrained")
    axes = fig.subplots(1, len(methods), squeeze=False)
    for ax, m in zip(axes[0], methods):
        cs = surface(ax, m, seeds[0], f"{_NAMES.get(m, m)} (seed {seeds[0]})")
    fig.colorbar(cs, ax=axes, label=label, shrink=0.9)
    axes[0, 0].set_ylabel("y")
    axes[0, 0].legend(loc="lower left")
    plots.save(fig, out_dir / "energy_surfaces.png", dpi=110)

    fig = plots.figure(figsize=(3.8 * len(seeds) + 1, 3.4 * len(methods)), layout="constrained")
    axes = fig.subplots(len(methods), len(seeds), squeeze=False)
    for i, m in enumerate(methods):
        for j, s in enumerate(seeds):
            cs = surface(axes[i, j], m, s, f"{_NAMES.get(m, m)}, seed {s}")
    fig.colorbar(cs, ax=axes, label=label, shrink=0.9)
    axes[0, 0].legend(loc="lower left")
    plots.save(fig, out_dir / "energy_surfaces_all_seeds.png", dpi=90)


def _plot_ablation_mse(cfg: Mapping[str, Any], out_dir: Path, abl_rows: list) -> None:
    """Training MSE against the number of test-time inner iterations."""
    methods, seeds = list(cfg["methods"]), [int(s) for s in cfg["seeds"]]
    its = list(range(1, int(cfg["ablation"]["max_iter"]) + 1))
    fig = plots.figure(figsize=(5.8, 4.0), layout="constrained")
    ax = fig.subplots()
    for m in methods:
        # geometric mean and a t-interval of log10(MSE): an arithmetic interval crosses 0 on a log axis
        abl = torch.tensor([[r["train_mse"] for r in abl_rows if r["method"] == m and r["seed"] == s]
                            for s in seeds], dtype=torch.float64)  # fmt: skip
        mu, lo, hi = _band(abl.log10())
        ax.plot(its, 10**mu, marker="o", ms=3, color=_COLORS.get(m), label=_NAMES.get(m, m))
        ax.fill_between(its, 10**lo, 10**hi, color=_COLORS.get(m), alpha=0.25, lw=0)
    train_iters = {int(cfg[m]["n_iter"]) for m in methods}
    for k in train_iters:
        ax.axvline(k, color="gray", ls=":", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("test-time inner iterations")
    ax.set_ylabel("training-set MSE")
    ax.set_title(f"trained with {', '.join(map(str, sorted(train_iters)))} inner iterations\n"
                 f"geometric mean over {len(seeds)} seeds, 95% band")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend()
    plots.save(fig, out_dir / "ablation_mse.png", dpi=110)


def _plot_ablation_predictions(cfg: Mapping[str, Any], out_dir: Path, models: dict) -> None:
    """Predictions of every seed with 1..max_iter test-time iterations (App. B)."""
    methods, seeds = list(cfg["methods"]), [int(s) for s in cfg["seeds"]]
    show = [int(k) for k in cfg["ablation"]["show_iters"]]
    xs, _, y_lo, y_hi = _grids(cfg)
    xd = xs.view(-1, 1)
    fig = plots.figure(figsize=(2.8 * len(show), 2.6 * len(methods)), layout="constrained")
    axes = fig.subplots(len(methods), len(show), sharex=True, sharey=True, squeeze=False)
    for i, m in enumerate(methods):
        for j, k in enumerate(show):
            ax = axes[i, j]
            ax.plot(xs.cpu(), target_fn(xs).cpu(), color="black", lw=1.5)
            for s in seeds:
                with torch.no_grad():
                    yp = predict(models[(m, s)], xd, k, int(cfg["eval_seed"])).view(-1).cpu()
                ax.plot(xs.cpu(), yp, color=_COLORS.get(m), alpha=0.7, lw=1)
            ax.set_ylim(y_lo, y_hi)
            ax.set_title(f"{_NAMES.get(m, m)}, {k} it.")
    plots.save(fig, out_dir / "ablation_predictions.png", dpi=90)


def _fmt(mc: Mapping[str, float]) -> str:
    return f"{mc['mean']:.4g} ± {mc['ci95']:.2g}"


def _write_markdown(path: Path, cfg: Mapping[str, Any], results: Mapping[str, Any], show: list[int],
                    runs: list[dict[str, Any]]) -> None:  # fmt: skip
    tr = cfg["train"]
    done = sorted({int(r["steps"]) for r in runs}) or [int(tr["n_updates"])]
    lines = [
        f"# regression: {len(results['seeds'])} seeds, {'/'.join(map(str, done))} updates, "
        f"batch {tr['batch_size']}",
        "",
        f"| method | train MSE (last {cfg['report']['last_evals']} evals) | held-out MSE (last evals) | "
        "train MSE (final model) | MSE of grid argmin_y E | wall s / run |",
        "|---|---|---|---|---|---|",
    ]
    for m, a in results["methods"].items():
        cells = [_fmt(a[key]) for key in ("train_mse_last", "test_mse_last", "train_mse", "argmin_mse")]
        lines.append(f"| {_NAMES.get(m, m)} | " + " | ".join(cells) + f" | {a['wall_s']['mean']:.0f} |")
    lines += ["", "mean ± 95% t-interval half-width over seeds", "",
              "test-time iterations ablation (training-set MSE, mean over seeds [95% CI]):", "",
              "| iterations | " + " | ".join(_NAMES.get(m, m) for m in results["methods"]) + " |",
              "|---" * (1 + len(results["methods"])) + "|"]  # fmt: skip
    its = sorted(set(show) | {1, 2, 3, 5, 10, 15, 20, 30})
    for k in its:
        if k > len(results["ablation_iters"]):
            continue
        cells = []
        for a in results["methods"].values():
            ab = a["ablation_train_mse"]
            cells.append(f"{ab['mean'][k - 1]:.4g} [{ab['lo'][k - 1]:.3g}, {ab['hi'][k - 1]:.3g}]")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    atomic_write_text(path, "\n".join(lines) + "\n")
